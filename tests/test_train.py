"""The trainer: loss falls, exact resume (1 process and 2 gloo ranks), divergence, budgets."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from blagpt.run import checkpoint as ckpt
from blagpt.config import merge_sources, resolve
from blagpt.errors import ConfigError
from blagpt.plugin.registry import Registry
from blagpt.run.resume import resume_config
from blagpt.run.trainer import TrainingDiverged, train

from conftest import TINY, free_port, run_cli


@pytest.fixture(scope="module")
def reg():
    return Registry.load(only=["tinylm"], strict=True)


def cfg_of(reg, *sets):
    return resolve(merge_sources(sets=[*TINY, "tracking.enabled=false", *sets]), reg)


def losses(history):
    return {h["step"]: h["train/loss"] for h in history if "train/loss" in h}


def test_loss_starts_at_ln_vocab_and_falls(workdir, reg):
    res = train(cfg_of(reg, "train.steps=40", "train.eval_interval=20", "optimizer.lr=3e-3"), registry=reg, echo=lambda *a: None)
    first = res.history[0]
    assert abs(first["train/loss"] - math.log(257)) < 0.3
    assert res.final["val/loss"] < math.log(257) - 1.0
    assert res.final["val/bpb"] == pytest.approx(res.final["val/loss"] / math.log(2), rel=1e-6)  # bytes: 1 byte/token
    assert first["train/tokens_per_s"] > 0 and first["train/peak_mem_mb"] > 0
    assert (res.run_dir / "checkpoint.pt").is_file()


def test_resume_is_exact_single_process(workdir, reg):
    sets = ("train.steps=12", "model.dropout=0.1", "train.eval_interval=6", "train.log_interval=1")
    full = train(cfg_of(reg, *sets, "tracking.run_name=full"), registry=reg, echo=lambda *a: None)
    part = train(cfg_of(reg, *sets, "tracking.run_name=part"), registry=reg, until_step=6, echo=lambda *a: None)
    assert part.interrupted and part.step == 6
    assert ckpt.load(part.run_dir / "checkpoint.pt")["step"] == 6
    rest = train(resume_config("part", "runs", [], reg), registry=reg, resume="part", echo=lambda *a: None)
    a, b = losses(full.history), {**losses(part.history), **losses(rest.history)}
    assert sorted(b) == list(range(1, 13))
    assert [a[s] for s in range(1, 13)] == [b[s] for s in range(1, 13)]  # bit-identical
    assert rest.final["val/loss"] == full.final["val/loss"]
    # the run folder's metrics hold each step once
    rows = [json.loads(x) for x in (part.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["key"] == "train/loss"]
    assert steps == list(range(1, 13))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(workdir, reg):
    cfg = cfg_of(reg, "train.steps=20", "train.checkpoint_interval=4", "model.nan_after=10", "tracking.run_name=nan")
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 11; stopped, last good checkpoint \(step 8\)"):
        train(cfg, registry=reg, echo=lambda *a: None)
    state = ckpt.load(workdir / "runs" / "nan" / "checkpoint.pt")
    assert state["step"] == 8
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_token_budget_sets_the_steps(workdir, reg):
    cfg = cfg_of(reg, "train.tokens=1000", "train.eval_interval=0")
    res = train(cfg, registry=reg, echo=lambda *a: None)
    assert res.step == math.ceil(1000 / (4 * 32)) == 8


def test_global_batch_must_divide(reg):
    with pytest.raises(ConfigError, match="train.global_batch_size: 6 sequences is not a multiple of micro_batch_size x world size = 4 x 1"):
        train(cfg_of(reg, "train.global_batch_size=6", "train.steps=1"), registry=reg, echo=lambda *a: None)


def test_cli_until_step_then_resume(workdir):
    sets = [x for s in [*TINY, "train.steps=6", "tracking.run_name=cli", "train.eval_interval=0"] for x in ("--set", s)]
    first = run_cli(["train", "--no-track", "--until-step", "3", *sets], cwd=workdir, check=0)
    assert "continue with: blagpt train --resume cli" in first.stdout
    again = run_cli(["train", "--resume", "cli", "--no-track"], cwd=workdir, check=0)
    assert "step 6/6" in again.stdout and "final: val loss" in again.stdout
    dup = run_cli(["train", "--no-track", *sets], cwd=workdir)
    assert dup.returncode == 1 and "a run of this name exists" in dup.stderr


def _torchrun(workdir, nproc, sets, extra=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "blagpt", "train", "--no-track", *extra]
    cmd += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "BLAGPT_LOAD_PLUGINS": "tinylm", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _metric(workdir, run, key):
    rows = [json.loads(x) for x in (workdir / "runs" / run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["value"] for r in rows if r["key"] == key}


@pytest.mark.slow
def test_two_gloo_ranks_resume_exactly_and_match_one_process(workdir, reg):
    base = [*TINY, "train.steps=8", "train.global_batch_size=8", "train.log_interval=1", "train.eval_interval=4", "model.dropout=0.0"]
    _torchrun(workdir, 2, [*base, "tracking.run_name=ddp-full"])
    _torchrun(workdir, 2, [*base, "tracking.run_name=ddp-part"], extra=["--until-step", "4"])
    _torchrun(workdir, 2, [], extra=["--resume", "ddp-part"])
    full, resumed = _metric(workdir, "ddp-full", "train/loss"), _metric(workdir, "ddp-part", "train/loss")
    assert sorted(resumed) == list(range(1, 9)) and full == resumed
    assert _metric(workdir, "ddp-full", "val/loss") == _metric(workdir, "ddp-part", "val/loss")
    state = ckpt.load(workdir / "runs" / "ddp-part" / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    # same global batch on one process (grad accumulation 2) gives the same losses
    single = train(cfg_of(reg, *base[len(TINY):], "tracking.run_name=one"), registry=reg, echo=lambda *a: None)
    one = losses(single.history)
    for step, value in full.items():
        assert value == pytest.approx(one[step], rel=1e-4, abs=1e-5)


def test_init_from_loads_weights_with_a_fresh_optimizer(workdir, reg):
    first = train(cfg_of(reg, "train.steps=6", "train.eval_interval=0", "tracking.run_name=src"), registry=reg, echo=lambda *a: None)
    again = train(cfg_of(reg, "train.steps=6", "train.eval_interval=0", "tracking.run_name=dst", "train.init_from=runs/src"),
                  registry=reg, echo=lambda *a: None)
    fresh = train(cfg_of(reg, "train.steps=6", "train.eval_interval=0", "tracking.run_name=fresh"), registry=reg, echo=lambda *a: None)
    assert again.step == 6 and again.history[0]["step"] == 2  # counted from step 0
    assert again.history[0]["train/loss"] < fresh.history[0]["train/loss"] - 0.05  # started from trained weights
    torch.save(ckpt.load(first.run_dir / "checkpoint.pt")["model"], workdir / "weights.pt")
    also = train(cfg_of(reg, "train.steps=2", "train.eval_interval=0", "tracking.run_name=sd", "train.init_from=weights.pt"),
                 registry=reg, echo=lambda *a: None)
    assert also.history[0]["train/loss"] == again.history[0]["train/loss"]
    with pytest.raises(Exception, match="train.init_from: .*weights do not fit model 'tinylm'"):
        train(cfg_of(reg, "train.steps=2", "model.d_model=64", "tracking.run_name=bad", "train.init_from=weights.pt"),
              registry=reg, echo=lambda *a: None)
