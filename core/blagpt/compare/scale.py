"""``blagpt scale``: models compared by their compute-optimal frontier over several sizes and budgets.

One point of one model is a misleading comparison: rankings change with scale, and most of a
famous disagreement between scaling studies came from how each point was trained (Porian et al.
2024, arXiv 2406.19146). Mamba, MAD (arXiv 2403.17844) and nanochat compare architectures by
iso-FLOP curves instead. ``blagpt scale`` trains every model x size x budget (x seed) from one base
config (a bench plan: the same data, validation text and resume rules), then per model:

- the compute-optimal frontier: at each budget, the size with the lowest mean val bpb;
- a fit of L(C) = E + A * C^-alpha to the frontier (C: training FLOPs, the model's FLOPs per token
  x training tokens), by least squares in scipy (three or more budgets);
- 95% bootstrap confidence intervals of E and alpha: seeds resampled with replacement in every
  (size, budget) cell, the frontier and the fit redone per replicate (two or more seeds);
- where two models' fitted frontiers cross inside the budgets' range, the FLOPs of the crossing.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .leaderboard import RunData, markdown_table, new_figure, save_figure, text_table
from .plan import Entry, parse_budget

BOOTSTRAP = 1000


@dataclass(frozen=True)
class Size:
    label: str
    preset: str | None = None  # a preset name, composed with the model's own preset
    sets: tuple[str, ...] = ()


def parse_sizes(presets: str | None, overrides: tuple[str, ...]) -> list[Size]:
    """``--sizes tiny,mini`` (presets) and ``--size LABEL='FIELD=V;FIELD=V'`` (repeatable)."""
    sizes = [Size(p.strip(), preset=p.strip()) for p in (presets or "").split(",") if p.strip()]
    for item in overrides:
        label, sep, sets = item.partition("=")
        parts = tuple(s.strip() for s in sets.split(";") if s.strip())
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", label.strip()) or not parts or any("=" not in p for p in parts):
            raise ConfigError(f"--size {item!r}: expected LABEL='FIELD=VALUE[;FIELD=VALUE]', e.g. small='model.n_layers=2;model.d_model=64'")
        sizes.append(Size(label.strip(), sets=parts))
    labels = [s.label for s in sizes]
    if len(sizes) < 1:
        raise ConfigError("--sizes: expected presets like tiny,mini,small, or --size LABEL='FIELD=VALUE;...'")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--sizes: a size is listed twice ({', '.join(labels)})")
    return sizes


def parse_budgets(text: str) -> list[tuple[str, str]]:
    """``flops=1e13,3e13,1e14`` -> (``flops=1e13``, its ``train.flops=...`` set) per budget, one kind for all."""
    kind, sep, values = text.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not vals:
        raise ConfigError(f"--budget {text!r}: expected KIND=V1,V2,... such as flops=1e13,3e13,1e14")
    out = [(f"{kind.strip()}={v}", parse_budget(f"{kind}={v}")) for v in vals]
    if len({item for _, item in out}) != len(out):
        raise ConfigError(f"--budget {text!r}: a budget is listed twice")
    return out


@dataclass(frozen=True)
class Cell:
    """One model at one size and one budget: an entry of the underlying bench plan."""

    model: str  # the model as given, NAME or NAME@PRESET
    size: str
    budget: str  # as given, e.g. flops=1e13
    budget_set: str  # the train.<budget>=value set

    @property
    def label(self) -> str:
        return f"{self.model} {self.size} {self.budget}"


def cells(models: list[Entry], sizes: list[Size], budgets: list[tuple[str, str]]) -> tuple[list[Entry], dict[str, Cell]]:
    """Every model x size x budget as bench entries (labelled ``model size budget``)."""
    entries, where = [], {}
    for m in models:
        base_preset = next((s.split("=", 1)[1] for s in m.sets if s.startswith("model.preset=")), None)
        others = tuple(s for s in m.sets if not s.startswith("model.preset="))
        for size in sizes:
            preset = "+".join(p for p in (base_preset, size.preset) if p)
            sets = ((f"model.preset={preset}",) if preset else ()) + others + size.sets
            for text, item in budgets:
                cell = Cell(m.label, size.label, text, item)
                entries.append(Entry(cell.label, m.model, m.optimizer, (*sets, item)))
                where[cell.label] = cell
    return entries, where


# -- the fit -----------------------------------------------------------------------------------


@dataclass
class Fit:
    """L(C) = E + A * C^-alpha."""

    E: float
    A: float
    alpha: float

    def __call__(self, c: float) -> float:
        return self.E + self.A * c ** (-self.alpha)


def fit_power_law(cs: list[float], losses: list[float]) -> Fit | None:
    """Least-squares fit of L(C) = E + A C^-alpha (E >= 0, A >= 0, 0 < alpha <= 3) to three or
    more points; None when it does not converge. C is scaled by its smallest value for the
    optimiser's sake; A is reported in the original units."""
    if len(cs) < 3:
        return None
    import numpy as np
    from scipy.optimize import curve_fit

    c0 = min(cs)
    x = np.asarray(cs, dtype=float) / c0
    y = np.asarray(losses, dtype=float)

    def model(x, e, a, alpha):
        return e + a * x ** (-alpha)

    import warnings

    from scipy.optimize import OptimizeWarning

    best = None
    for alpha0 in (0.1, 0.3, 1.0):
        p0 = (max(0.0, float(y.min()) * 0.9), max(1e-9, float(y.max() - y.min() * 0.9)), alpha0)
        try:
            with warnings.catch_warnings():  # an exactly determined fit has no covariance: not needed here
                warnings.simplefilter("ignore", OptimizeWarning)
                p, _ = curve_fit(model, x, y, p0=p0, bounds=([0.0, 0.0, 1e-4], [np.inf, np.inf, 3.0]), maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        err = float(((model(x, *p) - y) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, p)
    if best is None:
        return None
    e, a, alpha = (float(v) for v in best[1])
    return Fit(e, a * c0**alpha, alpha)


def crossings(f: Fit, g: Fit, lo: float, hi: float, n: int = 400) -> list[float]:
    """The FLOPs in [lo, hi] where the fitted frontiers ``f`` and ``g`` cross."""
    from scipy.optimize import brentq

    if not (0 < lo < hi):
        return []
    grid = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (n - 1)) for i in range(n)]
    d = [f(c) - g(c) for c in grid]
    out = []
    for i in range(n - 1):
        if d[i] == 0:
            out.append(grid[i])
        elif d[i] * d[i + 1] < 0:
            out.append(math.exp(brentq(lambda lc: f(math.exp(lc)) - g(math.exp(lc)), math.log(grid[i]), math.log(grid[i + 1]))))
    return out


# -- the frontier ------------------------------------------------------------------------------


@dataclass
class CellRuns:
    cell: Cell
    runs: list[RunData]

    @property
    def bpb(self) -> list[float]:
        return [r.final["val/bpb"] for r in self.runs if r.ok and "val/bpb" in r.final]

    @property
    def flops(self) -> float | None:
        vals = [r.final.get("train/flops") for r in self.runs if r.ok and r.final.get("train/flops")]
        return statistics.fmean(vals) if vals else None

    @property
    def params(self) -> float | None:
        for r in self.runs:
            v = r.params.get("n_params_non_embedding")
            if v not in (None, "None"):
                return float(v)
        return None


@dataclass
class ModelScale:
    """One model's cells, frontier, fit and bootstrap intervals."""

    model: str
    cells: list[CellRuns]
    frontier: list[CellRuns] = field(default_factory=list)
    fit: Fit | None = None
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    note: str = ""

    def range(self) -> tuple[float, float] | None:
        cs = [c.flops for c in self.frontier if c.flops]
        return (min(cs), max(cs)) if cs else None


def frontier(cells_: list[CellRuns], means=None) -> list[CellRuns]:
    """Per budget, the cell (size) with the lowest mean val bpb (``means``: a cell's mean, by
    default over its seeds); budgets in FLOPs order."""
    means = means or (lambda c: statistics.fmean(c.bpb) if c.bpb else None)
    best: dict[str, tuple[float, CellRuns]] = {}
    for c in cells_:
        m = means(c)
        if m is None or c.flops is None:
            continue
        if c.cell.budget not in best or m < best[c.cell.budget][0]:
            best[c.cell.budget] = (m, c)
    return sorted((c for _, c in best.values()), key=lambda c: c.flops)


def analyse(model: str, cells_: list[CellRuns], seed: int = 0) -> ModelScale:
    ms = ModelScale(model, cells_)
    ms.frontier = frontier(cells_)
    pts = [(c.flops, statistics.fmean(c.bpb)) for c in ms.frontier]
    if len(pts) < 3:
        ms.note = f"{len(pts)} frontier point(s): the fit needs 3+ budgets with a finished run"
        return ms
    ms.fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
    if ms.fit is None:
        ms.note = "the fit did not converge"
        return ms
    if min(len(c.bpb) for c in cells_ if c.bpb) < 2:
        ms.note = "1 seed: no bootstrap interval (needs 2+ seeds)"
        return ms
    rng = random.Random(seed)
    reps: dict[str, list[float]] = {"E": [], "alpha": []}
    for _ in range(BOOTSTRAP):
        sample = {id(c): statistics.fmean(rng.choices(c.bpb, k=len(c.bpb))) for c in cells_ if c.bpb}
        fr = frontier(cells_, lambda c: sample.get(id(c)))
        f = fit_power_law([c.flops for c in fr], [sample[id(c)] for c in fr])
        if f is not None:
            reps["E"].append(f.E)
            reps["alpha"].append(f.alpha)
    if len(reps["E"]) >= 20:
        ms.ci = {k: (_quantile(v, 0.025), _quantile(v, 0.975)) for k, v in reps.items()}
        ms.note = f"{len(reps['E'])} of {BOOTSTRAP} bootstrap fits converged"
    else:
        ms.note = f"only {len(reps['E'])} of {BOOTSTRAP} bootstrap fits converged: no interval"
    return ms


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def analyse_all(data: list[RunData], where: dict[str, Cell], models: list[str]) -> list[ModelScale]:
    by_cell: dict[str, list[RunData]] = {}
    for r in data:
        by_cell.setdefault(r.entry, []).append(r)
    out = []
    for m in models:
        mine = [CellRuns(cell, by_cell.get(label, [])) for label, cell in where.items() if cell.model == m]
        out.append(analyse(m, mine))
    return out


def all_crossings(scales: list[ModelScale]) -> list[tuple[str, str, list[float], tuple[float, float]]]:
    out = []
    for i, a in enumerate(scales):
        for b in scales[i + 1 :]:
            if a.fit is None or b.fit is None or a.range() is None or b.range() is None:
                continue
            lo, hi = max(a.range()[0], b.range()[0]), min(a.range()[1], b.range()[1])
            out.append((a.model, b.model, crossings(a.fit, b.fit, lo, hi) if lo < hi else [], (lo, hi)))
    return out


# -- the record --------------------------------------------------------------------------------

CELL_COLUMNS = ("model", "size", "budget", "params w/o emb.", "train FLOPs", "val bpb", "seeds", "frontier")
FIT_COLUMNS = ("model", "E", "E 95% CI", "A", "alpha", "alpha 95% CI", "frontier points", "note")


def cell_rows(scales: list[ModelScale]) -> list[list[str]]:
    rows = []
    for ms in scales:
        front = {id(c) for c in ms.frontier}
        for c in ms.cells:
            b = c.bpb
            bpb = "-" if not b else f"{statistics.fmean(b):.4f}" + (f" ± {statistics.stdev(b):.4f}" if len(b) >= 2 else "")
            ok = len(b)
            rows.append([ms.model, c.cell.size, c.cell.budget, _g(c.params), _g(c.flops), bpb,
                         f"{ok}/{len(c.runs)}", "*" if id(c) in front else ""])
    return rows


def fit_rows(scales: list[ModelScale]) -> list[list[str]]:
    rows = []
    for ms in scales:
        f, ci = ms.fit, ms.ci
        rows.append([
            ms.model, "-" if f is None else f"{f.E:.4f}", _interval(ci.get("E")), "-" if f is None else f"{f.A:.4g}",
            "-" if f is None else f"{f.alpha:.4f}", _interval(ci.get("alpha")), str(len(ms.frontier)), ms.note,
        ])
    return rows


def crossing_lines(scales: list[ModelScale]) -> list[str]:
    lines = []
    for a, b, cs, (lo, hi) in all_crossings(scales):
        if cs:
            lines.append(f"{a} and {b}: fitted frontiers cross at {', '.join(f'{c:.3g}' for c in cs)} FLOPs")
        else:
            lines.append(f"{a} and {b}: fitted frontiers do not cross between {lo:.3g} and {hi:.3g} FLOPs")
    return lines


def write_scale(scales: list[ModelScale], out_dir: Path, title: str, budgets: str) -> dict[str, Path]:
    """``scale.md``, ``scale.json`` and ``scale.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"scale_md": out_dir / "scale.md", "scale_json": out_dir / "scale.json"}
    note = ("val bpb: mean ± sd over seeds of the final evaluation; frontier (*): the size with the lowest mean val bpb at "
            "each budget. Fit: L(C) = E + A C^-alpha by least squares to the frontier (C: training FLOPs); 95% CI: "
            f"bootstrap over seeds ({BOOTSTRAP} replicates, frontier and fit redone per replicate).")
    md = f"# {title}\n\n{note}\n\n## Fits\n\n" + markdown_table(FIT_COLUMNS, fit_rows(scales))
    md += "\n" + "\n".join(f"- {ln}" for ln in crossing_lines(scales)) + "\n\n## Runs\n\n" + markdown_table(CELL_COLUMNS, cell_rows(scales))
    paths["scale_md"].write_text(md)
    record = [{"model": ms.model, "fit": None if ms.fit is None else vars(ms.fit), "ci95": ms.ci, "note": ms.note,
               "frontier": [{"size": c.cell.size, "budget": c.cell.budget, "flops": c.flops, "val_bpb": c.bpb} for c in ms.frontier],
               "cells": [{"size": c.cell.size, "budget": c.cell.budget, "flops": c.flops, "params_non_embedding": c.params,
                          "val_bpb": c.bpb} for c in ms.cells]} for ms in scales]
    crossings_ = [{"a": a, "b": b, "flops": cs, "range": rng} for a, b, cs, rng in all_crossings(scales)]
    paths["scale_json"].write_text(json.dumps({"models": record, "crossings": crossings_}, indent=1))
    paths["png_scale"] = plot_scale(scales, out_dir, budgets)
    return paths


def plot_scale(scales: list[ModelScale], out_dir: Path, budgets: str) -> Path:
    """Val bpb against training FLOPs, log-log: every run's cell (marker per size), the frontier
    per model (solid) and its fit (dashed)."""
    plt, fig, ax = new_figure(9, 5)
    markers = "osD^vP*X"
    sizes = list(dict.fromkeys(c.cell.size for ms in scales for c in ms.cells))
    for ms in scales:
        color = None
        for c in ms.cells:
            if c.flops and c.bpb:
                (pt,) = ax.plot([c.flops], [statistics.fmean(c.bpb)], linestyle="none", alpha=0.5, color=color,
                                marker=markers[sizes.index(c.cell.size) % len(markers)], markersize=5)
                color = pt.get_color()
        if ms.frontier:
            xs = [c.flops for c in ms.frontier]
            (line,) = ax.plot(xs, [statistics.fmean(c.bpb) for c in ms.frontier], color=color, label=f"{ms.model} frontier")
            if ms.fit is not None:
                grid = [math.exp(math.log(xs[0]) + (math.log(xs[-1]) - math.log(xs[0])) * i / 99) for i in range(100)]
                ax.plot(grid, [ms.fit(x) for x in grid], linestyle="--", color=line.get_color(),
                        label=f"{ms.model} fit, alpha={ms.fit.alpha:.3f}")
    for i, s in enumerate(sizes):
        ax.plot([], [], marker=markers[i % len(markers)], linestyle="none", color="gray", label=f"size {s}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    for fmt in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        fmt(ScalarFormatter())
    ax.set_xlabel("training FLOPs (log scale)")
    ax.set_ylabel("val bits per byte (log scale)")
    ax.set_title(f"compute-optimal frontier per model, budgets {budgets}", fontsize=9)
    return save_figure(plt, fig, ax, out_dir / "scale.png")


def terminal_report(scales: list[ModelScale]) -> str:
    lines = [text_table(FIT_COLUMNS, fit_rows(scales)), *crossing_lines(scales)]
    return "\n".join(lines)


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _interval(ci: tuple[float, float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"
