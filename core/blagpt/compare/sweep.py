"""``blagpt bench --sweep FIELD=V1,V2,...``: every entry at every value of one config field.

Each (entry, value) is a cell: an entry of its own (labelled ``<entry> <field>=<value>``, the value
one of its ``--set`` items, so it is part of each run's config and name), trained at every seed
and summarised like any entry. The sweep's own record is ``sweep.md`` (the score of each entry at
each value: mean and 95% CI over seeds) and two plots: the score against the swept value, one line
per entry, and against the model's state size per sequence (``state_size_bytes``, bytes a model
carries at inference; only models that report it), the axis on which Zoology (Arora et al. 2023,
arXiv 2312.04927) compares recall across architectures.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError
from .leaderboard import EntryStats, Score, ci_half_width, legend_outside, markdown_table, new_figure
from .plan import Entry
from .tune import BUDGET_FIELDS, as_number


@dataclass(frozen=True)
class Sweep:
    field: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, item: str) -> "Sweep":
        name, sep, values = item.partition("=")
        name = name.strip()
        vals = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z0-9_]+)+", name) or not vals:
            raise ConfigError(f"--sweep {item!r}: expected FIELD=V1,V2,... such as task.n_pairs=4,8,16,32")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--sweep {item!r}: a value is listed twice")
        if name.startswith(("train.seed", "train.eval_", "data.", "tracking.")) or name in (*BUDGET_FIELDS, "task.name", "model.name"):
            raise ConfigError(f"--sweep {name}: not a field to sweep (seeds, data, evaluation, budget and the task are the bench's)")
        return cls(name, vals)

    @property
    def short(self) -> str:
        return self.field.rsplit(".", 1)[-1]

    def cells(self, entries: list[Entry]) -> tuple[list[Entry], dict[str, tuple[str, str]]]:
        """Entries x values, entry-major; and each cell's (entry label, value) by its label."""
        out, where = [], {}
        for e in entries:
            for v in self.values:
                cell = replace(e, label=f"{e.label} {self.short}={v}", sets=(*e.sets, f"{self.field}={v}"))
                out.append(cell)
                where[cell.label] = (e.label, v)
        return out, where


def _by_entry(stats: list[EntryStats], where: dict[str, tuple[str, str]]) -> dict[str, dict[str, EntryStats]]:
    out: dict[str, dict[str, EntryStats]] = {}
    for s in stats:
        if s.label in where:
            entry, value = where[s.label]
            out.setdefault(entry, {})[value] = s
    return out


def sweep_rows(stats: list[EntryStats], sweep: Sweep, where: dict[str, tuple[str, str]], order: list[str]) -> tuple[list[str], list[list[str]]]:
    """One row per entry: its mean score (± 95% CI half-width, 2+ seeds) at each swept value, and
    its state size per sequence at each value where the model reports it."""
    grid = _by_entry(stats, where)
    header = ["entry", *(f"{sweep.short}={v}" for v in sweep.values), "state (bytes/seq)"]
    rows = []
    for label in order:
        cells, states = [label], []
        for v in sweep.values:
            s = grid.get(label, {}).get(v)
            if s is None or not s.values:
                cells.append("failed" if s is not None and s.runs else "-")
            else:
                h = ci_half_width(s.values)
                cells.append(f"{statistics.fmean(s.values):.4f}" + (f" ± {h:.4f}" if h is not None else ""))
            if s is not None and s.state_size_bytes is not None:
                states.append(f"{s.state_size_bytes:,.0f}")
        cells.append(" / ".join(dict.fromkeys(states)) or "not reported")
        rows.append(cells)
    return header, rows


def write_sweep(stats: list[EntryStats], sweep: Sweep, where: dict[str, tuple[str, str]], order: list[str], out_dir: Path,
                title: str, score: Score) -> dict[str, Path]:
    """``sweep.md`` and the plots ``sweep_<field>.png`` and (when a model reports its state)
    ``sweep_state.png``."""
    header, rows = sweep_rows(stats, sweep, where, order)
    note = (f"val {score.words} of each entry at each value of {sweep.field}: mean over seeds ± the 95% Student-t "
            "half-width (2+ seeds). state: the model's state_size_bytes(train.seq_len), bytes of state per sequence at inference "
            "(a KV cache grows with the sequence; a recurrent state does not).")
    out = {"sweep_md": out_dir / "sweep.md"}
    out["sweep_md"].write_text(f"# {title}\n\n{note}\n\n" + markdown_table(header, rows))
    out["png_sweep"] = plot_against_value(stats, sweep, where, order, out_dir, score)
    state = plot_against_state(stats, sweep, where, order, out_dir, score)
    if state is not None:
        out["png_sweep_state"] = state
    return out


def _points(cells: dict[str, EntryStats], values: tuple[str, ...], x_of) -> tuple[list[float], list[float], list[float]]:
    xs, ys, hs = [], [], []
    for v in values:
        s = cells.get(v)
        x = x_of(v, s)
        if s is None or not s.values or x is None:
            continue
        xs.append(x)
        ys.append(statistics.fmean(s.values))
        hs.append(ci_half_width(s.values) or 0.0)
    return xs, ys, hs


def plot_against_value(stats, sweep: Sweep, where, order, out_dir: Path, score: Score) -> Path:
    """The score against the swept value, one line per entry, error bars the 95% CI; a log-2 axis
    for positive numbers spanning 4x or more."""
    nums = [as_number(v) for v in sweep.values]
    numeric = all(n is not None for n in nums)
    pos = {v: (nums[i] if numeric else float(i)) for i, v in enumerate(sweep.values)}
    grid = _by_entry(stats, where)
    plt, fig, ax = new_figure()
    for label in order:
        xs, ys, hs = _points(grid.get(label, {}), sweep.values, lambda v, s: pos[v])
        if xs:
            n = max((len(s.values) for s in grid.get(label, {}).values()), default=0)
            ax.errorbar(xs, ys, yerr=hs, marker="o", markersize=4, capsize=3, label=f"{label} (n={n})")
    if numeric and min(nums) > 0 and max(nums) / min(nums) >= 4:
        ax.set_xscale("log", base=2)
        ax.set_xticks(nums, sweep.values)
    elif not numeric:
        ax.set_xticks(list(pos.values()), sweep.values)
    _finish(ax, sweep.field, score, f"val {score.words} against {sweep.field} (mean and 95% CI over seeds)")
    fig.tight_layout()
    path = out_dir / f"sweep_{re.sub(r'[^A-Za-z0-9_.-]', '_', sweep.field)}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_against_state(stats, sweep: Sweep, where, order, out_dir: Path, score: Score) -> Path | None:
    """The score against each model's state size per sequence (log axis), one line per entry
    through its swept values, each point labelled by its value; ``None`` when no model reports
    its state."""
    grid = _by_entry(stats, where)
    if not any(s.state_size_bytes for cells in grid.values() for s in cells.values()):
        return None
    plt, fig, ax = new_figure()
    for label in order:
        cells = grid.get(label, {})
        xs, ys, hs = _points(cells, sweep.values, lambda v, s: s.state_size_bytes if s is not None and s.state_size_bytes else None)
        if not xs:
            continue
        ax.errorbar(xs, ys, yerr=hs, marker="o", markersize=4, capsize=3, label=label)
        shown = [v for v in sweep.values if cells.get(v) is not None and cells[v].values and cells[v].state_size_bytes]
        for x, y, v in zip(xs, ys, shown):
            ax.annotate(v, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6)
    ax.set_xscale("log")
    _finish(ax, "state per sequence at inference (bytes, log scale)", score,
            f"val {score.words} against state size; points labelled by {sweep.field}")
    fig.tight_layout()
    path = out_dir / "sweep_state.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _finish(ax, xlabel: str, score: Score, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"val {score.words}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
