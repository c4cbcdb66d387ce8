"""The plain mamba2 language model through the plugin contract, and the family's model checks
beyond blagpt.testing's conformance kit (tests/test_conformance.py)."""

from __future__ import annotations

import math

import pytest
import torch

from blagpt import BuildContext
from blagpt.config import apply_presets
from blagpt.plugin.registry import Registry
from blagpt_plugin_ssm import testing
from blagpt_plugin_ssm.config import Mamba2Config

# The models under test are tiny: one thread avoids synchronisation stalls on a shared machine.
torch.set_num_threads(1)

VOCAB = 257  # the bytes tokenizer keeps these tests fast
MAX_T = 24


@pytest.fixture(scope="module")
def registry():
    return Registry.load(strict=False, only=["ssm"])


def build(registry, seed=0, vocab=VOCAB, **fields):
    raw = apply_presets({"name": "mamba2", "preset": "tiny", **fields}, registry)
    cfg = Mamba2Config(**raw)
    torch.manual_seed(seed)
    return registry.build_model(cfg, BuildContext(vocab_size=vocab, max_seq_len=MAX_T, tokenizer="bytes"))


def test_registered_through_the_entry_point(registry):
    spec = registry.model_spec("mamba2")
    assert registry.owner_of("model", "mamba2").dist == "blagpt-plugin-ssm"
    assert {"tiny", "124m"} <= set(spec.presets)
    for name, field in Mamba2Config.model_fields.items():
        assert field.description, f"field {name} has no description"


def test_loss_at_init_gpt2_vocab(registry):
    loss = testing.check_loss_at_init(build(registry, vocab=50257), 50257, 16)
    assert abs(loss - math.log(50304)) < 0.25


def test_vocab_multiple_also_read_under_its_old_name(registry):
    """Configs and checkpoints of earlier versions spell the field pad_vocab_multiple."""
    from blagpt.config import resolve

    for spelling in ("vocab_multiple", "pad_vocab_multiple"):
        cfg = resolve({"model": {"name": "mamba2", "preset": "tiny", spelling: 3}}, registry).model
        assert cfg.vocab_multiple == 3 and cfg.model_dump()["vocab_multiple"] == 3
        assert "pad_vocab_multiple" not in cfg.model_dump()
        assert build(registry, **{spelling: 3}).embed.weight.shape[0] == 258
    assert build(registry).embed.weight.shape[0] == 320  # 64 by default


def test_generation_through_the_state_matches_forward(registry):
    testing.check_generation_matches_forward(build(registry), VOCAB, MAX_T, prompt_len=7)


def test_124m_preset_matches_gpt2_small():
    with torch.device("meta"):
        reg = Registry.load(strict=False, only=["ssm"])
        model = reg.build_model(Mamba2Config(**apply_presets({"name": "mamba2", "preset": "124m"}, reg)),
                                BuildContext(vocab_size=50257, max_seq_len=1024, tokenizer="gpt2"))
    testing.check_matches_gpt2_small(model)


def test_fused_kernel_refused_off_cuda(registry):
    testing.check_fused_kernel_refused(lambda: build(registry, kernel="fused"), lambda: Mamba2Config(kernel="fused"))


def test_flops_per_token(registry):
    testing.check_flops_per_token(build(registry), MAX_T)


def test_state_size_bytes_does_not_grow_with_the_sequence():
    from blagpt_plugin_ssm.config import Mamba2Config
    from blagpt_plugin_ssm.model import Mamba2LM

    cfg = Mamba2Config(d_model=32, n_layers=2, d_state=16, head_dim=16)
    model = Mamba2LM(cfg, 257, 64)
    conv = 2 * (4 - 1) * (2 * 32 + 2 * 1 * 16) * 4  # layers x (d_conv - 1) x (d_inner + 2 groups d_state) x fp32
    ssm = 2 * (2 * 32 // 16) * 16 * 16 * 4  # layers x heads x head_dim x d_state x fp32
    assert model.state_size_bytes(16) == model.state_size_bytes(64) == conv + ssm
