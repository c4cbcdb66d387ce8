"""Rene: Mamba-2 layers with MLP and sliding-window attention layers interleaved.

Cartesia 2024, Rene-v0.1 (model card and config, huggingface.co/cartesia-ai/Rene-v0.1-1.3b-pytorch):
a stack of pre-norm residual blocks ``x + mixer(RMSNorm(x))`` whose mixer is, by layer index,
a Mamba-2 layer (Dao and Gu 2024, arXiv 2405.21060), a one-hidden-layer GeLU MLP, or causal
multi-head attention restricted to a sliding window. As in Rene's attention, there is no
positional encoding: the Mamba-2 layers below an attention layer carry the order of tokens.

Generation state: each Mamba-2 layer's (convolution, SSM) state and each attention layer's last
``sliding_window - 1`` keys and values, so the whole state is constant in the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from blagpt.nn import padded_vocab
from blagpt_plugin_ssm import Mamba2, Mamba2State, init_lm_weights

from .config import ReneConfig


class MLP(nn.Module):
    """``out_proj(gelu(in_proj(x)))``."""

    def __init__(self, d_model: int, expand: int, bias: bool) -> None:
        super().__init__()
        self.in_proj = nn.Linear(d_model, expand * d_model, bias=bias)
        self.out_proj = nn.Linear(expand * d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        return self.out_proj(F.gelu(self.in_proj(x)))


@dataclass
class WindowCache:
    """The last ``window - 1`` keys and values (b, heads, S, head_dim) and the next position."""

    pos: int = 0
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


class SlidingWindowAttention(nn.Module):
    """Causal multi-head attention where the query at t sees keys t-W+1 .. t."""

    def __init__(self, d_model: int, n_heads: int, window: int, bias: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.window = n_heads, d_model // n_heads, window
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor, cache: WindowCache | None = None) -> torch.Tensor:
        b, T, d = x.shape
        q, k, v = self.in_proj(x).view(b, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        past = 0
        if cache is not None and cache.k is not None:
            past = cache.k.size(2)
            k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
        if cache is not None:
            start = max(0, k.size(2) - (self.window - 1))  # keep the last window - 1 keys
            cache.k, cache.v = k[:, :, start:].detach(), v[:, :, start:].detach()
            cache.pos += T
        S = past + T
        if past == 0 and T <= self.window:  # plain causal attention: the window never binds
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            q_pos = torch.arange(past, S, device=x.device)[:, None]
            k_pos = torch.arange(S, device=x.device)[None, :]
            mask = (k_pos <= q_pos) & (q_pos - k_pos < self.window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, T, d))


class Block(nn.Module):
    """``x + mixer(RMSNorm(x))``."""

    def __init__(self, d_model: int, mixer: nn.Module) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = mixer

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        return x + self.mixer(self.norm(x), cache)


class ReneLM(nn.Module):
    def __init__(self, cfg: ReneConfig, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = padded_vocab(vocab_size, cfg.vocab_multiple)
        self.max_seq_len = max_seq_len
        self.kinds = cfg.layer_kinds()
        d = cfg.d_model

        def mixer(kind: str) -> nn.Module:
            if kind == "attn":
                return SlidingWindowAttention(d, cfg.n_heads, cfg.sliding_window, cfg.attn_bias)
            if kind == "mlp":
                return MLP(d, cfg.mlp_expand, cfg.mlp_bias)
            return Mamba2(d, **cfg.mamba2_kwargs())

        self.embed = nn.Embedding(self.vocab_size, d)
        self.layers = nn.ModuleList(Block(d, mixer(kind)) for kind in self.kinds)
        self.norm_f = nn.RMSNorm(d, eps=1e-5)
        self.head = nn.Linear(d, self.vocab_size, bias=False)
        init_lm_weights(self, cfg.n_layers)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def init_cache(self, batch_size: int) -> list[Mamba2State | WindowCache | None]:
        """Per layer: a Mamba-2 state, an attention window cache, or nothing (MLP)."""
        return [
            layer.mixer.init_state(batch_size) if kind == "mamba2" else WindowCache() if kind == "attn" else None
            for kind, layer in zip(self.kinds, self.layers)
        ]

    def forward(self, idx: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits; with ``cache``, continue from it."""
        x = self.embed(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache[i] if cache is not None else None)
        return self.head(self.norm_f(x))

    def flops_per_token(self, seq_len: int) -> float:
        """6 x (weights in matmuls, head included) + windowed attention (12 x T_eff x d per
        attention layer, T_eff the mean keys per query) + the SSD's own FLOPs."""
        n = sum(p.numel() for name, p in self.named_parameters() if p.dim() >= 2 and "conv1d" not in name)
        W, T = self.cfg.sliding_window, seq_len
        mean_keys = (T + 1) / 2 if T <= W else (W * (W + 1) / 2 + (T - W) * W) / T
        attn = 12.0 * self.kinds.count("attn") * 2 * mean_keys * self.cfg.d_model
        ssd = sum(layer.mixer.flops_per_token() for kind, layer in zip(self.kinds, self.layers) if kind == "mamba2")
        return 6.0 * n + attn + ssd
