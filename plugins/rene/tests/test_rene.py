"""The rene model beyond blagpt.testing's conformance kit (test_conformance.py): the configured
layer layout, the sliding window, generation through the caches, the presets' sizes."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from blagpt import BuildContext
from blagpt.config import apply_presets
from blagpt.plugin.registry import Registry
from blagpt_plugin_rene import ReneConfig, ReneLM, SlidingWindowAttention, WindowCache
from blagpt_plugin_ssm import Mamba2, testing

# The models under test are tiny: one thread avoids synchronisation stalls on a shared machine.
torch.set_num_threads(1)

VOCAB = 257
MAX_T = 24  # three times the tiny preset's window of 8


@pytest.fixture(scope="module")
def registry():
    return Registry.load(strict=False, only=["ssm", "rene"])


def config(registry, preset="tiny", **fields):
    return ReneConfig(**apply_presets({"name": "rene", "preset": preset, **fields}, registry))


def build(registry, seed=0, vocab=VOCAB, **fields):
    torch.manual_seed(seed)
    ctx = BuildContext(vocab_size=vocab, max_seq_len=MAX_T, tokenizer="bytes")
    return registry.build_model(config(registry, **fields), ctx)


def test_registered_with_documented_fields(registry):
    spec = registry.model_spec("rene")
    assert registry.owner_of("model", "rene").dist == "blagpt-plugin-rene"
    assert {"tiny", "124m"} <= set(spec.presets)
    for name, field in ReneConfig.model_fields.items():
        assert field.description, f"field {name} has no description"


def test_layers_follow_the_configured_indices(registry):
    model = build(registry, n_layers=6, attn_layer_idx=[3], mlp_layer_idx=[1, 4])
    kinds = [type(layer.mixer) for layer in model.layers]
    assert kinds == [Mamba2, type(model.layers[1].mixer), Mamba2, SlidingWindowAttention, kinds[1], Mamba2]
    assert kinds[1].__name__ == "MLP"


@pytest.mark.parametrize("preset", [None, "tiny", "small", "124m"])
def test_every_preset_has_attention_mlp_and_mamba(registry, preset):
    kinds = (config(registry, preset) if preset else ReneConfig()).layer_kinds()
    assert {"attn", "mlp", "mamba2"} <= set(kinds)


def test_bad_layouts_are_refused():
    with pytest.raises(ValidationError, match="both"):
        ReneConfig(n_layers=4, attn_layer_idx=[1], mlp_layer_idx=[1, 3])
    with pytest.raises(ValidationError, match="outside"):
        ReneConfig(n_layers=4, attn_layer_idx=[4])


def test_attention_sees_exactly_its_window():
    torch.manual_seed(0)
    W, T = 5, 16
    attn = SlidingWindowAttention(32, 4, W, bias=True)
    x = torch.randn(1, T, 32)
    with torch.no_grad():
        base = attn(x)
        for t in (0, 6, 15):
            x2 = x.clone()
            x2[:, t] += 1.0
            diff = (attn(x2) - base).abs().amax(-1)[0]
            changed = set(torch.nonzero(diff > 1e-6).flatten().tolist())
            assert changed == set(range(t, min(t + W, T))), (t, changed)


def test_window_cache_stays_bounded():
    attn = SlidingWindowAttention(32, 4, 5, bias=False)
    cache = WindowCache()
    with torch.no_grad():
        attn(torch.randn(2, 9, 32), cache)
        for _ in range(7):
            attn(torch.randn(2, 1, 32), cache)
    assert cache.k.shape == (2, 4, 4, 8) and cache.pos == 16


def test_loss_at_init_gpt2_vocab(registry):
    # the conformance kit checks the bytes vocabulary; this is the padded 50304-entry one
    testing.check_loss_at_init(build(registry, vocab=50257), 50257, 16)


@pytest.mark.parametrize("prompt_len", [3, 11])
def test_generation_through_the_state_matches_forward(registry, prompt_len):
    # past the window of 8: the attention cache is trimmed and must still give the same logits
    testing.check_generation_matches_forward(build(registry), VOCAB, MAX_T, prompt_len=prompt_len)


def test_124m_preset_matches_gpt2_small(registry):
    with torch.device("meta"):
        model = ReneLM(config(registry, "124m"), 50257, 1024)
    testing.check_matches_gpt2_small(model)


def test_fused_kernel_refused_off_cuda(registry):
    testing.check_fused_kernel_refused(lambda: build(registry, kernel="fused"), lambda: config(registry, kernel="fused"))


def test_flops_per_token(registry):
    testing.check_flops_per_token(build(registry), MAX_T)
