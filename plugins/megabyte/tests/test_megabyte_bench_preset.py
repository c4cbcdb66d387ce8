"""The ``bench`` preset: 150k parameters without embeddings (within 10 %) with bytes at seq_len 256,
counted by the core's rule (the parameter a run logs as ``n_params_non_embedding``), so a bench
compares architectures at matched size."""

from __future__ import annotations

import torch

from blagpt import Batch
from blagpt.run.trainer import embedding_params
from blagpt.testing import ModelTarget


def test_bench_preset_is_150k_without_embeddings():
    r = ModelTarget("megabyte", config={"preset": "bench"}, tokenizer="bytes", seq_len=256).resolve()
    torch.manual_seed(0)
    model = r.registry.build_model(r.cfg.model, r.ctx)
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding_params(model, r.ctx.vocab_size)
    assert 135_000 <= non_embedding <= 165_000, non_embedding
    tokens = torch.randint(0, r.ctx.vocab_size, (1, 33))
    loss = r.registry.compute_loss(model, Batch(tokens), r.cfg.model).loss
    assert torch.isfinite(loss)
