"""The plain Mamba-2 language model (Dao and Gu 2024, arXiv 2405.21060).

Embedding, then ``n_layers`` pre-norm residual blocks ``x + Mamba2(RMSNorm(x))`` (no MLPs, as in
the paper's language models), a final RMSNorm and a head tied to the embedding.

``forward(idx)`` trains with the chunked SSD. ``forward(idx, cache)`` continues the sequence held
in ``cache`` (from :meth:`Mamba2LM.init_cache`) and updates it: a prompt of any length at once,
then one token at a time through the recurrence, in memory constant in the sequence length.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from blagpt.nn import padded_vocab

from .config import Mamba2Config
from .mamba2 import Mamba2, Mamba2State


class Mamba2Block(nn.Module):
    """``x + Mamba2(RMSNorm(x))``."""

    def __init__(self, d_model: int, mixer: Mamba2) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = mixer

    def forward(self, x: torch.Tensor, state: Mamba2State | None = None) -> torch.Tensor:
        return x + self.mixer(self.norm(x), state)


def init_lm_weights(model: nn.Module, n_residual_layers: int, std: float = 0.02) -> None:
    """GPT-2 style initialisation shared by the Mamba-2 family's language models: N(0, std) for
    embeddings and linear maps, std / sqrt(2 L) for the output projections that write into the
    residual stream (``out_proj``), zero biases. Convolutions and the SSM's A, D, dt keep their
    own initialisation."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.Linear):
            scale = 1 / (2 * n_residual_layers) ** 0.5 if name.endswith("out_proj") else 1.0
            nn.init.normal_(m.weight, std=std * scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Mamba2LM(nn.Module):
    def __init__(self, cfg: Mamba2Config, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = padded_vocab(vocab_size, cfg.vocab_multiple)
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(self.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            Mamba2Block(cfg.d_model, Mamba2(cfg.d_model, **cfg.mamba2_kwargs())) for _ in range(cfg.n_layers)
        )
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.head = nn.Linear(cfg.d_model, self.vocab_size, bias=False)
        init_lm_weights(self, cfg.n_layers)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def init_cache(self, batch_size: int) -> list[Mamba2State]:
        """The recurrent state of every layer before the first token: blagpt's optional
        incremental decoding, ``forward(idx, cache=cache)`` then continues from it."""
        return [layer.mixer.init_state(batch_size) for layer in self.layers]

    def forward(self, idx: torch.Tensor, cache: list[Mamba2State] | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits; with ``cache``, continue from it."""
        x = self.embed(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache[i] if cache is not None else None)
        return self.head(self.norm_f(x))

    def state_size_bytes(self, seq_len: int) -> int:
        """Bytes of recurrent state one sequence carries at inference, whatever ``seq_len``: every
        layer's convolution inputs (``d_conv - 1`` x conv width) and fp32 SSM state (heads x
        head_dim x d_state), measured on the state decoding starts from."""
        return sum(t.numel() * t.element_size() for s in self.init_cache(1) for t in (s.conv, s.ssm))

    def flops_per_token(self, seq_len: int) -> float:
        """6 x (weights used in matmuls, head included) + the chunked SSD's own FLOPs."""
        n = sum(p.numel() for name, p in self.named_parameters() if p.dim() >= 2 and "conv1d" not in name)
        ssd = sum(layer.mixer.flops_per_token() for layer in self.layers)
        return 6.0 * n + ssd
