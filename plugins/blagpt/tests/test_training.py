"""Training behaviour: every technique trains on the embedded corpus and changes the computation;
multi-token heads learn their own offsets; gradients reach every parameter; Tokenformer growth
preserves the function and training continues; torch.compile works."""

from __future__ import annotations

import pytest
import torch
from conftest import BYTES_VOCAB, SEQ, batches, build, train_losses
from test_model import PRESET_NAMES, TECHNIQUES

from blagpt import Batch

from blagpt_plugin_blagpt import BlaGPT, compute_loss, grow_parameter_tokens

STEPS = 25


def _base_for(over: dict) -> dict:
    """The counterfactual of a technique: the same run without it (qkv_bias needs bias off)."""
    return {"bias": False} if over.get("qkv_bias") else {}


@pytest.fixture(scope="module")
def data(corpus):
    return batches(corpus, STEPS)


@pytest.fixture(scope="module")
def base_runs(data):
    return {
        key: train_losses(build("gpt2+tiny", **dict(key)), data)
        for key in (frozenset(), frozenset({"bias": False}.items()))
    }


def _falls(losses: list[float]) -> bool:
    return sum(losses[-5:]) / 5 < losses[0] - 1.0


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_each_technique_trains_and_changes_the_computation(name, data, base_runs):
    over = TECHNIQUES[name]
    losses = train_losses(build("gpt2+tiny", **over), data)
    assert _falls(losses), losses
    base = base_runs[frozenset(_base_for(over).items())]
    assert max(abs(a - b) for a, b in zip(losses, base)) > 1e-3, "same losses as without the technique"


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_preset_trains(preset, data):
    losses = train_losses(build(f"{preset}+tiny"), data)
    assert _falls(losses), losses


def test_rope_base_is_used():
    a = build("blagpt+tiny", rope_base=10000.0)
    b = build("blagpt+tiny", rope_base=100.0)
    assert not torch.allclose(a.rotary.sin, b.rotary.sin)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_gradients_reach_every_parameter(preset, data):
    """After one step (zero-initialised outputs block gradients upstream at step 0 only)."""
    model = build(f"{preset}+tiny", n_predict=2)
    train_losses(model, data[:1])
    compute_loss("blagpt", model, Batch(data[1]), model.cfg).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead


def _counting(n: int, batch: int = 16, period: int = 48, seed: int = 0) -> list[torch.Tensor]:
    """Sequences s, s+1, s+2, ... (mod period): token t+1+i is a function of token t alone."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, period, (batch, 1), generator=g) + torch.arange(SEQ + 1)) % period for _ in range(n)]


def test_mtp_head_i_learns_offset_i():
    model = build("gpt2+tiny", n_predict=3, vocab_multiple=1)
    train_losses(model, _counting(60), lr=1e-2)
    x = _counting(1, seed=9)[0]
    model.eval()
    with torch.no_grad():
        preds = [h.argmax(-1) for h in model(x[:, :-1], all_heads=True)]
    for i, pred in enumerate(preds):
        for off in range(3):
            acc = (pred[:, : SEQ - off] == x[:, 1 + off :]).float().mean().item()
            assert (acc > 0.8) if off == i else (acc < 0.2), (i, off, acc)


def test_mtp_losses_are_each_heads_cross_entropy_at_its_offset():
    model = build("blagpt+tiny", n_predict=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokens = torch.randint(0, BYTES_VOCAB, (2, SEQ + 1))
    with torch.no_grad():
        loss, nlls = model(tokens[:, :-1], targets=tokens[:, 1:])
        logits = model(tokens[:, :-1], all_heads=True)
    for i, (nll, z) in enumerate(zip(nlls, logits)):
        assert nll.shape == (2, SEQ - i)
        ref = torch.nn.functional.cross_entropy(z[:, : SEQ - i].transpose(1, 2), tokens[:, 1 + i :], reduction="none")
        assert torch.allclose(nll, ref, atol=1e-5)
    assert torch.allclose(loss, sum(n.mean() for n in nlls) / 3)
    out = compute_loss("blagpt", model, Batch(tokens), model.cfg)
    assert torch.equal(out.nll, nlls[0]) and torch.equal(out.loss, loss)
    assert [out.metrics[f"loss_head{i}"] for i in range(3)] == [n.mean() for n in nlls]


# -- Tokenformer growth ---------------------------------------------------------------------

# Tolerance of function preservation: the new tokens contribute exact zeros (zero key -> score 0
# -> GeLU(0) = 0, and 0 adds nothing to the L2 norm, tau kept), but the matmuls now sum over more
# tokens, so float32 rounding may differ in the last bits: 1e-5 absolute on logits of size ~1.
GROWTH_ATOL = 1e-5


def test_growth_preserves_outputs_and_training_continues(data):
    model = build("tokenformer+tiny", n_predict=2)
    train_losses(model, data[:10])
    model.eval()
    idx = data[-1][:, :-1]
    with torch.no_grad():
        before = torch.stack(model(idx, all_heads=True))
    n_attn, n_mlp = model.cfg.attn_tokens, model.cfg.mlp_tokens
    sd = model.state_dict()

    grow_parameter_tokens(model, attn_param_tokens=n_attn + 16, mlp_param_tokens=2 * n_mlp)
    assert model.blocks[0].attn.q_proj.key_tokens.shape[0] == n_attn + 16
    assert model.blocks[0].mlp.ffn.value_tokens.shape[0] == 2 * n_mlp
    assert (model.cfg.attn_param_tokens, model.cfg.mlp_param_tokens) == (n_attn + 16, 2 * n_mlp)
    with torch.no_grad():
        after = torch.stack(model(idx, all_heads=True))
    assert torch.allclose(before, after, atol=GROWTH_ATOL, rtol=0)
    # the same through a state dict, loaded into a model built from the grown config
    grown_sd = grow_parameter_tokens(sd, attn_param_tokens=n_attn + 16, mlp_param_tokens=2 * n_mlp)
    fresh = BlaGPT(model.cfg, BYTES_VOCAB, SEQ).eval()
    fresh.load_state_dict(grown_sd)
    with torch.no_grad():
        assert torch.allclose(torch.stack(fresh(idx, all_heads=True)), before, atol=GROWTH_ATOL, rtol=0)

    # training continues: the new key tokens get gradient and the loss keeps falling
    model.train()
    compute_loss("blagpt", model, Batch(data[0]), model.cfg).loss.backward()
    new_keys = model.blocks[0].mlp.ffn.key_tokens.grad[n_mlp:]
    assert torch.any(new_keys != 0)
    model.zero_grad()
    eval_loss = lambda m: compute_loss("blagpt", m, Batch(data[-1]), m.cfg).loss.item()  # noqa: E731
    with torch.no_grad():
        start = eval_loss(model.eval())
    train_losses(model, data[10:24])
    with torch.no_grad():
        assert eval_loss(model.eval()) < start
    with pytest.raises(ValueError, match="shrink"):
        grow_parameter_tokens(model, attn_param_tokens=1)


def test_growth_changes_outputs_without_zero_keys():
    """Control: the preservation above is due to the zero keys (random keys change the outputs)."""
    model = build("tokenformer+tiny").eval()
    idx = torch.randint(0, BYTES_VOCAB, (2, 9))
    with torch.no_grad():
        before = model(idx)
        grow_parameter_tokens(model, mlp_param_tokens=model.cfg.mlp_tokens + 8)
        for b in model.blocks:
            b.mlp.ffn.key_tokens[-8:].normal_(std=0.02)
        assert not torch.allclose(model(idx), before, atol=1e-3)


# -- torch.compile --------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_default_preset_matches_eager():
    model = build("blagpt+tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokens = torch.randint(0, BYTES_VOCAB, (2, SEQ + 1))
    compiled = torch.compile(model)
    eager = compute_loss("blagpt", model, Batch(tokens), model.cfg)
    eager.loss.backward()
    g_eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = compute_loss("blagpt", compiled, Batch(tokens), model.cfg)
    out.loss.backward()
    assert torch.allclose(out.loss, eager.loss, atol=1e-5)
    assert torch.allclose(out.nll, eager.nll, atol=1e-4)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, g_eager[n], atol=1e-4, rtol=1e-3), n
