"""Future Token Prediction (FTP): a causal encoder whose per-position state conditions a small
decoder that predicts the next N tokens.

Paper: Nicholas Walker, "Future Token Prediction -- Causal Language Modelling with Per-Token
Semantic State Vector for Multi-Token Prediction", 2024, arXiv 2410.18160.

The model, for a sequence x_0 .. x_{T-1}:

1. Encoder: a GPT-2-style causal transformer (learned positions, pre-LayerNorm, GELU MLP) gives
   one top-layer vector h_t per position, computed from x_0 .. x_t only.
2. Pseudo-sequence: a linear, expansive projection turns h_t into P vectors m_t = W h_t
   (reshaped to P x d). It is the decoder's only view of the past: h_t is the "per-token
   semantic state vector" of the paper's title.
3. Decoder: a small transformer run once per position t, over the N teacher-forced inputs
   x_t, x_{t+1}, .., x_{t+N-1}, with causal self-attention among them and cross-attention to
   m_t; its output at step j predicts x_{t+1+j}. So the prediction of x_{t+i} (i = 1..N) depends
   on x_0 .. x_t through m_t and on x_{t+1} .. x_{t+i-1}, the ground truth of the decoder's own
   earlier predictions, and on nothing later: the model is an ordinary autoregressive
   factorisation at every step.
4. Loss: the cross-entropy of every future token, discounted by its distance ahead,
   L = sum_{i=1..N} gamma^(i-1) L_i, with L_i the mean NLL of x_{t+i} over the positions t whose
   x_{t+i} lies inside the batch; by default divided by sum_i gamma^(i-1) (a weighted mean on the
   nats scale of a plain LM; ``normalize_discount``).

``forward(idx)`` returns the decoder's first prediction (step 0, input x_t), i.e. next-token
logits, so validation (the core's ``nll``), generation and the default loss all work on it.

Embedding and output head are shared (tied) between encoder input, decoder input and decoder
output. See the plugin README for how this relates to the paper and to the original BlaGPT.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from blagpt import ModelConfig
from blagpt.nn import padded_vocab, vocab_multiple_field


class FTPConfig(ModelConfig):
    """Future Token Prediction (Walker 2024, arXiv 2410.18160)."""

    name: str = Field(default="ftp", description="Registered model name: `ftp`.")
    d_model: int = Field(default=128, gt=0, description="Width of encoder, pseudo-sequence vectors and decoder.")
    n_layers: int = Field(default=4, gt=0, description="Encoder (causal transformer) layers.")
    n_heads: int = Field(default=4, gt=0, description="Attention heads, encoder and decoder.")
    n_decoder_layers: int = Field(
        default=1, gt=0, description="Decoder layers (self-attention, cross-attention to the pseudo-sequence, MLP)."
    )
    n_future: int = Field(
        default=4, gt=0, description="N: tokens the decoder predicts from each position (x_{t+1} .. x_{t+N})."
    )
    pseudo_len: int = Field(
        default=4, gt=0, description="P: vectors of the pseudo-sequence each encoder state is projected to."
    )
    gamma: float = Field(
        default=0.8, gt=0, le=1,
        description="Discount of the loss per token ahead: x_{t+i} is weighted gamma^(i-1).",
    )
    normalize_discount: bool = Field(
        default=True,
        description="Divide the discounted sum by sum_i gamma^(i-1) (a weighted mean, on the nats scale); "
        "false: the plain discounted sum.",
    )
    mlp_ratio: float = Field(default=4.0, gt=0, description="MLP hidden width as a multiple of d_model.")
    bias: bool = Field(default=True, description="Biases in linear layers and LayerNorms (GPT-2 style).")
    vocab_multiple: int = vocab_multiple_field()

    @model_validator(mode="after")
    def _check(self) -> "FTPConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads = {self.n_heads} does not divide d_model = {self.d_model}")
        return self


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``memory`` (``x`` itself when ``memory`` is None).

    Works on any leading batch shape: x (..., L, d), memory (..., M, d).
    """

    def __init__(self, d: int, n_heads: int, bias: bool):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d, d, bias=bias)
        self.kv = nn.Linear(d, 2 * d, bias=bias)
        self.out = nn.Linear(d, d, bias=bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(..., L, d) -> (prod(...), H, L, d/H): 4-D, which every SDPA kernel accepts."""
        return t.reshape(-1, t.shape[-2], self.n_heads, t.shape[-1] // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        k, v = self.kv(x if memory is None else memory).chunk(2, dim=-1)
        y = F.scaled_dot_product_attention(self._heads(self.q(x)), self._heads(k), self._heads(v), is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(x.shape))


class MLP(nn.Module):
    def __init__(self, d: int, hidden: int, bias: bool):
        super().__init__()
        self.up = nn.Linear(d, hidden, bias=bias)
        self.out = nn.Linear(hidden, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.up(x)))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: FTPConfig):
        super().__init__()
        d, hidden = cfg.d_model, int(cfg.mlp_ratio * cfg.d_model)
        self.ln1 = nn.LayerNorm(d, bias=cfg.bias)
        self.attn = Attention(d, cfg.n_heads, cfg.bias)
        self.ln2 = nn.LayerNorm(d, bias=cfg.bias)
        self.mlp = MLP(d, hidden, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), causal=True)
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    """Causal self-attention over the decoder's inputs, cross-attention to the pseudo-sequence, MLP."""

    def __init__(self, cfg: FTPConfig):
        super().__init__()
        d, hidden = cfg.d_model, int(cfg.mlp_ratio * cfg.d_model)
        self.ln1 = nn.LayerNorm(d, bias=cfg.bias)
        self.self_attn = Attention(d, cfg.n_heads, cfg.bias)
        self.ln2 = nn.LayerNorm(d, bias=cfg.bias)
        self.cross_attn = Attention(d, cfg.n_heads, cfg.bias)
        self.ln3 = nn.LayerNorm(d, bias=cfg.bias)
        self.mlp = MLP(d, hidden, cfg.bias)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.ln1(x), causal=True)
        x = x + self.cross_attn(self.ln2(x), memory)
        return x + self.mlp(self.ln3(x))


def discounted_loss(nlls: list[torch.Tensor], gamma: float, normalize: bool) -> torch.Tensor:
    """sum_i gamma^(i-1) mean(nlls[i-1]) over the offsets with at least one target,
    divided by the sum of those weights when ``normalize``."""
    terms = [(gamma**i, n.mean()) for i, n in enumerate(nlls) if n.numel()]
    total = sum(w * m for w, m in terms)
    return total / sum(w for w, _ in terms) if normalize else total


class FTP(nn.Module):
    """Future Token Prediction model (Walker 2024, arXiv 2410.18160); see the module docstring."""

    def __init__(self, cfg: FTPConfig, vocab_size: int, max_seq_len: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        d = cfg.d_model
        self.padded_vocab = padded_vocab(vocab_size, cfg.vocab_multiple)
        self.tok_emb = nn.Embedding(self.padded_vocab, d)
        self.pos_emb = nn.Embedding(max_seq_len, d)
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layers))
        self.enc_ln = nn.LayerNorm(d, bias=cfg.bias)
        self.pseudo = nn.Linear(d, cfg.pseudo_len * d, bias=cfg.bias)
        self.dec_pos = nn.Parameter(torch.zeros(cfg.n_future, d))
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_decoder_layers))
        self.dec_ln = nn.LayerNorm(d, bias=cfg.bias)
        self.head = nn.Linear(d, self.padded_vocab, bias=False)
        self.head.weight = self.tok_emb.weight
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's: N(0, 0.02) weights, zero biases, residual output projections scaled by
        1/sqrt(2 x residual depth) (encoder and decoder blocks counted together)."""
        depth = self.cfg.n_layers + self.cfg.n_decoder_layers
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)  # LayerNorm gains; biases
            else:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith("out.weight") else 0.02
                nn.init.normal_(p, std=std)

    def no_weight_decay(self) -> list[str]:
        return ["dec_pos"]

    # -- the two halves ------------------------------------------------------------------------

    def encode(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens -> (B, T, P, d) pseudo-sequences; position t sees x_0 .. x_t only."""
        B, T = idx.shape
        if T > self.max_seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_seq_len = {self.max_seq_len}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        for block in self.encoder:
            x = block(x)
        return self.pseudo(self.enc_ln(x)).unflatten(-1, (self.cfg.pseudo_len, self.cfg.d_model))

    def decode(self, memory: torch.Tensor, dec_in: torch.Tensor) -> torch.Tensor:
        """memory (B, T, P, d), dec_in (B, T, n) teacher-forced inputs -> (B, T, n, d) hidden
        states; step j of position t sees memory[:, t] and dec_in[:, t, :j+1] only."""
        n = dec_in.shape[-1]
        x = self.tok_emb(dec_in) + self.dec_pos[:n]
        for block in self.decoder:
            x = block(x, memory)
        return self.dec_ln(x)

    @staticmethod
    def future_windows(idx: torch.Tensor, targets: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder inputs and targets: for position t, inputs x_t, x_{t+1} .. x_{t+n-1} and targets
        x_{t+1} .. x_{t+n}, taken from ``idx`` (x_t) and ``targets`` (x_{t+1} ..); entries past
        the end of ``targets`` are 0 (they feed only steps whose target is past the end)."""
        tgt = F.pad(targets, (0, n)).unfold(1, n, 1)[:, : targets.shape[1]]  # (B, T, n): x_{t+1+j}
        dec_in = torch.cat([idx.unsqueeze(-1), tgt[..., :-1]], dim=-1)  # (B, T, n): x_{t+j}
        return dec_in, tgt

    def future_logits(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T, N, V) logits; [:, t, j] predicts x_{t+1+j} (= targets[:, t+j]); entries with
        t + j >= T have no target and are meaningless."""
        dec_in, _ = self.future_windows(idx, targets, self.cfg.n_future)
        return self.head(self.decode(self.encode(idx), dec_in))

    # -- the contract --------------------------------------------------------------------------

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Without ``targets``: (B, T, V) next-token logits (the decoder's first step, input x_t).

        With ``targets`` (B, T), the next tokens x_1 .. x_T: ``(loss, nlls)``, ``nlls[j]`` the
        (B, T-j) NLLs of x_{t+1+j} for t = 0 .. T-1-j, and ``loss`` their discounted combination
        (``discounted_loss``); ``nlls[0]`` is the ordinary next-token NLL.
        """
        memory = self.encode(idx)
        if targets is None:
            return self.head(self.decode(memory, idx.unsqueeze(-1))).squeeze(-2)
        T, N = idx.shape[1], self.cfg.n_future
        dec_in, tgt = self.future_windows(idx, targets, N)
        hidden = self.decode(memory, dec_in)
        nlls = []
        for j in range(N):
            valid = T - j  # positions t with x_{t+1+j} inside the batch
            if valid <= 0:
                nlls.append(hidden.new_zeros(idx.shape[0], 0))
                continue
            logits = self.head(hidden[:, :valid, j]).float()
            nll = F.cross_entropy(logits.flatten(0, 1), tgt[:, :valid, j].flatten(), reduction="none")
            nlls.append(nll.view(idx.shape[0], valid))
        return discounted_loss(nlls, self.cfg.gamma, self.cfg.normalize_discount), nlls

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        """Sample from the next-token (first decoder step) distribution, one token at a time."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.max_seq_len :])[:, -1, : self.vocab_size]
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, -1), 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward ~ 3 x forward, 2 per multiply-add): the
        encoder once, the pseudo projection once, and the decoder and head N times (N decoder
        steps per position), plus attention scores."""
        c, d = self.cfg, self.cfg.d_model
        h = int(c.mlp_ratio * d)
        enc = c.n_layers * (4 * d * d + 2 * d * h) + c.n_layers * 2 * d * seq_len
        dec_step = c.n_decoder_layers * (8 * d * d + 2 * d * h) + c.n_decoder_layers * 2 * d * (c.n_future + c.pseudo_len)
        return 6.0 * (enc + c.pseudo_len * d * d + c.n_future * (dec_step + d * self.padded_vocab))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
