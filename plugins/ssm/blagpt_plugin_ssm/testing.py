"""The checks every language model of the Mamba-2 family passes, called by the tests of the
``ssm``, ``zamba2`` and ``rene`` plugins (one definition, three models).

A model here is a blagpt model (``forward(idx) -> logits``) that also has ``init_cache(batch)``
and ``forward(idx, cache)``, continuing the sequence held in the cache.
"""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def check_causal(model: nn.Module, vocab_size: int, seq_lens: tuple[int, ...], batch: int = 2) -> None:
    """Changing token t changes no output before t (and does change the output at t), for each
    sequence length (the model's maximum and shorter ones)."""
    g = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        for T in seq_lens:
            idx = torch.randint(vocab_size, (batch, T), generator=g)
            base = model(idx)
            assert base.shape[:2] == (batch, T) and base.shape[2] >= vocab_size
            for t in sorted({0, T // 3, T // 2, T - 1}):
                changed = idx.clone()
                changed[:, t] = (changed[:, t] + 1 + torch.randint(vocab_size - 1, (batch,), generator=g)) % vocab_size
                out = model(changed)
                torch.testing.assert_close(out[:, :t], base[:, :t], rtol=1e-5, atol=1e-5)
                assert not torch.allclose(out[:, t], base[:, t]), f"token {t} does not affect its own output (T={T})"


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


def check_gradients_reach_every_parameter(model: nn.Module, vocab_size: int, seq_len: int) -> None:
    """One backward pass gives every parameter a finite, non-zero gradient."""
    model.train()
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(vocab_size, (2, seq_len + 1), generator=g)
    logits = model(idx[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"no (or zero, or non-finite) gradient for: {missing}"


def check_state_dict_round_trip(build: Callable[[int], nn.Module], vocab_size: int, seq_len: int) -> None:
    """A state dict saved with torch.save and loaded into a differently seeded model gives the
    same outputs."""
    a, b = build(0), build(1)
    idx = torch.randint(vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(3))
    a.eval(), b.eval()
    with torch.no_grad():
        assert not torch.allclose(a(idx), b(idx)), "two seeds built the same model"
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        buf.seek(0)
        b.load_state_dict(torch.load(buf, weights_only=True))
        torch.testing.assert_close(b(idx), a(idx), rtol=0, atol=0)


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


def check_loss_falls(
    model: nn.Module, tokenizer: str = "bytes", steps: int = 25, seq_len: int = 64, batch: int = 8, lr: float = 3e-3
) -> tuple[float, float]:
    """A short AdamW run on the embedded corpus: the mean loss of the last 5 steps is well below
    that of the first 5. Returns (first, last)."""
    from blagpt.data.prepare import embedded_dataset
    from blagpt.data.shards import read_shard
    import glob

    train_glob, _ = embedded_dataset(tokenizer)
    tokens = np.concatenate([read_shard(p) for p in sorted(glob.glob(train_glob))]).astype(np.int64)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch)
        chunk = torch.from_numpy(np.stack([tokens[s : s + seq_len + 1] for s in starts]))
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert last < first - 1.0, f"loss did not fall: first steps {first:.3f}, last steps {last:.3f}"
    return first, last


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
