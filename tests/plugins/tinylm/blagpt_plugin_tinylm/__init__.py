"""A tiny pre-norm causal transformer, the core's test model (real entry point, real hooks), and
``widebytes``, a test tokenizer whose ids do not fit in 16 bits.

Registered as ``tinylm`` (gpt2, bytes, or any tokenizer). Small on purpose: it exists so the core's tests and the
README's first run have a model before any architecture plugin is installed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

import hashlib

import numpy as np

from blagpt import ModelConfig, ModelSpec, Tokenizer, TokenizerSpec, hookimpl


class TinyLMConfig(ModelConfig):
    name: str = Field(default="tinylm", description="Registered model name.")
    d_model: int = Field(default=64, gt=0, description="Residual width.")
    n_layers: int = Field(default=2, gt=0, description="Transformer blocks.")
    n_heads: int = Field(default=4, gt=0, description="Attention heads (must divide d_model).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout after attention and MLP.")
    nan_after: int | None = Field(
        default=None, ge=0, description="Test hook: training-mode forwards return NaN after this many calls."
    )
    hold_at: int | None = Field(
        default=None, ge=1,
        description="Test hook: training-mode forward number hold_at of this process writes `<hold_file>.waiting` "
        "and waits until hold_file exists (a test then acts at a known step, whatever the machine's speed).",
    )
    hold_file: str | None = Field(default=None, description="Test hook: the file hold_at waits for.")
    warn_at: int | None = Field(
        default=None, ge=1, description="Test hook: training-mode forward number warn_at emits a UserWarning, as a library's notice would."
    )


class Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv: list | None = None) -> torch.Tensor:
        """``kv``: this block's [keys, values] of earlier tokens (a decoding cache), extended here."""
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        past = 0
        if kv is not None:
            if kv[0] is not None:
                past = kv[0].shape[2]
                k, v = torch.cat([kv[0], k], dim=2), torch.cat([kv[1], v], dim=2)
            kv[0], kv[1] = k, v
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # the T queries are positions past .. past+T-1 of the past+T keys
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.ln2(x)))


class TinyLM(nn.Module):
    def __init__(self, cfg: TinyLMConfig, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError("model.n_heads must divide model.d_model")
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.calls = 0
        self.forwards = 0
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.weight)  # loss at init is exactly ln(vocab)

    def init_cache(self, batch_size: int) -> dict:
        """An empty decoding cache (blagpt's optional incremental-decoding method): the position
        reached and each block's keys and values."""
        return {"pos": 0, "kv": [[None, None] for _ in self.blocks]}

    def forward(self, idx: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        T = idx.shape[1]
        start = 0 if cache is None else cache["pos"]
        if start + T > self.max_seq_len:
            raise ValueError(f"positions up to {start + T} exceed max_seq_len {self.max_seq_len}")
        x = self.wte(idx) + self.wpe(torch.arange(start, start + T, device=idx.device))
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache["kv"][i])
        if cache is not None:
            cache["pos"] += T
        logits = self.head(self.ln_f(x))
        if self.training:
            self.forwards += 1
            if self.cfg.hold_at is not None and self.forwards == self.cfg.hold_at:
                self._hold()
            if self.cfg.warn_at is not None and self.forwards == self.cfg.warn_at:
                import warnings

                warnings.warn("tinylm test notice: a library speaking during training")
        if self.training and self.cfg.nan_after is not None:
            self.calls += 1
            if self.calls > self.cfg.nan_after:
                logits = logits * float("nan")
        return logits

    def _hold(self) -> None:
        done = Path(self.cfg.hold_file)
        if done.exists():
            return
        with open(f"{done}.waiting", "a") as f:  # one line per process held (runs held at once each add theirs)
            f.write(f"{os.getpid()}\n")
        while not done.exists():  # signals (Ctrl-C, SIGTERM) are handled while it waits
            time.sleep(0.05)

    def state_size_bytes(self, seq_len: int) -> int:
        """The decoding cache after ``seq_len`` tokens: keys and values of every block, in the
        parameters' dtype."""
        return 2 * self.cfg.n_layers * seq_len * self.cfg.d_model * self.head.weight.element_size()

    def flops_per_token(self, seq_len: int) -> float:
        """6 N (matmul weights, forward + backward) + 12 L T d (attention scores and values)."""
        n = sum(p.numel() for n_, p in self.named_parameters() if not n_.startswith(("wte", "wpe")))
        return 6 * n + 12 * self.cfg.n_layers * seq_len * self.cfg.d_model


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "tinylm",
            TinyLMConfig,
            "Tiny causal transformer for blagpt's own tests",
            tokenizers=("gpt2", "bytes", "any"),
            presets={"wide": {"d_model": 128, "n_heads": 8}, "diverge": {"nan_after": 2},
                     "held": {"hold_at": 6, "hold_file": "hold"}},
        )
    )


@hookimpl
def build_model(name, config, ctx):
    if name != "tinylm":
        return None
    return TinyLM(config, ctx.vocab_size, ctx.max_seq_len)



class WideBytes(Tokenizer):
    """UTF-8 bytes as ids 70000..70255, end-of-text 70256: a vocabulary above 65,536 (uint32
    shards) that any test can afford (ids below 70000 are never produced)."""

    name = "widebytes"
    offset = 70000
    vocab_size = 70257
    eot = 70256

    def encode(self, text):
        return [self.offset + b for b in text.encode("utf-8")]

    def decode_bytes(self, ids):
        return bytes(int(i) - self.offset for i in ids if self.offset <= int(i) < self.eot)

    @property
    def token_bytes(self):
        out = np.zeros(self.vocab_size, dtype=np.int64)
        out[self.offset : self.eot] = 1
        return out

    @property
    def digest(self):
        return hashlib.sha256(b"widebytes: utf-8 byte b is id 70000 + b, end-of-text 70256").hexdigest()


@hookimpl
def register_tokenizers(register):
    register(TokenizerSpec("widebytes", "UTF-8 bytes as ids 70000-70255 (a test vocabulary above 65,536)", lambda arg: WideBytes()))
