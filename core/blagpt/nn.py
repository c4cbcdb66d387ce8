"""Building blocks that model plugins share: optional public API, ``from blagpt.nn import ...``.

Nothing here is required (the core never calls it); a plugin uses these pieces so that it need
not write them again, and so that the same option reads the same in every model:

- vocabulary padding: :func:`padded_vocab` (the padded embedding/head row count) and
  :func:`vocab_multiple_field`, the config field ``vocab_multiple``, which also accepts the older
  spelling ``pad_vocab_multiple`` so configs and checkpoints saved under that name still load;
- rotary position embeddings (RoPE; Su et al. 2021, "RoFormer", arXiv 2104.09864), in the
  rotate-half layout (channel i pairs with channel i + D/2): :func:`rotary_tables`,
  :func:`apply_rotary`, and :class:`Rotary`, which caches the tables of positions
  0 .. max_seq_len-1.

It imports torch, math and pydantic only, so using it ties a plugin to nothing else in the core.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from pydantic import AliasChoices, Field

__all__ = ["Rotary", "apply_rotary", "padded_vocab", "rotary_tables", "vocab_multiple_field"]


# -- vocabulary padding -----------------------------------------------------------------------


def padded_vocab(vocab_size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``vocab_size`` (50257 -> 50304 at 64).

    Matmuls with a row count that is a multiple of 64 run on faster kernels; the extra rows are
    never a target, so they only learn to be unlikely.
    """
    if multiple < 1:
        raise ValueError(f"vocab multiple must be >= 1, got {multiple}")
    return multiple * math.ceil(vocab_size / multiple)


def vocab_multiple_field(default: int = 64):
    """The config field ``vocab_multiple`` (``vocab_multiple: int = vocab_multiple_field()``).

    Input may also spell it ``pad_vocab_multiple``, the name some plugins used before, so their
    saved configs and checkpoints validate; the field is always dumped as ``vocab_multiple``.
    """
    return Field(
        default=default,
        gt=0,
        validation_alias=AliasChoices("vocab_multiple", "pad_vocab_multiple"),
        description="Pad the embedding and output head rows up to a multiple of this (50257 -> 50304 at 64); "
        "1 turns padding off. Also accepted as `pad_vocab_multiple` (its former name).",
    )


# -- rotary position embeddings ---------------------------------------------------------------


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (len(positions), head_dim // 2) float32.

    Angle of position p and pair i: p * base^(-2i / head_dim). Computed in float64 and rounded
    once, so long positions keep their accuracy (a float32 product p * freq loses bits at large p).
    The tables are on ``positions``'s device.
    """
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim
    angles = positions.to(torch.float64)[:, None] * base**-exponents
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+D/2}) of the last dimension of ``x`` by its angle.

    ``cos`` and ``sin`` must broadcast against ``x[..., :D/2]`` (e.g. (T, D/2) for x (B, H, T, D));
    they are cast to ``x``'s dtype.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Rotary(nn.Module):
    """RoPE of a head dimension and base, with the tables of positions 0 .. max_seq_len-1 cached.

    The tables are non-persistent buffers: they follow ``.to(device)`` but are not in the
    ``state_dict`` (they are rebuilt from the config).
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        cos, sin = rotary_tables(torch.arange(max_seq_len), head_dim, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, seq_dim: int = -2) -> torch.Tensor:
        """Rotate ``x``, head channels last and its sequence along ``seq_dim``.

        ``seq_dim=-2`` is the attention layout (B, H, T, D); pass ``seq_dim=1`` for (B, T, H, D).
        ``positions``: None for 0 .. T-1 (the cached rows, T <= max_seq_len); or a (T,) tensor of
        any positions, e.g. offset by the tokens already in a decoding cache, whose tables are
        computed on the spot (the same values the cache holds for positions below max_seq_len).
        """
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"rotary embedding of head dimension {self.head_dim} got inputs of {x.shape[-1]}")
        dim = seq_dim % x.dim()
        if dim == x.dim() - 1:
            raise ValueError("seq_dim must not be the last dimension, which holds the head channels")
        T = x.shape[dim]
        if positions is None:
            if T > self.max_seq_len:
                raise ValueError(f"sequence of {T} positions exceeds the rotary tables' max_seq_len {self.max_seq_len}")
            cos, sin = self.cos[:T], self.sin[:T]
        else:
            if positions.shape != (T,):
                raise ValueError(f"positions must be of shape ({T},) for a sequence of {T}, got {tuple(positions.shape)}")
            cos, sin = rotary_tables(positions, self.head_dim, self.base)
        between = (1,) * (x.dim() - 2 - dim)  # dimensions between the sequence and the channels
        return apply_rotary(x, cos.view(T, *between, -1), sin.view(T, *between, -1))
