"""The ``bench`` preset: 150k parameters without embeddings (within 10 %) with bytes at seq_len 256,
alone and composed with every technique preset, counted by the core's rule (the parameter a run
logs as ``n_params_non_embedding``), so a bench compares architectures at matched size."""

from __future__ import annotations

import pytest

from blagpt.testing import ModelTarget, non_embedding_params


@pytest.mark.parametrize("preset", ["bench", "gpt2+bench", "blagpt+bench", "tokenformer+bench"])
def test_bench_preset_is_150k_without_embeddings(preset):
    n = non_embedding_params(ModelTarget("blagpt", config={"preset": preset}, tokenizer="bytes", seq_len=256))
    assert 135_000 <= n <= 165_000, n
