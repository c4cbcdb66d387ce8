"""``blagpt bench --tune``: every entry tuned the same way before it is compared.

Hyperparameters tuned for one entry are unfair to another (Wen et al. 2025, "Fantastic pretraining
optimizers and where to find them", arXiv 2509.02046), so a bench with ``--tune FIELD=v1,v2,...``
gives every entry the same grid (the product of the ``--tune`` fields) and the same trials: one
run per grid point, at the bench's first seed, scored on the *tuning slice* (``train.eval_on=tune``:
held-out text at the end of the validation split that never overlaps the reported validation
slice). Each entry's best point (lowest tuning bpb) is then trained at every seed and scored on the
validation slice as usual, so the reported numbers were never used to choose. Under a generated
task (``task.name``) the trials score accuracy on the task's tuning sequences (generated from
another seed than its test sequences) and the best is the highest: the choice follows the
leaderboard's :class:`~.leaderboard.Score`.

A chosen value at the edge of its field's grid is flagged: the optimum may lie outside it.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .leaderboard import BPB, RunData, Score, markdown_table, new_figure, save_figure

Point = tuple[tuple[str, str], ...]  # ((field, value as given), ...)


@dataclass(frozen=True)
class Grid:
    """The tuning grid: fields and their values, in the order given."""

    fields: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def parse(cls, items: list[str] | tuple[str, ...]) -> "Grid":
        """``--tune optimizer.lr=1e-3,3e-3,1e-2`` (repeatable) -> a grid."""
        fields: dict[str, tuple[str, ...]] = {}
        for item in items:
            name, sep, values = item.partition("=")
            name = name.strip()
            vals = tuple(v.strip() for v in values.split(",") if v.strip())
            if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z0-9_]+)+", name) or not vals:
                raise ConfigError(f"--tune {item!r}: expected FIELD=V1,V2,... such as optimizer.lr=1e-3,3e-3,1e-2")
            if name in fields:
                raise ConfigError(f"--tune {name}: given twice; list all its values in one --tune")
            if len(set(vals)) != len(vals):
                raise ConfigError(f"--tune {item!r}: a value is listed twice")
            if name.startswith(("train.seed", "train.eval_", "data.", "tracking.", "task.")) or name in BUDGET_FIELDS:
                raise ConfigError(f"--tune {name}: not a tunable field (seeds, data, the task, evaluation and budget are the bench's, the same for every entry)")
            fields[name] = vals
        return cls(tuple(fields.items()))

    def points(self) -> list[Point]:
        names = [f for f, _ in self.fields]
        return [tuple(zip(names, combo)) for combo in itertools.product(*(v for _, v in self.fields))]

    def __bool__(self) -> bool:
        return bool(self.fields)


BUDGET_FIELDS = ("train.steps", "train.tokens", "train.flops", "train.time_s")


def point_sets(point: Point) -> tuple[str, ...]:
    return tuple(f"{k}={v}" for k, v in point)


def point_label(point: Point) -> str:
    return " ".join(f"{k}={v}" for k, v in point)


def as_number(v: str) -> float | None:
    """A grid value as a finite number, or None when it is not one (a name, a flag)."""
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


@dataclass
class Choice:
    """One entry's tuning: each point's tuning bpb (None: the trial failed) and the best point."""

    label: str
    scores: dict[Point, float | None] = field(default_factory=dict)
    best: Point | None = None
    edge: list[str] = field(default_factory=list)  # fields whose chosen value is at the grid's edge
    error: str | None = None

    @property
    def best_score(self) -> float | None:
        return self.scores.get(self.best) if self.best is not None else None


def choose(label: str, grid: Grid, trials: dict[Point, RunData], score: Score = BPB) -> Choice:
    """The point with the best final tuning ``score`` (the lowest bpb, the highest accuracy) among
    the trials that finished (ties: the first in grid order). Reads only ``tune/*`` figures: a
    trial has no validation-slice scores."""
    c = Choice(label)
    for point in grid.points():
        r = trials.get(point)
        value = r.score("tune", score.key) if r is not None and r.ok else None
        c.scores[point] = value if value is not None and math.isfinite(value) else None
    sign = -1.0 if score.higher_is_better else 1.0
    done = [(sign * s, i, p) for i, (p, s) in enumerate(c.scores.items()) if s is not None]
    if not done:
        c.error = "tuning: no trial finished"
        return c
    _, _, c.best = min(done)
    values = dict(grid.fields)
    for name, chosen in c.best:
        nums = [as_number(v) for v in values[name]]
        if len(values[name]) >= 2 and all(n is not None for n in nums):
            x = as_number(chosen)
            if x in (min(nums), max(nums)):
                c.edge.append(name)
    return c


def tuned_tag(choice: Choice) -> str:
    """The ``blagpt.tuned`` tag (and the leaderboard's "tuned" cell) of an entry's final runs."""
    text = point_label(choice.best)
    return text + (f" (edge: {', '.join(choice.edge)})" if choice.edge else "")


# -- the record --------------------------------------------------------------------------------


def tuning_rows(grid: Grid, choices: list[Choice]) -> tuple[list[str], list[list[str]]]:
    """One row per entry: the tuning bpb at every grid point, the chosen point marked ``*``."""
    points = grid.points()
    header = ["entry", *(point_label(p) for p in points), "chosen"]
    rows = []
    for c in choices:
        cells = [c.label]
        for p in points:
            s = c.scores.get(p)
            cells.append("failed" if s is None else f"{s:.4f}" + ("*" if p == c.best else ""))
        cells.append(c.error or tuned_tag(c))
        rows.append(cells)
    return header, rows


def write_tuning(grid: Grid, choices: list[Choice], out_dir: Path, title: str, score: Score = BPB) -> dict[str, Path]:
    """``tuning.md`` (the grid's scores per entry) and one plot per tuned field."""
    header, rows = tuning_rows(grid, choices)
    out = {"tuning_md": out_dir / "tuning.md"}
    if score is BPB:
        note = ("Tuning bpb: final bits per byte on the tuning slice (held-out text at the end of the validation split, "
                "disjoint from the reported validation slice), one trial per point at the first seed; * the chosen point. ")
    else:
        note = (f"Tuning {score.words}: final {score.words} at the answer positions of the task's tuning sequences (generated "
                "from another seed than the reported test sequences), one trial per point at the first seed; * the chosen point "
                "(the highest). ")
    note += "A chosen value at the edge of its grid is flagged: a better one may lie outside."
    out["tuning_md"].write_text(f"# {title}\n\n{note}\n\n" + markdown_table(header, rows))
    for name, values in grid.fields:
        out[f"png_tune_{name}"] = plot_field(name, values, choices, out_dir, score)
    return out


def plot_field(name: str, values: tuple[str, ...], choices: list[Choice], out_dir: Path, score: Score = BPB) -> Path:
    """Tuning score against ``name``'s value per entry (the best over the other tuned fields at
    each value); the chosen point starred. A log axis for positive numbers spanning 10x or more."""
    nums = [as_number(v) for v in values]
    numeric = all(n is not None for n in nums)
    xs = nums if numeric else list(range(len(values)))
    plt, fig, ax = new_figure()
    for c in choices:
        ys = []
        for v in values:
            got = [s for p, s in c.scores.items() if dict(p)[name] == v and s is not None]
            ys.append((max(got) if score.higher_is_better else min(got)) if got else math.nan)
        if all(math.isnan(y) for y in ys):
            continue
        edge = " (edge)" if name in c.edge else ""
        (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=c.label + edge)
        if c.best is not None:
            i = values.index(dict(c.best)[name])
            ax.plot([xs[i]], [ys[i]], marker="*", markersize=12, color=line.get_color(), linestyle="none")
    if numeric and min(nums) > 0 and max(nums) / min(nums) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, values)
    ax.set_xlabel(name)
    ax.set_ylabel("tuning bits per byte" if score is BPB else f"tuning {score.words}")
    ax.set_title(f"tuning {score.words} against {name} (star: chosen; best over the other tuned fields)", fontsize=9)
    return save_figure(plt, fig, ax, out_dir / f"tune_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png")


def choices_params(choices: list[Choice]) -> dict[str, Any]:
    """The chosen point of each entry as parent-run params."""
    return {f"tuned/{c.label}": (c.error or tuned_tag(c)) for c in choices}
