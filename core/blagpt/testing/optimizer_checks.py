"""Checks of an optimizer target on the kit's probe model (:mod:`blagpt.testing.probe`) that need
no trainer: its param groups, its state dict, and what it does with ``train.compile``.

The optimizer is built through the ``build_optimizer`` hook with the target's resolved config
and a :class:`blagpt.BuildContext` as the trainer makes it; steps are next-token losses of the
probe through the ``compute_loss`` hook on the embedded corpus, at the optimizer's peak learning rate.
"""

from __future__ import annotations

import io
import math
from collections import Counter

import torch

from .model_checks import build
from .targets import Resolved

STEPS_BEFORE, STEPS_AFTER = 3, 3  # state_dict_round_trip: steps before saving and after loading
COMPILE_STEPS = 5
COMPILE_RTOL = 1e-3


def _build(target, seed: int, r: Resolved | None = None, **train):
    model, r = build(target, seed=seed, r=r, **train)
    return model, r.registry.build_optimizer(model, r.cfg.optimizer, r.ctx), r


def _step(model, opt, r: Resolved, toks: torch.Tensor) -> float:
    from ..plugin.specs import Batch

    loss = r.registry.compute_loss(model, Batch(toks), r.cfg.model).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _batches(target, r: Resolved, n: int) -> list[torch.Tensor]:
    """``n`` consecutive (micro_batch_size, seq_len + 1) batches from the start of the embedded
    corpus's training split (text, so that a few steps lower the loss)."""
    from ..data.loader import TokenStream
    from ..data.prepare import embedded_dataset

    B, T = target.micro_batch_size, target.seq_len + 1
    stream = TokenStream(embedded_dataset(r.ctx.tokenizer)[0], "training")
    flat = torch.from_numpy(stream.read(0, n * B * T))
    return list(flat.view(n, B, T))


def check_param_groups(target) -> None:
    """Every trainable parameter of the probe is in exactly one param group, no group holds
    anything else, and every group has a positive ``lr`` (its peak learning rate)."""
    model, opt, _ = _build(target, seed=0)
    assert isinstance(opt, torch.optim.Optimizer), f"build_optimizer returned {type(opt).__name__}, expected a torch.optim.Optimizer"
    seen = Counter(id(p) for g in opt.param_groups for p in g["params"])
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for i, n in names.items() if seen[i] == 0]
    assert not missing, f"trainable parameters in no param group: {', '.join(missing)}"
    twice = [f"{n} (x{seen[i]})" for i, n in names.items() if seen[i] > 1]
    assert not twice, f"parameters in more than one param group: {', '.join(twice)}"
    foreign = sum(1 for i in seen if i not in names)
    assert not foreign, f"{foreign} param-group entries are not trainable parameters of the model"
    for k, g in enumerate(opt.param_groups):
        lr = g.get("lr")
        try:
            ok = lr is not None and float(lr) > 0 and math.isfinite(float(lr))
        except (TypeError, ValueError):
            ok = False
        assert ok, f"param group {k} has no positive finite 'lr' (got {lr!r}); the trainer's schedule scales it"


def check_state_dict_round_trip(target) -> None:
    """After a few steps, ``optimizer.state_dict()`` (with the model's) survives ``torch.save``
    and ``torch.load(weights_only=True)``; an optimizer built on a differently seeded model and
    loaded from it continues bit-identically (same losses, same parameters)."""
    model, opt, r = _build(target, seed=0)
    batches = _batches(target, r, STEPS_BEFORE + STEPS_AFTER)
    for b in batches[:STEPS_BEFORE]:
        _step(model, opt, r, b)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    try:
        state = torch.load(buf, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise AssertionError(
            f"optimizer.state_dict() does not load with torch.load(weights_only=True): {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        ) from None
    model2, opt2, _ = _build(target, seed=1, r=r)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    for k, b in enumerate(batches[STEPS_BEFORE:], start=STEPS_BEFORE + 1):
        a_loss, b_loss = _step(model, opt, r, b), _step(model2, opt2, r, b)
        assert a_loss == b_loss, f"step {k}: loss {b_loss!r} after loading the state dict, {a_loss!r} without"
        differ = [n for (n, p), q in zip(model.named_parameters(), model2.parameters()) if not torch.equal(p, q)]
        assert not differ, (
            f"step {k}: parameters differ after loading the optimizer's state dict: {', '.join(differ[:6])} "
            "(state kept outside state_dict(), or not restored by load_state_dict())"
        )


def _losses(target, compile: bool) -> list[float]:
    model, opt, r = _build(target, seed=0, compile=compile)
    return [_step(model, opt, r, b) for b in _batches(target, r, COMPILE_STEPS)]


def check_compile(target) -> None:
    """The optimizer built as a ``train.compile=true`` run builds it (``BuildContext.compile``)
    trains the (eager) probe model: finite losses, falling over the steps.

    If the spec declares ``supports_compile`` (the optimizer compiles its own kernels), the losses
    agree with the eager kernels' within relative 1e-3. If it does not, the optimizer must ignore
    the flag: the losses equal those of ``compile=false`` bit for bit. (The model's own
    compilation is the model's ``compile`` check.)"""
    reg = target.registry()
    spec = reg.optimizer_spec(target.name)
    try:
        compiled = _losses(target, compile=True)
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        raise AssertionError(f"with train.compile=true the optimizer failed: {type(e).__name__}: {' '.join(str(e).split())[:400]}") from e
    eager = _losses(target, compile=False)
    assert all(math.isfinite(x) for x in compiled), f"with train.compile=true the losses are {compiled}"
    assert compiled[-1] < compiled[0], f"with train.compile=true the loss did not fall over {COMPILE_STEPS} steps: {compiled}"
    if spec.supports_compile:
        off = [k + 1 for k, (c, e) in enumerate(zip(compiled, eager)) if not math.isclose(c, e, rel_tol=COMPILE_RTOL)]
        assert not off, f"compiled kernels give losses {compiled}, eager ones {eager} (steps {off} differ by more than {COMPILE_RTOL})"
    else:
        assert compiled == eager, (
            f"the spec declares supports_compile=False (the optimizer ignores train.compile), yet its losses change "
            f"with it: {compiled} vs {eager}; declare supports_compile=True if it compiles its kernels"
        )
