"""The ``bench`` preset: 150k parameters without embeddings (within 10 %) with bytes at seq_len 256,
counted by the core's rule (the parameter a run logs as ``n_params_non_embedding``), so a bench
compares architectures at matched size."""

from __future__ import annotations

from blagpt.testing import ModelTarget, non_embedding_params


def test_bench_preset_is_150k_without_embeddings():
    n = non_embedding_params(ModelTarget("rene", config={"preset": "bench"}, tokenizer="bytes", seq_len=256))
    assert 135_000 <= n <= 165_000, n
