"""blagpt-plugin-ssm: the Mamba-2 layer in pure PyTorch, and a plain ``mamba2`` language model.

Public API (used by the ``zamba2`` and ``rene`` plugins):

* :class:`Mamba2`, the layer (chunked SSD for training, recurrence for generation), with
  :class:`Mamba2State` its constant-size state;
* :func:`ssd_chunked`, :func:`ssd_recurrent`, :func:`ssd_step`, the SSD itself;
* :class:`Mamba2LayerFields`, the layer's config fields, to subclass in a model's config;
* :class:`Mamba2Block` and :func:`init_lm_weights`, the residual block and initialisation the
  family's language models share.
"""

from __future__ import annotations

from blagpt import ConfigError, ModelSpec, hookimpl

from .config import Mamba2Config, Mamba2LayerFields
from .mamba2 import GatedRMSNorm, Mamba2, Mamba2State, fused_kernels_available, segsum, ssd_chunked, ssd_recurrent, ssd_step
from .model import Mamba2Block, Mamba2LM, init_lm_weights

__all__ = [
    "GatedRMSNorm",
    "Mamba2",
    "Mamba2Block",
    "Mamba2Config",
    "Mamba2LM",
    "Mamba2LayerFields",
    "Mamba2State",
    "check_kernel_device",
    "fused_kernels_available",
    "init_lm_weights",
    "segsum",
    "ssd_chunked",
    "ssd_recurrent",
    "ssd_step",
]

PRESETS = {
    # CPU tests: a few thousand parameters besides the embedding.
    "tiny": {"d_model": 64, "n_layers": 2, "d_state": 16, "head_dim": 16, "chunk_size": 16},
    # Matched-size benches: `tiny` at width 104 (SSD chunk the default), 142,358 parameters
    # without embeddings (bytes, seq_len 256; the target is 150k +- 10 % for every model's `bench`).
    "bench": {"d_model": 104, "n_layers": 2, "d_state": 16, "head_dim": 16},
    "small": {"d_model": 384, "n_layers": 12, "d_state": 64, "head_dim": 64},
    # Matched to GPT-2 small (124.5M with tied embeddings, vocab 50304): 125.2M.
    "124m": {"d_model": 768, "n_layers": 23, "d_state": 128, "head_dim": 64, "expand": 2},
}


def check_kernel_device(config: Mamba2LayerFields, device: str) -> None:
    """The fused kernels exist on CUDA only: a config error for any other device."""
    if config.kernel == "fused" and not str(device).startswith("cuda"):
        raise ConfigError(f"model.kernel: 'fused' runs on CUDA only, but the run's device is {device!r}; use 'torch'")


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "mamba2",
            Mamba2Config,
            "Mamba-2 (SSD, arXiv 2405.21060), pure-PyTorch chunked scan",
            tokenizers=("gpt2", "bytes", "any"),
            presets=PRESETS,
        )
    )


@hookimpl
def build_model(name, config, ctx):
    if name != "mamba2":
        return None
    check_kernel_device(config, ctx.device)
    return Mamba2LM(config, ctx.vocab_size, ctx.max_seq_len)
