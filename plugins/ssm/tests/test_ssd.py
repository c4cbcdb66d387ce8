"""The chunked SSD against the step-by-step recurrence, and the layer's own paths."""

from __future__ import annotations

import pytest
import torch

from blagpt_plugin_ssm import Mamba2, segsum, ssd_chunked, ssd_recurrent

# The models under test are tiny: one thread avoids synchronisation stalls on a shared machine.
torch.set_num_threads(1)


def random_ssd_inputs(T: int, b=2, H=4, P=8, G=2, N=16, dtype=torch.float32, seed=0, dt_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g)
    dt = torch.rand(b, T, H, generator=g) * dt_scale + 1e-3
    A = -(torch.rand(H, generator=g) * 4 + 0.1)
    B = torch.randn(b, T, G, N, generator=g)
    C = torch.randn(b, T, G, N, generator=g)
    s0 = torch.randn(b, H, P, N, generator=g)
    return [t.to(dtype) for t in (x, dt, A, B, C, s0)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_segsum_is_the_sum_of_the_segment():
    a = torch.randn(7)
    s = segsum(a)
    for i in range(7):
        for j in range(7):
            want = a[j + 1 : i + 1].sum() if j <= i else torch.tensor(float("-inf"))
            torch.testing.assert_close(s[i, j], want)


@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64])
@pytest.mark.parametrize("T", [1, 13, 50])
def test_chunked_equals_recurrent_fp32(chunk_size, T):
    x, dt, A, B, C, s0 = random_ssd_inputs(T)
    for init in (None, s0):
        y1, f1 = ssd_chunked(x, dt, A, B, C, chunk_size, init)
        y2, f2 = ssd_recurrent(x, dt, A, B, C, init)
        assert rel_err(y1, y2) < 1e-4 and rel_err(f1, f2) < 1e-4


@pytest.mark.parametrize("chunk_size,T", [(8, 29), (16, 16), (32, 45)])
def test_chunked_gradients_equal_recurrent(chunk_size, T):
    inputs = random_ssd_inputs(T, seed=1)
    grads = []
    for fn in (lambda *a: ssd_chunked(*a[:5], chunk_size, a[5]), lambda *a: ssd_recurrent(*a)):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        y, final = fn(*leaves)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))
        v = torch.randn(final.shape, generator=torch.Generator().manual_seed(10))
        ((y * w).sum() + (final * v).sum()).backward()
        grads.append([t.grad for t in leaves])
    for name, g1, g2 in zip(("x", "dt", "A", "B", "C", "state"), *grads):
        assert rel_err(g1, g2) < 1e-4, name


def test_long_sequences_with_strong_decay_stay_finite_in_fp32_and_bf16():
    # log decays summing to about -1e4 over the sequence: exp of a long cumsum would underflow
    # and its differences lose all precision; segment sums do not.
    x, dt, A, B, C, _ = random_ssd_inputs(2048, b=1, H=2, P=4, G=1, N=8, dt_scale=2.0, seed=2)
    y32, f32 = ssd_chunked(x, dt, A, B, C, 64)
    assert torch.isfinite(y32).all() and torch.isfinite(f32).all()
    y_ref, _ = ssd_chunked(*(t.double() for t in (x, dt, A, B, C)), 64)
    assert rel_err(y32, y_ref) < 1e-5
    y16, f16 = ssd_chunked(x.bfloat16(), dt.bfloat16(), A, B.bfloat16(), C.bfloat16(), 64)
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all() and torch.isfinite(f16).all()
    assert rel_err(y16, y_ref) < 5e-2


def make_layer(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(d_state=16, head_dim=8, chunk_size=8, n_groups=2)
    args.update(kw)
    return Mamba2(32, **args)


@pytest.mark.parametrize("T", [5, 8, 23])
def test_layer_chunked_equals_reference_with_gradients(T):
    layer = make_layer()
    u = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(5), requires_grad=True)
    outs, grads = [], []
    for reference in (False, True):
        layer.zero_grad()
        u.grad = None
        y = layer(u, reference=reference)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([u.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    assert rel_err(outs[0], outs[1]) < 1e-4
    for g1, g2 in zip(*grads):
        assert rel_err(g1, g2) < 1e-4


def test_time_major_conv_equals_conv1d():
    import torch.nn.functional as F

    layer = make_layer(seed=4)
    xbc = torch.randn(2, 11, layer.conv_dim, generator=torch.Generator().manual_seed(11))
    want = F.silu(layer.conv1d(F.pad(xbc.transpose(1, 2), (layer.d_conv - 1, 0)))).transpose(1, 2)
    torch.testing.assert_close(layer._conv(xbc, None), want)


def test_layer_state_continues_a_sequence():
    """Prefill (chunked, with state out), then single steps (recurrence), equal the whole pass."""
    layer = make_layer(seed=1)
    u = torch.randn(2, 30, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        whole = layer(u)
        state = layer.init_state(2)
        parts = [layer(u[:, :11], state), layer(u[:, 11:20], state)]
        parts += [layer.step(u[:, t], state).unsqueeze(1) for t in range(20, 30)]
    assert rel_err(torch.cat(parts, 1), whole) < 1e-5
    assert state.conv.shape == (2, 3, layer.conv_dim) and state.ssm.shape == (2, layer.n_heads, 8, 16)


def test_fused_kernel_is_a_clear_error_without_its_packages():
    from blagpt_plugin_ssm import fused_kernels_available

    if fused_kernels_available() is None:
        pytest.skip("mamba-ssm and causal-conv1d are installed here: nothing to refuse")
    with pytest.raises(ValueError, match="mamba-ssm"):
        make_layer(kernel="fused")


def test_layer_under_bf16_autocast_is_close_to_fp32():
    layer = make_layer(seed=2)
    u = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(7))
    state = layer.init_state(2)
    with torch.no_grad():
        y32 = layer(u)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = layer(u, state)
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all()
    assert state.ssm.dtype == torch.float32
    assert rel_err(y16, y32) < 5e-2


def test_recompute_gives_the_same_outputs_and_gradients():
    u = torch.randn(2, 19, 32, generator=torch.Generator().manual_seed(8), requires_grad=True)
    results = []
    for recompute in (False, True):
        layer = make_layer(seed=3, recompute=recompute)
        u.grad = None
        y = layer(u)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append([y.detach(), u.grad.clone()] + [p.grad for p in layer.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernels run on CUDA only")
def test_fused_kernels_match_the_pytorch_path_on_cuda():
    from blagpt_plugin_ssm import fused_kernels_available

    why = fused_kernels_available()
    if why is not None:
        pytest.skip(f"mamba-ssm / causal-conv1d not installed: {why}")
    torch.manual_seed(0)
    ref = Mamba2(256, d_state=64, head_dim=64, chunk_size=64).cuda()
    fused = Mamba2(256, d_state=64, head_dim=64, chunk_size=64, kernel="fused").cuda()
    fused.load_state_dict(ref.state_dict())
    u = torch.randn(2, 300, 256, device="cuda", requires_grad=True)
    outs = []
    for layer in (ref, fused):
        u.grad = None
        y = layer(u)
        y.square().mean().backward()
        outs.append([y.detach(), u.grad.clone()] + [p.grad for p in layer.parameters()])
    for a, b in zip(*outs):
        assert rel_err(b, a) < 1e-2  # the Triton kernels may use TF32 matmuls
