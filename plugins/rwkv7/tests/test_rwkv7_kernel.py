"""The chunked delta-rule kernel against the step-by-step reference."""

import math

import pytest
import torch

from blagpt_plugin_rwkv7.wkv import MAX_ABS_LOG_W, wkv7_chunked, wkv7_recurrent


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def rwkv7_inputs(B, T, H, N, seed=0, decay_scale=1.0):
    """Random inputs shaped like RWKV-7's: unit-norm removal key, iclr in (0, 1), log w in (-0.61, 0)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    r, k, v = rand(B, T, H, N), rand(B, T, H, N), rand(B, T, H, N)
    log_w = -MAX_ABS_LOG_W * decay_scale * torch.sigmoid(2 * rand(B, T, H, N))
    kappa = torch.nn.functional.normalize(rand(B, T, H, N), dim=-1)
    iclr = torch.sigmoid(rand(B, T, H, N))
    return [r, log_w, k, v, -kappa, kappa * iclr]


@pytest.mark.parametrize(
    "T,chunk",
    [(1, 16), (7, 16), (16, 16), (45, 16), (45, 8), (70, 32), (100, 64), (33, 1), (130, 64), (200, 48)],
)
def test_chunked_equals_recurrent_fp32(T, chunk):
    x = rwkv7_inputs(2, T, 3, 16, seed=T * 1000 + chunk)
    s0 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y_ref, h_ref = wkv7_recurrent(*x, state=s0)
    y, h = wkv7_chunked(*x, state=s0, chunk_size=chunk)
    assert y.shape == y_ref.shape == (2, T, 3, 16)
    assert rel(y, y_ref) < 1e-4
    assert rel(h, h_ref) < 1e-4


@pytest.mark.parametrize(
    "T,chunk,strongest_decay", [(45, 16, False), (64, 32, False), (23, 8, False), (150, 64, False), (150, 64, True)]
)
def test_chunked_gradients_equal_recurrent(T, chunk, strongest_decay):
    x = rwkv7_inputs(1, T, 2, 16, seed=T)
    if strongest_decay:  # largest exponentiated factors the kernel meets (e^{0.61 * 64})
        x[1] = torch.full_like(x[1], -MAX_ABS_LOG_W)
    x = [t.requires_grad_() for t in x]
    s0 = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(2)).requires_grad_()
    dy = torch.randn(1, T, 2, 16, generator=torch.Generator().manual_seed(3))
    dh = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(4))
    grads = []
    for fn, kw in ((wkv7_recurrent, {}), (wkv7_chunked, {"chunk_size": chunk})):
        y, h = fn(*x, state=s0, **kw)
        grads.append(torch.autograd.grad((y * dy).sum() + (h * dh).sum(), [*x, s0]))
    for name, g_ref, g in zip(["r", "log_w", "k", "v", "a", "b", "state"], *grads):
        assert rel(g, g_ref) < 1e-4, name


def test_chunked_carries_state_across_calls():
    """Running a sequence in two pieces through the returned state equals one call."""
    x = rwkv7_inputs(1, 50, 2, 8, seed=5)
    y_all, h_all = wkv7_chunked(*x, chunk_size=16)
    y1, h1 = wkv7_chunked(*[t[:, :21] for t in x], chunk_size=16)
    y2, h2 = wkv7_chunked(*[t[:, 21:] for t in x], state=h1, chunk_size=16)
    assert rel(torch.cat([y1, y2], 1), y_all) < 1e-5
    assert rel(h2, h_all) < 1e-5


def test_bf16_inputs_match_fp32_reference():
    x = rwkv7_inputs(1, 200, 2, 32, seed=6)
    y_ref, _ = wkv7_recurrent(*[t.double() for t in x])
    y, h = wkv7_chunked(*[t.bfloat16() for t in x], chunk_size=64)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert rel(y, y_ref) < 3e-2  # bf16 rounding of the inputs, not the kernel, sets this


def test_long_sequence_strongest_decay_stays_finite_and_exact():
    """Every token at the strongest decay RWKV-7 allows, over many chunks: a naive cumulative
    product would underflow to 0 (e^-0.61*4096) and its inverse overflow; log-space chunks do not."""
    T = 4096
    x = rwkv7_inputs(1, T, 1, 8, seed=7)
    x[1] = torch.full_like(x[1], -MAX_ABS_LOG_W)
    assert math.exp(-MAX_ABS_LOG_W * T) == 0.0  # the naive decay from the start underflows
    y_ref, h_ref = wkv7_recurrent(*x)
    for chunk in (32, 64):
        y, h = wkv7_chunked(*x, chunk_size=chunk)
        assert torch.isfinite(y).all() and torch.isfinite(h).all()
        assert rel(y, y_ref) < 1e-4
        y, _ = wkv7_chunked(*[t.bfloat16() for t in x], chunk_size=chunk)
        assert torch.isfinite(y).all()


def test_chunk_size_bounds():
    x = rwkv7_inputs(1, 4, 1, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        wkv7_chunked(*x, chunk_size=65)
