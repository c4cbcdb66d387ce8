"""How the trainer spreads a model over ranks: DDP or FSDP2, and activation checkpointing.

``train.parallel: ddp`` (the default) keeps a full copy of model and optimizer state on every rank
and averages gradients (``DistributedDataParallel``). ``train.parallel: fsdp`` shards parameters,
gradients and optimizer state over the ranks with PyTorch's FSDP2 (``fully_shard``): each of the
model's repeated blocks is one unit of all-gather / reduce-scatter, the rest (embeddings, final norm,
head) one more unit at the root. On CUDA the units compute in bf16 and reduce gradients in bf16
while the optimizer keeps fp32 master weights (``MixedPrecisionPolicy``); on the CPU everything is
fp32. A plain process (no ``torchrun``) under fsdp has nothing to shard: the model trains as is,
but checkpoints are written in the sharded format, so a run can move between 1 and N ranks; under
``torchrun`` with one rank FSDP2 still wraps the model (its bf16 policy applies).

``train.activation_checkpointing: blocks`` recomputes each block's activations in the backward pass
instead of keeping them (``torch.utils.checkpoint``, non-reentrant), under ddp and fsdp alike.

The blocks: the model's ``parallel_blocks()`` method if it has one (an iterable of submodules),
else the children of its largest ``nn.ModuleList`` (by parameter count), the usual
``self.blocks = nn.ModuleList(...)`` of a transformer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from ..errors import ConfigError


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: ``model.parallel_blocks()``, else the children of its largest
    ``nn.ModuleList``; ``[]`` when it has neither."""
    if hasattr(model, "parallel_blocks"):
        blocks = list(model.parallel_blocks())
        owned = {id(m) for m in model.modules()}
        if not blocks or not all(isinstance(b, nn.Module) and id(b) in owned and b is not model for b in blocks):
            raise ConfigError(
                f"train.parallel: {type(model).__name__}.parallel_blocks() must return a non-empty list of the model's own "
                "submodules (its repeated blocks)"
            )
        return blocks
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        return []
    size = lambda ml: sum(p.numel() for p in ml.parameters())  # noqa: E731
    return list(max(lists, key=size))  # max keeps the first of equal sizes


def checkpoint_blocks(blocks: list[nn.Module], model_name: str) -> None:
    """Recompute each block's forward in the backward pass. The block's ``forward`` is wrapped in
    place (an instance attribute), so parameter names and ``state_dict`` keys do not change."""
    from torch.utils.checkpoint import checkpoint

    if not blocks:
        raise ConfigError(
            f"train.activation_checkpointing: model {model_name!r} has no nn.ModuleList of blocks and no parallel_blocks() "
            "method; set it to none, or give the model a parallel_blocks() method"
        )
    for block in blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():  # evaluation: nothing to save
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def shard(model: nn.Module, blocks: list[nn.Module], device: torch.device) -> nn.Module:
    """FSDP2 over ``blocks`` then the root; bf16 compute and reduction on CUDA, fp32 on the CPU.
    Parameters become DTensors in place: build the optimizer after this."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
    else:
        policy = MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


@contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient reduction of a micro-batch that is not the step's last: DDP's ``no_sync``,
    FSDP2's ``set_requires_gradient_sync(False)``; nothing in one process."""
    inner = getattr(model, "_orig_mod", model)
    if sync:
        yield
    elif hasattr(inner, "set_requires_gradient_sync"):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    elif hasattr(inner, "no_sync"):
        with inner.no_sync():
            yield
    else:
        yield


def local(x: torch.Tensor | None) -> torch.Tensor | None:
    """A plain tensor for a DTensor result (the gradient norm under fsdp), else ``x``."""
    if x is not None and hasattr(x, "full_tensor"):
        return x.full_tensor()
    return x
