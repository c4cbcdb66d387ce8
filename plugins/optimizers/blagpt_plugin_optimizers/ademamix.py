"""AdEMAMix: Adam whose numerator mixes a fast and a slow gradient EMA.

Pagliardini, Ablin and Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
arXiv 2409.03137, Algorithm 1::

    m1_t = beta1 m1_{t-1} + (1 - beta1) g_t                 (fast EMA, bias-corrected)
    m2_t = beta3(t) m2_{t-1} + (1 - beta3(t)) g_t           (slow EMA, not bias-corrected)
    nu_t = beta2 nu_{t-1} + (1 - beta2) g_t^2                (bias-corrected)
    theta_t = theta_{t-1} - lr ((m1_hat + alpha(t) m2_t) / (sqrt(nu_hat) + eps) + wd theta_{t-1})

with the paper's warmups: alpha(t) = min(t alpha / T_alpha, alpha), and beta3(t) rising from
beta1 to beta3 so that its half-life grows linearly,
beta3(t) = min(exp(ln(beta1) ln(beta3) / ((1 - t/T_beta3) ln(beta3) + (t/T_beta3) ln(beta1))), beta3).

The update is heavyball's ``AdEMAMix`` (its denominator is max(sqrt(nu_hat), eps), which differs
from sqrt(nu_hat) + eps by at most eps; the test transcribes the paper and compares).

Stability: where gradients agree from step to step, the slow EMA approaches the gradient's mean
and the step is up to (1 + alpha) times Adam's at the same lr; the paper ramps alpha and beta3 up
(the warmups above) so that this happens gradually rather than from step 1. They are on by
default here. The paper sets T_alpha = T_beta3 = the run's length; the optimizer hook does not see
the run's length, so the defaults are a fixed 2000 steps: set both to ``train.steps`` for long
runs. With alpha = 5, an lr at the edge of stability for AdamW may be too large for AdEMAMix.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from blagpt import BuildContext, OptimizerConfig, param_groups


class AdEMAMixConfig(OptimizerConfig):
    """AdEMAMix (arXiv 2409.03137) with decoupled weight decay and the paper's alpha/beta3 warmups."""

    name: str = Field(default="ademamix", description="Registered optimizer name.")
    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate.")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="Fast EMA decay (also beta3's warmup start).")
    beta2: float = Field(default=0.999, ge=0, lt=1, description="Second-moment decay.")
    beta3: float = Field(default=0.9999, ge=0, lt=1, description="Slow EMA decay reached after `beta3_warmup` steps.")
    alpha: float = Field(default=5.0, ge=0, description="Weight of the slow EMA, reached after `alpha_warmup` steps.")
    alpha_warmup: Literal["run"] | Annotated[int, Field(gt=0)] | None = Field(
        default="run",
        description="Steps of alpha's linear warmup from 0; `run`: the run's length, as in the paper "
        "(2000 outside a training run); null: none.",
    )
    beta3_warmup: Literal["run"] | Annotated[int, Field(gt=0)] | None = Field(
        default="run",
        description="Steps of beta3's half-life-linear warmup from beta1; `run`: the run's length, as in the "
        "paper (2000 outside a training run); null: none.",
    )
    eps: float = Field(default=1e-8, gt=0, description="Denominator floor.")


def build(model, config: AdEMAMixConfig, ctx: BuildContext):
    import heavyball

    return heavyball.AdEMAMix(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2, config.beta3),
        eps=config.eps,
        weight_decay=config.weight_decay,
        alpha=config.alpha,
        alpha_warmup=_steps(config.alpha_warmup, ctx),
        beta3_warmup=_steps(config.beta3_warmup, ctx),
        warmup_steps=0,  # the trainer's schedule does the warmup
    )


def _steps(warmup, ctx: BuildContext):
    if warmup == "run":
        return ctx.total_steps or 2000
    return warmup
