"""Checks of a model target that need no trainer: it builds, its loss at initialisation, its
gradients, causality, its state dict, and torch.compile.

Models are built through the ``build_model`` hook with the target's resolved config, on the CPU in
fp32 (the hook's contract), seeded with ``torch.manual_seed``. Where a check looks at outputs,
parameters that are exactly zero after initialisation (zero-initialised output projections and
heads, biases) first get small random values (:func:`wake_zeros`): causality and a state dict's
completeness are properties of the architecture, and a model whose logits are all zero at
initialisation would otherwise hide every difference.
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn as nn

from .targets import Resolved

LOSS_AT_INIT_TOL = 0.3  # nats
CAUSAL_TOL = 1e-5  # rtol and atol
COMPILE_RTOL = 1e-3  # nll and loss: relative to eager
COMPILE_GRAD_RTOL = 1e-2  # gradients: error norm relative to the eager gradient's norm


def build(target, seed: int = 0, r: Resolved | None = None, **train) -> tuple[nn.Module, Resolved]:
    """The target's model through the ``build_model`` hook, after ``torch.manual_seed(seed)``."""
    r = r or target.resolve(**train)
    torch.manual_seed(seed)
    return r.registry.build_model(r.cfg.model, r.ctx), r


def wake_zeros(model: nn.Module, seed: int) -> None:
    """Give every parameter that is exactly zero values drawn from N(0, 0.02^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))


def tokens(vocab: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


def non_embedding_params(target) -> int:
    """The parameters of the target's model without embedding tables and output head, counted as
    a run counts them (its ``n_params_non_embedding``): for tests that hold a preset to a size."""
    from ..run.trainer import embedding_params

    model, r = build(target)
    return sum(p.numel() for p in model.parameters()) - embedding_params(model, r.ctx.vocab_size, r.ctx.max_seq_len)


def check_builds_on_cpu(target) -> None:
    """The target's config builds through the ``build_model`` hook as an ``nn.Module`` on the CPU
    in fp32; forward on (2, T) ids gives finite (2, T, V) logits with V >= vocab, for T =
    ``seq_len`` and a shorter T."""
    model, r = build(target)
    assert isinstance(model, nn.Module), f"build_model returned {type(model).__name__}, expected a torch.nn.Module"
    wrong = [
        f"{n} ({t.device.type}, {t.dtype})"
        for n, t in [*model.named_parameters(), *model.named_buffers()]
        if t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32)
    ]
    assert not wrong, f"build_model must return the model on the CPU in fp32; these are not: {', '.join(wrong[:8])}"
    vocab = r.ctx.vocab_size
    model.eval()
    for T in sorted({target.seq_len, target.seq_len // 2 + 1}):
        with torch.no_grad():
            out = model(tokens(vocab, (2, T), seed=T))
        assert torch.is_tensor(out), f"forward(idx) returned {type(out).__name__}, expected a logits tensor"
        assert out.dim() == 3 and tuple(out.shape[:2]) == (2, T) and out.shape[2] >= vocab, (
            f"forward on (2, {T}) ids gave logits of shape {tuple(out.shape)}, expected (2, {T}, V) with V >= {vocab}"
        )
        assert out.is_floating_point(), f"logits of dtype {out.dtype}, expected floating point"
        assert torch.isfinite(out).all(), f"forward on (2, {T}) ids gave non-finite logits"


def check_loss_at_init(target) -> float:
    """Through the ``compute_loss`` hook on random tokens at initialisation: the loss is a finite
    scalar, ``nll`` is finite of shape (B, T), and its mean is ln(vocab) within 0.3 nats.
    Returns the measured mean."""
    from ..plugin.specs import Batch, LossOutput

    model, r = build(target)
    vocab = r.ctx.vocab_size
    batch = Batch(tokens(vocab, (4, target.seq_len + 1), seed=1))
    model.train()
    with torch.no_grad():
        out = r.registry.compute_loss(model, batch, r.cfg.model)
    assert isinstance(out, LossOutput), f"compute_loss returned {type(out).__name__}, expected blagpt.LossOutput"
    assert torch.is_tensor(out.loss) and out.loss.dim() == 0, f"LossOutput.loss must be a scalar tensor, got {out.loss!r}"
    assert torch.isfinite(out.loss), f"loss at init is {out.loss.item()}"
    assert tuple(out.nll.shape) == tuple(batch.targets.shape), (
        f"LossOutput.nll has shape {tuple(out.nll.shape)}, expected (B, T) = {tuple(batch.targets.shape)}"
    )
    assert torch.isfinite(out.nll).all(), "LossOutput.nll has non-finite values at init"
    mean, expected = out.nll.double().mean().item(), math.log(vocab)
    assert abs(mean - expected) <= LOSS_AT_INIT_TOL, (
        f"next-token nll at init is {mean:.3f} nats, expected about ln({vocab}) = {expected:.3f} "
        f"(tolerance {LOSS_AT_INIT_TOL}); the initial logits are not close to uniform"
    )
    return mean


def check_gradients_reach_every_parameter(target) -> None:
    """One backward pass of the ``compute_loss`` loss gives every trainable parameter a finite
    gradient (zero is allowed: upstream of a zero-initialised projection it is exactly zero at
    initialisation), and not every gradient is zero."""
    from ..plugin.specs import Batch

    model, r = build(target)
    model.train()
    model.zero_grad(set_to_none=True)
    batch = Batch(tokens(r.ctx.vocab_size, (2, target.seq_len + 1), seed=2))
    r.registry.compute_loss(model, batch, r.cfg.model).loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    none = [n for n, p in params if p.grad is None]
    assert not none, f"no gradient reaches: {', '.join(none)} (unused in the loss, or cut from the graph)"
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in: {', '.join(bad)}"
    assert any(p.grad.any() for _, p in params), "every gradient is zero"


def causal_lengths(seq_len: int) -> list[int]:
    """``seq_len`` and shorter lengths: 1, 2, an odd one in between, ``seq_len - 1``."""
    return sorted({seq_len, seq_len - 1, 1, 2, (seq_len // 2) | 1})


def check_causal(target) -> None:
    """Changing token t never changes outputs before t (allclose, rtol = atol = 1e-5) and does
    change the output at t, for T = ``seq_len``, ``seq_len - 1``, 1, 2 and an odd length, at
    t = 0, T/3, T/2 and T-1."""
    model, r = build(target)
    wake_zeros(model, seed=10)
    vocab = r.ctx.vocab_size
    g = torch.Generator().manual_seed(3)
    model.eval()
    with torch.no_grad():
        for T in causal_lengths(target.seq_len):
            idx = torch.randint(vocab, (2, T), generator=g)
            base = model(idx)
            for t in sorted({0, T // 3, T // 2, T - 1}):
                changed = idx.clone()
                changed[:, t] = (changed[:, t] + 1 + torch.randint(vocab - 1, (2,), generator=g)) % vocab
                out = model(changed)
                if t > 0 and not torch.allclose(out[:, :t], base[:, :t], rtol=CAUSAL_TOL, atol=CAUSAL_TOL):
                    diff = (out[:, :t] - base[:, :t]).abs().amax(dim=(0, 2))
                    first = int(torch.nonzero(diff > CAUSAL_TOL)[0])
                    raise AssertionError(
                        f"not causal: changing token {t} changed the output at position {first} < {t} "
                        f"(T={T}, max abs change {float(diff.max()):.2e})"
                    )
                assert not torch.allclose(out[:, t], base[:, t], rtol=CAUSAL_TOL, atol=CAUSAL_TOL), (
                    f"changing token {t} does not change the output at position {t} (T={T}): the model ignores its input"
                )


def check_state_dict_round_trip(target) -> None:
    """A state dict saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``
    into a model built with another seed gives identical outputs (nothing the forward pass
    depends on is missing from the state dict)."""
    a, r = build(target, seed=0)
    b, _ = build(target, seed=1, r=r)
    wake_zeros(a, seed=20)
    wake_zeros(b, seed=21)
    idx = tokens(r.ctx.vocab_size, (2, target.seq_len), seed=4)
    a.eval(), b.eval()
    with torch.no_grad():
        ref = a(idx)
        assert not torch.equal(b(idx), ref), "two seeds built models with the same outputs; the check cannot tell them apart"
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        buf.seek(0)
        try:
            state = torch.load(buf, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"the state dict does not load with torch.load(weights_only=True): {type(e).__name__}: {e}") from None
        b.load_state_dict(state)
        out = b(idx)
    if not torch.equal(out, ref):
        raise AssertionError(
            f"after loading the state dict, outputs differ by up to {float((out - ref).abs().max()):.3e}: the forward "
            "pass depends on something the state dict does not hold (a non-persistent buffer, a global, a counter)"
        )


def check_compile(target) -> None:
    """If the spec declares ``supports_compile`` (the default), ``torch.compile(model,
    backend=target.compile_backend)`` through the ``compute_loss`` hook gives the eager loss,
    per-token nll (relative 1e-3) and gradients (error norm within 1e-2 of each eager gradient's
    norm) on the CPU. If it declares no support, a run config with ``train.compile=true`` is
    refused with a ConfigError naming ``train.compile``."""
    from ..config import resolve
    from ..errors import ConfigError
    from ..plugin.specs import Batch

    reg = target.registry()
    spec = reg.model_spec(target.name)
    if not spec.supports_compile:
        try:
            resolve(target.run_raw(compile=True), reg)
        except ConfigError as e:
            assert "train.compile" in str(e), f"train.compile=true is refused, but the error does not name train.compile: {e}"
            return
        raise AssertionError("the spec declares supports_compile=False, yet a run config with train.compile=true resolved")
    model, r = build(target)
    wake_zeros(model, seed=30)
    model.train()
    batch = Batch(tokens(r.ctx.vocab_size, (2, target.seq_len + 1), seed=5))

    def run(m):
        model.zero_grad(set_to_none=True)
        out = reg.compute_loss(m, batch, r.cfg.model)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.loss.detach(), out.nll.detach(), grads

    loss_e, nll_e, grads_e = run(model)
    try:
        loss_c, nll_c, grads_c = run(torch.compile(model, backend=target.compile_backend))
    except Exception as e:  # noqa: BLE001 - the failure to compile is the finding
        raise AssertionError(
            f"torch.compile(backend={target.compile_backend!r}) of the model failed on the CPU: "
            f"{type(e).__name__}: {' '.join(str(e).split())[:400]} "
            "(declare supports_compile=False in the ModelSpec if it cannot compile)"
        ) from e
    finally:
        torch._dynamo.reset()  # or later targets' models (same forward code) hit Dynamo's recompile limit
    assert torch.allclose(loss_c, loss_e, rtol=COMPILE_RTOL, atol=1e-6), f"compiled loss {loss_c.item()} != eager {loss_e.item()}"
    assert torch.allclose(nll_c, nll_e, rtol=COMPILE_RTOL, atol=1e-5), (
        f"compiled per-token nll differs from eager by up to {float((nll_c - nll_e).abs().max()):.3e}"
    )
    assert set(grads_c) == set(grads_e), f"parameters with gradients differ: {sorted(set(grads_c) ^ set(grads_e))}"
    bad = [n for n in grads_e if (grads_c[n] - grads_e[n]).norm() > COMPILE_GRAD_RTOL * grads_e[n].norm() + 1e-6]
    assert not bad, f"compiled gradients differ from eager ones for: {', '.join(bad[:8])}"


CACHE_TOL = 1e-5  # rtol and atol: cached logits against the full forward's


def cached_logits(model: nn.Module, idx: torch.Tensor, pieces: list[int]) -> torch.Tensor:
    """The logits of ``idx`` (B, T) through the model's cache: a fresh ``init_cache(B)``, then
    ``forward(chunk, cache=cache)`` on consecutive chunks of the given lengths (summing to T)."""
    cache = model.init_cache(idx.shape[0])
    out, start = [], 0
    for n in pieces:
        out.append(model(idx[:, start : start + n], cache=cache))
        start += n
    return torch.cat(out, dim=1)


def check_cached_decoding(target) -> None:
    """The model offers incremental decoding (``init_cache(batch_size)`` and ``forward(idx,
    cache=cache)``, docs/plugins.md) and it gives the full forward's logits (allclose, rtol =
    atol = 1e-5, fp32 on the CPU) for: a prompt of about half ``seq_len`` prefilled at once and
    then one token at a time up to ``seq_len``; a one-token prompt then single tokens; and a
    prompt followed by a chunk of several tokens and single tokens up to a length short of
    ``seq_len``. Two sequences decode side by side in one batch, and a new cache starts afresh.

    A model without the method (or whose ``init_cache`` returns ``None``: this config cannot be
    cached) fails the check with that finding; such a plugin declares it in
    ``expected_failures`` with the reason, and ``blagpt sample`` uses the full forward."""
    model, r = build(target)
    wake_zeros(model, seed=40)
    model.eval()
    init = getattr(model, "init_cache", None)
    if not callable(init):
        raise AssertionError(
            f"{type(model).__name__} offers no incremental decoding: no init_cache(batch_size) method "
            "(see 'Cached generation' in docs/plugins.md); blagpt sample runs the full forward for every token"
        )
    T = target.seq_len
    idx = tokens(r.ctx.vocab_size, (2, T), seed=6)
    half = T // 2 + 1
    short = T - 2
    plans = {
        f"prefill {half} then single tokens to {T}": [half] + [1] * (T - half),
        f"prefill 1 then single tokens to {T}": [1] * T,
    }
    if short >= 7:
        plans[f"prefill 3, a chunk of 4, then single tokens to {short}"] = [3, 4] + [1] * (short - 7)
    with torch.no_grad():
        if init(2) is None:
            raise AssertionError(
                f"{type(model).__name__}.init_cache returned None: this config declares it cannot decode "
                "incrementally (blagpt sample falls back to the full forward)"
            )
        full = model(idx)
        for what, pieces in plans.items():
            n = sum(pieces)
            try:
                got = cached_logits(model, idx[:, :n], pieces)
            except Exception as e:  # noqa: BLE001 - a crash of the cached path is the finding
                raise AssertionError(f"cached decoding ({what}) failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
            assert tuple(got.shape) == tuple(full[:, :n].shape), (
                f"cached decoding ({what}) gave logits of shape {tuple(got.shape)}, expected {tuple(full[:, :n].shape)}"
            )
            if not torch.allclose(got, full[:, :n], rtol=CACHE_TOL, atol=CACHE_TOL):
                diff = (got - full[:, :n]).abs().amax(dim=(0, 2))
                first = int(torch.nonzero(diff > CACHE_TOL)[0])
                raise AssertionError(
                    f"cached decoding ({what}) differs from the full forward from position {first} on "
                    f"(max abs difference {float(diff.max()):.2e}, tolerance {CACHE_TOL})"
                )
