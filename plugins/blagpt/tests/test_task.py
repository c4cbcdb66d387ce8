"""BlaGPT trains on a generated task (MQAR): its compute_loss returns a detached nll (the
validation quantity), so a task's training loss must not be built from it."""

from __future__ import annotations

import math

import blagpt
from blagpt.config import merge_sources, resolve
from blagpt.plugin.registry import get_registry


def test_blagpt_trains_on_mqar(tmp_path):
    reg = get_registry()
    cfg = resolve(merge_sources(sets=[
        "model.name=blagpt", "model.preset=gpt2+tiny", "task.name=mqar", "task.n_pairs=2", "task.vocab_size=16",
        "task.n_train=64", "task.n_test=16", "train.seq_len=16", "train.micro_batch_size=8", "train.steps=3",
        "train.eval_interval=0", "tracking.enabled=false", f"train.out_dir={tmp_path}",
    ]), reg)
    res = blagpt.train(cfg, reg, progress=False, echo=lambda *_: None)
    assert math.isfinite(res.final["val/loss"]) and 0.0 <= res.final["val/accuracy"] <= 1.0
    assert all(math.isfinite(h["train/loss"]) for h in res.history if "train/loss" in h)
