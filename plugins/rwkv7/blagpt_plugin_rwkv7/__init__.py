"""blagpt plugin: RWKV-7 "Goose" (Peng et al. 2025, arXiv 2503.14456), model name ``rwkv7``.

The model lives in :mod:`.model`, the delta-rule kernels (chunked, step-by-step, fused) in
:mod:`.wkv`.
"""

from __future__ import annotations

from blagpt import ConfigError, ModelSpec, hookimpl

from .model import RWKV7Config

PRESETS = {
    # CPU tests and smoke runs.
    "tiny": {"d_model": 64, "n_layers": 2, "head_size": 16},
    # Matched-size benches: `tiny` at width 72 (4 heads of 18), 159,624 parameters without
    # embeddings (bytes, seq_len 256; the target is 150k +- 10 % for every model's `bench`).
    "bench": {"d_model": 72, "n_layers": 2, "head_size": 18},
    "small": {"d_model": 384, "n_layers": 6, "head_size": 64},
    # GPT-2 small class: 12 x 768, heads of 64, tied embeddings. Channel mixing is 2816 wide
    # (3.67 C, not the paper's 4 C) so that the LoRAs' extra weights leave the total at ~124.2M,
    # like GPT-2 small's 124.4M (vocab 50304).
    "124m": {"d_model": 768, "n_layers": 12, "head_size": 64, "ffn_dim": 2816, "tie_embeddings": True},
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "rwkv7",
            RWKV7Config,
            "RWKV-7 Goose: RNN with the generalised delta rule (pure-PyTorch chunked kernel)",
            tokenizers=("gpt2", "bytes", "any"),
            presets=PRESETS,
        )
    )


@hookimpl
def build_model(name, config, ctx):
    if name != "rwkv7":
        return None
    from .model import RWKV7
    from .wkv import fla_available

    if config.kernel == "fla" and not fla_available():
        raise ConfigError(
            "model.kernel: 'fla' needs flash-linear-attention (pip install flash-linear-attention) "
            "and a CUDA device; it is not importable here. Use model.kernel=chunked (pure PyTorch)."
        )
    return RWKV7(config, ctx.vocab_size, ctx.max_seq_len)
