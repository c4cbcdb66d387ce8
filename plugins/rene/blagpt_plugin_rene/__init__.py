"""blagpt-plugin-rene: Rene (Cartesia 2024, Rene-v0.1), Mamba-2 layers with MLP and
sliding-window attention layers interleaved, on the Mamba-2 layer of blagpt-plugin-ssm."""

from __future__ import annotations

from blagpt import ModelSpec, hookimpl
from blagpt_plugin_ssm import check_kernel_device

from .config import ReneConfig
from .model import ReneLM, SlidingWindowAttention, WindowCache

__all__ = ["ReneConfig", "ReneLM", "SlidingWindowAttention", "WindowCache"]

PRESETS = {
    # layers: mamba2, mlp, attn, mlp (the attention window, 8, binds at the tests' lengths)
    "tiny": {
        "d_model": 64, "n_layers": 4, "attn_layer_idx": [2], "mlp_layer_idx": [1, 3], "n_heads": 4,
        "sliding_window": 8, "d_state": 16, "head_dim": 16, "chunk_size": 16,
    },
    # Matched-size benches: `tiny`'s layers at width 80, 146,670 parameters without embeddings
    # (bytes, seq_len 256; the target is 150k +- 10 % for every model's `bench`). The window is
    # half the bench's 256 tokens (as 124m's 512 of 1024), the SSD chunk the default.
    "bench": {
        "d_model": 80, "n_layers": 4, "attn_layer_idx": [2], "mlp_layer_idx": [1, 3], "n_heads": 4,
        "sliding_window": 128, "d_state": 16, "head_dim": 16,
    },
    "small": {"d_model": 384, "n_layers": 12, "n_heads": 6, "d_state": 64, "sliding_window": 256},
    # Matched to GPT-2 small (124.5M with tied embeddings, vocab 50304): 125.0M. 24 layers:
    # 11 Mamba-2, 12 MLP, one sliding-window attention layer at index 10.
    "124m": {
        "d_model": 768, "n_layers": 24, "n_heads": 12, "sliding_window": 512, "mlp_expand": 3,
        "d_state": 128, "head_dim": 64, "expand": 2,
    },
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "rene",
            ReneConfig,
            "Rene: Mamba-2 with interleaved MLP and sliding-window attention layers",
            tokenizers=("gpt2", "bytes", "any"),
            presets=PRESETS,
        )
    )


@hookimpl
def build_model(name, config, ctx):
    if name != "rene":
        return None
    check_kernel_device(config, ctx.device)
    return ReneLM(config, ctx.vocab_size, ctx.max_seq_len)
