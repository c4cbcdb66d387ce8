"""blagpt plugin: MegaByte (Yu et al. 2023, arXiv 2305.07185), model name ``megabyte``.

The model lives in :mod:`.model`.
"""

from __future__ import annotations

from blagpt import ModelSpec, hookimpl

from .model import MegaByteConfig

PRESETS = {
    # CPU tests and smoke runs.
    "tiny": {
        "patch_size": 4, "global_dim": 64, "global_layers": 2, "global_heads": 2,
        "local_dim": 32, "local_layers": 2, "local_heads": 2,
    },
    # Matched-size benches: `tiny` at widths 68 / 34, 146,778 parameters without embeddings
    # (bytes, seq_len 256; the target is 150k +- 10 % for every model's `bench`).
    "bench": {
        "patch_size": 4, "global_dim": 68, "global_layers": 2, "global_heads": 2,
        "local_dim": 34, "local_layers": 2, "local_heads": 2,
    },
    "small": {
        "patch_size": 8, "global_dim": 512, "global_layers": 6, "global_heads": 8,
        "local_dim": 256, "local_layers": 4, "local_heads": 4,
    },
    # 124M class for bytes (the default tokenizer): parameters as the BlaGPT gpt2+124m preset.
    "124m": {
        "patch_size": 8, "global_dim": 768, "global_layers": 12, "global_heads": 12,
        "local_dim": 512, "local_layers": 12, "local_heads": 8,
    },
    # 124M class for GPT-2 tokens (data.tokenizer=gpt2): the 50k-token embeddings and head take
    # their share, so the local transformer is smaller; tied local embedding and head.
    "124m-gpt2": {
        "patch_size": 4, "global_dim": 768, "global_layers": 12, "global_heads": 12,
        "local_dim": 384, "local_layers": 6, "local_heads": 6, "tie_embeddings": True,
    },
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "megabyte",
            MegaByteConfig,
            "MegaByte: global transformer over patches + local transformer within each patch",
            tokenizers=("bytes", "gpt2", "any"),
            presets=PRESETS,
        )
    )


@hookimpl
def build_model(name, config, ctx):
    if name != "megabyte":
        return None
    from .model import MegaByte

    return MegaByte(config, ctx.vocab_size, ctx.max_seq_len)
