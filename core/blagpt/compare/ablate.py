"""``blagpt ablate``: each change on top of a base config, as a difference in val bpb with its noise.

Every ``--try`` is one or more ``field=value`` items (joined by ``;``). Without ``--greedy`` each
change is trained alone on top of the base. With ``--greedy`` the changes are tried in the order
given, each on top of the base plus every earlier change that was kept; a change is kept when it
lowers val bpb by more than the noise band (the automated form of trying techniques one after
another by hand).

The noise band of a difference is the half-width of its 95% Welch confidence interval over seeds
(two or more seeds), or ``--noise`` (bpb) when given: with one seed there is no estimate of the
noise, and a greedy ablation refuses to guess.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .bench import Bench
from .plan import Entry
from ..errors import ConfigError
from .leaderboard import RunData, diff_band, welch_p_less


def parse_try(text: str) -> tuple[str, ...]:
    """``'model.a=1; train.b=2'`` -> ``('model.a=1', 'train.b=2')``."""
    from ..config import parse_set

    items = tuple(x.strip() for x in text.split(";") if x.strip())
    if not items:
        raise ConfigError(f"--try {text!r}: expected FIELD=VALUE (several joined by ';')")
    for item in items:
        try:
            parse_set(item)
        except ConfigError:
            raise ConfigError(f"--try {text!r}: {item!r} is not FIELD=VALUE with a dotted field, e.g. model.qk_norm=true") from None
    return items


@dataclass
class Step:
    """One row of the ablation table: a change measured against its reference."""

    change: str
    entry: Entry
    reference: Entry
    bpb: list[float]
    ref_bpb: list[float]
    noise: float | None
    kept: bool | None = None

    @property
    def delta(self) -> float | None:
        if not self.bpb or not self.ref_bpb:
            return None
        return statistics.fmean(self.bpb) - statistics.fmean(self.ref_bpb)

    @property
    def band(self) -> float | None:
        band = diff_band(self.bpb, self.ref_bpb)
        return band if band is not None else self.noise

    @property
    def p_value(self) -> float | None:
        return welch_p_less(self.bpb, self.ref_bpb)

    @property
    def verdict(self) -> str:
        d, b = self.delta, self.band
        if d is None:
            return "failed"
        if b is None:
            return "no noise estimate (1 seed)"
        return "helps" if d < -b else "hurts" if d > b else "within noise"


def run_ablation(
    bench: Bench,
    model: str,
    optimizer: str,
    tries: list[tuple[str, tuple[str, ...]]],
    greedy: bool,
    noise: float | None,
    base_sets: tuple[str, ...] = (),
):
    """Train the ablation; ``tries`` are (label, items), ``base_sets`` the base's own items (e.g.
    its preset). Returns (steps, all run data, the entries in order, the kept items, interrupted)."""
    if greedy and bench.seeds < 2 and noise is None:
        raise ConfigError("--greedy: needs --seeds 2 or more (to measure the noise) or --noise BPB")
    base = Entry("base", model, optimizer, base_sets)
    steps: list[Step] = []
    runs: dict[str, list[RunData]] = {}
    order = [base]

    def measure(entries: list[Entry]) -> bool:
        data, interrupted = bench.run(entries)
        for e in entries:
            runs[e.label] = [r for r in data if r.entry == e.label]
        return interrupted

    def bpb(e: Entry) -> list[float]:
        return [r.final["val/bpb"] for r in runs.get(e.label, []) if r.ok]

    if not greedy:
        entries = [base, *(Entry(label, model, optimizer, base_sets + items) for label, items in tries)]
        order = entries
        interrupted = measure(entries)
        for e in entries[1:]:
            steps.append(Step(e.label, e, base, bpb(e), bpb(base), noise))
        return steps, [r for e in entries for r in runs.get(e.label, [])], order, (), interrupted

    current, kept_items = base, base_sets
    interrupted = False
    for i, (label, items) in enumerate(tries, 1):
        cand = Entry(f"{i}: +{label}" if kept_items != base_sets else label, model, optimizer, kept_items + items)
        order.append(cand)
        interrupted = measure([current, cand])
        if interrupted:
            break
        step = Step(label, cand, current, bpb(cand), bpb(current), noise)
        step.kept = step.verdict == "helps"
        steps.append(step)
        if step.kept:
            current, kept_items = cand, cand.sets
    all_runs = [r for e in order for r in runs.get(e.label, [])]
    return steps, all_runs, order, kept_items[len(base_sets):], interrupted


COLUMNS = ("change", "on top of", "val bpb", "reference bpb", "delta bpb", "noise band (95%)", "p (one-sided)", "verdict", "kept")


def table_rows(steps: list[Step], greedy: bool) -> list[list[str]]:
    out = []
    for s in steps:
        out.append([
            s.change,
            s.reference.label,
            _ms(s.bpb),
            _ms(s.ref_bpb),
            "-" if s.delta is None else f"{s.delta:+.4f}",
            "-" if s.band is None else f"±{s.band:.4f}",
            "-" if s.p_value is None else f"{s.p_value:.3g}",
            s.verdict,
            ("yes" if s.kept else "no") if greedy else "-",
        ])
    return out


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values)
    return f"{m:.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) >= 2 else "")
