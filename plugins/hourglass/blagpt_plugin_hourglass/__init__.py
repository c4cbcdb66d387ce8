"""blagpt plugin: the Hourglass transformer (Nawrot et al. 2021, arXiv 2110.13711), model ``hourglass``.

The model lives in :mod:`.model`. Presets: sizes ``tiny`` (CPU tests), ``small``, ``124m``
(parameter count matched to the BlaGPT ``gpt2+124m`` preset, 124,475,904, with the default
shortening and upsampling); combine with ``+``.
"""

from __future__ import annotations

from blagpt import ModelSpec, hookimpl

from .model import Hourglass, HourglassConfig, parse_hierarchy

__all__ = ["Hourglass", "HourglassConfig", "parse_hierarchy", "PRESETS"]

NAME = "hourglass"

PRESETS = {
    # CPU tests and smoke runs: one 2x shortening, 2 layers on each side of it.
    "tiny": {"d_model": 64, "n_heads": 4, "hierarchy": "1@1 2@2 1@1"},
    # Matched-size benches: `tiny` at width 52 (two heads of 26: RoPE needs even heads), 149,292
    # parameters without embeddings (bytes, seq_len 256; the target is 150k +- 10 % for every
    # model's `bench`).
    "bench": {"d_model": 52, "n_heads": 2, "hierarchy": "1@1 2@2 1@1"},
    # The paper's enwik8 shape, smaller.
    "small": {"d_model": 384, "n_heads": 6, "hierarchy": "2@1 4@3 2@1"},
    # GPT-2 small class: 12 layers of width 768 (2 full resolution, 8 at 3x shortened, 2 full
    # resolution, the paper's enwik8 layout), heads of 64, tied embeddings, linear shortening,
    # attention upsampling. The MLP is 2880 wide (3.75 d, not 4 d) so that the shortening and
    # upsampling weights leave the total at the 124.5M of BlaGPT's gpt2+124m.
    "124m": {"d_model": 768, "n_heads": 12, "hierarchy": "2@1 8@3 2@1", "mlp_hidden": 2880},
}


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            NAME,
            HourglassConfig,
            "Hourglass: hierarchical transformer, causal shortening/upsampling (layers@factor levels)",
            tokenizers=("bytes", "gpt2", "any"),
            presets=PRESETS,
        )
    )


@hookimpl
def build_model(name, config, ctx):
    if name != NAME:
        return None
    return Hourglass(config, ctx.vocab_size, ctx.max_seq_len)
