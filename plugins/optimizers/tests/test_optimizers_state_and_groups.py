"""Checkpoint round-trip, the trainer's per-step learning rate, and the param-group split."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn

from blagpt import BuildContext
from blagpt.plugin.registry import get_registry

from test_optimizers_training import VOCAB, ZeroInitSandwichLM, corpus_batches, next_token_loss

torch.set_num_threads(1)  # see test_optimizers_training.py

OURS = ["soap", "ademamix", "adopt", "muon"]
CTX = BuildContext(vocab_size=VOCAB, max_seq_len=64, tokenizer="bytes")
# small warmups and a frequent basis refresh, so the steps after the resume exercise them
FIELDS = {"soap": {"precondition_frequency": 2}, "ademamix": {"alpha_warmup": 4, "beta3_warmup": 4}}


def build(name: str, model: nn.Module, **fields):
    reg = get_registry()
    fields = {**FIELDS.get(name, {}), **fields}
    return reg.build_optimizer(model, reg.optimizer_spec(name).config(name=name, **fields), CTX)


def train_step(model, opt, batch, peaks, factor):
    """One step as the trainer takes it: the schedule sets each group's lr from its peak first."""
    for g, peak in zip(opt.param_groups, peaks):
        g["lr"] = peak * factor
    next_token_loss(model, batch).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def batches():
    return corpus_batches("bytes", 6, seed=1)


@pytest.mark.parametrize("name", OURS)
def test_state_round_trips_through_weights_only_load_and_resumes_exactly(name, batches):
    factors = [0.25, 0.5, 0.75, 1.0, 0.9, 0.8]
    torch.manual_seed(0)
    model = ZeroInitSandwichLM(d=32, layers=1)
    opt = build(name, model)
    peaks = [g["lr"] for g in opt.param_groups]
    for batch, f in zip(batches[:3], factors):
        train_step(model, opt, batch, peaks, f)

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # as the core's checkpoint loader does

    torch.manual_seed(1)  # a different initialisation, fully overwritten by the checkpoint
    resumed = ZeroInitSandwichLM(d=32, layers=1)
    ropt = build(name, resumed)
    rpeaks = [g["lr"] for g in ropt.param_groups]  # the trainer reads peaks before loading
    resumed.load_state_dict(ckpt["model"])
    ropt.load_state_dict(ckpt["optimizer"])
    assert rpeaks == peaks

    for batch, f in zip(batches[3:], factors[3:]):
        train_step(model, opt, batch, peaks, f)
        train_step(resumed, ropt, batch, rpeaks, f)
        for (n, a), b in zip(model.named_parameters(), resumed.parameters()):
            assert torch.equal(a, b), f"{name}: {n} differs after resuming"
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), ckpt["model"].values()))


@pytest.mark.parametrize("name", OURS)
def test_every_step_honours_the_learning_rate_the_trainer_sets(name, batches, recwarn):
    """Two copies from the same state, one step at lr factor 1 and 0.5: the updates halve.

    heavyball warns once per process when a group's lr changes; the plugin filters that warning
    (the change is how blagpt's schedule works), and forgetting it was shown makes the check real.
    """
    import heavyball.utils

    heavyball.utils._warned.clear()
    torch.manual_seed(0)
    a = ZeroInitSandwichLM(d=32, layers=1)
    opt_a = build(name, a, weight_decay=0.0)
    peaks = [g["lr"] for g in opt_a.param_groups]
    for batch in batches[:3]:
        train_step(a, opt_a, batch, peaks, 1.0)
    b = ZeroInitSandwichLM(d=32, layers=1)
    b.load_state_dict(a.state_dict())
    opt_b = build(name, b, weight_decay=0.0)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # load_state_dict alone would alias a's tensors
    before = [p.detach().clone() for p in a.parameters()]
    train_step(a, opt_a, batches[3], peaks, 1.0)
    train_step(b, opt_b, batches[3], peaks, 0.5)
    for p0, pa, pb in zip(before, a.parameters(), b.parameters()):
        torch.testing.assert_close(pb - p0, 0.5 * (pa - p0), rtol=1e-4, atol=1e-7)
    assert not [w for w in recwarn if "Learning rate changed" in str(w.message)]


def roles_of(model: nn.Module, opt) -> dict[str, tuple[float, ...]]:
    """name -> (group index, weight decay) for every parameter the optimizer holds."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for i, g in enumerate(opt.param_groups):
        for p in g["params"]:
            assert names[id(p)] not in out, f"{names[id(p)]} is in two groups"
            out[names[id(p)]] = (i, g["weight_decay"])
    return out


def test_muon_groups_hidden_matrices_only():
    model = ZeroInitSandwichLM(d=64)  # d_model == max_seq_len: wpe's 64 rows must not make 64-wide layers heads
    opt = build("muon", model, weight_decay=0.1)
    roles = roles_of(model, opt)
    assert set(roles) == {n for n, _ in model.named_parameters()}
    muon = {n for n, (i, _) in roles.items() if opt.param_groups[i]["lr"] == 0.02}
    assert muon == {n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks.")}
    assert all(n.endswith(("qkv.weight", "proj.weight", "fc.weight", "out.weight")) for n in muon)
    assert roles["head.weight"][1] == 0.1 and roles["head.weight"][0] != roles["blocks.0.qkv.weight"][0]
    for n, p in model.named_parameters():
        if p.dim() < 2 or n.startswith(("wte", "wpe")):
            assert roles[n][1] == 0.0, f"{n} must not be weight-decayed"


def test_tied_head_is_the_embedding_and_padded_vocab_head_is_found():
    tied = ZeroInitSandwichLM(tied=True)
    assert tied.head.weight is tied.wte.weight
    roles = roles_of(tied, build("muon", tied))
    assert "head.weight" not in roles and roles["wte.weight"][1] == 0.0  # seen once, as the embedding
    padded = ZeroInitSandwichLM(vocab=320)  # a model that pads 257 up to 320
    opt = build("muon", padded)
    hidden_group = roles_of(padded, opt)["blocks.0.qkv.weight"][0]
    assert roles_of(padded, opt)["head.weight"][0] != hidden_group


def test_soap_rotates_hidden_matrices_but_not_embeddings_or_head():
    model = ZeroInitSandwichLM()
    opt = build("soap", model)
    roles = roles_of(model, opt)
    dims = {n: opt.param_groups[i]["max_precond_dim"] for n, (i, _) in roles.items()}
    assert dims["blocks.0.fc.weight"] == 4096
    assert dims["head.weight"] == dims["wte.weight"] == 0


@pytest.mark.parametrize("name", ["soap", "ademamix", "adopt"])
def test_no_weight_decay_on_vectors_and_embeddings(name):
    model = ZeroInitSandwichLM()
    roles = roles_of(model, build(name, model, weight_decay=0.1))
    for n, p in model.named_parameters():
        decayed = roles[n][1] > 0
        assert decayed == (p.dim() >= 2 and not n.startswith(("wte", "wpe"))), n


class DeclaresNoDecay(ZeroInitSandwichLM):
    """A model that exempts one hidden matrix from weight decay, as ``blagpt.param_groups`` allows."""

    def no_weight_decay(self):
        return {"blocks.0.fc.weight"}


@pytest.mark.parametrize("name", OURS)
def test_model_declared_no_weight_decay_is_honoured(name):
    model = DeclaresNoDecay()
    roles = roles_of(model, build(name, model, weight_decay=0.1))
    assert roles["blocks.0.fc.weight"][1] == 0.0
    assert roles["blocks.0.qkv.weight"][1] == 0.1
    if name == "muon":  # still orthogonalised: same lr as the other hidden matrices
        opt = build(name, model, weight_decay=0.1)
        lrs = {n: opt.param_groups[i]["lr"] for n, (i, _) in roles_of(model, opt).items()}
        assert lrs["blocks.0.fc.weight"] == lrs["blocks.0.qkv.weight"] == 0.02
