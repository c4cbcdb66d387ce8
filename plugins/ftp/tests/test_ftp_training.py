"""A short run through the core trainer on the embedded corpus: the loss falls."""

import math
import os

from blagpt.config import merge_sources, resolve
from blagpt.plugin.registry import Registry
from blagpt import train


def test_core_trainer_loss_falls_on_embedded_corpus(tmp_path):
    os.chdir(tmp_path)
    reg = Registry.load(only=["ftp"])
    cfg = resolve(
        merge_sources(
            sets=[
                "model.name=ftp", "model.preset=tiny", "data.tokenizer=bytes", "train.seq_len=32",
                "train.micro_batch_size=8", "train.steps=40", "train.eval_tokens=2048",
                "train.eval_interval=0", "train.log_interval=1", "optimizer.lr=3e-3",
                "tracking.enabled=false",
            ]
        ),
        reg,
    )
    res = train(cfg, registry=reg, echo=lambda *a: None)
    losses = [h["train/loss"] for h in res.history if "train/loss" in h]
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    print(f"train loss {first:.3f} -> {last:.3f}; val loss {res.final['val/loss']:.3f} bpb {res.final['val/bpb']:.3f}")
    assert abs(first - math.log(257)) < 0.5
    assert last < first - 1.0, losses
    assert res.final["val/loss"] < math.log(257) - 1.0
    assert 0 < res.final["val/bpb"] < 8
