"""MegaByte through blagpt's plugin contract: shapes, causality, init, gradients, checkpoints."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from blagpt import BuildContext, ConfigError
from blagpt.config import resolve
from blagpt.plugin.registry import Registry

from blagpt_plugin_megabyte.model import MegaByte, MegaByteConfig

GPT2_124M = 124_475_904  # the BlaGPT gpt2+124m preset


@pytest.fixture(scope="module")
def registry():
    return Registry.load(only=["megabyte"], strict=True)


def build(registry, tokenizer="bytes", max_seq_len=64, **fields):
    cfg = resolve({"model": {"name": "megabyte", "preset": "tiny", **fields}}, registry).model
    vocab = 257 if tokenizer == "bytes" else 50257
    ctx = BuildContext(vocab_size=vocab, max_seq_len=max_seq_len, tokenizer=tokenizer)
    torch.manual_seed(0)
    return registry.build_model(cfg, ctx)


def test_registered_with_presets(registry):
    spec = registry.model_spec("megabyte")
    assert {"tiny", "small", "124m", "124m-gpt2"} <= set(spec.presets)
    assert spec.tokenizers == ("bytes", "gpt2", "any")
    for name, field in MegaByteConfig.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize("preset,vocab", [("124m", 257), ("124m-gpt2", 50257)])
def test_124m_presets_match_gpt2_small(registry, preset, vocab):
    cfg = resolve({"model": {"name": "megabyte", "preset": preset}}, registry).model
    with torch.device("meta"):
        model = MegaByte(cfg, vocab, 1024)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - GPT2_124M) / GPT2_124M < 0.02, n


def test_config_errors(registry):
    with pytest.raises(ConfigError, match="patch_size"):
        resolve({"model": {"name": "megabyte", "patch_size": 5, "global_dim": 64}}, registry)
    with pytest.raises(ConfigError, match="local_heads"):
        resolve({"model": {"name": "megabyte", "local_dim": 30, "local_heads": 4}}, registry)


CONFIGS = [
    {},  # P = 4
    {"patch_size": 8},
    {"patch_size": 1, "global_dim": 32},
    {"patch_size": 3, "global_dim": 48, "tie_embeddings": True},
]


@pytest.mark.parametrize("fields", CONFIGS)
def test_causal_for_every_length(registry, fields):
    """Changing token t changes no output before t, for lengths that are multiples of P, not
    multiples, shorter than a patch, one token, and the maximum."""
    model = build(registry, max_seq_len=40, **fields).eval()
    P = model.config.patch_size
    g = torch.Generator().manual_seed(2)
    for T in sorted({40, 39, 2 * P, 2 * P + 1, 13, P, max(P - 1, 1), 1}):
        idx = torch.randint(0, 257, (2, T), generator=g)
        base = model(idx)
        assert base.shape == (2, T, 320)
        for t in {0, T // 2, T - 1}:
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % 257
            out = model(changed)
            torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0, msg=f"T={T} t={t}")
            assert not torch.allclose(out[:, t], base[:, t]), (T, t)  # the changed token is seen


def test_outputs_do_not_depend_on_the_padding(registry):
    """A prefix gives the same logits alone (padded inside) as at the start of a longer input."""
    model = build(registry, max_seq_len=40).eval()
    idx = torch.randint(0, 257, (2, 37), generator=torch.Generator().manual_seed(3))
    full = model(idx)
    for T in (1, 3, 4, 5, 17):
        torch.testing.assert_close(model(idx[:, :T]), full[:, :T], rtol=1e-5, atol=1e-5)


def test_global_context_reaches_later_patches(registry):
    """The global model carries information across patches: the first token moves the last output."""
    model = build(registry, max_seq_len=40).eval()
    idx = torch.randint(0, 257, (1, 33), generator=torch.Generator().manual_seed(4))
    changed = idx.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 257
    assert not torch.allclose(model(idx)[:, -1], model(changed)[:, -1])


def test_longer_than_max_seq_len_is_an_error(registry):
    model = build(registry, max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("tokenizer,vocab", [("bytes", 257), ("gpt2", 50257)])
def test_loss_at_init_is_ln_vocab(registry, tokenizer, vocab):
    model = build(registry, tokenizer=tokenizer)
    idx = torch.randint(0, vocab, (4, 33), generator=torch.Generator().manual_seed(5))
    logits = model(idx[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    assert abs(loss.item() - math.log(vocab)) < 0.3, loss.item()


@pytest.mark.parametrize("fields", [{}, {"patch_size": 3, "global_dim": 48, "dropout": 0.1}])
def test_gradients_reach_every_parameter(registry, fields):
    model = build(registry, max_seq_len=22, **fields)
    idx = torch.randint(0, 257, (2, 23), generator=torch.Generator().manual_seed(6))
    F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_round_trip(registry):
    model = build(registry, tie_embeddings=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    other = build(registry, tie_embeddings=True)
    other.load_state_dict(torch.load(buf))
    assert other.head.weight is other.local_emb.weight
    idx = torch.randint(0, 257, (2, 30), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(other(idx), model(idx), rtol=0, atol=0)


def test_flops_per_token_positive_and_grow_with_size(registry):
    small = build(registry).flops_per_token(64)
    big = build(registry, local_layers=4).flops_per_token(64)
    assert 0 < small < big
