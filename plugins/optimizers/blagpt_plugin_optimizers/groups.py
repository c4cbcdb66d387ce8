"""Parameter roles: hidden matrices, embeddings, the output head, vectors.

Muon is an optimizer for the 2-D weight matrices of hidden layers: the input embedding (a lookup
table, not a linear map of activations) and the output head (whose rows are per-token logits) are
trained with AdamW instead, as in Keller Jordan's reference setup; so are norm gains, biases and
any weight of 3 or more dimensions (e.g. convolution kernels). SOAP rotates hidden matrices but
keeps embeddings and the head in the standard basis (see :mod:`.soap`).

The heuristic, in order:

1. **Embeddings**: the weight of every ``nn.Embedding`` module.
2. **Output head**: a 2-D parameter tied to an embedding is that embedding (``named_parameters``
   yields it once, as the embedding). An untied head is recognised by shape: a 2-D parameter one
   of whose dimensions is a vocabulary size, meaning ``ctx.vocab_size`` or the row count of an
   ``nn.Embedding`` with at least that many rows (a model may pad its vocabulary, e.g. 50257 to
   50304). It produces one logit per token, so it is a head, not a hidden layer.
3. **Hidden matrices**: every other trainable 2-D parameter.
4. **Other weights**: parameters of 3 or more dimensions; **vectors**: 1-D (and 0-d) parameters.

Weight decay follows ``blagpt.param_groups``: hidden matrices, the head and other 2-D+ weights get
``weight_decay``; embeddings and vectors get none, nor do parameters the model names in a
``no_weight_decay()`` method (e.g. low-rank projections its paper does not decay).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn


@dataclass
class ParamRoles:
    """The model's trainable parameters by role, each in exactly one list."""

    hidden: list = field(default_factory=list)
    head: list = field(default_factory=list)
    embedding: list = field(default_factory=list)
    other_nd: list = field(default_factory=list)
    vector: list = field(default_factory=list)
    names: dict = field(default_factory=dict)  # id(param) -> (name, role), for logs and tests
    exempt: set = field(default_factory=set)  # ids of parameters named by the model's no_weight_decay()

    def decayed(self, *lists: list) -> list:
        """The parameters of ``lists`` that take weight decay (not exempted by the model)."""
        return [p for ps in lists for p in ps if id(p) not in self.exempt]

    def exempted(self, *lists: list) -> list:
        """The parameters of ``lists`` the model exempts from weight decay."""
        return [p for ps in lists for p in ps if id(p) in self.exempt]


def param_roles(model: nn.Module, vocab_size: int) -> ParamRoles:
    """Sort ``model``'s trainable parameters by role (see the module doc)."""
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    embedding_ids = {id(m.weight) for m in embeddings}
    vocab_sizes = {vocab_size} | {m.num_embeddings for m in embeddings if m.num_embeddings >= vocab_size}
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    unknown = exempt - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"no_weight_decay() names parameters the model does not have: {sorted(unknown)[:5]}")
    out = ParamRoles()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in embedding_ids:
            role = "embedding"
        elif p.dim() == 2 and (p.shape[0] in vocab_sizes or p.shape[1] in vocab_sizes):
            role = "head"
        elif p.dim() == 2:
            role = "hidden"
        elif p.dim() >= 3:
            role = "other_nd"
        else:
            role = "vector"
        getattr(out, role).append(p)
        out.names[id(p)] = (name, role)
        if name in exempt:
            out.exempt.add(id(p))
    return out
