"""The plugin registers through the real entry point, and the core's config errors cover it."""

from __future__ import annotations

import logging

import pytest
import torch

from blagpt import BuildContext, ConfigError
from blagpt.config import resolve
from blagpt.plugin.registry import get_registry

torch.set_num_threads(1)  # see test_optimizers_training.py

OURS = ("soap", "ademamix", "adopt", "muon")


def a_model() -> str:
    """Any installed model: resolve() needs one, and which one does not matter here."""
    models = sorted(get_registry().models)
    assert models, "no model plugin installed (the core's tests install tinylm)"
    return "tinylm" if "tinylm" in models else models[0]


def test_all_four_registered_by_this_distribution():
    reg = get_registry()
    info = reg.plugins["optimizers"]
    assert info.ok, info.error
    assert info.dist == "blagpt-plugin-optimizers"
    assert sorted(info.optimizers) == sorted(OURS)
    for name in OURS:
        assert reg.owner_of("optimizer", name).dist == "blagpt-plugin-optimizers"


def test_unknown_optimizer_lists_known_names():
    with pytest.raises(ConfigError) as e:
        resolve({"model": {"name": a_model()}, "optimizer": {"name": "lion"}}, get_registry())
    msg = str(e.value)
    assert "optimizer.name" in msg and "'lion'" in msg
    assert "known optimizers: adamw, ademamix, adopt, muon, soap" in msg


def test_bad_field_names_the_path_and_known_fields():
    with pytest.raises(ConfigError) as e:
        resolve({"model": {"name": a_model()}, "optimizer": {"name": "muon", "ns_step": 3}}, get_registry())
    msg = str(e.value)
    assert "optimizer.ns_step: unknown field" in msg and "ns_steps" in msg


def test_bad_value_is_rejected_with_its_bound():
    with pytest.raises(ConfigError) as e:
        resolve({"model": {"name": a_model()}, "optimizer": {"name": "soap", "precondition_frequency": 0}}, get_registry())
    assert "optimizer.precondition_frequency" in str(e.value) and "(ge 1)" in str(e.value) and "got 0" in str(e.value)


def test_resolved_section_has_our_defaults():
    cfg = resolve({"model": {"name": a_model()}, "optimizer": {"name": "ademamix", "alpha": 8}}, get_registry())
    assert cfg.optimizer.alpha == 8.0 and cfg.optimizer.beta3 == 0.9999


def test_compile_follows_the_run_and_is_logged(caplog):
    import heavyball.utils

    reg = get_registry()
    model = torch.nn.Linear(4, 4)
    cfg = reg.optimizer_spec("adopt").config()
    with caplog.at_level(logging.INFO, logger="blagpt_plugin_optimizers"):
        reg.build_optimizer(model, cfg, BuildContext(257, 8, "bytes", compile=True, device="cuda"))
        assert heavyball.utils.compile_mode == "max-autotune-no-cudagraphs"  # heavyball's own default
        reg.build_optimizer(model, cfg, BuildContext(257, 8, "bytes", compile=True, device="cpu"))
        assert heavyball.utils.compile_mode == "default"  # no autotuning on a CPU
        reg.build_optimizer(model, cfg, BuildContext(257, 8, "bytes", compile=False))
        assert heavyball.utils.compile_mode is None
    text = caplog.text
    assert "compile_mode = None" in text and "train.compile is off" in text and "train.compile is on" in text
