"""Zamba2: a Mamba-2 backbone with shared transformer blocks.

Glorioso et al. (Zyphra) 2024, "The Zamba2 Suite: Technical Report", arXiv 2411.15242; the layer
is Mamba-2 (Dao and Gu 2024, arXiv 2405.21060).

The backbone is ``n_layers`` pre-norm Mamba-2 layers. Before every ``shared_every``-th of them
(layers ``N-1, 2N-1, ...``) one of ``n_shared_blocks`` shared transformer blocks runs (cycling
through them, ABAB...). A shared block sees the current hidden state concatenated with the
original token embedding (width 2 d)::

    a = Attention(RMSNorm([h ; e]))        # width 2d, rotary positions, out-projection to d
    m = MLP(RMSNorm(a))                    # gated GeLU
    t = Linear_j(m)                        # per invocation j, not shared
    h = h + Mamba2(RMSNorm(h + t))         # the Mamba-2 layer at that position

The blocks' weights are shared across invocations; each invocation j has its own low-rank (LoRA)
adapters on the query, key and value projections and on the MLP's input projection, and its own
output linear map, so the shared blocks can specialise by depth at a small parameter cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from blagpt.nn import apply_rotary, padded_vocab, rotary_tables
from blagpt_plugin_ssm import Mamba2, Mamba2State, init_lm_weights

from .config import Zamba2Config


class LowRank(nn.Module):
    """A LoRA adapter ``up(down(x))`` of rank r, added to a shared projection's output."""

    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class Invocation(nn.Module):
    """What one application of a shared block owns: LoRA adapters on q, k, v and on the MLP's
    gate/up projection, and the linear map from the block's output into the Mamba-2 layer."""

    def __init__(self, d_model: int, d_ff: int, rank: int) -> None:
        super().__init__()
        d_attn = 2 * d_model
        self.q, self.k, self.v = (LowRank(d_attn, d_attn, rank) for _ in range(3))
        self.gate_up = LowRank(d_model, 2 * d_ff, rank)
        self.linear = nn.Linear(d_model, d_model, bias=False)


@dataclass
class KVCache:
    """Keys and values (b, heads, S, head_dim) of the tokens seen so far by one invocation."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


class SharedBlock(nn.Module):
    """The shared transformer block: attention over [h ; e] (width 2d) and a gated-GeLU MLP."""

    def __init__(self, cfg: Zamba2Config) -> None:
        super().__init__()
        d, d_attn = cfg.d_model, 2 * cfg.d_model
        if d_attn % cfg.n_heads or (d_attn // cfg.n_heads) % 2:
            raise ValueError(f"model.n_heads = {cfg.n_heads} must divide 2 * d_model into heads of even size")
        self.n_heads, self.head_dim = cfg.n_heads, d_attn // cfg.n_heads
        self.rope, self.rope_base = cfg.rope, cfg.rope_base
        self.norm_in = nn.RMSNorm(d_attn, eps=1e-5)
        self.q = nn.Linear(d_attn, d_attn, bias=False)
        self.k = nn.Linear(d_attn, d_attn, bias=False)
        self.v = nn.Linear(d_attn, d_attn, bias=False)
        self.o = nn.Linear(d_attn, d, bias=False)
        self.norm_ff = nn.RMSNorm(d, eps=1e-5)
        self.gate_up = nn.Linear(d, 2 * cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, d, bias=False)

    def attention(self, x: torch.Tensor, inv: Invocation, pos: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        b, T, _ = x.shape
        heads = lambda t: t.view(b, T, self.n_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q = heads(self.q(x) + inv.q(x))
        k = heads(self.k(x) + inv.k(x))
        v = heads(self.v(x) + inv.v(x))
        if self.rope:  # Su et al. 2021, arXiv 2104.09864; pos continues the cache's positions
            cos, sin = rotary_tables(pos, self.head_dim, self.rope_base)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None and cache.k is not None:
            k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
        if cache is not None:
            cache.k, cache.v = k.detach(), v.detach()
        S = k.size(2)
        if S == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # queries are the last T of S positions
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(b, T, -1))

    def forward(
        self, h: torch.Tensor, emb: torch.Tensor, inv: Invocation, pos: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        x = self.norm_in(torch.cat([h, emb], dim=-1))
        a = self.attention(x, inv, pos, cache)
        a = self.norm_ff(a)
        gate, up = (self.gate_up(a) + inv.gate_up(a)).chunk(2, dim=-1)
        m = self.down(F.gelu(gate) * up)
        return inv.linear(m)


class MambaLayer(nn.Module):
    """``h + Mamba2(RMSNorm(h + t))``, t the shared block's contribution (or nothing)."""

    def __init__(self, cfg: Zamba2Config) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.mixer = Mamba2(cfg.d_model, **cfg.mamba2_kwargs())

    def forward(self, h: torch.Tensor, t: torch.Tensor | None, state: Mamba2State | None) -> torch.Tensor:
        return h + self.mixer(self.norm(h if t is None else h + t), state)


@dataclass
class Zamba2Cache:
    """Generation state: position, every Mamba-2 layer's state, every invocation's keys/values."""

    pos: int
    mamba: list[Mamba2State]
    kv: list[KVCache] = field(default_factory=list)


class Zamba2LM(nn.Module):
    def __init__(self, cfg: Zamba2Config, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = padded_vocab(vocab_size, cfg.vocab_multiple)
        self.max_seq_len = max_seq_len
        self.hybrid_layers = cfg.hybrid_layer_ids()
        self.embed = nn.Embedding(self.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MambaLayer(cfg) for _ in range(cfg.n_layers))
        self.shared = nn.ModuleList(SharedBlock(cfg) for _ in range(cfg.n_shared_blocks))
        self.invocations = nn.ModuleList(Invocation(cfg.d_model, cfg.d_ff, cfg.lora_rank) for _ in self.hybrid_layers)
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.head = nn.Linear(cfg.d_model, self.vocab_size, bias=False)
        init_lm_weights(self, cfg.n_layers)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def init_cache(self, batch_size: int) -> Zamba2Cache:
        """State before the first token. The Mamba-2 part is constant in size; the shared
        attention's keys and values grow with the sequence, as in any transformer."""
        return Zamba2Cache(
            pos=0,
            mamba=[layer.mixer.init_state(batch_size) for layer in self.layers],
            kv=[KVCache() for _ in self.hybrid_layers],
        )

    def forward(self, idx: torch.Tensor, cache: Zamba2Cache | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits; with ``cache``, continue from it."""
        T = idx.size(1)
        start = cache.pos if cache is not None else 0
        pos = torch.arange(start, start + T, device=idx.device)
        emb = self.embed(idx)
        h = emb
        for i, layer in enumerate(self.layers):
            t = None
            if i in self.hybrid_layers:
                j = self.hybrid_layers.index(i)
                block = self.shared[j % len(self.shared)]
                t = block(h, emb, self.invocations[j], pos, cache.kv[j] if cache is not None else None)
            h = layer(h, t, cache.mamba[i] if cache is not None else None)
        if cache is not None:
            cache.pos += T
        return self.head(self.norm_f(h))

    def flops_per_token(self, seq_len: int) -> float:
        """6 x (weights in matmuls per token, a shared block counted once per invocation, head
        included) + attention scores and values (12 x invocations x T x 2d) + the SSD's own."""
        matmul = lambda mod: sum(p.numel() for n, p in mod.named_parameters() if p.dim() >= 2 and "conv1d" not in n)  # noqa: E731
        n = matmul(self.layers) + matmul(self.invocations) + self.head.weight.numel()
        n += sum(matmul(self.shared[j % len(self.shared)]) for j in range(len(self.hybrid_layers)))
        attn = 12.0 * len(self.hybrid_layers) * seq_len * 2 * self.cfg.d_model
        ssd = sum(layer.mixer.flops_per_token() for layer in self.layers)
        return 6.0 * n + attn + ssd
