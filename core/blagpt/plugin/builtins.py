"""The core's own plugin, registered through the same hooks as any other (as pytest and llm do):
the optimizer ``adamw``, the tokenizers ``gpt2``, ``bytes``, ``hf:PATH`` and ``tiktoken:PATH``,
the tasks ``lm`` (language modelling on the run's data, the default) and ``mqar`` (multi-query
associative recall, :mod:`blagpt.data.mqar`), and the default ``compute_loss`` (next-token
cross-entropy, ``trylast``).
"""

from __future__ import annotations

from pydantic import Field

from .hookspecs import hookimpl
from .specs import LossOutput, OptimizerConfig, OptimizerSpec, TaskConfig, TaskSpec, TokenizerSpec


class AdamWConfig(OptimizerConfig):
    """torch.optim.AdamW (Loshchilov and Hutter 2019, arXiv 1711.05101)."""

    name: str = Field(default="adamw", description="Registered optimizer name.")
    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate.")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="First-moment decay.")
    beta2: float = Field(default=0.95, ge=0, lt=1, description="Second-moment decay.")
    eps: float = Field(default=1e-8, gt=0, description="Denominator epsilon.")
    fused: bool | None = Field(default=None, description="Use the fused CUDA kernel (None: when on CUDA).")


def param_groups(model, weight_decay: float) -> list[dict]:
    """Two groups: decay for parameters of 2 or more dims, none for 1-D ones and embeddings.

    A parameter counts as an embedding when it belongs to an ``nn.Embedding`` module. A model may
    exempt more parameters by a ``no_weight_decay()`` method returning their names (as in
    ``named_parameters()``), e.g. low-rank projections its paper does not decay. Tied weights are
    seen once (``named_parameters`` removes duplicates).
    """
    import torch.nn as nn

    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    names = {n for n, _ in model.named_parameters()}
    unknown = exempt - names
    if unknown:
        raise ValueError(f"no_weight_decay() names parameters the model does not have: {sorted(unknown)[:5]}")
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_ids and n not in exempt else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@hookimpl
def register_optimizers(register):
    register(OptimizerSpec("adamw", AdamWConfig, "AdamW; no weight decay on 1-D parameters and embeddings"))


@hookimpl
def register_tokenizers(register):
    from ..data.tokenizers import BUILTIN_LOADERS

    register(TokenizerSpec("gpt2", "GPT-2's byte-level BPE, 50,257 ids (tiktoken, offline)", BUILTIN_LOADERS["gpt2"]))
    register(TokenizerSpec("bytes", "UTF-8 bytes 0..255 and 256 for end-of-text", BUILTIN_LOADERS["bytes"]))
    register(TokenizerSpec("hf", "a Hugging Face tokenizer.json (pip install 'blagpt[tokenizers]')", BUILTIN_LOADERS["hf"],
                           argument="PATH to a tokenizer.json"))
    register(TokenizerSpec("tiktoken", "a tiktoken ranks file (cl100k_base.tiktoken, ...)", BUILTIN_LOADERS["tiktoken"],
                           argument="PATH to a .tiktoken file"))


class LMTaskConfig(TaskConfig):
    """Language modelling on the run's ``data`` (the default task): no fields of its own."""

    name: str = Field(default="lm", description="Registered task name.")


def _mqar(config):
    from ..data.mqar import MQAR

    return MQAR(config)


@hookimpl
def register_tasks(register):
    from ..data.mqar import MQARConfig

    register(TaskSpec("lm", LMTaskConfig, "language modelling on the run's data (shards or the embedded corpus); val bpb"))
    register(TaskSpec("mqar", MQARConfig, "multi-query associative recall (Zoology, arXiv 2312.04927); accuracy at the answers",
                      build=_mqar))


@hookimpl
def build_optimizer(name, model, config, ctx):
    if name != "adamw":
        return None
    import torch

    fused = config.fused if config.fused is not None else ctx.device.startswith("cuda")
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=fused,
    )


@hookimpl(trylast=True)
def compute_loss(model, batch):
    """Next-token cross-entropy of ``model(batch.inputs)`` against ``batch.targets``."""
    import torch.nn.functional as F

    logits = model(batch.inputs)
    nll = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none")
    nll = nll.view_as(batch.targets)
    return LossOutput(loss=nll.mean(), nll=nll)
