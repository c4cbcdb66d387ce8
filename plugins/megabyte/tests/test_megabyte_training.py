"""MegaByte trained by the core trainer on the embedded corpus, with bytes and with GPT-2 tokens."""

import os

import numpy as np
import pytest

from blagpt.config import merge_sources, resolve
from blagpt.plugin.registry import Registry
from blagpt import train


@pytest.fixture(scope="module")
def registry():
    return Registry.load(only=["megabyte"])


def run(registry, tmp_path, name, *sets):
    os.chdir(tmp_path)
    cfg = resolve(
        merge_sources(
            sets=[
                "model.name=megabyte", "model.preset=tiny", "tracking.enabled=false",
                f"tracking.run_name={name}", "train.log_interval=1", "train.eval_interval=0", *sets,
            ]
        ),
        registry,
    )
    return train(cfg, registry=registry, echo=lambda *a: None)


@pytest.mark.parametrize(
    "tokenizer,seq_len,patch", [("bytes", 62, 4), ("gpt2", 30, 3)]  # neither a multiple of P
)
def test_loss_falls_on_embedded_corpus(registry, tmp_path, tokenizer, seq_len, patch):
    res = run(
        registry, tmp_path, tokenizer, f"data.tokenizer={tokenizer}", f"train.seq_len={seq_len}",
        f"model.patch_size={patch}", f"model.global_dim={16 * patch}", "train.steps=30",
        "train.micro_batch_size=8", "optimizer.lr=3e-3", "train.eval_tokens=2048",
    )
    losses = [h["train/loss"] for h in res.history if "train/loss" in h]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"{tokenizer}: loss {first:.3f} -> {last:.3f}, val bpb {res.final['val/bpb']:.3f}")
    assert last < first - 0.5, (first, last)
    assert res.final["val/loss"] < first


def test_bytes_and_gpt2_runs_count_the_same_validation_bytes(registry, tmp_path):
    """With the same `train.eval_bytes`, a byte-level and a GPT-2-token MegaByte are scored on the
    same text: the core cuts the slice at a line start both tokenizations split at and predicts
    every token of it, so both runs report the same `val/bytes` (and different token counts)."""
    common = ["train.seq_len=24", "train.steps=1", "train.eval_bytes=3001", "train.micro_batch_size=16"]
    res_b = run(registry, tmp_path, "bytes", "data.tokenizer=bytes", *common)
    res_g = run(registry, tmp_path, "gpt2", "data.tokenizer=gpt2", "model.patch_size=2", "model.global_dim=32", *common)
    assert res_b.final["val/bytes"] == res_g.final["val/bytes"]
    assert 2800 < res_b.final["val/bytes"] <= 3001
    assert res_b.final["val/tokens"] > 2 * res_g.final["val/tokens"]