"""The Mamba-2 layer: SSD (state space duality) with a scalar decay per head.

Dao and Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality", arXiv 2405.21060.

Per head h, with input x_t (head_dim P), input-dependent step dt_t > 0, B_t and C_t (d_state N,
shared by the heads of a group) and a learned A_h < 0, the selective SSM is

    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T        (state S_t: P x N)
    y_t = S_t C_t + D_h x_t

Two ways of computing it live here, and the tests hold them equal:

* :func:`ssd_chunked`, the training path (the paper's Listing 1, section 7): split the sequence
  into chunks of Q tokens; inside a chunk the output is a masked (Q x Q) "attention" C B^T weighted
  by the cumulated decays; between chunks only the (P x N) states are passed on, through a short
  recurrence over chunk boundaries. Decays are kept as log decays (``dt * A <= 0``): within a
  chunk every product of decays is ``exp`` of a *segment sum* of log decays, and between chunks
  each chunk's total decay (at most 1) scales the carried fp32 state, so nothing overflows or
  cancels, whatever the sequence length, in fp32 or bf16.
* :func:`ssd_step` / :func:`ssd_recurrent`, the reference: one token at a time with a constant-size
  state, also what generation uses.

The layer :class:`Mamba2` wraps the SSD as in the paper's Figure 6 (Mamba-2 block): one input
projection to (z, x, B, C, dt), a short causal depthwise convolution with SiLU over (x, B, C), the
SSD, a gated RMSNorm ``norm(y * silu(z))`` and an output projection. Its recurrent state is the
convolution's last ``d_conv - 1`` inputs plus the SSM state, constant in the sequence length.

Optionally, on CUDA, the fused kernels of ``mamba-ssm`` (``mamba_chunk_scan_combined``) and
``causal-conv1d`` replace the PyTorch SSD and convolution (``kernel="fused"``); they are never
required.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Kernel = Literal["torch", "fused"]


# -- SSD: chunked (training) and recurrent (reference) -------------------------------------


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums of log decays: ``out[..., i, j] = a[..., j+1] + ... + a[..., i]`` for j <= i,
    ``-inf`` above the diagonal, so ``exp(out)`` is the causal matrix of decay products.

    Built from masked cumulative sums of the terms themselves, not as differences of one long
    cumsum, so no precision is lost to cancellation of large partial sums.
    """
    T = a.size(-1)
    terms = a.unsqueeze(-1).expand(*a.shape, T)  # terms[..., k, j] = a[..., k]
    strictly_below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    sums = terms.masked_fill(~strictly_below, 0.0).cumsum(dim=-2)  # sum over j < k <= i
    causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(0)
    return sums.masked_fill(~causal, float("-inf"))


def _state_dtype(x: torch.Tensor) -> torch.dtype:
    """States and log decays are kept in fp32 at least (fp64 inputs stay fp64)."""
    return torch.promote_types(x.dtype, torch.float32)


def _heads_of_groups(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., G, N) -> (..., H, N): each of the G groups' B or C is shared by H / G heads."""
    return t.repeat_interleave(n_heads // t.size(-2), dim=-2)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD in chunks (without the ``D x`` skip term).

    Args:
        x: (b, T, H, P) inputs per head.
        dt: (b, T, H) positive step sizes (after softplus).
        A: (H,) negative decay rates.
        B, C: (b, T, G, N) input and output projections of the state, G groups dividing H.
        chunk_size: Q; T need not be a multiple (the tail is padded with steps that neither
            decay nor write the state, so outputs and final state are unaffected).
        initial_state: (b, H, P, N) state before the first token, default zeros.

    Returns:
        y: (b, T, H, P) in x's dtype, and the final state (b, H, P, N) in fp32 (fp64 for fp64 x).
    """
    b, T, H, P = x.shape
    G, N = B.size(-2), B.size(-1)
    R = H // G  # heads per group: they share B and C, so C B^T is computed once per group
    Q = chunk_size
    c = -(-T // Q)  # chunks
    pad = c * Q - T
    dtype, acc = x.dtype, _state_dtype(x)
    xdt = x * dt.to(dtype).unsqueeze(-1)  # the discretised input dt_t x_t
    log_decay = dt.to(acc) * A.to(acc)  # (b, T, H), <= 0
    if pad:  # padded steps: log decay 0 (no decay) and no input, so they change nothing
        xdt, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, B, C))
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
    # Time-major x, so the state products are (heads x channels) x Q x N matmuls per group.
    xdt = xdt.reshape(b, c, Q, G, R, P)
    B = B.reshape(b, c, Q, G, N).transpose(2, 3)  # (b, c, G, Q, N)
    C = C.reshape(b, c, Q, G, N).transpose(2, 3)
    log_decay = log_decay.reshape(b, c, Q, G, R).permute(0, 1, 3, 4, 2)  # (b, c, G, R, Q)
    cum = log_decay.cumsum(dim=-1)  # log decay from the chunk's start to each token, inclusive

    # 1. Within each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(sum_{s<k<=l} log_decay_k) xdt_s.
    decay_matrix = torch.exp(segsum(log_decay)).to(dtype)  # (b, c, G, R, Q, Q)
    scores = (C @ B.transpose(-1, -2)).unsqueeze(3) * decay_matrix
    y_intra = scores @ xdt.permute(0, 1, 3, 4, 2, 5)  # (b, c, G, R, Q, P)

    # 2. The state each chunk alone leaves at its end: sum_s exp(decay s -> end) xdt_s B_s^T.
    decay_to_end = torch.exp(cum[..., -1:] - cum).to(dtype)  # (b, c, G, R, Q)
    weighted = xdt * decay_to_end.permute(0, 1, 4, 2, 3).unsqueeze(-1)  # (b, c, Q, G, R, P)
    weighted = weighted.reshape(b, c, Q, G, R * P).permute(0, 1, 3, 4, 2)  # (b, c, G, RP, Q)
    chunk_states = (weighted @ B).to(acc)  # (b, c, G, RP, N)

    # 3. Pass states over chunk boundaries, a short recurrence over the c chunks (in fp32).
    chunk_decay = torch.exp(cum[..., -1]).to(acc)  # (b, c, G, R): each chunk's total decay
    state = torch.zeros(b, G, R, P, N, device=x.device, dtype=acc)
    if initial_state is not None:
        state = initial_state.to(acc).reshape(b, G, R, P, N)
    entering = []
    # unbind, not indexing: the backward of c indexings would write c full-size zero gradients
    for decay, written in zip(chunk_decay.unbind(1), chunk_states.unbind(1)):
        entering.append(state)
        state = state * decay[..., None, None] + written.view(b, G, R, P, N)
    entering = torch.stack(entering, dim=1).view(b, c, G, R * P, N)  # the state before each chunk

    # 4. What the entering state contributes to each output, decayed to its position.
    y_inter = (C @ entering.to(dtype).transpose(-1, -2)).view(b, c, G, Q, R, P)
    y_inter = y_inter * torch.exp(cum).to(dtype).permute(0, 1, 2, 4, 3).unsqueeze(-1)

    y = y_inter.transpose(2, 3) + y_intra.permute(0, 1, 4, 2, 3, 5)  # (b, c, Q, G, R, P)
    y = y.reshape(b, c * Q, H, P)[:, :T]
    return y, state.reshape(b, H, P, N)


def ssd_step(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence: x (b, H, P), dt (b, H), B and C (b, G, N), state (b, H, P, N)
    fp32. Returns y (b, H, P) in x's dtype and the new state."""
    H = x.size(1)
    acc = _state_dtype(x)
    Bh, Ch = _heads_of_groups(B, H).to(acc), _heads_of_groups(C, H).to(acc)
    dt = dt.to(acc)
    decay = torch.exp(dt * A.to(acc))  # (b, H)
    write = (dt.unsqueeze(-1) * x.to(acc)).unsqueeze(-1) * Bh.unsqueeze(-2)  # (b, H, P, N)
    state = state * decay[..., None, None] + write
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    return y.to(x.dtype), state


def ssd_recurrent(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: :func:`ssd_step` over every token; same arguments and results as
    :func:`ssd_chunked` (without ``chunk_size``)."""
    b, T, H, P = x.shape
    state = initial_state
    if state is None:
        state = torch.zeros(b, H, P, B.size(-1), device=x.device, dtype=_state_dtype(x))
    ys = []
    for t in range(T):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


# -- the layer -------------------------------------------------------------------------------


@dataclass
class Mamba2State:
    """A Mamba-2 layer's recurrent state, constant in size.

    Attributes:
        conv: (b, d_conv - 1, conv_dim) the last inputs of the causal convolution.
        ssm: (b, H, P, N) fp32 SSM state.
    """

    conv: torch.Tensor
    ssm: torch.Tensor


class GatedRMSNorm(nn.Module):
    """``rmsnorm(y * silu(z)) * weight``, normalised per group of channels (the paper's
    "extra normalization" before the output projection, with the gate applied first)."""

    def __init__(self, dim: int, n_groups: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_groups, self.eps = n_groups, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        g = (y * F.silu(z)).to(_state_dtype(y))
        g = g.unflatten(-1, (self.n_groups, -1))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return g.flatten(-2).to(y.dtype) * self.weight


def fused_kernels_available() -> str | None:
    """None when ``mamba-ssm`` and ``causal-conv1d`` import, else the reason they do not."""
    try:
        import causal_conv1d  # noqa: F401
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken CUDA extension
        return f"{type(e).__name__}: {e}"
    return None


class Mamba2(nn.Module):
    """The Mamba-2 block's mixer (arXiv 2405.21060, Figure 6), input and output (b, T, d_model).

    Args:
        d_model: width of the residual stream.
        d_state: N, state size per head.
        head_dim: P, channels per head; ``expand * d_model`` must be a multiple.
        expand: inner width ``d_inner = expand * d_model``.
        d_conv: kernel size of the causal depthwise convolution.
        n_groups: G, groups of heads sharing B and C (and normalised together).
        chunk_size: Q of the chunked SSD.
        kernel: ``"torch"`` (pure PyTorch, everywhere) or ``"fused"`` (mamba-ssm + causal-conv1d,
            CUDA only; an error at construction if they are not installed).
        recompute: in training, keep only the projections' outputs and recompute the convolution,
            SSD and norm in the backward pass (less activation memory, a little more time).
        dt_min, dt_max: range of the initial step sizes (log-uniform), as in the paper's code.
        a_init_range: range of the initial -A (uniform).
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        head_dim: int = 64,
        expand: int = 2,
        d_conv: int = 4,
        n_groups: int = 1,
        chunk_size: int = 64,
        kernel: Kernel = "torch",
        recompute: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        a_init_range: tuple[float, float] = (1.0, 16.0),
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if d_inner % head_dim:
            raise ValueError(f"expand * d_model = {d_inner} is not a multiple of head_dim = {head_dim}")
        n_heads = d_inner // head_dim
        if n_heads % n_groups:
            raise ValueError(f"n_groups = {n_groups} does not divide the {n_heads} heads")
        if kernel == "fused":
            why = fused_kernels_available()
            if why is not None:
                raise ValueError(
                    "kernel='fused' needs the optional CUDA packages mamba-ssm and causal-conv1d "
                    f"(pip install mamba-ssm causal-conv1d), which do not import here: {why}; "
                    "use kernel='torch'"
                )
        self.d_model, self.d_inner, self.d_state, self.d_conv = d_model, d_inner, d_state, d_conv
        self.head_dim, self.n_heads, self.n_groups = head_dim, n_heads, n_groups
        self.chunk_size, self.kernel, self.recompute = chunk_size, kernel, recompute
        self.conv_dim = d_inner + 2 * n_groups * d_state

        # in_proj -> z (gate), x, B, C (the convolved part), dt (one per head)
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * n_groups * d_state + n_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=True)
        dt = torch.exp(torch.rand(n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(*a_init_range)))
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm = GatedRMSNorm(d_inner, n_groups)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    # -- pieces ---------------------------------------------------------------------------

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return zxbcdt.split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)

    def _split_xbc(self, xbc: torch.Tensor):
        gn = self.n_groups * self.d_state
        x, B, C = xbc.split([self.d_inner, gn, gn], dim=-1)
        lead = x.shape[:-1]
        return (
            x.unflatten(-1, (self.n_heads, self.head_dim)),
            B.reshape(*lead, self.n_groups, self.d_state),
            C.reshape(*lead, self.n_groups, self.d_state),
        )

    def init_state(self, batch_size: int, device=None, dtype=None) -> Mamba2State:
        """The zero state before any token."""
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return Mamba2State(
            conv=torch.zeros(batch_size, self.d_conv - 1, self.conv_dim, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.n_heads, self.head_dim, self.d_state, device=device, dtype=torch.float32),
        )

    def _conv(self, xbc: torch.Tensor, state: Mamba2State | None) -> torch.Tensor:
        """Causal depthwise conv + SiLU over (b, T, conv_dim); updates ``state.conv``.

        Computed time-major as ``bias + sum_k w_k * in_{t-K+1+k}`` (K shifted multiply-adds), the
        same as ``self.conv1d`` over the left-padded sequence, without transposing to and from
        the channels-first layout."""
        if self.kernel == "fused" and state is None:
            from causal_conv1d import causal_conv1d_fn

            w = self.conv1d.weight.squeeze(1)
            u = xbc.transpose(1, 2).contiguous()
            return causal_conv1d_fn(u, w, self.conv1d.bias, activation="silu").transpose(1, 2)
        K, T = self.d_conv, xbc.size(1)
        past = state.conv if state is not None else xbc.new_zeros(xbc.size(0), K - 1, self.conv_dim)
        u = torch.cat([past.to(xbc.dtype), xbc], dim=1)  # (b, K-1+T, conv_dim)
        if state is not None:
            state.conv = u[:, u.size(1) - (K - 1) :].detach()
        w = self.conv1d.weight.squeeze(1).t()  # (K, conv_dim)
        out = torch.addcmul(self.conv1d.bias, u[:, :T], w[0])
        for k in range(1, K):
            out = torch.addcmul(out, u[:, k : k + T], w[k])
        return F.silu(out)

    def _ssd(self, x, dt, B, C, state: Mamba2State | None, reference: bool) -> torch.Tensor:
        A = -torch.exp(self.A_log.to(_state_dtype(x)))
        init = state.ssm if state is not None else None
        if self.kernel == "fused" and not reference:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            out = mamba_chunk_scan_combined(
                x, dt, A, B, C, chunk_size=self.chunk_size, initial_states=init, return_final_states=True
            )
            y, final = out
        elif reference:
            y, final = ssd_recurrent(x, dt, A, B, C, init)
        else:
            y, final = ssd_chunked(x, dt, A, B, C, self.chunk_size, init)
        if state is not None:
            state.ssm = final.detach()
        return y

    # -- forward ---------------------------------------------------------------------------

    def forward(self, u: torch.Tensor, state: Mamba2State | None = None, reference: bool = False) -> torch.Tensor:
        """(b, T, d_model) -> (b, T, d_model).

        Args:
            u: the (normalised) input.
            state: if given, the sequence continues from it and it is updated in place to the
                state after the last token (a prompt's prefill, or one generated token).
            reference: compute the SSD one token at a time (the recurrent reference) instead of
                in chunks. A single token continuing a ``state`` (generation) always takes the
                recurrence.
        """
        reference = reference or (state is not None and u.size(1) == 1)
        if self.kernel == "fused" and not u.is_cuda:
            raise RuntimeError("Mamba2 kernel='fused' runs on CUDA only; use kernel='torch' on this device")
        zxbcdt = self.in_proj(u)
        if self.recompute and state is None and torch.is_grad_enabled():
            y = checkpoint(self._mix, zxbcdt, None, reference, use_reentrant=False)
        else:
            y = self._mix(zxbcdt, state, reference)
        return self.out_proj(y)

    def _mix(self, zxbcdt: torch.Tensor, state: Mamba2State | None, reference: bool) -> torch.Tensor:
        """Everything between the two projections: conv, SSD, skip, gated norm."""
        z, xbc, dt = self._split(zxbcdt)
        xbc = self._conv(xbc, state)
        x, B, C = self._split_xbc(xbc)
        acc = _state_dtype(dt)
        dt = F.softplus(dt.to(acc) + self.dt_bias.to(acc))
        y = self._ssd(x, dt, B, C, state, reference)
        y = y + x * self.D.to(x.dtype).unsqueeze(-1)
        return self.norm(y.flatten(-2), z)

    def step(self, u: torch.Tensor, state: Mamba2State) -> torch.Tensor:
        """One token, (b, d_model) -> (b, d_model), through the recurrence; updates ``state``."""
        return self.forward(u.unsqueeze(1), state, reference=True).squeeze(1)

    def flops_per_token(self) -> float:
        """Forward + backward FLOPs per token of the chunked SSD beyond the projections' matmuls:
        the within-chunk scores and outputs (2 Q H (N + P)) plus chunk states and their outputs
        (4 H P N), times 3 for the backward."""
        Q, H, P, N = self.chunk_size, self.n_heads, self.head_dim, self.d_state
        return 3.0 * (2 * Q * H * (N + P) + 4 * H * P * N)
