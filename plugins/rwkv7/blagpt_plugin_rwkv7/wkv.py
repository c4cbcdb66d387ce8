"""The RWKV-7 state update (the generalised delta rule) in three interchangeable forms.

Per head, with a key-by-value state ``h`` (K x V) and per-token vectors ``r, k, a, b`` (K),
``v`` (V) and a per-channel log decay ``log_w`` (K, all <= 0)::

    h_t = diag(w_t) h_{t-1} + b_t (a_t^T h_{t-1}) + k_t v_t^T        w_t = exp(log_w_t)
    y_t = h_t^T r_t

RWKV-7 calls this with ``a = -kappa_hat`` (the normalised removal key) and
``b = kappa_hat * iclr`` (removal key times in-context learning rate), so the transition
``diag(w) - kappa_hat (kappa_hat * iclr)^T`` is the paper's generalised delta rule (Peng et al.
2025, arXiv 2503.14456, eq. 16, written here transposed: ``h = S^T``).

* :func:`wkv7_recurrent` - the step-by-step reference: one token at a time, constant-size state.
  Used by tests and for generation.
* :func:`wkv7_chunked` - the training path in pure PyTorch. Inside a chunk of ``L`` tokens the
  ``a^T h`` reads ("sa") form a unit lower-triangular linear system (the UT transform / WY
  representation of the product of the ``L`` rank-one-plus-diagonal transitions), solved with one
  batched triangular solve for every chunk at once; only an ``(K x K)`` affine map per chunk is
  carried across chunks in a short Python loop. Decays are kept as cumulative sums of logs
  that restart at every chunk, so no exponentiated factor exceeds
  ``exp(chunk_size * max|log_w|)`` whatever the sequence length (a cumulative product from the
  start of the sequence would underflow to zero after a few hundred tokens and its inverse
  overflow).
* :func:`wkv7_fla` - flash-linear-attention's fused Triton kernel (CUDA only, optional).

All three take ``(B, T, H, N)`` tensors, an optional initial state ``(B, H, K, V)``, compute in
fp32 whatever the input dtype, and return ``(y, final_state)`` with ``y`` in the input dtype.
"""

from __future__ import annotations

import math

import torch

# The most negative log decay per token RWKV-7's parametrisation can produce: -exp(-0.5).
MAX_ABS_LOG_W = math.exp(-0.5)
# Largest chunk for which every exponentiated factor stays inside fp32 range (e^88) with room
# for the sums of a matmul, given |log_w| <= MAX_ABS_LOG_W: exp(64 * 0.61) ~ e^39.
MAX_CHUNK_SIZE = 64


def wkv7_recurrent(r, log_w, k, v, a, b, state=None):
    """Step-by-step reference of the generalised delta rule (see module docstring).

    Args:
        r, log_w, k, a, b: ``(B, T, H, K)``; v: ``(B, T, H, V)``.
        state: ``(B, H, K, V)`` fp32 state before the first token, or None for zeros.

    Returns:
        ``(y, state)``: ``y`` is ``(B, T, H, V)`` in ``v``'s dtype; ``state`` the fp32 state
        after the last token.
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    r, log_w, k, v, a, b = (x.float() for x in (r, log_w, k, v, a, b))
    h = torch.zeros(B, H, K, V, device=r.device, dtype=torch.float32) if state is None else state.float()
    w = log_w.exp()
    ys = []
    for t in range(T):
        sa = torch.einsum("bhk,bhkv->bhv", a[:, t], h)  # a_t^T h_{t-1}
        h = (
            w[:, t, :, :, None] * h
            + b[:, t, :, :, None] * sa[:, :, None, :]
            + k[:, t, :, :, None] * v[:, t, :, None, :]
        )
        ys.append(torch.einsum("bhk,bhkv->bhv", r[:, t], h))  # h_t^T r_t
    y = torch.stack(ys, dim=1) if ys else v.new_zeros(B, 0, H, V)
    return y.to(out_dtype), h


def wkv7_chunked(r, log_w, k, v, a, b, state=None, chunk_size: int = 32):
    """Chunked (UT-transform) form of :func:`wkv7_recurrent`; same arguments and results.

    Any ``T`` works: the tail is padded with identity steps (no decay, zero keys) that leave the
    state untouched and whose outputs are dropped.

    Requires ``chunk_size * max(-log_w)`` well below ~80 (fp32 exponent range);
    ``chunk_size <= 64`` with RWKV-7's ``log_w >= -exp(-0.5)`` guarantees it. Every output
    depends on earlier tokens only, bit for bit: the intra-chunk factors are taken relative to
    the chunk's start, never to a later token.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK_SIZE}], got {chunk_size}")
    B, T, H, K = r.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    L = chunk_size
    n = max(1, -(-T // L))
    pad = n * L - T

    def chunks(x: torch.Tensor) -> torch.Tensor:  # (B, T, H, D) -> (B, H, n, L, D), fp32
        x = x.float()
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, n, L, H, x.shape[-1]).permute(0, 3, 1, 2, 4).contiguous()

    r, log_w, k, v, a, b = (chunks(x) for x in (r, log_w, k, v, a, b))

    # Cumulative log decay inside each chunk: c[t] = sum_{s<=t} log w_s (inclusive), c - log_w
    # (exclusive). Decay from token s to token t of a chunk: exp(c_t - c_s) = exp(c_t) exp(-c_s),
    # with exp(c_t) <= 1 and exp(-c_s) <= exp(L * max|log_w|).
    c = log_w.cumsum(dim=-2)
    c_excl = c - log_w
    c_last = c[..., -1:, :]

    # r_t, a_t decayed back to the chunk's start (these also read the start state h0) and
    # k_s, b_s scaled up by the inverse decay of their own position.
    r_in = r_h0 = r * c.exp()
    a_in = a_h0 = a * c_excl.exp()
    inv_s = (-c).exp()
    k_out, b_out = k * inv_s, b * inv_s
    # Decay from each token to the chunk's end (<= 1).
    to_end = (c_last - c).exp()
    k_end, b_end = k * to_end, b * to_end

    ones = torch.ones(L, L, dtype=torch.bool, device=r.device)
    strict = torch.tril(ones, diagonal=-1)  # s < t: a_t reads the state *before* token t
    incl = torch.tril(ones)  # s <= t: r_t reads the state *after* token t
    zero = r.new_zeros(())
    m_ab = torch.where(strict, a_in @ b_out.transpose(-1, -2), zero)
    m_ak = torch.where(strict, a_in @ k_out.transpose(-1, -2), zero)
    m_rb = torch.where(incl, r_in @ b_out.transpose(-1, -2), zero)
    m_rk = torch.where(incl, r_in @ k_out.transpose(-1, -2), zero)

    # sa_t = a_t^T h_{t-1} for every t of a chunk: SA = A~ h0 + M_ab SA + M_ak V, i.e.
    # (I - M_ab) SA = A~ h0 + M_ak V; unit lower triangular, solved for both parts at once.
    eye = torch.eye(L, dtype=r.dtype, device=r.device)
    rhs = torch.cat([a_h0, m_ak @ v], dim=-1)
    sol = torch.linalg.solve_triangular(eye - m_ab, rhs, upper=False, unitriangular=True)
    sa_h0, sa_own = sol[..., :K], sol[..., K:]  # SA = sa_h0 @ h0 + sa_own

    # y = R~ h0 + M_rb SA + M_rk V  ->  y = q_h0 @ h0 + y_own
    q_h0 = r_h0 + m_rb @ sa_h0
    y_own = m_rb @ sa_own + m_rk @ v
    # State across the chunk: h_end = (diag(w_end) + B^T sa_h0) h0 + B^T sa_own + K^T V.
    b_end_t = b_end.transpose(-1, -2)
    carry = torch.diag_embed(c_last.squeeze(-2).exp()) + b_end_t @ sa_h0  # (B, H, n, K, K)
    inject = b_end_t @ sa_own + k_end.transpose(-1, -2) @ v  # (B, H, n, K, V)

    h = r.new_zeros(B, H, K, V) if state is None else state.float()
    starts = []
    # unbind, not carry[:, :, i]: indexing would make backward zero-fill a full-size gradient
    # for every chunk (quadratic in the number of chunks).
    for carry_i, inject_i in zip(carry.unbind(2), inject.unbind(2)):
        starts.append(h)
        h = carry_i @ h + inject_i
    h0 = torch.stack(starts, dim=2)  # (B, H, n, K, V): state entering each chunk
    y = q_h0 @ h0 + y_own  # (B, H, n, L, V)
    y = y.permute(0, 2, 3, 1, 4).reshape(B, n * L, H, V)[:, :T]
    return y.to(out_dtype), h


def fla_available() -> bool:
    """Whether flash-linear-attention's RWKV-7 kernel can be imported."""
    try:
        from fla.ops.rwkv7 import chunk_rwkv7  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken Triton install
        return False
    return True


def wkv7_fla(r, log_w, k, v, a, b, state=None):
    """flash-linear-attention's fused chunked kernel (Triton, CUDA only)."""
    if not r.is_cuda:
        raise RuntimeError("model.kernel='fla' runs on CUDA only; use kernel='chunked' on this device")
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(
            "model.kernel='fla' needs flash-linear-attention: pip install flash-linear-attention "
            f"(import failed: {e})"
        ) from None
    y, h = chunk_rwkv7(
        r=r, w=log_w, k=k, v=v, a=a, b=b, scale=1.0,
        initial_state=None if state is None else state.float(), output_final_state=True,
    )
    return y.to(v.dtype), h
