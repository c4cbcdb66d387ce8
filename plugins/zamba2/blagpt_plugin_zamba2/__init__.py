"""blagpt-plugin-zamba2: Zamba2 (Zyphra 2024, arXiv 2411.15242), a Mamba-2 backbone with shared
attention + MLP blocks applied every N layers, on the Mamba-2 layer of blagpt-plugin-ssm."""

from __future__ import annotations

from blagpt import ModelSpec, hookimpl
from blagpt_plugin_ssm import check_kernel_device

from .config import Zamba2Config
from .model import Zamba2Cache, Zamba2LM

__all__ = ["Zamba2Cache", "Zamba2Config", "Zamba2LM"]

PRESETS = {
    "tiny": {
        "d_model": 64, "n_layers": 4, "shared_every": 2, "n_shared_blocks": 2, "n_heads": 4, "d_ff": 128,
        "lora_rank": 8, "d_state": 16, "head_dim": 16, "chunk_size": 16,
    },
    # Matched-size benches: `tiny` at width 44 (8 SSM heads of 11 as tiny's 8 of 16, SSD chunk
    # the default), 150,116 parameters without embeddings (bytes, seq_len 256; the target is
    # 150k +- 10 % for every model's `bench`).
    "bench": {
        "d_model": 44, "n_layers": 4, "shared_every": 2, "n_shared_blocks": 2, "n_heads": 4, "d_ff": 88,
        "lora_rank": 8, "d_state": 16, "head_dim": 11,
    },
    "small": {"d_model": 384, "n_layers": 12, "shared_every": 4, "n_heads": 6, "d_ff": 1536, "lora_rank": 64, "d_state": 64},
    # Matched to GPT-2 small (124.5M with tied embeddings, vocab 50304): 124.8M. Three invocations
    # of one shared block (before layers 5, 11, 17), as Zamba2-1.2B's one block every 6 layers.
    "124m": {
        "d_model": 768, "n_layers": 18, "shared_every": 6, "n_shared_blocks": 1, "n_heads": 12, "d_ff": 3072,
        "lora_rank": 64, "d_state": 64, "head_dim": 64, "expand": 2,
    },
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "zamba2",
            Zamba2Config,
            "Zamba2: Mamba-2 backbone + shared attention blocks with per-invocation LoRA",
            tokenizers=("gpt2", "bytes", "any"),
            presets=PRESETS,
        )
    )


@hookimpl
def build_model(name, config, ctx):
    if name != "zamba2":
        return None
    check_kernel_device(config, ctx.device)
    return Zamba2LM(config, ctx.vocab_size, ctx.max_seq_len)
