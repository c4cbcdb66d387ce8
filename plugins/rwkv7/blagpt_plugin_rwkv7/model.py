"""RWKV-7 "Goose": an RNN language model with the generalised delta rule.

Peng, Zhang, Goldstein, Alcaide, Du, Hou, Lin, Liu, Lu, Merrill, Song, Tan, Utpala, Wilce, Wind,
Wu, Wuttke, Zhou-Zheng (2025), "RWKV-7 'Goose' with Expressive Dynamic State Evolution",
arXiv 2503.14456.

Each layer is a time-mixing block (the sequence mixer, :class:`TimeMix`) and a channel-mixing
block (the MLP, :class:`ChannelMix`), each pre-LayerNorm with a residual. Time mixing, for the
token-shifted inputs x^r, x^w, x^k, x^v, x^a, x^g (lerps between x_t and x_{t-1}):

    r = x^r W_r                      receptance
    d = w0 + tanh(x^w A_w) B_w       decay logits;  w = exp(-e^{-0.5} sigmoid(d))  in (0.545, 1)
    k = x^k W_k,  v = x^v W_v        key, value
    v = lerp(v, v_first, sigmoid(v0 + x^v A_v B_v))     value residual to layer 0's value
    a = sigmoid(a0 + x^a A_a B_a)    in-context learning rate
    g = sigmoid(x^g A_g) B_g         output gate
    kappa_hat = normalize(k * xi)    removal key (per head, unit norm)
    k~ = k * lerp(1, a, alpha)       replacement key
    S_t = S_{t-1} (diag(w_t) - kappa_hat^T (a * kappa_hat)) + v^T k~       (the delta rule)
    o = W_o (g * (GroupNorm(S_t r) + (r . (rho * k~)) v))                 (bonus term per head)

Channel mixing is ``W_v relu(x^k W_k)^2`` on a token-shifted input. The token shift of the paper
is a static learned lerp per channel; ``token_shift_lora > 0`` makes it data-dependent (each
branch's lerp weight plus a low-rank function of the input, as in RWKV-6's ddlerp).

The delta rule runs through one of the kernels of :mod:`.wkv` (``config.kernel``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch.utils.checkpoint import checkpoint

from blagpt import ModelConfig
from blagpt.nn import padded_vocab, vocab_multiple_field

from .wkv import MAX_ABS_LOG_W, MAX_CHUNK_SIZE, wkv7_chunked, wkv7_fla, wkv7_recurrent


class RWKV7Config(ModelConfig):
    """RWKV-7 "Goose" (Peng et al. 2025, arXiv 2503.14456)."""

    name: str = Field(default="rwkv7", description="Registered model name.")
    d_model: int = Field(default=128, gt=0, description="Residual width C.")
    n_layers: int = Field(default=4, gt=0, description="Number of blocks (time mixing + channel mixing).")
    head_size: int = Field(
        default=32, gt=0, description="Channels per head N; the state of each head is N x N. Must divide d_model."
    )
    ffn_dim: int | None = Field(
        default=None, gt=0, description="Hidden width of channel mixing; unset: 4 * d_model (the paper's)."
    )
    decay_lora: int | None = Field(
        default=None, gt=0, description="Rank of the decay LoRA (A_w, B_w); unset: the paper's rule from d_model."
    )
    iclr_lora: int | None = Field(
        default=None, gt=0, description="Rank of the in-context-learning-rate LoRA (A_a, B_a); unset: paper's rule."
    )
    value_lora: int | None = Field(
        default=None, gt=0, description="Rank of the value-residual gate LoRA (A_v, B_v); unset: paper's rule."
    )
    gate_lora: int | None = Field(
        default=None, gt=0, description="Rank of the output-gate LoRA (A_g, B_g); unset: paper's rule."
    )
    token_shift_lora: int = Field(
        default=0,
        ge=0,
        description="0: the paper's static per-channel token-shift lerp. >0: data-dependent lerp weights "
        "through a shared low-rank projection of this rank (RWKV-6 ddlerp), added to the static ones.",
    )
    value_residual: bool = Field(
        default=True, description="Mix each layer's value toward layer 0's value (the paper's 'v-first')."
    )
    tie_embeddings: bool = Field(
        default=True,
        description="Share the input embedding and output head (as the GPT-2 baseline does); "
        "false: a separate head, as in the paper's released models.",
    )
    kernel: Literal["chunked", "recurrent", "fla"] = Field(
        default="chunked",
        description="Delta-rule kernel: `chunked` (pure PyTorch, UT transform per chunk; the training path), "
        "`recurrent` (step-by-step reference, slow), `fla` (flash-linear-attention's fused Triton kernel; "
        "CUDA only, needs `pip install flash-linear-attention`).",
    )
    chunk_size: int = Field(
        default=64, ge=1, le=MAX_CHUNK_SIZE, description="Tokens per chunk of the `chunked` kernel."
    )
    recompute_kernel: bool = Field(
        default=False,
        description="Store only the `chunked` kernel's inputs and recompute its intermediates in backward "
        "(activation checkpointing of the delta rule): ~25 fewer (B, T, d_model) fp32 tensors per layer for "
        "one more kernel forward per step.",
    )
    vocab_multiple: int = vocab_multiple_field()

    @model_validator(mode="after")
    def _heads_divide(self) -> "RWKV7Config":
        if self.d_model % self.head_size:
            raise ValueError(f"head_size ({self.head_size}) must divide d_model ({self.d_model})")
        return self

    def lora_rank(self, which: str) -> int:
        """The LoRA rank of ``which`` (decay, iclr, value, gate): set, or the paper's rule.

        The released RWKV-7 models use max(32, round(f * sqrt(C) / 32) * 32) with f = 2.5 (decay,
        iclr), 1.7 (value) and 5 (gate).
        """
        given = getattr(self, f"{which}_lora")
        if given is not None:
            return given
        f = {"decay": 2.5, "iclr": 2.5, "value": 1.7, "gate": 5.0}[which]
        return max(32, int(round(f * math.sqrt(self.d_model) / 32)) * 32)


# A layer's recurrent state: (last input of time mixing, delta-rule state (B, H, N, N),
# last input of channel mixing).
LayerState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def token_shift(x: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
    """x_{t-1} for every t: the sequence moved one step right, ``last`` (or zeros) in front."""
    first = torch.zeros_like(x[:, :1]) if last is None else last[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


class TimeMix(nn.Module):
    """RWKV-7 time mixing: token shift, LoRA-produced w/a/v-gate/g, the delta rule, bonus, gate."""

    BRANCHES = ("r", "w", "k", "v", "a", "g")

    def __init__(self, cfg: RWKV7Config, layer: int) -> None:
        super().__init__()
        C, N = cfg.d_model, cfg.head_size
        self.n_heads, self.head_size = C // N, N
        self.layer = layer
        self.uses_value_residual = cfg.value_residual and layer > 0
        self.kernel, self.chunk_size, self.recompute = cfg.kernel, cfg.chunk_size, cfg.recompute_kernel
        depth = layer / max(cfg.n_layers - 1, 1)  # 0 at the first layer, 1 at the last
        early = 1.0 - layer / cfg.n_layers  # 1 at the first layer, towards 0 at the last
        channel = torch.arange(C, dtype=torch.float32) / C

        # Token-shift lerp weights mu_*: early layers lean on the previous token for more channels.
        power = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}
        self.mu = nn.ParameterDict({b: nn.Parameter(1.0 - channel ** (power[b] * early)) for b in self.BRANCHES})
        if cfg.token_shift_lora:
            R = cfg.token_shift_lora
            self.mu_x = nn.Parameter(1.0 - channel ** (0.5 * early))
            self.shift_A = nn.Parameter(torch.empty(C, 6 * R).uniform_(-1e-2, 1e-2))
            self.shift_B = nn.Parameter(torch.zeros(6, R, C))

        self.W_r = nn.Linear(C, C, bias=False)
        self.W_k = nn.Linear(C, C, bias=False)
        self.W_v = nn.Linear(C, C, bias=False)
        self.W_o = nn.Linear(C, C, bias=False)

        def lora(rank: int) -> tuple[nn.Parameter, nn.Parameter]:
            A = nn.Parameter(torch.zeros(C, rank))
            B = nn.Parameter(torch.empty(rank, C))
            nn.init.orthogonal_(B, gain=0.1)
            return A, B

        # Decay logits from -6.5 (w ~ 0.999, long memory) to -1.5 (w ~ 0.9, short) across the
        # channels, so the heads start with a spread of memory lengths; deeper layers hold longer.
        self.w0 = nn.Parameter(-6.5 + 5.0 * (torch.arange(C) / max(C - 1, 1)) ** (0.85 + depth**0.5))
        self.A_w, self.B_w = lora(cfg.lora_rank("decay"))
        self.a0 = nn.Parameter(torch.zeros(C))
        self.A_a, self.B_a = lora(cfg.lora_rank("iclr"))
        if self.uses_value_residual:
            self.v0 = nn.Parameter(torch.ones(C))
            self.A_v, self.B_v = lora(cfg.lora_rank("value"))
        self.A_g, self.B_g = lora(cfg.lora_rank("gate"))

        self.xi = nn.Parameter(torch.full((C,), 0.85))  # removal-key scale ("k_k")
        self.alpha = nn.Parameter(torch.ones(C))  # replacement-key lerp ("k_a")
        # Bonus weights ("r_k"), one per channel (viewed per head); 1-D so that blagpt's param
        # groups leave it out of weight decay, as the paper's optimiser does.
        self.rho = nn.Parameter(torch.zeros(C))
        self.ln_x = nn.GroupNorm(self.n_heads, C, eps=1e-5 * N)

        s = C**-0.5
        nn.init.uniform_(self.W_r.weight, -0.5 * s, 0.5 * s)
        nn.init.uniform_(self.W_k.weight, -0.05 * s, 0.05 * s)
        nn.init.uniform_(self.W_v.weight, -0.5 * s, 0.5 * s)
        nn.init.zeros_(self.W_o.weight)

    def shifted_inputs(self, x: torch.Tensor, x_prev: torch.Tensor) -> dict[str, torch.Tensor]:
        """x^r .. x^g: per-branch lerps between x_t and x_{t-1} (static, or data-dependent)."""
        dx = x_prev - x
        mix = {b: self.mu[b] for b in self.BRANCHES}
        if hasattr(self, "shift_A"):
            m = torch.tanh((x + dx * self.mu_x) @ self.shift_A)
            m = m.view(*x.shape[:-1], 6, -1)
            extra = torch.einsum("btjr,jrc->jbtc", m, self.shift_B)
            mix = {b: mix[b] + extra[j] for j, b in enumerate(self.BRANCHES)}
        return {b: x + dx * mix[b] for b in self.BRANCHES}

    def forward(self, x, v_first, state=None):
        """x: (B, T, C) normalised input; v_first: layer 0's values (None at layer 0).

        ``state`` is ``(last_x, wkv_state)`` to continue a sequence, or None to start one.
        Returns ``(out, v_first, (last_x, wkv_state))``.
        """
        B, T, C = x.shape
        H, N = self.n_heads, self.head_size
        last_x, wkv_state = (None, None) if state is None else state
        xs = self.shifted_inputs(x, token_shift(x, last_x))

        r = self.W_r(xs["r"])
        d = self.w0 + torch.tanh(xs["w"] @ self.A_w) @ self.B_w
        log_w = -MAX_ABS_LOG_W * torch.sigmoid(d.float())  # log of w = exp(-e^-0.5 sigmoid(d))
        k = self.W_k(xs["k"])
        v = self.W_v(xs["v"])
        if self.layer == 0:
            v_first = v
        elif self.uses_value_residual:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + xs["v"] @ self.A_v @ self.B_v)  # lerp
        a = torch.sigmoid(self.a0 + xs["a"] @ self.A_a @ self.B_a)
        g = torch.sigmoid(xs["g"] @ self.A_g) @ self.B_g

        kappa_hat = F.normalize((k * self.xi).view(B, T, H, N), dim=-1)
        k = k * (1 + (a - 1) * self.alpha)  # replacement key k~ = k * lerp(1, a, alpha)

        heads = lambda t: t.view(B, T, H, N)  # noqa: E731
        args = (heads(r), log_w.view(B, T, H, N), heads(k), heads(v), -kappa_hat, kappa_hat * heads(a))
        if self.kernel == "recurrent" or (T == 1 and self.kernel == "chunked"):  # a generation step
            y, wkv_state = wkv7_recurrent(*args, state=wkv_state)
        elif self.kernel == "chunked" and self.recompute and torch.is_grad_enabled():
            y, wkv_state = checkpoint(wkv7_chunked, *args, wkv_state, self.chunk_size, use_reentrant=False)
        elif self.kernel == "chunked":
            y, wkv_state = wkv7_chunked(*args, state=wkv_state, chunk_size=self.chunk_size)
        else:
            y, wkv_state = wkv7_fla(*args, state=wkv_state)

        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        bonus = (heads(r) * heads(k) * self.rho.view(H, N)).sum(-1, keepdim=True) * heads(v)
        out = self.W_o((y + bonus.view(B, T, C)) * g)
        return out, v_first, (x[:, -1], wkv_state)


class ChannelMix(nn.Module):
    """RWKV-7 channel mixing: token shift, then W_v relu(W_k x^k)^2."""

    def __init__(self, cfg: RWKV7Config, layer: int) -> None:
        super().__init__()
        C = cfg.d_model
        hidden = cfg.ffn_dim or 4 * C
        early = 1.0 - layer / cfg.n_layers
        self.mu_k = nn.Parameter(1.0 - (torch.arange(C, dtype=torch.float32) / C) ** (early**4))
        self.W_k = nn.Linear(C, hidden, bias=False)
        self.W_v = nn.Linear(hidden, C, bias=False)
        nn.init.uniform_(self.W_k.weight, -0.5 * C**-0.5, 0.5 * C**-0.5)
        nn.init.zeros_(self.W_v.weight)

    def forward(self, x, last_x=None):
        xk = x + (token_shift(x, last_x) - x) * self.mu_k
        return self.W_v(torch.relu(self.W_k(xk)).square()), x[:, -1]


class Block(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.att = TimeMix(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = ChannelMix(cfg, layer)

    def forward(self, x, v_first, state: LayerState | None = None):
        att_state = None if state is None else state[:2]
        h, v_first, (att_last, wkv) = self.att(self.ln1(x), v_first, att_state)
        x = x + h
        h, ffn_last = self.ffn(self.ln2(x), None if state is None else state[2])
        return x + h, v_first, (att_last, wkv, ffn_last)


@dataclass
class RWKV7Cache:
    """The decoding cache: every layer's recurrent state (``None`` before the first token)."""

    state: list[LayerState] | None = None


class RWKV7(nn.Module):
    """The RWKV-7 language model: embedding, LayerNorm, blocks, LayerNorm, head."""

    def __init__(self, cfg: RWKV7Config, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        padded = padded_vocab(vocab_size, cfg.vocab_multiple)
        C = cfg.d_model
        self.emb = nn.Embedding(padded, C)
        self.ln0 = nn.LayerNorm(C)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, padded, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.emb.weight
            nn.init.normal_(self.emb.weight, std=0.02)
        else:
            nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)  # the paper's tiny embedding init
            nn.init.normal_(self.head.weight, std=0.5 * C**-0.5)

    def init_cache(self, batch_size: int) -> "RWKV7Cache":
        """An empty decoding cache for ``forward(idx, cache=cache)`` (blagpt's optional incremental
        decoding): the recurrent state, constant in size, starts as the zeros a sequence starts with."""
        return RWKV7Cache()

    def forward(self, idx: torch.Tensor, cache: "RWKV7Cache | None" = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits, through ``config.kernel``; with
        ``cache``, continue the sequence it holds and update it (a prompt at once, then one token
        at a time through the recurrent kernel)."""
        if cache is None:
            return self.forward_with_state(idx)[0]
        logits, cache.state = self.forward_with_state(idx, cache.state)
        return logits

    def forward_with_state(self, idx: torch.Tensor, state: list[LayerState] | None = None):
        """Like ``forward``, but continue from ``state`` and return ``(logits, new_state)``.

        The state is a list with one ``(last_x_att, wkv (B, H, N, N), last_x_ffn)`` per layer;
        its size does not grow with the sequence, so this is how to generate.
        """
        x = self.ln0(self.emb(idx))
        v_first = None
        new_state = []
        for i, block in enumerate(self.blocks):
            x, v_first, s = block(x, v_first, None if state is None else state[i])
            new_state.append(s)
        return self.head(self.ln_out(x)), new_state

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        """Sample ``max_new_tokens`` after the prompt ``idx`` (B, T): one forward over the prompt,
        then one recurrent step per new token (memory constant in the generated length)."""
        logits, state = self.forward_with_state(idx)
        out = [idx]
        for _ in range(max_new_tokens):
            last = logits[:, -1, : self.vocab_size].float()
            if temperature == 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                last = last / temperature
                if top_k is not None:
                    kth = torch.topk(last, min(top_k, last.shape[-1])).values[:, -1:]
                    last = last.masked_fill(last < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(last, -1), 1)
            out.append(nxt)
            logits, state = self.forward_with_state(nxt, state)
        return torch.cat(out, dim=1)

    def no_weight_decay(self) -> set[str]:
        """The low-rank factors (``A_*``, ``B_*``, ``shift_A``/``shift_B``) take no weight decay.

        The paper's training code decays only the full ``.weight`` matrices; the core's
        ``param_groups`` (and the optimizers plugin) honour this list.
        """
        lora = ("A_", "B_", "shift_A", "shift_B")
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1].startswith(lora)}

    def state_size_bytes(self, seq_len: int) -> int:
        """Bytes of recurrent state one sequence carries at inference, whatever ``seq_len``: per
        layer the wkv matrix of every head (H x N x N) and the two token-shift vectors (the last
        input of time mixing and of channel mixing, C each), counted in fp32."""
        C, N = self.cfg.d_model, self.cfg.head_size
        return 4 * self.cfg.n_layers * ((C // N) * N * N + 2 * C)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward + backward FLOPs per token (estimate).

        6 per weight of every matmul (the head included, embeddings looked up are free) plus the
        delta rule's state work, about 8 N^2 per head per token forward (decay, rank-one removal,
        k v^T, read-out) and twice that backward. Independent of ``seq_len`` (linear time).
        """
        n = sum(p.numel() for name, p in self.named_parameters() if p.dim() >= 2 and not name.startswith("emb"))
        if self.cfg.tie_embeddings:
            n += self.head.weight.numel()
        C, N = self.cfg.d_model, self.cfg.head_size
        return 6.0 * n + 3.0 * self.cfg.n_layers * (C // N) * 8 * N * N
