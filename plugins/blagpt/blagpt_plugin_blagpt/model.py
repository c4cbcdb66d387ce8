"""BlaGPT: a decoder-only transformer in the nanoGPT line with the techniques of the original BlaGPT.

Every technique is a field of :class:`BlaGPTConfig`; with all of them off (the ``gpt2`` preset)
the model is GPT-2 (Radford et al. 2019): learned positions, LayerNorm, GELU MLP, tied embeddings.

Papers, in the order the fields appear:

- Multi-token prediction: Gloeckle et al. 2024, "Better & Faster Large Language Models via
  Multi-token Prediction", arXiv 2404.19737.
- Weight tying: Press and Wolf 2016, "Using the Output Embedding to Improve Language Models",
  arXiv 1608.05859.
- Grouped-query attention: Ainslie et al. 2023, "GQA", arXiv 2305.13245.
- Logit and attention soft-capping, sandwich norm: Gemma Team 2024, "Gemma 2", arXiv 2408.00118.
- QKV bias: Qwen Team 2024, "Qwen2 Technical Report", arXiv 2407.10671.
- Zero-initialised output projections: as in modded-nanogpt; in the spirit of Goyal et al. 2017
  (zero-init of each residual branch's last scale, arXiv 1706.02677), which is what is zeroed when
  a norm follows the branch.
- RMSNorm: Zhang and Sennrich 2019, arXiv 1910.07467; res-post-norm: Liu et al. 2022 (Swin V2),
  arXiv 2111.09883; sandwich norm: Ding et al. 2021 (CogView), arXiv 2105.13290, and Gemma 2.
- Tokenformer (Pattention): Wang et al. 2024, "TokenFormer: Rethinking Transformer Scaling with
  Tokenized Model Parameters", arXiv 2410.23168.
- QK-norm: Henry et al. 2020, "Query-Key Normalization for Transformers", arXiv 2010.04245.
- RoPE: Su et al. 2021, "RoFormer", arXiv 2104.09864.
- SwiGLU / GeGLU: Shazeer 2020, "GLU Variants Improve Transformer", arXiv 2002.05202.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from blagpt import ModelConfig
from blagpt.nn import Rotary, apply_rotary, padded_vocab, vocab_multiple_field

Activation = Literal["swiglu", "geglu", "gelu", "relu", "relu2", "silu"]
GATED = {"swiglu": F.silu, "geglu": F.gelu}
PLAIN = {"gelu": F.gelu, "relu": F.relu, "relu2": lambda x: F.relu(x).square(), "silu": F.silu}


def _sdpa_has_gqa() -> bool:
    """Whether this torch's SDPA accepts ``enable_gqa`` (torch >= 2.5)."""
    try:
        q = torch.zeros(1, 2, 1, 2)
        kv = torch.zeros(1, 1, 1, 2)
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


SDPA_GQA = _sdpa_has_gqa()


class BlaGPTConfig(ModelConfig):
    """BlaGPT. The defaults are the ``blagpt`` preset at the 124M size."""

    name: str = Field(default="blagpt", description="Registered model name.")

    # sizes
    n_layers: int = Field(default=12, gt=0, description="Transformer blocks in the shared trunk.")
    d_model: int = Field(default=768, gt=0, description="Residual stream width.")
    n_heads: int = Field(default=12, gt=0, description="Query heads; must divide d_model.")
    n_kv_heads: int | None = Field(
        default=4,
        gt=0,
        description="Grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245): key/value heads, "
        "each shared by n_heads/n_kv_heads query heads; must divide n_heads. null: n_heads (multi-head).",
    )
    mlp_ratio: float = Field(
        default=4.75,
        gt=0,
        description="MLP hidden width as a multiple of d_model; gated activations use 2/3 of it (so a "
        "gated MLP has the parameters of a plain one), rounded up to a multiple of 64.",
    )
    mlp_hidden: int | None = Field(default=None, gt=0, description="Explicit MLP hidden width; overrides mlp_ratio.")
    activation: Activation = Field(
        default="swiglu",
        description="MLP activation: swiglu / geglu (gated, Shazeer 2020, arXiv 2002.05202), gelu, relu, "
        "relu2 (squared ReLU), silu.",
    )
    bias: bool = Field(default=True, description="Biases in every linear layer and in LayerNorm (GPT-2 style).")
    qkv_bias: bool = Field(
        default=False,
        description="Biases on the query/key/value projection even when `bias` is off "
        "(Qwen2, arXiv 2407.10671).",
    )

    # normalisation
    norm_type: Literal["rmsnorm", "layernorm"] = Field(
        default="rmsnorm", description="RMSNorm (Zhang and Sennrich 2019, arXiv 1910.07467) or LayerNorm."
    )
    norm_position: Literal["pre", "post", "sandwich"] = Field(
        default="pre",
        description="Where each residual branch is normalised: pre (x + f(N(x))), post (x + N(f(x)), "
        "res-post-norm of Swin V2, arXiv 2111.09883) or sandwich (x + N(f(N(x))), Gemma 2, "
        "arXiv 2408.00118).",
    )
    norm_eps: float = Field(
        default=1e-5,
        gt=0,
        description="Epsilon of every norm. Not tiny: a norm on a near-zero branch output multiplies "
        "its gradient by up to 1/sqrt(eps).",
    )
    qk_norm: bool = Field(
        default=True,
        description="RMSNorm of each query and key head before RoPE (Henry et al. 2020, arXiv 2010.04245).",
    )

    # positions
    pos_encoding: Literal["rope", "learned"] = Field(
        default="rope",
        description="Rotary embeddings (Su et al. 2021, arXiv 2104.09864) or GPT-2's learned absolute positions.",
    )
    rope_base: float = Field(default=10000.0, gt=0, description="RoPE frequency base theta.")

    # output
    tie_embeddings: bool = Field(
        default=True,
        description="Share the token embedding with the output head (Press and Wolf 2016, arXiv 1608.05859).",
    )
    vocab_multiple: int = vocab_multiple_field()
    logit_softcap: float | None = Field(
        default=None,
        gt=0,
        description="Soft-cap the output logits to (-c, c) with c*tanh(z/c) (Gemma 2, arXiv 2408.00118); null: off.",
    )
    attn_softcap: float | None = Field(
        default=None,
        gt=0,
        description="Soft-cap the attention scores with c*tanh(s/c) (Gemma 2); null: off. Runs through "
        "flex_attention on CUDA (fused, O(T) memory); elsewhere through an explicit attention that "
        "materialises the (B, H, T, T) scores.",
    )
    attn_softcap_backend: Literal["auto", "flex", "math"] = Field(
        default="auto",
        description="Kernel of soft-capped attention: auto (flex on CUDA, math elsewhere), flex or math.",
    )

    # training-time behaviour
    zero_init_output: bool = Field(
        default=True,
        description="Zero-initialise the output projection of attention and MLP so every block starts "
        "as the identity; with post/sandwich norm the branch's output norm gain is zeroed instead "
        "(Goyal et al. 2017, arXiv 1706.02677), since a norm of a zero vector has a 1/sqrt(eps) gradient.",
    )
    init_std: float = Field(default=0.02, gt=0, description="Std of the normal initialisation of weights.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on attention weights and residual branches.")

    # multi-token prediction
    n_predict: int = Field(
        default=1,
        ge=1,
        description="Multi-token prediction (Gloeckle et al. 2024, arXiv 2404.19737): heads on the shared "
        "trunk, head i predicting token t+1+i; heads i >= 1 are one extra block each, all share the "
        "final norm and the (tied) unembedding. 1: plain next-token prediction.",
    )
    mtp_weights: list[float] | None = Field(
        default=None,
        description="Weights of the heads' losses in the training loss (normalised to sum 1); null: equal.",
    )

    # Tokenformer
    pattention_attn: bool = Field(
        default=False,
        description="Tokenformer (Wang et al. 2024, arXiv 2410.23168): replace the Q, K, V and output "
        "projections by Pattention layers (attention of the input over learnable key/value parameter tokens).",
    )
    pattention_mlp: bool = Field(default=False, description="Tokenformer: replace the MLP by one Pattention layer.")
    attn_param_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Parameter tokens of each attention Pattention layer; null: d_model/2 (the parameters "
        "of dense multi-head projections).",
    )
    mlp_param_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Parameter tokens of the MLP Pattention layer; null: mlp_ratio*d_model (the parameters "
        "of a dense MLP).",
    )

    @model_validator(mode="after")
    def _shapes(self) -> "BlaGPTConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_kv_heads ({kv}) must divide n_heads ({self.n_heads})")
        if self.pos_encoding == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError("RoPE needs an even head dimension (d_model / n_heads)")
        if self.mtp_weights is not None:
            if len(self.mtp_weights) != self.n_predict:
                raise ValueError(f"mtp_weights needs {self.n_predict} weights (n_predict), got {len(self.mtp_weights)}")
            if any(w < 0 for w in self.mtp_weights) or sum(self.mtp_weights) <= 0:
                raise ValueError("mtp_weights must be non-negative with a positive sum")
        return self

    # derived sizes
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        h = self.mlp_ratio * self.d_model * (2 / 3 if self.activation in GATED else 1)
        return 64 * math.ceil(round(h, 6) / 64)

    @property
    def attn_tokens(self) -> int:
        return self.attn_param_tokens or max(1, self.d_model // 2)

    @property
    def mlp_tokens(self) -> int:
        return self.mlp_param_tokens or max(1, round(self.mlp_ratio * self.d_model))


# -- layers -----------------------------------------------------------------------------------


def make_norm(cfg: BlaGPTConfig, dim: int) -> nn.Module:
    if cfg.norm_type == "rmsnorm":
        return nn.RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


class Pattention(nn.Module):
    """Token-parameter attention (Tokenformer, eq. 4-5): the input attends over ``n`` learnable
    key tokens and returns the matching mix of ``n`` value tokens, a linear layer made of tokens.

    The paper's modified softmax: scores A = X K_P^T are divided by their L2 norm over the ``n``
    tokens, scaled by tau, then passed through GeLU. tau = sqrt(n) at creation and is kept (a
    buffer) when tokens are added, so growth with zero keys leaves the function unchanged.
    """

    def __init__(self, d_in: int, d_out: int, n_tokens: int) -> None:
        super().__init__()
        self.key_tokens = nn.Parameter(torch.empty(n_tokens, d_in))
        self.value_tokens = nn.Parameter(torch.empty(n_tokens, d_out))
        self.register_buffer("tau", torch.tensor(math.sqrt(n_tokens)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x @ self.key_tokens.t()
        a = a * (self.tau * torch.rsqrt(a.square().sum(-1, keepdim=True) + 1e-6))
        return F.gelu(a) @ self.value_tokens

    @torch.no_grad()
    def grow(self, n_tokens: int, std: float, generator: torch.Generator | None = None) -> None:
        """Add parameter tokens up to ``n_tokens``: keys zero (so GeLU(0) = 0 weights them out),
        values random (so the new keys receive gradient once training resumes)."""
        keys, values = grow_tokens(self.key_tokens.data, self.value_tokens.data, n_tokens, std, generator)
        self.key_tokens = nn.Parameter(keys)
        self.value_tokens = nn.Parameter(values)


def grow_tokens(keys, values, n_tokens, std, generator=None):
    n = keys.shape[0]
    if n_tokens < n:
        raise ValueError(f"cannot shrink Pattention from {n} to {n_tokens} parameter tokens")
    new_k = keys.new_zeros(n_tokens - n, keys.shape[1])
    new_v = torch.randn(n_tokens - n, values.shape[1], generator=generator, dtype=torch.float32) * std
    return torch.cat([keys, new_k]), torch.cat([values, new_v.to(values)])


class KVBuffer:
    """One attention layer's keys and values of the tokens decoded so far, (B, n_kv, S, head_dim)
    each, in buffers of ``max_len`` positions allocated at the first write (in the dtype of the
    keys, so bf16 under autocast)."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def write(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store positions ``start .. start+T-1``; return the keys and values of 0 .. start+T-1."""
        end = start + k.shape[2]
        if self.k is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


@dataclass
class BlaGPTCache:
    """The decoding cache of :meth:`BlaGPT.init_cache`: the next position and every block's
    keys and values (multi-token-prediction blocks are not needed: decoding reads head 0)."""

    pos: int
    layers: list[KVBuffer]


class Attention(nn.Module):
    """Causal (grouped-query) self-attention with optional QK-norm, RoPE and score soft-capping."""

    def __init__(self, cfg: BlaGPTConfig, rotary: Rotary | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        q_dim, kv_dim = self.n_heads * self.hd, self.n_kv * self.hd
        self.splits = (q_dim, kv_dim, kv_dim)
        if cfg.pattention_attn:
            n = cfg.attn_tokens
            self.q_proj, self.k_proj, self.v_proj = (Pattention(cfg.d_model, s, n) for s in self.splits)
            self.o_proj = Pattention(q_dim, cfg.d_model, n)
        else:
            self.qkv = nn.Linear(cfg.d_model, sum(self.splits), bias=cfg.bias or cfg.qkv_bias)
            self.o_proj = nn.Linear(q_dim, cfg.d_model, bias=cfg.bias)
        self.q_norm = nn.RMSNorm(self.hd, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(self.hd, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.rotary = [rotary]  # shared module, kept out of this module's state dict and children

    def forward(self, x: torch.Tensor, kv: KVBuffer | None = None, start: int = 0) -> torch.Tensor:
        """``kv``: the layer's decoding cache; ``x`` then holds positions ``start .. start+T-1``,
        attending to the cached keys of 0 .. start-1 and to each other causally."""
        B, T, _ = x.shape
        if self.cfg.pattention_attn:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = self.qkv(x).split(self.splits, dim=-1)
        q = q.view(B, T, self.n_heads, self.hd)
        k = k.view(B, T, self.n_kv, self.hd)
        v = v.view(B, T, self.n_kv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        rot = self.rotary[0]
        if rot is not None and kv is None:
            q, k = rot(q, seq_dim=1), rot(k, seq_dim=1)
        elif rot is not None:  # the cached tables' rows of these positions
            cos, sin = rot.cos[start : start + T, None], rot.sin[start : start + T, None]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv is not None:
            k, v = kv.write(k, v, start)
        p = self.cfg.dropout if self.training else 0.0
        if self.cfg.attn_softcap is None:
            y = self._sdpa(q, k, v, p)
        elif kv is None and self._softcap_backend(q) == "flex":
            y = flex_softcap_attention(q, k, v, self.cfg.attn_softcap)
        else:  # decoding takes the explicit path: its (T, S) scores are small
            y = math_softcap_attention(q, k, v, self.cfg.attn_softcap, p, self.training)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))

    def _sdpa(self, q, k, v, p):
        T, S = q.shape[2], k.shape[2]
        # queries at the last T of S positions: causal when T == S, all keys for one query
        mask = None if T in (1, S) else causal_mask(T, S, q.device)
        causal = T == S and T > 1
        if self.n_kv == self.n_heads:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=p)
        if SDPA_GQA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=p, enable_gqa=True)
        g = self.n_heads // self.n_kv  # old torch: materialise the shared heads
        return F.scaled_dot_product_attention(
            q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask, is_causal=causal, dropout_p=p
        )

    def _softcap_backend(self, q: torch.Tensor) -> str:
        b = self.cfg.attn_softcap_backend
        if b == "auto":
            return "flex" if q.is_cuda and FLEX is not None else "math"
        return b


def causal_mask(T: int, S: int, device) -> torch.Tensor:
    """(T, S) boolean mask of T queries at the last T of S positions: query i sees keys <= S-T+i."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)


def math_softcap_attention(q, k, v, cap: float, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Soft-capped causal attention written out: materialises (B, H, T, S) scores, O(T S) memory.

    Query heads are grouped over their shared key/value head by a view, so GQA costs no copy.
    With S > T keys (a decoding cache) the queries are the last T positions.
    """
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    qg = q.view(B, Hkv, H // Hkv, T, D)
    s = (qg @ k.unsqueeze(2).transpose(-1, -2)) * (1.0 / math.sqrt(D))
    s = cap * torch.tanh(s / cap)
    s = s.masked_fill(~causal_mask(T, k.shape[2], q.device), float("-inf"))
    w = torch.softmax(s.float(), dim=-1).to(q.dtype)
    if p > 0 and training:
        w = F.dropout(w, p)
    return (w @ v.unsqueeze(2)).view(B, H, T, D)


try:  # flex_attention: fused soft-capped attention on CUDA (torch >= 2.5)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    FLEX = flex_attention
except ImportError:  # pragma: no cover - old torch
    FLEX = None

_FLEX_COMPILED = None
_BLOCK_MASKS: dict = {}


def flex_softcap_attention(q, k, v, cap: float) -> torch.Tensor:
    """Soft-capped causal attention through flex_attention (the score_mod applies c*tanh(s/c)).

    Compiled on CUDA, so the scores are never materialised. On the CPU flex_attention runs
    unfused and has no backward (torch 2.13); the ``auto`` backend therefore uses it only on CUDA.
    """
    global _FLEX_COMPILED
    T, dev = q.shape[2], q.device

    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    gqa = k.shape[1] != q.shape[1]
    if torch.compiler.is_compiling():  # inside a compiled model: Dynamo fuses flex_attention itself
        mask = create_block_mask(causal, None, None, T, T, device=dev)
        return FLEX(q, k, v, score_mod=softcap, block_mask=mask, enable_gqa=gqa)
    key = (T, str(dev))
    if key not in _BLOCK_MASKS:
        _BLOCK_MASKS[key] = create_block_mask(causal, None, None, T, T, device=dev)
    fn = FLEX
    if q.is_cuda:  # eager model: compile the kernel alone, or flex_attention would run unfused
        if _FLEX_COMPILED is None:
            _FLEX_COMPILED = torch.compile(FLEX, dynamic=False)
        fn = _FLEX_COMPILED
    return fn(q, k, v, score_mod=softcap, block_mask=_BLOCK_MASKS[key], enable_gqa=gqa)


class MLP(nn.Module):
    """Gated (SwiGLU/GeGLU: act(x W_g) * (x W_u) W_d), plain (act(x W_1) W_2) or Pattention MLP."""

    def __init__(self, cfg: BlaGPTConfig) -> None:
        super().__init__()
        self.pattention = cfg.pattention_mlp
        if self.pattention:
            self.ffn = Pattention(cfg.d_model, cfg.d_model, cfg.mlp_tokens)
            return
        h = cfg.hidden
        self.gated = cfg.activation in GATED
        self.act = GATED[cfg.activation] if self.gated else PLAIN[cfg.activation]
        self.up = nn.Linear(cfg.d_model, 2 * h if self.gated else h, bias=cfg.bias)
        self.down = nn.Linear(h, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pattention:
            return self.ffn(x)
        if self.gated:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        return self.down(self.act(self.up(x)))

    def output_weight(self) -> torch.Tensor:
        return self.ffn.value_tokens if self.pattention else self.down.weight


class Block(nn.Module):
    """One residual block; ``norm_position`` places the norms (pre, post or sandwich)."""

    def __init__(self, cfg: BlaGPTConfig, rotary: Rotary | None) -> None:
        super().__init__()
        self.pos = cfg.norm_position
        self.attn = Attention(cfg, rotary)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        pre, post = self.pos in ("pre", "sandwich"), self.pos in ("post", "sandwich")
        self.attn_norm_in = make_norm(cfg, cfg.d_model) if pre else None
        self.mlp_norm_in = make_norm(cfg, cfg.d_model) if pre else None
        self.attn_norm_out = make_norm(cfg, cfg.d_model) if post else None
        self.mlp_norm_out = make_norm(cfg, cfg.d_model) if post else None

    @staticmethod
    def _branch(x, f, norm_in, norm_out, drop):
        h = f(norm_in(x) if norm_in is not None else x)
        if norm_out is not None:
            h = norm_out(h)
        return x + drop(h)

    def forward(self, x: torch.Tensor, kv: KVBuffer | None = None, start: int = 0) -> torch.Tensor:
        attn = self.attn if kv is None else (lambda h: self.attn(h, kv, start))
        x = self._branch(x, attn, self.attn_norm_in, self.attn_norm_out, self.drop)
        return self._branch(x, self.mlp, self.mlp_norm_in, self.mlp_norm_out, self.drop)


# -- the model --------------------------------------------------------------------------------


class BlaGPT(nn.Module):
    """Token embedding -> (learned positions) -> n_layers blocks -> final norm -> (tied) head.

    ``forward(idx)`` returns the next-token logits (B, T, V). ``forward(idx, targets)`` returns
    ``(loss, nlls)``: ``nlls`` holds each head's NLL, head i of shape (B, T - i) scored against
    ``targets[:, t + i]`` (token t+1+i) from position t, detached; ``loss`` is the weighted mean of
    the heads' mean NLLs (``mtp_weights``), computed here so a compiled model fuses it with the
    cross-entropy.
    """

    def __init__(self, cfg: BlaGPTConfig, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        V = padded_vocab(vocab_size, cfg.vocab_multiple)
        self.wte = nn.Embedding(V, cfg.d_model)
        self.wpe = nn.Embedding(max_seq_len, cfg.d_model) if cfg.pos_encoding == "learned" else None
        self.rotary = Rotary(cfg.head_dim, max_seq_len, cfg.rope_base) if cfg.pos_encoding == "rope" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, self.rotary) for _ in range(cfg.n_layers))
        self.mtp_blocks = nn.ModuleList(Block(cfg, self.rotary) for _ in range(cfg.n_predict - 1))
        self.norm_f = make_norm(cfg, cfg.d_model)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, V, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.cfg
        std = cfg.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, Pattention):
                nn.init.normal_(m.key_tokens, std=std)
                nn.init.normal_(m.value_tokens, std=std)
            elif isinstance(m, (nn.RMSNorm, nn.LayerNorm)):
                m.reset_parameters()
        depth_std = std / math.sqrt(2 * (cfg.n_layers + cfg.n_predict - 1))  # GPT-2's residual scaling
        for b in list(self.blocks) + list(self.mtp_blocks):
            outs = [b.attn.o_proj.value_tokens if cfg.pattention_attn else b.attn.o_proj.weight, b.mlp.output_weight()]
            zero_here = cfg.zero_init_output and cfg.norm_position == "pre"
            for w in outs:
                nn.init.zeros_(w) if zero_here else nn.init.normal_(w, std=depth_std)
            if cfg.zero_init_output and cfg.norm_position != "pre":
                nn.init.zeros_(b.attn_norm_out.weight)
                nn.init.zeros_(b.mlp_norm_out.weight)

    def init_cache(self, batch_size: int) -> BlaGPTCache:
        """An empty decoding cache for ``forward(idx, cache=cache)`` (blagpt's optional
        incremental decoding): keys and values of up to ``max_seq_len`` positions per block.
        Every technique of the config decodes incrementally: RoPE and learned positions are
        offset by the cache's position, norms, MLPs, Pattention and soft-caps act per token."""
        return BlaGPTCache(0, [KVBuffer(self.max_seq_len) for _ in self.blocks])

    def trunk(self, idx: torch.Tensor, cache: BlaGPTCache | None = None) -> torch.Tensor:
        T = idx.shape[1]
        start = 0 if cache is None else cache.pos
        if start + T > self.max_seq_len:
            raise ValueError(f"sequence length {start + T} exceeds max_seq_len {self.max_seq_len}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x) if cache is None else block(x, cache.layers[i], start)
        if cache is not None:
            cache.pos = start + T
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm_f(h)
        z = F.linear(h, self.wte.weight) if self.lm_head is None else self.lm_head(h)
        c = self.cfg.logit_softcap
        return z if c is None else c * torch.tanh(z / c)

    def heads(self, x: torch.Tensor):
        """Hidden states of each prediction head: the trunk's for head 0, one more block for the rest."""
        yield x
        for block in self.mtp_blocks:
            yield block(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, all_heads: bool = False, cache: BlaGPTCache | None = None
    ):
        if cache is not None:  # decoding: the next-token head continuing the cached sequence
            if targets is not None or all_heads:
                raise ValueError("forward with a decoding cache gives the next-token logits only (no targets, no all_heads)")
            return self.logits(self.trunk(idx, cache))
        x = self.trunk(idx)
        if targets is None:
            if all_heads:
                return [self.logits(h) for h in self.heads(x)]
            return self.logits(x)
        T = idx.shape[1]
        nlls, means = [], []
        for i, h in enumerate(self.heads(x)):
            z = self.logits(h[:, : T - i])
            y = targets[:, i:]
            nll = F.cross_entropy(z.float().flatten(0, 1), y.flatten(), reduction="none").view_as(y)
            nlls.append(nll.detach())
            means.append(nll.mean())
        if len(means) == 1:
            return means[0], tuple(nlls)
        w = self.cfg.mtp_weights or [1.0] * len(means)
        return sum(wi / sum(w) * m for wi, m in zip(w, means)), tuple(nlls)

    def state_size_bytes(self, seq_len: int) -> int:
        """Bytes of the decoding cache one sequence fills after ``seq_len`` tokens: keys and values
        of every block (``n_kv_heads`` x ``head_dim`` per position, fewer with grouped-query
        attention), in the weights' dtype. Grows with the sequence, unlike a recurrent state."""
        cfg = self.cfg
        return 2 * len(self.blocks) * seq_len * cfg.kv_heads * cfg.head_dim * self.wte.weight.element_size()

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x (matmul weights used per token) + 12 L T d for attention.

        Matmul weights: every block weight (and Pattention tokens) plus the head's V x d once per
        prediction head; embeddings and norms excluded. Attention counts the full T x T scores
        (PaLM's convention, as nanoGPT), once per block including MTP blocks.
        """
        cfg = self.cfg
        mat = 0
        for b in list(self.blocks) + list(self.mtp_blocks):
            mat += sum(p.numel() for n, p in b.named_parameters() if p.dim() == 2)
        mat += cfg.n_predict * self.wte.weight.numel()
        n_blocks = cfg.n_layers + cfg.n_predict - 1
        return 6.0 * mat + 12.0 * n_blocks * seq_len * cfg.n_heads * cfg.head_dim


# -- parameter count, as the README states it ------------------------------------------------


def parameter_count(cfg: BlaGPTConfig, vocab_size: int, max_seq_len: int) -> int:
    """The number of parameters of ``BlaGPT(cfg, vocab_size, max_seq_len)``, by the README's formula."""
    d, hd, H, K = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads
    V = padded_vocab(vocab_size, cfg.vocab_multiple)
    norm = d * (2 if cfg.norm_type == "layernorm" and cfg.bias else 1)
    q, kv = H * hd, K * hd
    if cfg.pattention_attn:
        n = cfg.attn_tokens
        attn = n * (d + q) + 2 * n * (d + kv) + n * (q + d)
    else:
        attn = d * (q + 2 * kv) + q * d
        attn += (q + 2 * kv) * (cfg.bias or cfg.qkv_bias) + d * cfg.bias
    attn += 2 * hd * cfg.qk_norm
    if cfg.pattention_mlp:
        mlp = cfg.mlp_tokens * 2 * d
    else:
        f = cfg.hidden
        g = 2 if cfg.activation in GATED else 1
        mlp = g * d * f + f * d + (g * f + d) * cfg.bias
    norms = {"pre": 2, "post": 2, "sandwich": 4}[cfg.norm_position] * norm
    block = attn + mlp + norms
    total = (cfg.n_layers + cfg.n_predict - 1) * block
    total += V * d * (1 if cfg.tie_embeddings else 2) + norm
    total += max_seq_len * d * (cfg.pos_encoding == "learned")
    return total


# -- Tokenformer growth -----------------------------------------------------------------------


def grow_parameter_tokens(
    model_or_state_dict,
    attn_param_tokens: int | None = None,
    mlp_param_tokens: int | None = None,
    *,
    std: float | None = None,
    seed: int = 0,
):
    """Grow every Pattention layer of a trained BlaGPT to more parameter tokens (Tokenformer, sec. 3.3).

    New key tokens are zero and new value tokens random (std ``init_std``): a zero key scores 0
    against every input, GeLU(0) = 0, and the L2 norm over tokens and tau are unchanged, so the grown
    model computes the same function; the new keys receive gradient through the random values and
    training continues from there (rebuild the optimizer: its state is shaped like the old tokens).

    ``model_or_state_dict``: a :class:`BlaGPT` (grown in place, its ``cfg`` updated; returned) or a
    state dict (a new, grown state dict is returned; load it into a model built with the config's
    ``attn_param_tokens``/``mlp_param_tokens`` set to the new counts). ``None`` leaves that kind of
    layer as it is.
    """
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model_or_state_dict, BlaGPT):
        model = model_or_state_dict
        s = model.cfg.init_std if std is None else std
        updates = {}
        for name, m in model.named_modules():
            if isinstance(m, Pattention):
                n = attn_param_tokens if ".attn." in f".{name}." else mlp_param_tokens
                if n is not None:
                    m.grow(n, s, gen)
        if attn_param_tokens is not None and model.cfg.pattention_attn:
            updates["attn_param_tokens"] = attn_param_tokens
        if mlp_param_tokens is not None and model.cfg.pattention_mlp:
            updates["mlp_param_tokens"] = mlp_param_tokens
        model.cfg = model.cfg.model_copy(update=updates)
        for m in model.modules():
            if hasattr(m, "cfg"):
                m.cfg = model.cfg
        return model
    sd = dict(model_or_state_dict)
    s = 0.02 if std is None else std
    for key in sorted(k for k in sd if k.endswith(".key_tokens")):
        prefix = key[: -len("key_tokens")]
        n = attn_param_tokens if ".attn." in f".{key}" else mlp_param_tokens
        if n is None:
            continue
        sd[key], sd[prefix + "value_tokens"] = grow_tokens(sd[key], sd[prefix + "value_tokens"], n, s, gen)
    return sd
