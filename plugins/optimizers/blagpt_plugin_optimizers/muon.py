"""Muon: momentum orthogonalised by Newton-Schulz, for hidden weight matrices.

Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024),
https://kellerjordan.github.io/posts/muon/. For a hidden 2-D weight with gradient G_t::

    B_t = mu B_{t-1} + G_t                  (heavy-ball momentum)
    U_t = G_t + mu B_t                      (Nesterov look-ahead; U_t = B_t without it)
    O_t = NewtonSchulz_k(U_t)               (~ the orthogonal factor U V^T of U_t = U S V^T)
    W_t = W_{t-1} (1 - lr wd) - lr sqrt(max(1, rows/cols)) O_t

Newton-Schulz runs k quintic steps X <- a X + (b A + c A^2) X with A = X X^T, X_0 = U/||U||_F and
Jordan's coefficients (a, b, c) = (3.4445, -4.7750, 2.0315): they push every singular value of
X_0 towards 1 quickly (to roughly 0.7..1.2, not exactly 1), which is all Muon needs.

Everything that is not a hidden matrix (embeddings, the output head, norms, biases; see
:mod:`.groups`) is trained by AdamW in the same optimizer, as separate param groups with their own
learning rate. heavyball supplies the machinery (state, momentum, Adam, param-group handling,
checkpointable state); the orthogonalisation is ours because heavyball 3.2's is fixed at 5 steps
and rounds stochastically to bf16, which makes steps non-deterministic (no exact resume).
"""

from __future__ import annotations

from pydantic import Field

from blagpt import BuildContext, OptimizerConfig

from .groups import param_roles

NS_COEFFS = (3.4445, -4.7750, 2.0315)


class MuonConfig(OptimizerConfig):
    """Muon on hidden 2-D weights, AdamW on embeddings, the output head, norms and biases."""

    name: str = Field(default="muon", description="Registered optimizer name.")
    lr: float = Field(default=0.02, gt=0, description="Peak learning rate of the Muon group (hidden matrices).")
    weight_decay: float = Field(
        default=0.0,
        ge=0,
        description="Decoupled weight decay (multiplied by the group's lr) of hidden matrices and of "
        "2-D+ AdamW weights such as an untied head; never of embeddings or 1-D parameters.",
    )
    momentum: float = Field(default=0.95, ge=0, lt=1, description="Muon's momentum coefficient mu.")
    nesterov: bool = Field(default=True, description="Orthogonalise the Nesterov look-ahead G + mu B instead of B.")
    ns_steps: int = Field(default=5, ge=1, le=20, description="Newton-Schulz iterations per step.")
    adam_lr: float = Field(
        default=3e-3, gt=0, description="Peak learning rate of the AdamW groups (embeddings, head, norms, biases)."
    )
    beta1: float = Field(default=0.9, ge=0, lt=1, description="AdamW groups: first-moment decay.")
    beta2: float = Field(default=0.95, ge=0, lt=1, description="AdamW groups: second-moment decay.")
    eps: float = Field(default=1e-8, gt=0, description="AdamW groups: denominator floor, max(sqrt(v), eps).")


def newton_schulz(g, steps: int):
    """Approximately orthogonalise a 2-D tensor: its singular vectors, singular values pushed to ~1.

    Works on the wide orientation (rows <= cols) so X X^T is the small Gram matrix. Runs in bf16
    on CUDA (as the reference does) and in float32 elsewhere.
    """
    import torch

    a, b, c = NS_COEFFS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.mT
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x


def _orthogonalize_transform():
    """heavyball transform: replaces each hidden matrix's momentum update by its scaled NS output."""
    import heavyball.chainable as C

    @C.needs_full_param
    @C.no_state_no_multi_tensor
    def muon_orthogonalize(group, update, grad, param):
        rows, cols = update.shape
        scale = max(1.0, rows / cols) ** 0.5
        return (newton_schulz(update, group["ns_steps"]) * scale).to(update.dtype)

    return muon_orthogonalize


def build(model, config: MuonConfig, ctx: BuildContext):
    """One heavyball optimizer with a Muon group and up to two AdamW groups.

    Params are routed by identity: the set of hidden matrices is fixed when the optimizer is built.
    """
    import heavyball.chainable as C

    roles = param_roles(model, ctx.vocab_size)
    hidden_ids = frozenset(id(p) for p in roles.hidden)
    momentum = C.nesterov_momentum if config.nesterov else C.heavyball_momentum
    route = C.route(
        (lambda p: id(p) in hidden_ids, (momentum, _orthogonalize_transform())),
        default=C.scale_by_adam,
    )
    muon = {"lr": config.lr, "betas": (config.momentum, config.beta2)}
    adam = {"lr": config.adam_lr, "betas": (config.beta1, config.beta2)}
    groups = [
        {"params": roles.decayed(roles.hidden), **muon, "weight_decay": config.weight_decay},
        {"params": roles.exempted(roles.hidden), **muon, "weight_decay": 0.0},
        {"params": roles.decayed(roles.head, roles.other_nd), **adam, "weight_decay": config.weight_decay},
        {"params": roles.embedding + roles.vector + roles.exempted(roles.head, roles.other_nd), **adam, "weight_decay": 0.0},
    ]
    defaults = {
        "lr": config.lr,
        "betas": (config.momentum, config.beta2),
        "eps": config.eps,
        "weight_decay": config.weight_decay,
        "ns_steps": config.ns_steps,
        "caution": False,
        "mars": False,
        "warmup_steps": 0,  # the trainer's schedule does the warmup
        "storage_dtype": "float32",
        "multi_tensor": True,
    }
    return C.BaseOpt([g for g in groups if g["params"]], defaults, None, None, False, fns=(route,))
