"""The Hourglass model through blagpt's plugin contract: config, sizes, init, gradients, round trip."""

import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from blagpt import BuildContext, ConfigError
from blagpt.config import resolve
from blagpt.plugin.registry import Registry

from blagpt_plugin_hourglass import Hourglass, HourglassConfig, parse_hierarchy

GPT2_SMALL = 124_475_904  # BlaGPT gpt2+124m


@pytest.fixture(scope="module")
def registry():
    return Registry.load(only=["hourglass"], strict=True)


def config(registry, preset="tiny", **fields):
    return resolve({"model": {"name": "hourglass", "preset": preset, **fields}}, registry).model


def build(registry, tokenizer="bytes", max_seq_len=64, **fields):
    cfg = config(registry, **fields)
    torch.manual_seed(0)
    vocab = 257 if tokenizer == "bytes" else 50257
    return registry.build_model(cfg, BuildContext(vocab_size=vocab, max_seq_len=max_seq_len, tokenizer=tokenizer))


def test_registered_with_presets_and_documented_fields(registry):
    spec = registry.model_spec("hourglass")
    assert {"tiny", "small", "124m"} <= set(spec.presets)
    assert spec.tokenizers == ("bytes", "gpt2", "any")
    for name, field in HourglassConfig.model_fields.items():
        assert field.description, name


def test_hierarchy_notation_and_list_agree(registry):
    a = config(registry, hierarchy="2@1 3@2 4@6 1@2 2@1")
    b = config(registry, hierarchy=[[2, 1], [3, 2], [4, 6], [1, 2], [2, 1]])
    assert a.hierarchy == b.hierarchy == [(2, 1), (3, 2), (4, 6), (1, 2), (2, 1)]
    assert parse_hierarchy("12@1") == [(12, 1)]
    model = build(registry, hierarchy="2@1 3@2 4@6 1@2 2@1")
    lv = model.levels
    assert (len(lv.pre), lv.factor, len(lv.post)) == (2, 2, 2)
    assert (len(lv.inner.pre), lv.inner.factor, len(lv.inner.post)) == (3, 3, 1)
    assert len(lv.inner.inner.pre) == 4 and lv.inner.inner.inner is None


@pytest.mark.parametrize(
    "hierarchy,message",
    [
        ("2@1 2@3", "odd number"),
        ("2@1 2@3 2@2", "mirror"),
        ("2@2 2@4 2@2", "start at factor 1"),
        ("1@1 1@2 1@3 1@2 1@1", "dividing"),
        ("2x1 2@3 2@1", "LAYERS@FACTOR"),
        ("0@1 0@2 0@1", "no layers"),
    ],
)
def test_bad_hierarchies_are_config_errors(registry, hierarchy, message):
    with pytest.raises(ConfigError, match=message):
        config(registry, hierarchy=hierarchy)


def test_124m_preset_matches_gpt2_small(registry):
    cfg = config(registry, preset="124m")
    with torch.device("meta"):
        model = Hourglass(cfg, 50257, 1024)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - GPT2_SMALL) / GPT2_SMALL < 0.02, n
    # a shortened middle costs fewer FLOPs per token than the same layers at full resolution
    with torch.device("meta"):
        flat = Hourglass(config(registry, preset="124m", hierarchy="12@1"), 50257, 1024)
    assert 0 < model.flops_per_token(1024) < flat.flops_per_token(1024)


def test_loss_at_init_is_ln_vocab(registry):
    for tokenizer, vocab in (("bytes", 257), ("gpt2", 50257)):
        model = build(registry, tokenizer=tokenizer)
        idx = torch.randint(0, vocab, (4, 33), generator=torch.Generator().manual_seed(4))
        logits = model(idx[:, :-1])
        assert logits.shape == (4, 32, model.head.weight.shape[0])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        assert abs(loss.item() - math.log(vocab)) < 0.2, (tokenizer, loss.item())


@pytest.mark.parametrize(
    "shortening,upsampling", list(itertools.product(["linear", "avg", "attention"], ["repeat", "linear", "attention"]))
)
def test_gradients_reach_every_parameter(registry, shortening, upsampling):
    model = build(
        registry, hierarchy="1@1 1@2 1@6 1@2 1@1", shortening=shortening, upsampling=upsampling, tie_embeddings=False
    )
    idx = torch.randint(0, 257, (2, 23), generator=torch.Generator().manual_seed(5))
    F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_round_trip(registry):
    model = build(registry)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = build(registry)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.head.weight is other.wte.weight
    idx = torch.randint(0, 257, (2, 21), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(other(idx), model(idx), rtol=0, atol=0)


def test_longer_than_max_seq_len_is_refused(registry):
    model = build(registry, max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_bf16_autocast_forward_and_backward(registry):
    model = build(registry, hierarchy="1@1 1@2 1@6 1@2 1@1")
    idx = torch.randint(0, 257, (2, 30), generator=torch.Generator().manual_seed(7))
    ref = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx)
        loss = F.cross_entropy(out.float()[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 5e-2


def test_flops_of_a_flat_stack_are_the_transformer_formula(registry):
    """`L@1` is a plain transformer: 6 x (block matmul weights + head) + 12 L d T."""
    model = build(registry, hierarchy="3@1")
    mats = sum(p.numel() for n, p in model.levels.named_parameters() if p.dim() == 2)
    T, d = 64, model.cfg.d_model
    assert model.flops_per_token(T) == 6.0 * (mats + model.wte.weight.numel()) + 12.0 * 3 * d * T
