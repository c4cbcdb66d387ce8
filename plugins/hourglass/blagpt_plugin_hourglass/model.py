"""Hourglass: a hierarchical decoder-only transformer.

Nawrot, Tworkowski, Tyrolski, Kaiser, Wu, Szegedy and Michalewski 2021, "Hierarchical
Transformers Are More Efficient Language Models", arXiv 2110.13711.

The network is a U: full-resolution "pre" layers, a shortening of the sequence by a factor k,
layers at the shortened resolution (which may themselves be an hourglass, nested as deep as the
config says), an upsampling back to the resolution the level started at, added as a residual to
the activations taken before shortening, then full-resolution "post" layers.

Causality. Shortening groups k consecutive vectors into one; upsampling hands shortened vector
j back to the positions jk .. jk+k-1 of the longer sequence. Grouped naively (vector j summarises
positions jk .. jk+k-1) position jk would read a summary of k-1 positions after it. The paper's
fix, done here: shift the sequence right by k-1 before grouping (k-1 zero vectors in front), so
shortened vector j summarises positions jk-k+1 .. jk, never later than jk, the first position
that reads it. Layers at the shortened resolution are causal over shortened positions, so the
output at shortened j depends on positions <= jk of the longer sequence; attention upsampling
lets position t attend to shortened vectors j with jk <= t only. Any length works: a sequence of
T vectors gives ceil(T/k) shortened vectors (the shift supplies the k-1 leading pad vectors, the
surplus at the end is cut off), and the upsampled sequence is cut back to T.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from blagpt import ModelConfig
from blagpt.nn import apply_rotary, padded_vocab, rotary_tables, vocab_multiple_field

Level = tuple[int, int]  # (layers, shortening factor relative to the full resolution)


def parse_hierarchy(spec: str | list) -> list[Level]:
    """``"2@1 8@3 2@1"`` (the paper's layers@factor notation) or ``[[2, 1], [8, 3], [2, 1]]``
    -> ``[(2, 1), (8, 3), (2, 1)]``. Factors are relative to the full resolution."""
    if isinstance(spec, str):
        items = spec.replace(",", " ").split()
        out = []
        for item in items:
            m = re.fullmatch(r"(\d+)@(\d+)", item)
            if not m:
                raise ValueError(f"hierarchy entry {item!r} is not LAYERS@FACTOR, e.g. 2@3")
            out.append((int(m.group(1)), int(m.group(2))))
        return out
    out = []
    for item in spec:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise ValueError(f"hierarchy entry {item!r} is not a (layers, factor) pair")
        out.append((int(item[0]), int(item[1])))
    return out


class HourglassConfig(ModelConfig):
    """Hourglass transformer. Defaults: a 2@1 8@3 2@1 hourglass, 512 wide (between `small` and `124m`)."""

    name: str = Field(default="hourglass", description="Registered model name.")
    d_model: int = Field(default=512, gt=0, description="Width of every level (the paper keeps one width).")
    n_heads: int = Field(default=8, gt=0, description="Attention heads; must divide d_model into even head sizes.")
    hierarchy: list[Level] = Field(
        default=[(2, 1), (8, 3), (2, 1)],
        description="Layers per resolution in the paper's notation, `LAYERS@FACTOR` entries from the input to "
        "the middle and back, factors relative to the full resolution: `2@1 8@3 2@1` is 2 full-resolution "
        "layers, 8 layers on a 3x shortened sequence, 2 full-resolution layers; `2@1 2@3 4@9 2@3 2@1` nests "
        "a 3x shortening inside another. Also a list of [layers, factor] pairs. The factors must mirror "
        "around the middle entry, start at 1, and each must divide the next; `12@1` is a plain transformer.",
    )
    shortening: Literal["linear", "avg", "attention"] = Field(
        default="linear",
        description="Downsampling of k vectors (after the causal shift by k-1) into one: `linear` (concatenate, "
        "project k*d -> d), `avg` (mean, no parameters), `attention` (mean, then the mean attends over its own "
        "k vectors, plus a residual; the paper's attention pooling without its feed-forward).",
    )
    upsampling: Literal["repeat", "linear", "attention"] = Field(
        default="attention",
        description="Upsampling of each shortened vector back to k positions: `repeat` (copy, no parameters), "
        "`linear` (project d -> k*d, one vector per position), `attention` (repeat, then every position attends "
        "causally to the shortened vectors it may see, plus the repeat as residual).",
    )
    mlp_ratio: float = Field(default=4.0, gt=0, description="MLP hidden width as a multiple of d_model (GELU MLP).")
    mlp_hidden: int | None = Field(default=None, gt=0, description="Explicit MLP hidden width; overrides mlp_ratio.")
    bias: bool = Field(default=True, description="Biases in linear layers and LayerNorms (GPT-2 style).")
    rope_base: float = Field(default=10000.0, gt=0, description="RoPE base; positions count within each resolution.")
    tie_embeddings: bool = Field(default=True, description="Share the token embedding with the output head.")
    vocab_multiple: int = vocab_multiple_field()
    init_std: float = Field(default=0.02, gt=0, description="Std of the normal initialisation of weights.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on attention weights and residual branches.")

    @field_validator("hierarchy", mode="before")
    @classmethod
    def _parse(cls, v):
        return parse_hierarchy(v)

    @model_validator(mode="after")
    def _check(self) -> "HourglassConfig":
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model}) into even head sizes")
        h = self.hierarchy
        if len(h) % 2 == 0:
            raise ValueError(f"hierarchy needs an odd number of entries (down, middle, up), got {len(h)}")
        factors = [f for _, f in h]
        if factors != factors[::-1]:
            raise ValueError(f"hierarchy factors must mirror around the middle, got {factors}")
        if factors[0] != 1:
            raise ValueError("hierarchy must start at factor 1 (full resolution)")
        down = factors[: len(h) // 2 + 1]
        for a, b in zip(down, down[1:]):
            if b <= a or b % a:
                raise ValueError(f"hierarchy factors must grow to the middle, each dividing the next; got {a} then {b}")
        if any(n < 0 for n, _ in h):
            raise ValueError("hierarchy layer counts must be >= 0")
        if sum(n for n, _ in h) == 0:
            raise ValueError("hierarchy has no layers")
        return self

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or round(self.mlp_ratio * self.d_model)

    @property
    def n_layers(self) -> int:
        return sum(n for n, _ in self.hierarchy)


# -- layers -----------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention of queries over keys/values from another (or the same) sequence.

    Queries and keys get rotary embeddings (Su et al. 2021, arXiv 2104.09864) at the positions
    the caller gives, which need not be 0 .. L-1 (a shortened vector sits at the position of the
    first full-resolution vector that reads it).
    """

    def __init__(self, cfg: HourglassConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.base, self.dropout = cfg.n_heads, cfg.rope_base, cfg.dropout
        self.head_dim = d // cfg.n_heads
        self.q = nn.Linear(d, d, bias=cfg.bias)
        self.kv = nn.Linear(d, 2 * d, bias=cfg.bias)
        self.proj = nn.Linear(d, d, bias=cfg.bias)
        self.proj.residual = True

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, -1).transpose(1, 2)

    def forward(self, x, ctx, q_pos, k_pos, mask=None, causal=False):
        q_rot = rotary_tables(q_pos, self.head_dim, self.base)
        k_rot = q_rot if k_pos is q_pos else rotary_tables(k_pos, self.head_dim, self.base)
        q = apply_rotary(self._heads(self.q(x)), *q_rot)
        k, v = self.kv(ctx).chunk(2, dim=-1)
        k, v = apply_rotary(self._heads(k), *k_rot), self._heads(v)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=p)
        return self.proj(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention and a GELU MLP, both residual."""

    def __init__(self, cfg: HourglassConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d, bias=cfg.bias)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(d, bias=cfg.bias)
        self.fc = nn.Linear(d, cfg.hidden, bias=cfg.bias)
        self.out = nn.Linear(cfg.hidden, d, bias=cfg.bias)
        self.out.residual = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        pos = torch.arange(x.shape[1], device=x.device)
        x = x + self.drop(self.attn(h, h, pos, pos, causal=True))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


def shift_and_group(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T, d) -> (B, ceil(T/k), k, d): the paper's shift right by k-1, then windows of k.

    Window j holds positions jk-k+1 .. jk (zeros where that is before 0): never a position
    after jk, the first position that will read shortened vector j.
    """
    B, T, d = x.shape
    n = -(-T // k)
    shifted = torch.cat([x.new_zeros(B, k - 1, d), x], dim=1)[:, : n * k]  # n*k <= T+k-1 always
    return shifted.view(B, n, k, d)


class Shortening(nn.Module):
    """k vectors -> 1, over the causally shifted windows of :func:`shift_and_group`."""

    def __init__(self, cfg: HourglassConfig, k: int) -> None:
        super().__init__()
        self.k, self.method = k, cfg.shortening
        d = cfg.d_model
        if self.method == "linear":
            self.proj = nn.Linear(k * d, d, bias=cfg.bias)
        elif self.method == "attention":
            self.ln = nn.LayerNorm(d, bias=cfg.bias)
            self.attn = Attention(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = shift_and_group(x, self.k)  # (B, n, k, d)
        B, n, k, d = w.shape
        if self.method == "linear":
            return self.proj(w.flatten(2))
        s = w.mean(2)
        if self.method == "attention":
            # each window's mean attends over its own k (shifted, hence causal) vectors only
            h = self.ln(torch.cat([s[:, :, None], w], dim=2)).reshape(B * n, k + 1, d)
            pos = torch.arange(k + 1, device=x.device)
            s = s + self.attn(h[:, :1], h[:, 1:], pos[-1:], pos[1:]).view(B, n, d)
        return s


class Upsampling(nn.Module):
    """Shortened (B, n, d) -> (B, T, d): position t gets shortened vector floor(t/k) (or, for
    attention, every j <= floor(t/k)), which summarises positions <= k floor(t/k) <= t."""

    def __init__(self, cfg: HourglassConfig, k: int) -> None:
        super().__init__()
        self.k, self.method = k, cfg.upsampling
        d = cfg.d_model
        if self.method == "linear":
            self.proj = nn.Linear(d, k * d, bias=cfg.bias)
        elif self.method == "attention":
            self.ln_q = nn.LayerNorm(d, bias=cfg.bias)
            self.ln_kv = nn.LayerNorm(d, bias=cfg.bias)
            self.attn = Attention(cfg)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        n, k = s.shape[1], self.k
        if self.method == "linear":
            return self.proj(s).view(B, n * k, d)[:, :T]
        u = s.repeat_interleave(k, dim=1)[:, :T]
        if self.method == "attention":
            t = torch.arange(T, device=x.device)
            j = torch.arange(n, device=x.device)
            mask = j[None, :] * k <= t[:, None]  # (T, n): shortened j summarises positions <= jk
            u = u + self.attn(self.ln_q(x + u), self.ln_kv(s), t, j * k, mask=mask)
        return u


class HourglassLevel(nn.Module):
    """One level of the U: pre layers, [shorten, inner level, upsample + residual, post layers]."""

    def __init__(self, cfg: HourglassConfig, i: int = 0) -> None:
        super().__init__()
        h = cfg.hierarchy
        mid = len(h) // 2
        self.pre = nn.ModuleList(Block(cfg) for _ in range(h[i][0]))
        self.inner = None
        if i < mid:
            k = h[i + 1][1] // h[i][1]
            self.factor = k
            self.shorten = Shortening(cfg, k)
            self.inner = HourglassLevel(cfg, i + 1)
            self.upsample = Upsampling(cfg, k)
            self.post = nn.ModuleList(Block(cfg) for _ in range(h[len(h) - 1 - i][0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.pre:
            x = block(x)
        if self.inner is None:
            return x
        s = self.inner(self.shorten(x))
        x = x + self.upsample(x, s)
        for block in self.post:
            x = block(x)
        return x


class Hourglass(nn.Module):
    """Token embedding -> nested :class:`HourglassLevel` -> LayerNorm -> (tied) head."""

    def __init__(self, cfg: HourglassConfig, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.cfg, self.vocab_size, self.max_seq_len = cfg, vocab_size, max_seq_len
        V = padded_vocab(vocab_size, cfg.vocab_multiple)
        self.wte = nn.Embedding(V, cfg.d_model)
        self.levels = HourglassLevel(cfg)
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.head = nn.Linear(cfg.d_model, V, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.wte.weight
        self.drop = nn.Dropout(cfg.dropout)
        self._init()

    def _init(self) -> None:
        std = self.cfg.init_std
        resid_std = std / math.sqrt(2 * max(1, self.cfg.n_layers))  # GPT-2's scaled residual init
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, resid_std if getattr(m, "residual", False) else std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence of {idx.shape[1]} tokens exceeds max_seq_len {self.max_seq_len}")
        x = self.levels(self.drop(self.wte(idx)))
        return self.head(self.ln_f(x))

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per full-resolution token: 6 x the matmul weights each token pays for
        (a layer at cumulative factor f is shared by f tokens) + 12 d L/f per self-attention layer
        at factor f (PaLM's convention). Upsampling attention counts its T x T/k scores."""
        cfg, d = self.cfg, self.cfg.d_model
        total = 6.0 * self.wte.weight.numel()  # the head

        def mats(mod):
            return sum(p.numel() for p in mod.parameters() if p.dim() == 2)

        level, f = self.levels, 1
        while True:
            for b in list(level.pre) + (list(level.post) if level.inner is not None else []):
                total += (6.0 * mats(b) + 12.0 * d * seq_len / f) / f
            if level.inner is None:
                return total
            k = level.factor
            dd = 6.0 * d * d
            if cfg.shortening == "linear":
                total += 6.0 * mats(level.shorten) / (f * k)  # k*d x d, once per k positions
            elif cfg.shortening == "attention":  # kv per position, q and proj per window
                total += (2 * dd + 2 * dd / k + 12.0 * d) / f  # scores: k keys per window of k
            if cfg.upsampling == "linear":
                total += 6.0 * mats(level.upsample) / (f * k)  # d x k*d, once per k positions
            elif cfg.upsampling == "attention":  # q and proj per position, kv per shortened vector
                total += (2 * dd + 2 * dd / k + 12.0 * d * seq_len / (f * k)) / f
            level, f = level.inner, f * k
