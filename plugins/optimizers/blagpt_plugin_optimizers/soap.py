"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner.

Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv 2409.11321. For a weight
matrix with gradient G::

    L = EMA_{shampoo_beta}(G G^T),  R = EMA_{shampoo_beta}(G^T G)      (Shampoo's factors)
    Q_L, Q_R = eigenvectors of L, R, refreshed every `precondition_frequency` steps
    G' = Q_L^T G Q_R                                                    (gradient in that basis)
    Adam on G' (m, v kept in the rotated basis), then the update is rotated back: Q_L U' Q_R^T

Because the basis comes from the gradients themselves, SOAP's update turns with the problem:
rotating a weight matrix's row and column spaces rotates its update the same way, which plain
Adam's per-coordinate normalisation does not. Dimensions larger than `max_precond_dim` are left
unrotated (one-sided SOAP), and 1-D parameters get plain Adam. The first step only initialises
L, R and the basis (no update), as in the reference implementation.

Embeddings and the output head (found as in :mod:`.groups`) are not rotated either: they get the
same Adam update in the standard basis. The rows of tokens absent from a batch have exactly zero
gradient, so a vocabulary-sized factor G G^T is rank-deficient; in its eigenbasis those null
directions carry rounding noise that Adam's normalisation scales up to full-size steps (on the
byte-level test models, loss after 40 steps was 4.5 to 4.8 with them rotated, 3.5 without). At
GPT-2 scale the 50k vocabulary exceeds `max_precond_dim` anyway, so this only makes small
vocabularies behave the same way.

beta2 follows PaLM's schedule beta2_t = 1 - t^(-beta2_scale) when `palm` is on (heavyball's
``palm=True``), which starts fast and approaches 1; `beta2` is then unused. The whole update rule
is heavyball's ``SOAP``.
"""

from __future__ import annotations

from pydantic import Field

from blagpt import BuildContext, OptimizerConfig

from .groups import param_roles


class SoapConfig(OptimizerConfig):
    """SOAP (arXiv 2409.11321) with decoupled weight decay and PaLM's beta2 schedule."""

    name: str = Field(default="soap", description="Registered optimizer name.")
    lr: float = Field(default=3e-3, gt=0, description="Peak learning rate.")
    beta1: float = Field(default=0.95, ge=0, lt=1, description="First-moment decay (the paper's 0.95).")
    beta2: float = Field(default=0.95, ge=0, lt=1, description="Second-moment decay; used only when `palm` is off.")
    palm: bool = Field(default=True, description="PaLM's beta2 schedule, beta2_t = 1 - t^(-beta2_scale).")
    beta2_scale: float = Field(default=0.8, gt=0, description="Exponent of the PaLM beta2 schedule (PaLM's 0.8).")
    shampoo_beta: float = Field(default=0.95, ge=0, lt=1, description="EMA decay of Shampoo's factors G G^T and G^T G.")
    precondition_frequency: int = Field(
        default=10, ge=1, description="Refresh the eigenbasis every N steps (the paper's 10)."
    )
    max_precond_dim: int = Field(
        default=4096,
        ge=1,
        description="Dimensions larger than this are not rotated (a 124M model's 3072-wide MLP still is; "
        "a 50k vocabulary is not).",
    )
    eps: float = Field(default=1e-8, gt=0, description="Denominator floor.")


def build(model, config: SoapConfig, ctx: BuildContext):
    import heavyball

    roles = param_roles(model, ctx.vocab_size)
    unrotated = {"max_precond_dim": 0}  # every dimension exceeds it: Adam in the standard basis
    groups = [
        {"params": roles.decayed(roles.hidden, roles.other_nd), "weight_decay": config.weight_decay},
        {"params": roles.exempted(roles.hidden, roles.other_nd), "weight_decay": 0.0},
        {"params": roles.decayed(roles.head), "weight_decay": config.weight_decay, **unrotated},
        {"params": roles.embedding + roles.vector + roles.exempted(roles.head), "weight_decay": 0.0, **unrotated},
    ]
    return heavyball.SOAP(
        [g for g in groups if g["params"]],
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        shampoo_beta=config.shampoo_beta,
        eps=config.eps,
        weight_decay=config.weight_decay,
        precondition_frequency=config.precondition_frequency,
        max_precond_dim=config.max_precond_dim,
        palm=config.palm,
        beta2_scale=config.beta2_scale,
        warmup_steps=0,  # the trainer's schedule does the warmup
    )
