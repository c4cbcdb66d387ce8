"""The checks every language model of the Mamba-2 family passes beyond blagpt.testing's
conformance kit (which checks causality, the loss at init on bytes, gradients, state dicts and
training), called by the tests of the ``ssm``, ``zamba2`` and ``rene`` plugins (one definition,
three models).

A model here is a blagpt model (``forward(idx) -> logits``) that also has ``init_cache(batch)``
and ``forward(idx, cache)``, continuing the sequence held in the cache.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_loss_at_init(model: nn.Module, vocab_size: int, seq_len: int, tol: float = 0.25) -> float:
    """Cross-entropy of random tokens at initialisation is about ln(vocab)."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(vocab_size, (4, seq_len + 1), generator=g)
    with torch.no_grad():
        logits = model(idx[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten()).item()
    expected = math.log(logits.size(-1))
    assert abs(loss - expected) < tol, f"loss at init {loss:.3f}, expected about ln(V) = {expected:.3f}"
    return loss


def check_generation_matches_forward(
    model: nn.Module, vocab_size: int, seq_len: int, prompt_len: int, rtol: float = 1e-4, atol: float = 1e-4
) -> None:
    """Prefill ``prompt_len`` tokens through the cache, then feed the rest one token at a time:
    every next-token logit equals the full forward pass's."""
    model.eval()
    idx = torch.randint(vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(idx)
        cache = model.init_cache(idx.size(0))
        steps = [model(idx[:, :prompt_len], cache)]
        for t in range(prompt_len, seq_len):
            steps.append(model(idx[:, t : t + 1], cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=rtol, atol=atol)


def gpt2_small_parameters(vocab_size: int = 50304, n_layers: int = 12, d: int = 768, max_seq_len: int = 1024) -> int:
    """Parameter count of GPT-2 small as in nanoGPT (tied head, learned positions, biases):
    the reference the 124M-class presets are matched to."""
    per_layer = 12 * d * d + 13 * d  # qkv + proj + 2 MLP matrices, their biases, two LayerNorms
    return n_layers * per_layer + vocab_size * d + max_seq_len * d + 2 * d


def check_matches_gpt2_small(model: nn.Module, rel: float = 0.02) -> int:
    """The model (e.g. built on the meta device) has GPT-2 small's parameter count within ``rel``."""
    n = sum(p.numel() for p in model.parameters())
    ref = gpt2_small_parameters()
    assert abs(n - ref) / ref < rel, (n, ref)
    return n


def check_fused_kernel_refused(build_fused: Callable[[], object], config_fused: Callable[[], object]) -> None:
    """``kernel="fused"`` is an error naming the cause: where the CUDA kernels are not installed, the
    config names them (``config_fused``); where they are, building off CUDA says CUDA only."""
    import pytest

    from blagpt import ConfigError

    from . import fused_kernels_available

    if fused_kernels_available() is None:
        with pytest.raises(ConfigError, match="CUDA only"):
            build_fused()
    else:
        with pytest.raises(ValueError, match="mamba-ssm"):
            config_fused()


def check_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """``flops_per_token`` counts at least 6 FLOPs per matmul weight (head included) and grows
    with the sequence length only through attention, never shrinks."""
    n = sum(p.numel() for name, p in model.named_parameters() if p.dim() >= 2 and "conv1d" not in name)
    f = model.flops_per_token(seq_len)
    assert f >= 6 * n, (f, n)
    assert model.flops_per_token(2 * seq_len) >= f
    return f
