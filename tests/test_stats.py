"""Statistics, tuning choices, scaling fits and the tuning slice, without the CLI."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from blagpt.compare.leaderboard import RunData, ci_half_width, comparable_groups, holm, summarize, terminal_table
from blagpt.compare.scale import Fit, crossings, fit_power_law
from blagpt.compare.tune import Grid, choose
from blagpt.errors import ConfigError, DataError

from conftest import TINY


def test_holm_adjusts_p_values_as_the_hand_computation_does():
    # m = 4; sorted: a .01 x4 = .04; c .03 x3 = .09; b .04 x2 = .08 -> kept non-decreasing: .09; d .2 x1 = .2
    got = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2})
    assert got == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.2})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}  # capped at 1
    assert holm({}) == {}


def test_the_confidence_interval_is_student_t():
    # t(0.975, df=2) = 4.3026527 (tables); sd of [1, 2, 3] is 1
    assert ci_half_width([1.0, 2.0, 3.0]) == pytest.approx(4.3026527 / math.sqrt(3), rel=1e-7)
    assert ci_half_width([1.0]) is None


def _run(entry, seed, bpb, **params):
    return RunData(name=f"{entry}.s{seed}", entry=entry, seed=seed, status="FINISHED", params=params,
                   evals=[{"step": 10, "val/bpb": bpb, "val/loss": bpb * 0.7}])


def test_the_table_flags_few_seeds_holm_adjusts_and_fits_100_columns():
    runs = [_run("base", s, 2.0 + 0.01 * s) for s in range(3)]
    runs += [_run("a-long-entry-name-that-would-not-fit@some+preset/with-an-optimizer", s, 1.9 + 0.01 * s) for s in range(3)]
    runs += [_run("two-seeds", s, 1.95 + 0.02 * s) for s in range(2)]
    runs.append(RunData(name="x", entry="two-seeds", seed=2, status="FAILED", error="a very long failure reason " * 8))
    stats = summarize(runs, ["base", runs[3].entry, "two-seeds"])
    by = {e.label: e for e in stats}
    few, many = by["two-seeds"], by[runs[3].entry]
    assert few.few_seeds and not many.few_seeds
    assert few.p_holm == pytest.approx(max(2 * min(few.p_value, many.p_value), few.p_value if few.p_value > many.p_value else 0))
    lo, hi = many.ci
    assert lo < statistics.fmean(many.bpb) < hi
    table = terminal_table(stats)
    assert all(len(line) <= 100 for line in table.splitlines()), table
    assert "*" in table and "…" in table  # the flag; a shortened label or status


def test_runs_on_other_terms_are_separated():
    a = _run("m", 0, 2.0, **{"train.tokens": "1000", "train.eval_bytes": "2048"})
    b = _run("m", 1, 2.0, **{"train.tokens": "1000", "train.eval_bytes": "2048"})
    c = _run("m", 2, 2.0, **{"train.tokens": "2000", "train.eval_bytes": "2048"})
    d = _run("m", 3, 2.0, **{"train.tokens": "1000", "train.eval_bytes": "4096"})
    groups = comparable_groups([a, b, c, d])
    assert [len(g) for _, g in groups] == [2, 1, 1]
    assert groups[1][0][0] == "tokens=2000" and "4,096 bytes" in groups[2][0][1]


def _trial(tune_bpb, val_bpb=None, ok=True):
    ev = {"step": 6, "tune/bpb": tune_bpb}
    if val_bpb is not None:
        ev["val/bpb"] = val_bpb
    return RunData(name="t", entry="e", seed=0, status="FINISHED" if ok else "FAILED", evals=[ev])


def test_tuning_picks_the_argmin_on_the_tuning_slice_and_flags_the_edge():
    grid = Grid.parse(["optimizer.lr=1e-3,3e-3,1e-2"])
    p1, p2, p3 = grid.points()
    # a lower val figure on another point must not sway the choice: only tune/* is read
    c = choose("e", grid, {p1: _trial(5.0, val_bpb=1.0), p2: _trial(4.0, val_bpb=9.0), p3: _trial(4.5)})
    assert c.best == p2 and c.edge == []
    c = choose("e", grid, {p1: _trial(5.0), p2: _trial(4.0, ok=False), p3: _trial(4.5)})
    assert c.best == p3 and c.edge == ["optimizer.lr"] and c.scores[p2] is None
    assert choose("e", grid, {}).error == "tuning: no trial finished"
    for bad in ("optimizer.lr", "lr=1e-3", "train.seed=1,2", "train.tokens=1,2", "optimizer.lr=1,1"):
        with pytest.raises(ConfigError, match="--tune"):
            Grid.parse([bad])
    assert len(Grid.parse(["optimizer.lr=1,2", "model.d_model=8,16,32"]).points()) == 6


def test_the_fit_recovers_a_known_power_law():
    E, A, alpha = 1.5, 40.0, 0.3
    cs = [1e8 * 10 ** (i / 2) for i in range(7)]
    got = fit_power_law(cs, [E + A * c**-alpha for c in cs])
    assert got.E == pytest.approx(E, rel=1e-4) and got.alpha == pytest.approx(alpha, rel=1e-4)
    assert got.A == pytest.approx(A, rel=1e-3)
    assert fit_power_law(cs[:2], [2.0, 1.9]) is None  # too few points


def test_crossings_of_two_frontiers():
    f, g = Fit(1.0, 100.0, 0.3), Fit(1.5, 1000.0, 0.5)
    (c,) = crossings(f, g, 1e6, 1e14)
    assert 1e6 < c < 1e14 and f(c) == pytest.approx(g(c), abs=1e-9)
    assert (f(c / 10) - g(c / 10)) * (f(c * 10) - g(c * 10)) < 0
    assert crossings(f, Fit(2.0, 100.0, 0.3), 1e6, 1e14) == []  # parallel


def _shards(folder, head_seed):
    """Training shards and a validation split whose first half (the validation slice) depends on
    ``head_seed`` and whose second half (the tuning slice) does not."""
    from blagpt.data.shards import write_shard

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    line = lambda r: list(r.integers(97, 123, size=30)) + [10]  # noqa: E731 - lowercase letters, newline
    write_shard(folder / "train_000000.bin", np.array(sum((line(rng) for _ in range(300)), []), dtype=np.uint16))
    head = np.random.default_rng(head_seed)
    val = sum((line(head) for _ in range(60)), []) + sum((line(rng) for _ in range(60)), [])
    write_shard(folder / "val_000000.bin", np.array(val, dtype=np.uint16))
    return [f"data.train={folder}/train_*.bin", f"data.val={folder}/val_*.bin"]


@pytest.mark.parametrize("eval_bytes", [1200, None])
def test_the_tuning_slice_never_reads_the_validation_slice(tmp_path, eval_bytes):
    """A data double: two validation splits that differ only in the validation slice's text give
    bit-identical tuning scores, and different validation scores."""
    import blagpt
    from blagpt.config import merge_sources, resolve
    from blagpt.plugin.registry import get_registry

    reg = get_registry()
    size = [f"train.eval_bytes={eval_bytes}"] if eval_bytes else ["train.eval_tokens=1200"]
    out = {}
    for head in (1, 2):
        data = _shards(tmp_path / f"d{head}", head)
        for on in ("val", "tune"):
            cfg = resolve(merge_sources(sets=[*TINY, *data, *size, "train.steps=2", f"train.eval_on={on}", "tracking.enabled=false",
                                              f"train.out_dir={tmp_path}/runs", f"tracking.run_name=r{head}{on}"]), reg)
            out[head, on] = blagpt.train(cfg, reg, progress=False, echo=lambda *_: None).final
    assert out[1, "tune"] == out[2, "tune"]
    assert set(out[1, "tune"]) == {"tune/loss", "tune/bpb", "tune/tokens", "tune/bytes"}
    assert out[1, "val"]["val/loss"] != out[2, "val"]["val/loss"]
    assert out[1, "tune"]["tune/tokens"] == out[1, "val"]["val/tokens"] or eval_bytes  # same size by tokens
    # a validation split too short for both slices is refused in one line
    cfg = resolve(merge_sources(sets=[*TINY, *_shards(tmp_path / "d3", 3), "train.eval_tokens=3000", "train.steps=1",
                                      "train.eval_on=tune", "tracking.enabled=false", f"train.out_dir={tmp_path}/runs"]), reg)
    with pytest.raises(DataError, match="too short for a tuning slice"):
        blagpt.train(cfg, reg, progress=False, echo=lambda *_: None)


def test_non_embedding_parameters_leave_out_tables_and_the_output_head_only():
    import torch

    from blagpt.run.trainer import embedding_params

    class M(torch.nn.Module):
        def __init__(self, tied):
            super().__init__()
            self.wte, self.wpe = torch.nn.Embedding(320, 16), torch.nn.Embedding(64, 16)
            self.up, self.down = torch.nn.Linear(16, 320), torch.nn.Linear(320, 16)  # a hidden layer as wide as the vocabulary
            self.head = torch.nn.Linear(16, 320, bias=False)
            if tied:
                self.head.weight = self.wte.weight

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            return self.head(x + self.down(torch.relu(self.up(x))))[..., :257]  # sliced to the real vocabulary

    assert embedding_params(M(tied=False), 257) == 320 * 16 + 64 * 16 + 16 * 320
    assert embedding_params(M(tied=True), 257) == 320 * 16 + 64 * 16
