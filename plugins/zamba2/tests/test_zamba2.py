"""The zamba2 model beyond blagpt.testing's conformance kit (test_conformance.py): what makes it
Zamba2 (shared blocks that actually run, per-invocation adapters), generation through the
caches, the presets' sizes."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from blagpt import BuildContext
from blagpt.config import apply_presets
from blagpt.plugin.registry import Registry
from blagpt_plugin_ssm import testing
from blagpt_plugin_zamba2 import Zamba2Config, Zamba2LM

# The models under test are tiny: one thread avoids synchronisation stalls on a shared machine.
torch.set_num_threads(1)

VOCAB = 257
MAX_T = 24


@pytest.fixture(scope="module")
def registry():
    return Registry.load(strict=False, only=["ssm", "zamba2"])


def config(registry, preset="tiny", **fields):
    return Zamba2Config(**apply_presets({"name": "zamba2", "preset": preset, **fields}, registry))


def build(registry, seed=0, vocab=VOCAB, **fields):
    torch.manual_seed(seed)
    ctx = BuildContext(vocab_size=vocab, max_seq_len=MAX_T, tokenizer="bytes")
    return registry.build_model(config(registry, **fields), ctx)


def test_registered_with_documented_fields(registry):
    spec = registry.model_spec("zamba2")
    assert registry.owner_of("model", "zamba2").dist == "blagpt-plugin-zamba2"
    assert {"tiny", "124m"} <= set(spec.presets)
    for name, field in Zamba2Config.model_fields.items():
        assert field.description, f"field {name} has no description"


@pytest.mark.parametrize("preset", [None, "tiny", "small", "124m"])
def test_attention_bearing_by_default_and_in_every_preset(registry, preset):
    cfg = config(registry, preset) if preset else Zamba2Config()
    assert cfg.hybrid_layer_ids(), f"preset {preset}: no shared attention block would run"


def test_a_config_without_attention_is_refused():
    with pytest.raises(ValidationError, match="never run"):
        Zamba2Config(n_layers=4, shared_every=5)


def test_shared_weights_are_shared_and_adapters_are_per_invocation(registry):
    model = build(registry)
    assert model.hybrid_layers == [1, 3] and len(model.shared) == 2 and len(model.invocations) == 2
    model_one = build(registry, n_shared_blocks=1)
    block_params = sum(p.numel() for p in model_one.shared.parameters())
    inv_params = sum(p.numel() for p in model_one.invocations.parameters())
    # one shared block, two invocations: the block's weights are counted once, adapters twice
    assert block_params == sum(p.numel() for p in model_one.shared[0].parameters())
    assert inv_params == 2 * sum(p.numel() for p in model_one.invocations[0].parameters())
    # the shared block's output reaches the model: zeroing an invocation's output map changes logits
    idx = torch.randint(VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model_one(idx)
        model_one.invocations[0].linear.weight.zero_()
        assert not torch.allclose(model_one(idx), before)


def test_loss_at_init_gpt2_vocab(registry):
    # the conformance kit checks the bytes vocabulary; this is the padded 50304-entry one
    testing.check_loss_at_init(build(registry, vocab=50257), 50257, 16)


@pytest.mark.parametrize("rope", [True, False])
def test_generation_through_the_state_matches_forward(registry, rope):
    testing.check_generation_matches_forward(build(registry, rope=rope), VOCAB, MAX_T, prompt_len=7)


def test_124m_preset_matches_gpt2_small(registry):
    with torch.device("meta"):
        model = Zamba2LM(config(registry, "124m"), 50257, 1024)
    testing.check_matches_gpt2_small(model)


def test_fused_kernel_refused_off_cuda(registry):
    testing.check_fused_kernel_refused(lambda: build(registry, kernel="fused"), lambda: config(registry, kernel="fused"))


def test_flops_per_token(registry):
    testing.check_flops_per_token(build(registry), MAX_T)
