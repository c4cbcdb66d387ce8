"""The probe: a tiny causal LM the conformance kit trains to exercise optimizer plugins.

It is a plugin like any other (``register_models`` and ``build_model`` hooks), but it has no entry
point: :func:`add_probe` registers it into one :class:`blagpt.plugin.registry.Registry` in-process, and the
kit's DDP worker does the same under ``torchrun``. The model is registered as ``PROBE_NAME`` and
holds one parameter of every role an optimizer has to handle: an embedding table, learned
positions, hidden 2-D matrices (attention and MLP), a 3-D weight (a depthwise causal
convolution), vectors (norm gains and biases) and an untied vocabulary-sized output head.
It is deterministic (no dropout), so single-process and DDP runs agree.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ..plugin.hookspecs import hookimpl
from ..plugin.specs import ModelConfig, ModelSpec

PROBE_NAME = "blagpt-testing-probe"
PLUGIN_NAME = "blagpt-testing-probe"


class ProbeConfig(ModelConfig):
    """The probe model's config (the kit uses the defaults)."""

    name: str = Field(default=PROBE_NAME, description="Registered model name.")
    d_model: int = Field(default=32, gt=0, description="Residual width.")
    n_heads: int = Field(default=2, gt=0, description="Attention heads; must divide d_model.")
    conv_size: int = Field(default=3, ge=1, description="Kernel size of the depthwise causal convolution.")


class ProbeLM(nn.Module):
    """Embedding + positions, causal depthwise conv, one attention + MLP block, untied head."""

    def __init__(self, cfg: ProbeConfig, vocab_size: int, max_seq_len: int) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"model.n_heads: {cfg.n_heads} does not divide model.d_model = {cfg.d_model}")
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.wte = nn.Embedding(vocab_size, d)
        self.wpe = nn.Embedding(max_seq_len, d)
        self.conv = nn.Conv1d(d, d, cfg.conv_size, groups=d, padding=cfg.conv_size - 1)
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        x = x + self.conv(x.transpose(1, 2))[..., :T].transpose(1, 2)  # left padding only: causal
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
        x = x + self.proj(y)
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return self.head(self.ln_f(x))


@hookimpl
def register_models(register):
    register(ModelSpec(PROBE_NAME, ProbeConfig, "blagpt.testing's probe model (optimizer checks)", tokenizers=("bytes",)))


@hookimpl
def build_model(name, config, ctx):
    if name != PROBE_NAME:
        return None
    return ProbeLM(config, ctx.vocab_size, ctx.max_seq_len)


def add_probe(registry) -> None:
    """Register the probe into ``registry`` (a :class:`blagpt.plugin.registry.Registry`), in-process.

    Raises :class:`blagpt.plugin.registry.PluginError` if it cannot be registered (e.g. an installed
    plugin already registers the name).
    """
    from .. import __version__
    from ..plugin.registry import PluginError, PluginInfo

    if PROBE_NAME in registry.models:
        return
    info = PluginInfo(PLUGIN_NAME, "blagpt", __version__, __name__)
    registry._add(info, lambda: sys.modules[__name__])
    if not info.ok or PROBE_NAME not in registry.models:
        why = info.error or registry.conflicts.get(("model", PROBE_NAME), "not registered")
        raise PluginError(f"blagpt.testing: the probe model {PROBE_NAME!r} could not be registered: {why}")
