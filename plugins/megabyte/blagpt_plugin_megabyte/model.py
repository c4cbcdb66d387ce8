"""MegaByte: a global transformer over patches and a local transformer inside each patch.

Yu, Simig, Flaherty, Aghajanyan, Zettlemoyer, Lewis (2023), "MEGABYTE: Predicting Million-byte
Sequences with Multiscale Transformers", arXiv 2305.07185.

The sequence x_0 .. x_{L-1} (bytes, or GPT-2 tokens) is cut into K = L / P patches of P tokens.

    global embedding   h_t = E_g[x_t] + pos_g[t]                     (width d_global / P)
    patch k            H_k = concat(h_{kP}, ..., h_{kP+P-1})           (width d_global)
    global input       [S, H_0, ..., H_{K-2}]                          S: learned start patch
    global output      G_k = GlobalTransformer(...)_k                  sees patches < k only
    local input        u_{k,p} = W_gl G_{k,p} + E_l[x_{kP+p-1}] + pos_l[p]
                       (G_{k,p}: the p-th of the P slices of G_k; for p = 0 the previous token is
                       a learned start vector, so a patch never reads the patch before it here)
    local output       y_{k,p} = LocalTransformer(u_{k,0..P-1})_p     causal within the patch
    prediction         y_{k,p} gives the distribution of x_{kP+p} from x_{<kP+p}

That native output at position i predicts x_i itself. blagpt's contract is logits at position t
for x_{t+1} given x_{<=t}, so :meth:`MegaByte.forward` runs the native model on the input with
one extra position appended (and right-padding up to a multiple of P), and returns the native
outputs at positions 1 .. T. Every padded position comes after every real one, so the padding
never reaches a returned output; the logits of the model are thus causal for any T, multiple of
P or not. Labels are the trainer's own ``batch.targets``; the model builds none.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from blagpt import ModelConfig
from blagpt.nn import padded_vocab, vocab_multiple_field


class MegaByteConfig(ModelConfig):
    """MegaByte (Yu et al. 2023, arXiv 2305.07185)."""

    name: str = Field(default="megabyte", description="Registered model name.")
    patch_size: int = Field(default=8, gt=0, description="Tokens per patch P (the paper uses 8 for bytes).")
    global_dim: int = Field(
        default=512,
        gt=0,
        description="Width of the global transformer (the paper's P * D_G); each token's global embedding "
        "is global_dim / P wide. Must be a multiple of patch_size.",
    )
    global_layers: int = Field(default=4, gt=0, description="Blocks of the global (patch-level) transformer.")
    global_heads: int = Field(default=8, gt=0, description="Attention heads of the global transformer.")
    local_dim: int = Field(default=256, gt=0, description="Width of the local (within-patch) transformer D_L.")
    local_layers: int = Field(default=2, gt=0, description="Blocks of the local transformer.")
    local_heads: int = Field(default=4, gt=0, description="Attention heads of the local transformer.")
    mlp_ratio: int = Field(default=4, gt=0, description="MLP hidden width as a multiple of the block width.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on embeddings and residual branches.")
    tie_embeddings: bool = Field(
        default=False, description="Share the local token embedding E_l with the output head."
    )
    vocab_multiple: int = vocab_multiple_field()

    @model_validator(mode="after")
    def _shapes(self) -> "MegaByteConfig":
        if self.global_dim % self.patch_size:
            raise ValueError(f"patch_size ({self.patch_size}) must divide global_dim ({self.global_dim})")
        if self.global_dim % self.global_heads:
            raise ValueError(f"global_heads ({self.global_heads}) must divide global_dim ({self.global_dim})")
        if self.local_dim % self.local_heads:
            raise ValueError(f"local_heads ({self.local_heads}) must divide local_dim ({self.local_dim})")
        return self


class Block(nn.Module):
    """Pre-LayerNorm transformer block with causal self-attention and a GELU MLP (GPT-2 style)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, mlp_ratio * dim)
        self.out = nn.Linear(mlp_ratio * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class MegaByte(nn.Module):
    """MegaByte (Yu et al. 2023, arXiv 2305.07185) under blagpt's next-token contract.

    ``forward(idx)`` maps (B, T) ids to (B, T, V) logits, position t predicting token t + 1 from
    tokens <= t; see the module docstring for the shifts that make it causal.
    """

    def __init__(self, config: MegaByteConfig, vocab_size: int, max_seq_len: int):
        super().__init__()
        c = self.config = config
        P = c.patch_size
        self.vocab_size = vocab_size
        V = padded_vocab(vocab_size, c.vocab_multiple)
        self.max_seq_len = max_seq_len
        # The native model sees T + 1 positions padded to whole patches; the last patch never
        # enters the global transformer (the shift drops it), so positions of the others suffice.
        n_patches = math.ceil((max_seq_len + 1) / P)
        d_tok = c.global_dim // P
        self.global_emb = nn.Embedding(V, d_tok)
        self.global_pos = nn.Parameter(torch.zeros(max(n_patches - 1, 1) * P, d_tok))
        self.global_start = nn.Parameter(torch.zeros(c.global_dim))
        self.global_blocks = nn.ModuleList(
            Block(c.global_dim, c.global_heads, c.mlp_ratio, c.dropout) for _ in range(c.global_layers)
        )
        self.global_ln = nn.LayerNorm(c.global_dim)
        self.global_to_local = nn.Linear(d_tok, c.local_dim)
        self.local_emb = nn.Embedding(V, c.local_dim)
        self.local_start = nn.Parameter(torch.zeros(c.local_dim))
        self.local_pos = nn.Parameter(torch.zeros(P, c.local_dim))
        self.local_blocks = nn.ModuleList(
            Block(c.local_dim, c.local_heads, c.mlp_ratio, c.dropout) for _ in range(c.local_layers)
        )
        self.local_ln = nn.LayerNorm(c.local_dim)
        self.head = nn.Linear(c.local_dim, V, bias=False)
        self.drop = nn.Dropout(c.dropout)
        self._init_weights()
        if c.tie_embeddings:
            self.head.weight = self.local_emb.weight

    def _init_weights(self) -> None:
        c = self.config
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for blocks, n in ((self.global_blocks, c.global_layers), (self.local_blocks, c.local_layers)):
            for b in blocks:  # GPT-2's scaled init of the residual projections
                for lin in (b.proj, b.out):
                    nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * n))
        for p in (self.global_pos, self.global_start, self.local_start, self.local_pos):
            nn.init.normal_(p, std=0.02)

    def native(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's model: (B, K * P) ids -> (B, K * P, V) logits, output i predicting x_i
        from x_{<i} (output 0 sees nothing but the start patch and start vector)."""
        c = self.config
        P = c.patch_size
        B, L = x.shape
        K = L // P
        assert K * P == L, "native() takes whole patches"
        # global: patch embeddings shifted right by one patch behind a learned start patch
        h = self.global_emb(x[:, : L - P]) + self.global_pos[: L - P]
        h = h.reshape(B, K - 1, c.global_dim)
        h = torch.cat([self.global_start.expand(B, 1, -1), h], dim=1)
        h = self.drop(h)
        for block in self.global_blocks:
            h = block(h)
        g = self.global_to_local(self.global_ln(h).reshape(B, K, P, -1))  # (B, K, P, D_L)
        # local: previous token of the same patch (start vector at p = 0) plus the global context
        e = self.local_emb(x).reshape(B, K, P, -1)
        prev = torch.cat([self.local_start.expand(B, K, 1, -1), e[:, :, :-1]], dim=2)
        u = self.drop(g + prev + self.local_pos).reshape(B * K, P, -1)
        for block in self.local_blocks:
            u = block(u)
        return self.head(self.local_ln(u)).reshape(B, L, -1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.max_seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_seq_len={self.max_seq_len}")
        P = self.config.patch_size
        L = math.ceil((T + 1) / P) * P
        # Right padding (token 0): one position so that native output T predicts the token after
        # the last input, the rest to fill the last patch. Both lie after every real token.
        x = F.pad(idx, (0, L - T), value=0)
        return self.native(x)[:, 1 : T + 1]

    def flops_per_token(self, seq_len: int) -> float:
        """Forward + backward FLOPs per trained token: 6 x the matmul parameters each token
        passes through (global ones shared by the P tokens of a patch) plus attention."""
        c = self.config
        P = c.patch_size
        per_block = lambda d: (4 + 2 * c.mlp_ratio) * d * d  # noqa: E731
        K = math.ceil((seq_len + 1) / P)
        L = K * P
        glob = c.global_layers * (per_block(c.global_dim) + 2 * c.global_dim * K) * K  # per sequence
        local = c.local_layers * (per_block(c.local_dim) + 2 * c.local_dim * P) * L
        proj = (c.global_dim // P * c.local_dim + c.local_dim * self.head.weight.shape[0]) * L
        return 6.0 * (glob + local + proj) / seq_len
