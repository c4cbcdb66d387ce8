"""Configs: the Mamba-2 layer's fields (shared by every model built on the layer) and the plain
``mamba2`` language model's config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from blagpt import ModelConfig
from blagpt.nn import vocab_multiple_field


class Mamba2LayerFields(ModelConfig):
    """The fields of a Mamba-2 layer. Model configs that use the layer (``mamba2``, ``zamba2``,
    ``rene``) subclass this, so the options read the same in every one of them."""

    d_state: int = Field(default=128, gt=0, description="SSM state size N per head.")
    head_dim: int = Field(default=64, gt=0, description="Channels P per SSM head; must divide expand * d_model.")
    expand: int = Field(default=2, gt=0, description="Inner width of the Mamba-2 layer as a multiple of d_model.")
    d_conv: int = Field(default=4, ge=2, description="Kernel size of the short causal depthwise convolution.")
    n_groups: int = Field(default=1, gt=0, description="Groups of heads that share B and C; must divide the head count.")
    chunk_size: int = Field(
        default=64, gt=0, description="Chunk length of the chunked SSD (any sequence length works, not only multiples)."
    )
    kernel: Literal["torch", "fused"] = Field(
        default="torch",
        description="`torch`: the pure-PyTorch chunked SSD, on every device. `fused`: the CUDA kernels of the "
        "optional packages mamba-ssm and causal-conv1d (an error if they are not installed or the run is not on CUDA).",
    )

    recompute: bool = Field(
        default=False,
        description="Recompute each Mamba-2 layer's convolution, SSD and norm in the backward pass instead of "
        "keeping their activations: less memory, a little more time.",
    )

    @field_validator("kernel")
    @classmethod
    def _fused_installed(cls, v: str) -> str:
        if v == "fused":
            from .mamba2 import fused_kernels_available

            why = fused_kernels_available()
            if why is not None:
                raise ValueError(
                    "kernel 'fused' needs the optional packages mamba-ssm and causal-conv1d "
                    f"(CUDA only), which do not import here ({why}); use 'torch'"
                )
        return v

    def mamba2_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`blagpt_plugin_ssm.Mamba2` taken from this config."""
        return dict(
            d_state=self.d_state,
            head_dim=self.head_dim,
            expand=self.expand,
            d_conv=self.d_conv,
            n_groups=self.n_groups,
            chunk_size=self.chunk_size,
            kernel=self.kernel,
            recompute=self.recompute,
        )


class Mamba2Config(Mamba2LayerFields):
    """A plain Mamba-2 language model (arXiv 2405.21060): pre-norm residual Mamba-2 layers."""

    name: str = Field(default="mamba2", description="Registered model name.")
    d_model: int = Field(default=768, gt=0, description="Residual width.")
    n_layers: int = Field(default=23, gt=0, description="Mamba-2 layers.")
    tie_embeddings: bool = Field(default=True, description="Share the input embedding with the output head.")
    vocab_multiple: int = vocab_multiple_field()
