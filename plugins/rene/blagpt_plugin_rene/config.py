"""The ``rene`` model's config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from blagpt.nn import vocab_multiple_field
from blagpt_plugin_ssm import Mamba2LayerFields

LayerKind = Literal["mamba2", "mlp", "attn"]


class ReneConfig(Mamba2LayerFields):
    """Rene (Cartesia 2024, Rene-v0.1): Mamba-2 layers with MLP and sliding-window attention layers
    interleaved at configured indices, each layer a pre-norm residual block."""

    name: str = Field(default="rene", description="Registered model name.")
    d_model: int = Field(default=768, gt=0, description="Residual width.")
    n_layers: int = Field(default=24, gt=0, description="Layers in all (Mamba-2, MLP and attention).")
    mlp_layer_idx: list[int] | None = Field(
        default=None,
        description="Indices of the MLP layers; unset: every odd index (each Mamba-2 or attention layer "
        "followed by an MLP).",
    )
    attn_layer_idx: list[int] | None = Field(
        default=None,
        description="Indices of the sliding-window attention layers; unset: one, at the even index nearest "
        "the middle. Every other index is a Mamba-2 layer.",
    )
    n_heads: int = Field(default=12, gt=0, description="Attention heads; must divide d_model.")
    sliding_window: int = Field(
        default=512, gt=0, description="Tokens each attention query sees, itself included (keys t-W+1 .. t)."
    )
    attn_bias: bool = Field(default=True, description="Biases in the attention's qkv and output projections.")
    mlp_expand: int = Field(default=3, gt=0, description="MLP hidden width as a multiple of d_model (GeLU).")
    mlp_bias: bool = Field(default=True, description="Biases in the MLP's linear layers.")
    tie_embeddings: bool = Field(default=True, description="Share the input embedding with the output head.")
    vocab_multiple: int = vocab_multiple_field()

    @model_validator(mode="after")
    def _valid_layout(self) -> "ReneConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads = {self.n_heads} does not divide d_model = {self.d_model}")
        mlp, attn = self._mlp_ids(), self._attn_ids()
        bad = sorted(i for i in mlp + attn if not 0 <= i < self.n_layers)
        if bad:
            raise ValueError(f"layer indices {bad} are outside 0 .. n_layers-1 = {self.n_layers - 1}")
        if set(mlp) & set(attn):
            raise ValueError(f"layers {sorted(set(mlp) & set(attn))} are in both mlp_layer_idx and attn_layer_idx")
        return self

    def _attn_ids(self) -> list[int]:
        if self.attn_layer_idx is not None:
            return list(self.attn_layer_idx)
        return [2 * ((self.n_layers - 1) // 4)] if self.n_layers > 1 else [0]

    def _mlp_ids(self) -> list[int]:
        if self.mlp_layer_idx is not None:
            return list(self.mlp_layer_idx)
        return [i for i in range(1, self.n_layers, 2) if i not in self._attn_ids()]

    def layer_kinds(self) -> list[LayerKind]:
        """The kind of every layer, in order."""
        mlp, attn = set(self._mlp_ids()), set(self._attn_ids())
        return ["attn" if i in attn else "mlp" if i in mlp else "mamba2" for i in range(self.n_layers)]
