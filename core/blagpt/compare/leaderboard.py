"""From finished runs to a leaderboard: per-entry statistics over seeds, tables and plots.

Runs arrive as :class:`RunData`, read either from run folders (``bench``, ``ablate``) or from
MLflow (``compare``); both readers fill the same fields from the same logged metrics, so the table
of a bench and the table ``blagpt compare`` makes of its MLflow runs agree.

Statistics: mean, sample standard deviation (n - 1) and the 95% Student-t confidence interval of
the mean over seeds; with two or more seeds on both sides, a one-sided Welch t-test of "this
entry's val bpb is lower than the baseline's" (Welch 1947, unequal variances, Welch-Satterthwaite
degrees of freedom), and, since one baseline is compared with many entries at once, the p-values
adjusted by Holm's step-down method (Holm 1979), which keeps the chance of any false "better"
at 5% over the whole table. A p-value from fewer than 3 seeds on a side is flagged: with 2 seeds
the variance estimate has one degree of freedom and the test has little power.

The score is a :class:`Score`: val bpb (lower is better) for language modelling, val accuracy at
the answer positions (higher is better) for a generated task (``task.name``); statistics, tables,
plots and the tuning choice (:mod:`.tune`) follow its key and direction.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SERIES_KEYS = ("val/loss", "val/bpb", "val/bytes", "tune/loss", "tune/bpb", "tune/bytes", "val/accuracy", "tune/accuracy",
               "train/tokens", "train/elapsed_s", "train/flops")


@dataclass(frozen=True)
class Score:
    """What a leaderboard ranks on: the final evaluation's ``<slice>/<key>`` and its direction."""

    key: str  # "bpb" or "accuracy"
    words: str  # as the tables and plots say it
    higher_is_better: bool
    loss_unit: str  # what val/loss is per

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b


BPB = Score("bpb", "bpb", False, "nats/token")
ACCURACY = Score("accuracy", "accuracy", True, "nats/answer")


def score_for(task: str | None) -> Score:
    """The score of runs of task ``task``: bpb for language modelling (``lm``), else accuracy."""
    return BPB if task in (None, "", "None", "lm") else ACCURACY
FEW_SEEDS = 3  # p-values from fewer seeds than this on a side are flagged
SCALAR_KEYS = ("train/tokens_per_s", "train/peak_mem_mb")


@dataclass
class RunData:
    """One training run as the leaderboard sees it.

    ``evals`` holds one dict per evaluation (``step``, ``val/loss``, ``val/bpb``, ``train/tokens``,
    ``train/elapsed_s``), in step order; ``tokens_per_s`` is the median of the logged throughput
    windows, ``peak_mem_mb`` the largest logged peak.
    """

    name: str
    entry: str
    seed: int
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    evals: list[dict[str, float]] = field(default_factory=list)
    tokens_per_s: float | None = None
    peak_mem_mb: float | None = None
    error: str | None = None
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED" and bool(self.evals) and self.error is None

    def score(self, slice_name: str = "val", key: str = "bpb") -> float | None:
        """The final evaluation's ``key`` (``bpb``, ``accuracy``) on ``slice_name`` (``val``, or
        ``tune`` for tuning trials)."""
        return self.final.get(f"{slice_name}/{key}")

    @property
    def final(self) -> dict[str, float]:
        return self.evals[-1] if self.evals else {}

    @classmethod
    def from_metrics(cls, rows: Iterable[dict], **fields: Any) -> "RunData":
        """Build from metric rows ``{"key", "value", "step"}`` (a run folder's ``metrics.jsonl`` or
        MLflow's histories)."""
        by_step: dict[int, dict[str, float]] = {}
        tps: list[float] = []
        mem: list[float] = []
        for r in rows:
            if r["key"] in SERIES_KEYS:
                by_step.setdefault(int(r["step"]), {})[r["key"]] = float(r["value"])
            elif r["key"] == "train/tokens_per_s":
                tps.append(float(r["value"]))
            elif r["key"] == "train/peak_mem_mb":
                mem.append(float(r["value"]))
        scored = ("val/bpb", "tune/bpb", "val/accuracy", "tune/accuracy")
        evals = [{"step": s, **v} for s, v in sorted(by_step.items()) if any(k in v for k in scored)]
        return cls(evals=evals, tokens_per_s=statistics.median(tps) if tps else None, peak_mem_mb=max(mem) if mem else None, **fields)


def _param(params: dict[str, Any], key: str) -> str | None:
    v = params.get(key)
    return None if v in (None, "None", "") else str(v)


def terms(r: RunData) -> tuple[str, str]:
    """What must be equal for two runs to be compared: (budget, validation text), in words."""
    p = r.params
    budget = next((f"{k}={_param(p, f'train.{k}')}" for k in ("tokens", "flops", "time_s", "steps") if _param(p, f"train.{k}")), "budget ?")
    on = _param(p, "train.eval_on") or "val"
    task = _param(p, "task.name")
    if task not in (None, "lm"):  # a generated task: its config (data seed included) fixes the test sequences
        fields = ", ".join(f"{k[5:]}={v}" for k, v in sorted(p.items()) if k.startswith("task.") and k != "task.name")
        return budget, f"task {task} ({fields}; seq_len {_param(p, 'train.seq_len')})" + ("" if on == "val" else f" ({on} split)")
    text = _param(p, "data.val") or "the embedded corpus"
    size = f"{int(float(_param(p, 'train.eval_bytes'))):,} bytes" if _param(p, "train.eval_bytes") else \
        f"{_param(p, 'train.eval_tokens') or '?'} {_param(p, 'tokenizer') or '?'} tokens"
    return budget, f"{size} of {text}" + ("" if on == "val" else f" ({on} slice)")


def comparable_groups(runs: list[RunData]) -> list[tuple[tuple[str, str], list[RunData]]]:
    """``runs`` split by :func:`terms`, in order of first appearance: only runs of one group may
    share a table or a plot."""
    groups: dict[tuple[str, str], list[RunData]] = {}
    for r in runs:
        groups.setdefault(terms(r), []).append(r)
    return list(groups.items())


def welch_p_less(a: list[float], b: list[float]) -> float | None:
    """One-sided Welch t-test p-value for mean(a) < mean(b); None with fewer than 2 values on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import t as student_t

    t, df = welch_t(a, b)
    if math.isnan(t):
        return None
    return float(student_t.cdf(t, df))


def welch_t(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t statistic of mean(a) - mean(b) and its Welch-Satterthwaite degrees of freedom."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    diff = statistics.fmean(a) - statistics.fmean(b)
    if se2 == 0:
        return (-math.inf if diff < 0 else math.inf if diff > 0 else math.nan), math.inf
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff / math.sqrt(se2), df


def diff_band(a: list[float], b: list[float], level: float = 0.95) -> float | None:
    """Half-width of the two-sided ``level`` Welch confidence interval of mean(a) - mean(b)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import t as student_t

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    _, df = welch_t(a, b)
    q = student_t.ppf(0.5 + level / 2, df) if math.isfinite(df) else 1.959963984540054
    return float(q * math.sqrt(va + vb))


def ci_half_width(values: list[float], level: float = 0.95) -> float | None:
    """Half-width of the two-sided Student-t confidence interval of the mean of ``values``."""
    if len(values) < 2:
        return None
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down): sorted ascending, the i-th smallest of m is
    multiplied by m - i (i from 0), made non-decreasing in that order and capped at 1. An entry is
    better than the baseline at family-wise level a when its adjusted p is at most a."""
    order = sorted(p_values, key=lambda k: p_values[k])
    m, out, running = len(order), {}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[k]))
        out[k] = running
    return out


@dataclass
class EntryStats:
    """One leaderboard row: an entry's runs over seeds, summarised."""

    label: str
    runs: list[RunData]
    model: str = "-"
    optimizer: str = "-"
    tokenizer: str = "-"
    n_params: float | None = None
    n_params_core: float | None = None  # without embedding tables and output head
    tuned: str = "-"
    values: list[float] = field(default_factory=list)  # the final score of each finished seed
    loss: list[float] = field(default_factory=list)
    score: Score = BPB
    state_size_bytes: float | None = None  # the model's state per sequence at inference, where it reports it
    p_value: float | None = None
    p_holm: float | None = None
    few_seeds: bool = False  # p from fewer than FEW_SEEDS seeds on a side
    baseline: bool = False

    @property
    def bpb(self) -> list[float]:
        """The scores under their language-modelling name (``values`` whatever the score)."""
        return self.values

    @property
    def ci(self) -> tuple[float, float] | None:
        """95% confidence interval of the mean score over seeds (2+ seeds)."""
        h = ci_half_width(self.values)
        return None if h is None else (statistics.fmean(self.values) - h, statistics.fmean(self.values) + h)

    @property
    def ok_runs(self) -> list[RunData]:
        return [r for r in self.runs if r.ok]

    @property
    def errors(self) -> list[str]:
        return [f"seed {r.seed}: {r.error or r.status.lower()}" for r in self.runs if not r.ok]

    def mean(self, values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    def std(self, values: list[float]) -> float | None:
        return statistics.stdev(values) if len(values) >= 2 else None

    def of_runs(self, get) -> float | None:
        vals = [v for v in (get(r) for r in self.ok_runs) if v is not None]
        return statistics.fmean(vals) if vals else None


def summarize(runs: list[RunData], order: list[str], baseline: str | None = None, score: Score = BPB) -> list[EntryStats]:
    """Group ``runs`` by entry (in ``order``), compute statistics of ``score`` (val bpb, or val
    accuracy for a task), and sort: the best mean first, entries without a finished run last.
    p-values (one-sided: "better than the baseline" in the score's direction) are against
    ``baseline`` (default: the first entry of ``order``)."""
    rows = {label: EntryStats(label, [], score=score) for label in order}
    for r in runs:
        rows.setdefault(r.entry, EntryStats(r.entry, [], score=score)).runs.append(r)
    for e in rows.values():
        e.runs.sort(key=lambda r: r.seed)
        ref = e.ok_runs[0] if e.ok_runs else (e.runs[0] if e.runs else None)
        if ref is not None:
            e.model = str(ref.params.get("model.name", "-"))
            e.optimizer = str(ref.params.get("optimizer.name", "-"))
            e.tokenizer = str(ref.params.get("tokenizer", "-"))
            e.n_params = _float(ref.params.get("n_params"))
            e.n_params_core = _float(ref.params.get("n_params_non_embedding"))
            e.tuned = ref.tags.get("blagpt.tuned", "-")
            e.state_size_bytes = _float(ref.params.get("state_size_bytes"))
        e.values = [r.final[f"val/{score.key}"] for r in e.ok_runs if f"val/{score.key}" in r.final]
        e.loss = [r.final["val/loss"] for r in e.ok_runs if "val/loss" in r.final]
    base = baseline or (order[0] if order else None)
    if base is not None and base not in rows:
        from ..errors import BlagptError

        raise BlagptError(f"--baseline {base!r}: no such entry; entries: {', '.join(rows)}")
    for e in rows.values():
        e.baseline = e.label == base
        if base is not None and not e.baseline:
            mine, ref_values = e.values, rows[base].values
            e.p_value = welch_p_less(ref_values, mine) if score.higher_is_better else welch_p_less(mine, ref_values)
            e.few_seeds = e.p_value is not None and min(len(mine), len(ref_values)) < FEW_SEEDS
    adjusted = holm({e.label: e.p_value for e in rows.values() if e.p_value is not None})
    for label, p in adjusted.items():
        rows[label].p_holm = p
    sign = -1.0 if score.higher_is_better else 1.0
    return sorted(rows.values(), key=lambda e: (not e.values, sign * e.mean(e.values) if e.values else 0.0))


# -- tables ------------------------------------------------------------------------------------

COLUMNS = (
    "entry", "model", "optimizer", "tokenizer", "tuned", "params", "params w/o emb.", "train FLOPs",
    "val loss (nats/token)", "val bpb", "95% CI", "p vs baseline", "p (Holm)", "tokens/s", "peak mem (MiB)",
    "wall (s)", "tokens", "seeds", "status",
)
# the terminal's table: what fits 100 columns (the files hold every column)
TERMINAL_COLUMNS = ("entry", "params w/o emb.", "val bpb", "95% CI", "p (Holm)", "tokens/s", "seeds", "status")
TERMINAL_HEADERS = {"params w/o emb.": "params"}


def columns(score: Score = BPB, names: tuple[str, ...] = COLUMNS) -> tuple[str, ...]:
    """``names`` as headers for ``score``: its name for the score column and the loss's unit."""
    return tuple(f"val {score.words}" if c == "val bpb" else f"val loss ({score.loss_unit})" if c == "val loss (nats/token)" else c
                 for c in names)


def _p(p: float | None, few: bool) -> str:
    return "-" if p is None else f"{p:.3g}" + ("*" if few else "")


def table_rows(entries: list[EntryStats]) -> list[list[str]]:
    """The leaderboard as strings, one list per entry, in :data:`COLUMNS` order."""
    out = []
    for e in entries:
        ok, n = len(e.ok_runs), len(e.runs)
        status = "ok" if ok == n and n else "; ".join(e.errors) or "not run"
        ci = e.ci
        out.append([
            e.label + (" (baseline)" if e.baseline else ""),
            e.model,
            e.optimizer,
            e.tokenizer,
            e.tuned,
            _si(e.n_params),
            _si(e.n_params_core),
            _sci(e.of_runs(lambda r: r.final.get("train/flops"))),
            _mean_std(e.mean(e.loss), e.std(e.loss)),
            _mean_std(e.mean(e.values), e.std(e.values)),
            "-" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]",
            _p(e.p_value, e.few_seeds),
            _p(e.p_holm, e.few_seeds),
            _fmt(e.of_runs(lambda r: r.tokens_per_s), "{:,.0f}"),
            _fmt(e.of_runs(lambda r: r.peak_mem_mb), "{:,.0f}"),
            _fmt(e.of_runs(lambda r: r.final.get("train/elapsed_s")), "{:,.1f}"),
            _si(e.of_runs(lambda r: r.final.get("train/tokens"))),
            f"{ok}/{n}",
            status,
        ])
    return out


def terminal_table(entries: list[EntryStats], width: int = 100) -> str:
    """The leaderboard's main columns, each line at most ``width`` characters: long entry labels
    and statuses are shortened (leaderboard.md and .csv keep them whole)."""
    idx = [COLUMNS.index(c) for c in TERMINAL_COLUMNS]
    rows = [[r[i] for i in idx] for r in table_rows(entries)]
    header = [TERMINAL_HEADERS.get(c, c) for c in columns(_score_of(entries), TERMINAL_COLUMNS)]
    def natural(i: int) -> int:
        return max(len(r[i]) for r in [header, *rows])

    fixed = sum(natural(i) + 2 for i in range(1, len(header) - 1))
    entry_w, status_w = natural(0), natural(len(header) - 1)
    status_w = max(6, min(status_w, width - fixed - entry_w - 2))  # the status gives way first
    entry_w = max(12, min(entry_w, width - fixed - status_w - 2))
    for r in rows:
        r[0], r[-1] = _shorten(r[0], entry_w), _shorten(r[-1], status_w)
    lines = text_table(header, rows).splitlines()
    lines.append("params: without embeddings" + ("; * p from fewer than 3 seeds on a side" if any(e.few_seeds for e in entries) else ""))
    return "\n".join(ln[:width] for ln in lines)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def text_table(header: Iterable[str], rows: list[list[str]]) -> str:
    rows = [list(header), *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def markdown_table(header: Iterable[str], rows: list[list[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _score_of(entries: list[EntryStats]) -> Score:
    return entries[0].score if entries else BPB


def csv_table(entries: list[EntryStats]) -> str:
    """Machine-readable leaderboard: full-precision numbers, one row per entry."""
    buf = io.StringIO()
    w = csv.writer(buf)
    k = _score_of(entries).key
    w.writerow([
        "entry", "model", "optimizer", "tokenizer", "tuned", "params", "params_non_embedding", "train_flops",
        "val_loss_mean", "val_loss_std", f"val_{k}_mean", f"val_{k}_std", f"val_{k}_ci95_lo", f"val_{k}_ci95_hi",
        "p_value", "p_holm", "p_few_seeds", "tokens_per_s", "peak_mem_mb", "wall_s", "tokens", "seeds_ok", "seeds", "errors",
        "state_size_bytes",
    ])
    for e in entries:
        ci = e.ci or (None, None)
        w.writerow([
            e.label, e.model, e.optimizer, e.tokenizer, "" if e.tuned == "-" else e.tuned, _num(e.n_params),
            _num(e.n_params_core), _num(e.of_runs(lambda r: r.final.get("train/flops"))), _num(e.mean(e.loss)),
            _num(e.std(e.loss)), _num(e.mean(e.values)), _num(e.std(e.values)), _num(ci[0]), _num(ci[1]), _num(e.p_value),
            _num(e.p_holm), int(e.few_seeds) if e.p_value is not None else "", _num(e.of_runs(lambda r: r.tokens_per_s)),
            _num(e.of_runs(lambda r: r.peak_mem_mb)), _num(e.of_runs(lambda r: r.final.get("train/elapsed_s"))),
            _num(e.of_runs(lambda r: r.final.get("train/tokens"))), len(e.ok_runs), len(e.runs), "; ".join(e.errors),
            _num(e.state_size_bytes),
        ])
    return buf.getvalue()


def write_leaderboard(entries: list[EntryStats], out_dir: Path, title: str, note: str = "", budget: str = "") -> dict[str, Path]:
    """``leaderboard.md``, ``leaderboard.csv`` and the plots in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(entries)
    paths = {"md": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv"}
    paths["md"].write_text(f"# {title}\n\n{note}\n\n" + markdown_table(columns(_score_of(entries)), rows))
    paths["csv"].write_text(csv_table(entries))
    paths.update(plot_curves(entries, out_dir, budget))
    return paths


# -- plots -------------------------------------------------------------------------------------

DPI = 150


def mean_curve(runs: list[RunData], x_key: str, y_key: str = "val/bpb") -> tuple[list[float], list[float], list[float]]:
    """x, mean ``y_key`` and its standard deviation over ``runs`` at each evaluation.

    Evaluations are aligned by index, the last point being every run's final evaluation (under a
    step or token budget all seeds evaluate at the same steps; under a time budget the step counts
    differ and the final points still line up)."""
    series = [[p for p in r.evals if y_key in p] for r in runs]
    series = [s for s in series if s]
    if not series:
        return [], [], []
    n = min(len(s) for s in series)
    xs, ys, sds = [], [], []
    for i in range(n):
        pts = [s[i] if i < n - 1 else s[-1] for s in series]
        vals = [p[y_key] for p in pts]
        xs.append(statistics.fmean(p.get(x_key, math.nan) for p in pts))
        ys.append(statistics.fmean(vals))
        sds.append(statistics.stdev(vals) if len(vals) >= 2 else 0.0)
    return xs, ys, sds


def new_figure(width: float = 8.5, height: float = 4.5):
    """A figure for the leaderboards' plots (non-interactive backend, :data:`DPI`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=DPI)
    return plt, fig, ax


def legend_outside(ax) -> None:
    """The legend to the right of the axes, never over the curves."""
    if ax.lines or ax.collections:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def save_figure(plt, fig, ax, path: Path) -> Path:
    """Grid, the legend outside (:func:`legend_outside`), tight layout; written to ``path`` and closed."""
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(entries: list[EntryStats], out_dir: Path, budget: str = "") -> dict[str, Path]:
    """Val bpb (or a task's val accuracy) against training tokens, FLOPs (when the models report
    them) and wall time: one line per entry (mean over seeds) with a band of one standard
    deviation; token and FLOP axes are logarithmic. Files ``<score>_vs_<axis>.png``."""
    out = {}
    score = _score_of(entries)
    what = "val bits per byte" if score is BPB else f"val {score.words}"
    axes = [("tokens", "train/tokens", "training tokens", True), ("time", "train/elapsed_s", "training wall time (s)", False)]
    if any(r.final.get("train/flops") for e in entries for r in e.ok_runs):
        axes.insert(1, ("flops", "train/flops", "training FLOPs", True))
    for key, x_key, xlabel, log_x in axes:
        plt, fig, ax = new_figure()
        for e in entries:
            xs, ys, sds = mean_curve(e.ok_runs, x_key, f"val/{score.key}")
            keep = [i for i, x in enumerate(xs) if math.isfinite(x) and (x > 0 or not log_x)]
            if not keep:
                continue
            xs, ys, sds = [xs[i] for i in keep], [ys[i] for i in keep], [sds[i] for i in keep]
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=f"{e.label} (n={len(e.ok_runs)})")
            if len(e.ok_runs) >= 2:
                ax.fill_between(xs, [y - s for y, s in zip(ys, sds)], [y + s for y, s in zip(ys, sds)], color=line.get_color(), alpha=0.2)
        if log_x and ax.lines:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel + (" (log scale)" if log_x else ""))
        ax.set_ylabel(what)
        ax.set_title(f"val {score.words} against {xlabel}" + (f", budget {budget}" if budget else "") + " (mean ± 1 sd over seeds)", fontsize=9)
        out[f"png_{key}"] = save_figure(plt, fig, ax, out_dir / f"{score.key}_vs_{key}.png")
    return out


# -- formatting --------------------------------------------------------------------------------


def _float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else spec.format(v)


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _mean_std(m: float | None, s: float | None) -> str:
    if m is None:
        return "-"
    return f"{m:.4f}" + (f" ± {s:.4f}" if s is not None else "")


def _sci(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _si(v: float | None) -> str:
    if v is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{suffix}"
    return f"{v:.0f}"
