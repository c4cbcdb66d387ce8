"""The ``zamba2`` model's config."""

from __future__ import annotations

from pydantic import Field, model_validator

from blagpt.nn import vocab_multiple_field
from blagpt_plugin_ssm import Mamba2LayerFields


class Zamba2Config(Mamba2LayerFields):
    """Zamba2 (arXiv 2411.15242): Mamba-2 backbone + shared attention/MLP blocks with per-invocation LoRA."""

    name: str = Field(default="zamba2", description="Registered model name.")
    d_model: int = Field(default=768, gt=0, description="Residual width d (the shared blocks' attention is 2d wide).")
    n_layers: int = Field(default=18, gt=0, description="Mamba-2 layers of the backbone.")
    shared_every: int = Field(
        default=6,
        gt=0,
        description="A shared block runs before every N-th Mamba-2 layer (layers N-1, 2N-1, ...); "
        "must be <= n_layers so the model has attention.",
    )
    n_shared_blocks: int = Field(default=1, gt=0, description="Distinct shared blocks, used in turn (ABAB...).")
    n_heads: int = Field(default=12, gt=0, description="Attention heads of the shared blocks (over width 2d).")
    d_ff: int = Field(default=3072, gt=0, description="Hidden width of the shared blocks' gated-GeLU MLP.")
    lora_rank: int = Field(default=64, gt=0, description="Rank of each invocation's LoRA adapters (q, k, v, MLP in).")
    rope: bool = Field(default=True, description="Rotary position embeddings in the shared attention.")
    rope_base: float = Field(default=10000.0, gt=0, description="Rotary base frequency.")
    tie_embeddings: bool = Field(default=True, description="Share the input embedding with the output head.")
    vocab_multiple: int = vocab_multiple_field()

    @model_validator(mode="after")
    def _has_attention(self) -> "Zamba2Config":
        if self.shared_every > self.n_layers:
            raise ValueError(
                f"shared_every = {self.shared_every} > n_layers = {self.n_layers}: the shared attention block "
                "would never run; lower shared_every"
            )
        return self

    def hybrid_layer_ids(self) -> list[int]:
        """Indices of the Mamba-2 layers preceded by a shared block."""
        return list(range(self.shared_every - 1, self.n_layers, self.shared_every))
