"""ADOPT with its update clipping, which keeps zero first gradients from dividing by eps.

Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate",
NeurIPS 2024, arXiv 2411.02853 (the clipped form of its algorithm, the authors' default). With
g_0 the first gradient::

    v_0 = g_0^2,  m_0 = 0,  and no parameter update on that first step
    for t = 1, 2, ...:
        m_t = beta1 m_{t-1} + (1 - beta1) clip(g_t / max(sqrt(v_{t-1}), eps), c_t),  c_t = t^(1/4)
        theta_t = theta_{t-1} (1 - lr wd) - lr m_t          (decoupled weight decay)
        v_t = beta2 v_{t-1} + (1 - beta2) g_t^2

Why not heavyball's ``ADOPT``: it omits the clip (and bias-corrects m). A parameter whose first
gradient is exactly zero, which every layer feeding a zero-initialised projection has, gets
v_0 = 0, so its next step is g_1 / eps ~ 1e8 g_1: the divergence the original BlaGPT saw from the
first steps. The clip bounds every normalised entry by t^(1/4), so no entry of a step exceeds
lr t^(1/4) while v fills in. The state, chaining and weight decay are heavyball's.
"""

from __future__ import annotations

from pydantic import Field

from blagpt import BuildContext, OptimizerConfig, param_groups


class AdoptConfig(OptimizerConfig):
    """ADOPT (clipped, arXiv 2411.02853) with decoupled weight decay."""

    name: str = Field(default="adopt", description="Registered optimizer name.")
    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate.")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="Momentum decay of the normalised gradient.")
    beta2: float = Field(
        default=0.9999, ge=0, lt=1, description="Second-moment decay (ADOPT converges for any beta2; the paper's 0.9999)."
    )
    eps: float = Field(default=1e-6, gt=0, description="Denominator floor, max(sqrt(v), eps) (the authors' 1e-6).")
    clip_exponent: float = Field(
        default=0.25,
        ge=0,
        description="Clip normalised gradients to +-t^clip_exponent at step t (the paper's t^(1/4)); "
        "this bound is what makes zero first gradients safe.",
    )


def adopt_update_(update, exp_avg, exp_avg_sq, t, beta1: float, beta2: float, eps: float, clip_exponent: float):
    """One ADOPT step on lists of tensors: updates m and v in place and writes m_t into ``update``.

    ``t`` (>= 1) is a 0-d tensor or a number; as a tensor it stays on the device (no sync).
    """
    bound = t**clip_exponent
    for u, m, v in zip(update, exp_avg, exp_avg_sq):
        g = u.float()
        normalised = (g / v.sqrt().clamp(min=eps)).clamp(-bound, bound)
        m.lerp_(normalised, 1 - beta1)
        v.lerp_(g * g, 1 - beta2)
        u.copy_(m)
    return update


def _init_v0(state, group, update, grad, param, **kwargs):
    import torch

    state["exp_avg_sq"] = grad.to(torch.float32).square()


def _adopt_transform():
    import heavyball.chainable as C
    import torch

    @C.zero_guard("exp_avg")
    @C.general_guard("exp_avg_sq", init_fn=_init_v0, skip_first=True)
    @C.no_state
    def adopt(group, update, grad, param, exp_avg, exp_avg_sq):
        # heavyball counts the initialising call as step 1, so ADOPT's t is one less. (A parameter
        # whose first gradient arrives later uses the group's t, a slightly looser clip.)
        t = (group["step"] - 1).to(torch.float32)
        return adopt_update_(
            update, exp_avg, exp_avg_sq, t, *group["betas"], group["eps"], group["clip_exponent"]
        )

    return adopt


def build(model, config: AdoptConfig, ctx: BuildContext):
    import heavyball.chainable as C

    defaults = {
        "lr": config.lr,
        "betas": (config.beta1, config.beta2),
        "eps": config.eps,
        "weight_decay": config.weight_decay,
        "clip_exponent": config.clip_exponent,
        "caution": False,
        "mars": False,
        "warmup_steps": 0,  # the trainer's schedule does the warmup
        "storage_dtype": "float32",
        "multi_tensor": True,
    }
    return C.BaseOpt(param_groups(model, config.weight_decay), defaults, None, None, False, fns=(_adopt_transform(),))
