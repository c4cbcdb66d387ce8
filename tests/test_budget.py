"""Training budgets (steps, tokens, FLOPs, wall-clock) and the learning-rate schedules they drive."""

from __future__ import annotations

import json
import math

import pytest

from blagpt.config import TrainConfig, merge_sources, resolve
from blagpt.errors import ConfigError
from blagpt.plugin.registry import Registry
from blagpt.run.schedule import lr_factor, lr_factor_time
from blagpt import train

from conftest import TINY


@pytest.fixture(scope="module")
def reg():
    return Registry.load(only=["tinylm"], strict=True)


def cfg_of(reg, *sets):
    return resolve(merge_sources(sets=[*TINY, "tracking.enabled=false", *sets]), reg)


def quiet(*a, **k):
    pass


def test_flops_budget_sets_the_steps_from_the_models_flops_per_token(workdir, reg):
    cfg = cfg_of(reg, "train.flops=4e8", "train.eval_interval=0")
    res = train(cfg, registry=reg, echo=quiet)
    from blagpt import BuildContext

    model = reg.build_model(cfg.model, BuildContext(257, 32, "bytes"))
    fpt = model.flops_per_token(32)
    assert res.step == math.ceil(4e8 / (fpt * 4 * 32))
    params = json.loads((res.run_dir / "run.json").read_text())["params"]
    assert params["flops_per_token"] == fpt and params["tokens_per_step"] == 128


def test_flops_budget_needs_flops_per_token(workdir, reg, monkeypatch):
    import blagpt_plugin_tinylm

    monkeypatch.delattr(blagpt_plugin_tinylm.TinyLM, "flops_per_token")
    with pytest.raises(ConfigError, match=r"^train.flops: this model does not report flops_per_token"):
        train(cfg_of(reg, "train.flops=1e9"), registry=reg, echo=quiet)


def test_time_budget_stops_on_time_and_decays_the_lr_over_it(workdir, reg):
    res = train(cfg_of(reg, "train.time_s=1.5", "train.eval_interval=0", "train.log_interval=1"), registry=reg, echo=quiet)
    rows = [h for h in res.history if "train/loss" in h]
    elapsed = [h["train/elapsed_s"] for h in rows]
    assert res.step == len(rows) > 3
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 1.5 and elapsed[-2] < 1.5  # stops at the first step past it
    lrs = [h["train/lr"] for h in rows]
    peak = 1e-3
    assert max(lrs) == pytest.approx(peak, rel=0.05)  # warmed up to the peak ...
    assert lrs[-1] < 0.2 * peak  # ... and decayed to near min_lr_ratio (0.1) by the end of the time


def test_one_row_per_step_carries_tokens_and_elapsed(workdir, reg):
    res = train(cfg_of(reg, "train.steps=4", "train.eval_interval=2", "train.log_interval=2"), registry=reg, echo=quiet)
    assert [h["step"] for h in res.history] == [2, 4]
    for h in res.history:
        assert {"train/loss", "val/loss", "val/bpb", "train/tokens", "train/elapsed_s"} <= set(h)
        assert h["train/tokens"] == h["step"] * 4 * 32


def test_extra_tracking_tags_are_recorded(workdir, reg):
    res = train(cfg_of(reg, "train.steps=1", "tracking.tags={blagpt.entry: x, mlflow.parentRunId: abc}"), registry=reg, echo=quiet)
    tags = json.loads((res.run_dir / "run.json").read_text())["tags"]
    assert tags["blagpt.entry"] == "x" and tags["mlflow.parentRunId"] == "abc"


@pytest.mark.parametrize("sets", [{"steps": 3, "time_s": 2}, {"tokens": 3, "flops": 2.0}])
def test_one_budget_only(sets):
    with pytest.raises(ValueError, match="set one budget, not"):
        TrainConfig(**sets)


def test_an_unset_budget_is_200_steps_and_a_resumed_token_run_keeps_its_budget():
    assert TrainConfig().steps == 200
    tokens_run = TrainConfig(tokens=1000)
    # the dumped config (as in checkpoints) validates again: steps stays unset
    assert TrainConfig(**tokens_run.model_dump()).budget_kind == "tokens"


def test_step_schedule_values():
    t = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 100, t) == pytest.approx(0.1)
    assert lr_factor(9, 100, t) == pytest.approx(1.0)
    assert lr_factor(99, 100, t) == pytest.approx(0.1)
    mid = 10 + 45 - 1  # half way through the cosine: (1 + cos(pi/2)) / 2 = 0.5 -> 0.1 + 0.9 * 0.5
    assert lr_factor(mid, 100, t) == pytest.approx(0.55)
    wsd = TrainConfig(steps=100, warmup_steps=0, schedule="wsd", decay_frac=0.2)
    assert lr_factor(79, 100, wsd) == 1.0 and lr_factor(99, 100, wsd) == pytest.approx(0.1)


def test_time_schedule_values():
    t = TrainConfig(time_s=100, min_lr_ratio=0.1)  # default warmup: first 5% of the time
    assert lr_factor_time(0, 0.025, t) == pytest.approx(0.5)
    assert lr_factor_time(5, 0.05, t) == pytest.approx(1.0)
    assert lr_factor_time(9, 0.525, t) == pytest.approx(0.55)  # half way through the cosine
    assert lr_factor_time(9, 1.0, t) == pytest.approx(0.1)
    steps_warm = TrainConfig(time_s=100, warmup_steps=4)
    assert lr_factor_time(1, 0.9, steps_warm) == pytest.approx(0.5)  # step-counted warmup wins
    wsd = TrainConfig(time_s=100, schedule="wsd", decay_frac=0.2)
    assert lr_factor_time(50, 0.7, wsd) == 1.0 and lr_factor_time(50, 0.9, wsd) == pytest.approx(0.55)
    const = TrainConfig(time_s=100, schedule="constant")
    assert lr_factor_time(50, 0.99, const) == 1.0
