"""Update rules against the papers.

AdEMAMix and ADOPT: a few steps on a small tensor against a line-by-line transcription of the
paper's algorithm, written here independently of the plugin. SOAP and Muon: against the property
that defines them (SOAP's update turns with the problem; Muon's update is near-orthogonal).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from blagpt import BuildContext
from blagpt.plugin.registry import get_registry

torch.set_num_threads(1)  # see test_optimizers_training.py

CTX = BuildContext(vocab_size=257, max_seq_len=8, tokenizer="bytes")


class OneMatrix(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())


def build(name: str, model: nn.Module, **fields):
    reg = get_registry()
    return reg.build_optimizer(model, reg.optimizer_spec(name).config(name=name, **fields), CTX)


def run(opt, param: nn.Parameter, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Feed fixed gradients; return the parameter after each step."""
    out = []
    for g in grads:
        param.grad = g.clone()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(param.detach().clone())
    return out


def grads(n: int, shape=(4, 3), seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


# -- AdEMAMix, arXiv 2409.03137, Algorithm 1 ------------------------------------------------


def paper_ademamix(theta, gs, lr, beta1, beta2, beta3, alpha, T_alpha, T_beta3, eps, wd):
    m1, m2, nu = torch.zeros_like(theta), torch.zeros_like(theta), torch.zeros_like(theta)
    out = []
    for t, g in enumerate(gs, start=1):
        alpha_t = min(t * alpha / T_alpha, alpha)
        beta3_t = min(
            math.exp(math.log(beta1) * math.log(beta3) / ((1 - t / T_beta3) * math.log(beta3) + (t / T_beta3) * math.log(beta1))),
            beta3,
        )
        m1 = beta1 * m1 + (1 - beta1) * g
        m2 = beta3_t * m2 + (1 - beta3_t) * g
        nu = beta2 * nu + (1 - beta2) * g * g
        m1_hat = m1 / (1 - beta1**t)
        nu_hat = nu / (1 - beta2**t)
        theta = theta - lr * ((m1_hat + alpha_t * m2) / (nu_hat.sqrt() + eps) + wd * theta)
        out.append(theta)
    return out


def test_ademamix_matches_paper_algorithm_with_warmups():
    theta0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    gs = grads(3)
    hp = dict(lr=0.05, beta1=0.9, beta2=0.999, beta3=0.999, alpha=5.0, eps=1e-8, weight_decay=0.1)
    model = OneMatrix(theta0)
    got = run(build("ademamix", model, alpha_warmup=5, beta3_warmup=5, **hp), model.w, gs)
    want = paper_ademamix(
        theta0, gs, hp["lr"], hp["beta1"], hp["beta2"], hp["beta3"], hp["alpha"], 5, 5, hp["eps"], hp["weight_decay"]
    )
    for step, (g, w) in enumerate(zip(got, want), start=1):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    # the slow EMA matters: without it (alpha 0) the result is measurably different
    model = OneMatrix(theta0)
    plain = run(build("ademamix", model, alpha_warmup=5, beta3_warmup=5, **{**hp, "alpha": 0.0}), model.w, gs)
    assert (plain[-1] - got[-1]).abs().max() > 1e-3


# -- ADOPT, arXiv 2411.02853, clipped algorithm ---------------------------------------------


def paper_adopt(theta, gs, lr, beta1, beta2, eps, wd, clip_exponent=0.25):
    v = gs[0] * gs[0]  # v_0 = g_0^2; the first gradient only initialises v
    m = torch.zeros_like(theta)
    out = [theta]
    for t, g in enumerate(gs[1:], start=1):
        c = t**clip_exponent
        m = beta1 * m + (1 - beta1) * torch.clamp(g / torch.clamp(v.sqrt(), min=eps), -c, c)
        theta = theta - lr * (m + wd * theta)  # decoupled weight decay, as the authors' `decouple`
        v = beta2 * v + (1 - beta2) * g * g
        out.append(theta)
    return out


def test_adopt_matches_paper_algorithm_including_zero_first_gradients():
    theta0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    gs = grads(4)
    gs[0][0] = 0.0  # a row whose first gradient is exactly zero: v_0 = 0 there, the clip must act
    hp = dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1)
    model = OneMatrix(theta0)
    got = run(build("adopt", model, **hp), model.w, gs)
    want = paper_adopt(theta0, gs, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"])
    assert torch.equal(got[0], theta0), "ADOPT's first step only initialises v"
    for step, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    # the zero row took a bounded step: the clip at t^(1/4), not g / eps
    assert (got[1][0] - theta0[0] * (1 - hp["lr"] * hp["weight_decay"])).abs().max() <= hp["lr"] * (1 - hp["beta1"]) * 1.0001


# -- SOAP, arXiv 2409.11321: Adam in Shampoo's eigenbasis turns with the problem -------------


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def updates_under_rotation(name: str, **fields) -> tuple[float, float]:
    """Relative gap between the updates of W and of U W V^T (gradients rotated alike): 0 if equivariant."""
    n, k = 6, 5
    w0 = torch.randn(n, n, generator=torch.Generator().manual_seed(3))
    gs = grads(k, (n, n), seed=4)
    U, V = random_orthogonal(n, 5), random_orthogonal(n, 6)
    a, b = OneMatrix(w0), OneMatrix(U @ w0 @ V.T)
    wa = run(build(name, a, **fields), a.w, gs)
    wb = run(build(name, b, **fields), b.w, [U @ g @ V.T for g in gs])
    da, db = wa[-1] - w0, wb[-1] - U @ w0 @ V.T
    gap = (U @ da @ V.T - db).norm() / db.norm()
    return gap.item(), db.norm().item()


def test_soap_update_is_rotation_equivariant_where_adam_is_not():
    soap_gap, size = updates_under_rotation("soap", lr=0.01, weight_decay=0.0, precondition_frequency=1)
    adam_gap, _ = updates_under_rotation("adamw", lr=0.01, weight_decay=0.0)
    assert size > 1e-3, "SOAP made no update"
    assert soap_gap < 1e-3, f"SOAP's update does not rotate with the problem (gap {soap_gap:.2e})"
    assert adam_gap > 0.1, f"control: Adam should not be rotation-equivariant (gap {adam_gap:.2e})"


def test_soap_first_step_only_initialises_the_preconditioner():
    w0 = torch.randn(6, 6)
    model = OneMatrix(w0)
    got = run(build("soap", model, weight_decay=0.0), model.w, grads(2, (6, 6)))
    assert torch.equal(got[0], w0) and not torch.equal(got[1], w0)


# -- Muon (Keller Jordan 2024): the update is near-orthogonal --------------------------------


class HiddenAndEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(257, 16)
        self.hidden = nn.Linear(16, 32, bias=True)


def test_muon_update_is_near_orthogonal_for_an_ill_conditioned_gradient():
    torch.manual_seed(0)
    model = HiddenAndEmbedding()
    # a gradient whose singular values span two orders of magnitude (5 quintic steps lift a
    # singular value by at most ~3.4445^5 ~ 500 relative to the Frobenius norm: enough for this)
    U, V = random_orthogonal(32, 7)[:, :16], random_orthogonal(16, 8)
    s = torch.logspace(1, -1, 16)
    g = U @ torch.diag(s) @ V.T
    w0 = model.hidden.weight.detach().clone()
    opt = build("muon", model, lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False)
    model.hidden.weight.grad = g.clone()
    opt.step()
    update = (w0 - model.hidden.weight.detach()) / math.sqrt(32 / 16)  # undo the shape scale
    sv = torch.linalg.svdvals(update)
    assert sv.min() > 0.5 and sv.max() < 1.5, f"singular values {sv}"
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 50  # the input was far from it
    # and it points along the gradient's orthogonal factor U V^T
    polar = U @ V.T
    cos = (update * polar).sum() / (update.norm() * polar.norm())
    assert cos > 0.95, f"cosine to U V^T is {cos:.3f}"


def test_muon_more_newton_schulz_steps_flatten_the_spectrum_further():
    def spread(steps: int) -> float:
        torch.manual_seed(0)
        model = HiddenAndEmbedding()
        g = torch.randn(32, 16) @ torch.diag(torch.logspace(0, -2, 16))
        w0 = model.hidden.weight.detach().clone()
        opt = build("muon", model, lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False, ns_steps=steps)
        model.hidden.weight.grad = g
        opt.step()
        sv = torch.linalg.svdvals(w0 - model.hidden.weight.detach())
        return (sv.max() / sv.min()).item()

    assert spread(1) > 10 * spread(5)


def test_muon_trains_embeddings_and_biases_with_adam():
    torch.manual_seed(0)
    model = HiddenAndEmbedding()
    e0, b0 = model.emb.weight.detach().clone(), model.hidden.bias.detach().clone()
    opt = build("muon", model, adam_lr=0.01)
    model.emb.weight.grad = torch.randn(257, 16)
    model.hidden.bias.grad = torch.randn(32)
    model.hidden.weight.grad = torch.randn(32, 16)
    ge, gb = model.emb.weight.grad.clone(), model.hidden.bias.grad.clone()
    opt.step()
    # Adam's first step is lr * sign(g), no weight decay on either
    torch.testing.assert_close(e0 - model.emb.weight.detach(), 0.01 * torch.sign(ge), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(b0 - model.hidden.bias.detach(), 0.01 * torch.sign(gb), rtol=1e-4, atol=1e-7)
