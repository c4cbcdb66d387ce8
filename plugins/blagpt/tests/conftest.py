"""Shared helpers: tiny BlaGPT models and batches of the embedded Shakespeare corpus."""

from __future__ import annotations

import glob
import math

import numpy as np
import pytest
import torch

from blagpt_plugin_blagpt import PRESETS, BlaGPT, BlaGPTConfig

# 2 CPU cores shared with other jobs: one thread is the fastest for these tiny shapes.
torch.set_num_threads(1)

BYTES_VOCAB = 257
SEQ = 32


def config(preset: str = "blagpt+tiny", **over) -> BlaGPTConfig:
    raw: dict = {}
    for p in preset.split("+"):
        raw.update(PRESETS[p])
    raw.update(over)
    return BlaGPTConfig(**raw)


def build(preset: str = "blagpt+tiny", vocab: int = BYTES_VOCAB, max_seq_len: int = SEQ, seed: int = 0, **over) -> BlaGPT:
    torch.manual_seed(seed)
    return BlaGPT(config(preset, **over), vocab, max_seq_len)


@pytest.fixture(scope="session")
def corpus() -> np.ndarray:
    """The embedded corpus's training split in the bytes tokenizer, as one int64 array."""
    from blagpt.data.prepare import embedded_dataset
    from blagpt.data.shards import read_shard

    train, _ = embedded_dataset("bytes")
    return np.concatenate([np.asarray(read_shard(p), dtype=np.int64) for p in sorted(glob.glob(train))])


def batches(data: np.ndarray, n: int, batch: int = 8, seq: int = SEQ, seed: int = 0) -> list[torch.Tensor]:
    """``n`` batches of (batch, seq+1) windows drawn at fixed random offsets."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        starts = rng.integers(0, len(data) - seq - 1, size=batch)
        out.append(torch.from_numpy(np.stack([data[s : s + seq + 1] for s in starts])))
    return out


def train_losses(model, data_batches, lr: float = 3e-3, weights=None) -> list[float]:
    """A plain AdamW loop over ``data_batches`` with the plugin's own loss; returns the losses."""
    from blagpt import Batch

    from blagpt_plugin_blagpt import compute_loss

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    losses = []
    for tokens in data_batches:
        out = compute_loss("blagpt", model, Batch(tokens), model.cfg)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    return losses


def ln(v: int) -> float:
    return math.log(v)
