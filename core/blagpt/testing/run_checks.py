"""Checks that train: through the core trainer (``blagpt.train``) and ``torchrun``.

Every run is on the CPU in fp32 on the embedded corpus, tracking off, in a temporary folder
removed at exit. Two kinds of run are shared between the checks of one target within a process
(cached by the target's identity, :attr:`ModelTarget.key`):

* ``short``: ``SHORT_STEPS`` steps, a global batch of two micro-batches (gradient accumulation 2
  in one process), every step's loss logged, one evaluation at the end. ``checkpoint_resume``
  compares it with the same run stopped and resumed, ``ddp_matches_single_process`` and
  ``fsdp_matches_single_process`` with the same config under ``torchrun`` on 2 gloo ranks (one
  launch trains both), ``reports_bpb`` reads its evaluation.
* ``long``: ``LONG_STEPS`` steps for ``loss_falls``.

Targets must be deterministic (dropout and other training-time randomness off): with it, the
ranks of a DDP run draw differently from one process.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

SHORT_STEPS = 6
RESUME_AT = 3
LONG_STEPS = 40
EVAL_TOKENS = 1024
LOSS_FALL_NATS = 0.5  # loss_falls: the final val loss is at least this far below step 1's loss
DDP_RTOL = 1e-4
DDP_TIMEOUT_S = 600

_RUNS: dict[tuple[str, str], Any] = {}
_DISTRIBUTED: dict[str, dict[str, Any]] = {}
_WORKDIR: list[Path] = []


def workdir() -> Path:
    """This process's folder of run folders (removed when the process exits)."""
    if not _WORKDIR:
        path = Path(tempfile.mkdtemp(prefix="blagpt-testing-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _WORKDIR.append(path)
    return _WORKDIR[0]


def run_fields(target, what: str) -> dict[str, Any]:
    """The ``train`` section of a ``short`` or ``long`` run of ``target``."""
    common = {"log_interval": 1, "eval_interval": 0, "eval_tokens": EVAL_TOKENS, "checkpoint_interval": 0,
              "out_dir": str(workdir())}
    if what == "short":
        return {**common, "steps": SHORT_STEPS, "global_batch_size": 2 * target.micro_batch_size}
    if what == "long":
        return {**common, "steps": LONG_STEPS}
    raise ValueError(what)


def resolved_run(target, what: str):
    """A fresh resolved config of a ``what`` run with a unique run name."""
    r = target.resolve(**run_fields(target, what))
    r.cfg.tracking.run_name = f"{target.kind}-{what}-{uuid.uuid4().hex[:10]}"
    return r


def _train(r, **kw):
    from ..run.trainer import train

    return train(r.cfg, registry=r.registry, progress=False, echo=lambda *a, **k: None, **kw)


def shared_run(target, what: str):
    """The target's ``short`` or ``long`` run, trained once per process."""
    key = (target.key, what)
    if key not in _RUNS:
        _RUNS[key] = _train(resolved_run(target, what))
    return _RUNS[key]


def train_losses(history: list[dict]) -> dict[int, float]:
    return {int(h["step"]): h["train/loss"] for h in history if "train/loss" in h}


def check_checkpoint_resume(target) -> None:
    """Through the core trainer: ``SHORT_STEPS / 2`` steps, stop (as ``--until-step`` does),
    resume from the checkpoint, finish: bit-identical per-step train losses and the same final
    val loss as the uninterrupted run; the checkpoint loads weights-only
    (``RunDir.load_checkpoint``)."""
    from ..run.resume import Resume
    from ..run.rundir import RunDir

    full = shared_run(target, "short")
    r = resolved_run(target, "short")
    part = _train(r, until_step=RESUME_AT)
    assert part.step == RESUME_AT and part.interrupted, f"--until-step {RESUME_AT} stopped at step {part.step}"
    state = RunDir(part.run_dir).load_checkpoint()  # weights-only; raises BlagptError otherwise
    assert state["step"] == RESUME_AT, f"the checkpoint holds step {state['step']}, expected {RESUME_AT}"
    name, out_dir = r.cfg.tracking.run_name, r.cfg.train.out_dir
    point = Resume.open(name, out_dir)
    rest = _train(type(r)(r.registry, point.config([], r.registry), r.ctx), resume=point)
    a, b = train_losses(full.history), {**train_losses(part.history), **train_losses(rest.history)}
    steps = list(range(1, SHORT_STEPS + 1))
    assert sorted(b) == steps, f"the stopped and resumed runs logged steps {sorted(b)}, expected {steps}"
    diff = [f"step {s}: {a[s]!r} vs {b[s]!r}" for s in steps if a[s] != b[s]]
    assert not diff, (
        f"stopping at step {RESUME_AT} and resuming changed the train losses (bit-identical expected): " + "; ".join(diff)
        + " (the model or optimizer keeps state outside its state_dict, or draws randomness the checkpoint does not restore)"
    )
    assert rest.final["val/loss"] == full.final["val/loss"], (
        f"final val loss after resuming {rest.final['val/loss']!r}, uninterrupted {full.final['val/loss']!r}"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_runs(target) -> dict[str, Any]:
    """The ``short`` run of ``target`` under ``torchrun`` with 2 gloo ranks, once as ``ddp`` and
    once as ``fsdp`` (FSDP2; a model target with activation checkpointing of its blocks), trained
    one after the other in one launch, once per process: ``{"ddp": result, "fsdp": result}``, each
    the worker's JSON (``history``, ``final``, ``run_dir``, or ``error``)."""
    if target.key in _DISTRIBUTED:
        return _DISTRIBUTED[target.key]
    folder = workdir() / f"dist-{uuid.uuid4().hex[:10]}"
    folder.mkdir()
    pairs, files = [], {}
    for mode in ("ddp", "fsdp"):
        r = resolved_run(target, "short")
        r.cfg.train.parallel = mode
        if mode == "fsdp" and target.kind == "model":
            r.cfg.train.activation_checkpointing = "blocks"
        config, result = folder / f"{mode}.yaml", folder / f"{mode}.json"
        config.write_text(r.cfg.to_yaml())
        pairs += [str(config), str(result)]
        files[mode] = result
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "blagpt.testing.ddp_worker", *pairs]
    if target.kind == "optimizer":
        cmd.append("--probe")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "BLAGPT_LOAD_PLUGINS": ",".join(target.owner_entry_points(r.registry)),
        # what this process imports from (e.g. a plugin on a test's sys.path), the ranks do too
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)),
    }
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=DDP_TIMEOUT_S)
    failed = (f"torchrun with 2 gloo ranks failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    _DISTRIBUTED[target.key] = {mode: json.loads(f.read_text()) if f.is_file() else {"error": failed} for mode, f in files.items()}
    return _DISTRIBUTED[target.key]


def _compare_with_one_process(target, mode: str, what: str) -> dict[str, Any]:
    single = shared_run(target, "short")
    got = distributed_runs(target)[mode]
    assert "error" not in got, f"{what} on 2 gloo ranks failed: {got['error']}"
    ranks, one = train_losses(got["history"]), train_losses(single.history)
    assert sorted(ranks) == sorted(one), f"{what} logged steps {sorted(ranks)}, one process {sorted(one)}"
    diff = [f"step {s}: {ranks[s]:.6f} vs {one[s]:.6f}" for s in sorted(one)
            if not math.isclose(ranks[s], one[s], rel_tol=DDP_RTOL, abs_tol=1e-6)]
    assert not diff, (
        f"2 gloo ranks and one process with the same global batch disagree ({what} vs one process): " + "; ".join(diff)
        + ". Targets must be deterministic: turn dropout and other training-time randomness off"
    )
    return got


def check_ddp_matches_single_process(target) -> None:
    """The ``short`` run under ``torchrun`` with 2 gloo ranks (one micro-batch each) gives the
    train losses of one process with the same global batch (gradient accumulation 2), within
    relative 1e-4 at every step. Targets must be deterministic (no dropout)."""
    _compare_with_one_process(target, "ddp", "DDP")


def check_fsdp_matches_single_process(target) -> None:
    """The ``short`` run with ``train.parallel: fsdp`` (FSDP2 over the model's blocks, with
    ``train.activation_checkpointing: blocks`` for a model target) under ``torchrun`` with 2 gloo
    ranks gives the train losses and the final val loss of one process within relative 1e-4; its
    sharded checkpoint reads back in one process as the model's full ``state_dict`` (same names,
    shapes and dtypes). A model names its blocks with ``parallel_blocks()`` or holds them in an
    ``nn.ModuleList``; the optimizer must step parameters that are DTensor shards."""
    from ..run import checkpoint as ckpt
    from ..run.rundir import RunDir

    got = _compare_with_one_process(target, "fsdp", "FSDP")
    single = shared_run(target, "short")
    a, b = got["final"]["val/loss"], single.final["val/loss"]
    assert math.isclose(a, b, rel_tol=DDP_RTOL), f"FSDP's final val loss {a!r}, one process {b!r}"
    state = RunDir(got["run_dir"]).load_checkpoint()
    assert "shards" in state, "the fsdp run's checkpoint is not sharded"
    sharded = ckpt.model_weights(state)
    full = RunDir(single.run_dir).load_checkpoint()["model"]
    shapes = lambda sd: {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}  # noqa: E731
    assert shapes(sharded) == shapes(full), (
        f"the sharded checkpoint's model state differs from the model's state_dict: "
        f"{sorted(set(shapes(sharded).items()) ^ set(shapes(full).items()))[:6]}"
    )


def check_reports_bpb(target) -> None:
    """A trainer run's final evaluation has finite ``val/loss``, ``val/bpb``, ``val/tokens`` and
    ``val/bytes`` (counts > 0), and ``val/bpb == val/loss * val/tokens / (ln 2 * val/bytes)``."""
    final = shared_run(target, "short").final
    keys = ("val/loss", "val/bpb", "val/tokens", "val/bytes")
    missing = [k for k in keys if k not in final]
    assert not missing, f"the final evaluation lacks {missing} (has {sorted(final)})"
    bad = {k: final[k] for k in keys if not math.isfinite(final[k])}
    assert not bad, f"the final evaluation has non-finite values {bad} (LossOutput.nll must be finite next-token nats)"
    assert final["val/tokens"] > 0 and final["val/bytes"] > 0, f"evaluated {final['val/tokens']} tokens, {final['val/bytes']} bytes"
    want = final["val/loss"] * final["val/tokens"] / (math.log(2) * final["val/bytes"])
    assert math.isclose(final["val/bpb"], want, rel_tol=1e-6), f"val/bpb {final['val/bpb']} != val/loss x tokens / (ln 2 x bytes) = {want}"


def check_loss_falls(target) -> tuple[float, float]:
    """A ``LONG_STEPS``-step trainer run on the embedded corpus: the final val loss is at least
    ``LOSS_FALL_NATS`` below the train loss of step 1. Returns (step 1 loss, final val loss)."""
    res = shared_run(target, "long")
    first = train_losses(res.history).get(1)
    final = res.final.get("val/loss")
    assert first is not None and final is not None, "the run logged no step-1 loss or no final evaluation"
    assert final < first - LOSS_FALL_NATS, (
        f"loss did not fall: step 1 train loss {first:.3f}, final val loss after {LONG_STEPS} steps {final:.3f} "
        f"(expected at least {LOSS_FALL_NATS} nats lower)"
    )
    return first, final
