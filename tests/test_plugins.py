"""Discovery: real entry points, broken plugins isolated, duplicates named, strict mode."""

from __future__ import annotations


import pytest

from blagpt.plugin.registry import PluginError, Registry

from conftest import fake_plugin, run_cli

GOOD_EXTRA = """
from blagpt import ModelConfig, ModelSpec, hookimpl

BUILT = []

class Cfg(ModelConfig):
    name: str = "{name}"

@hookimpl
def register_models(register):
    register(ModelSpec("{name}", Cfg, "a second model"))

@hookimpl
def build_model(name, config, ctx):
    if name == "{name}":
        raise RuntimeError("listing must not build models")
"""


def test_tiny_plugin_is_found_through_its_entry_point():
    reg = Registry.load(strict=True)
    assert "tinylm" in reg.models
    info = reg.owner_of("model", "tinylm")
    assert (info.dist, info.module) == ("blagpt-plugin-tinylm", "blagpt_plugin_tinylm")
    assert "adamw" in reg.optimizers and reg.owner_of("optimizer", "adamw").dist == "blagpt"


def test_broken_plugin_is_listed_and_others_keep_working(tmp_path):
    site = tmp_path / "site"
    fake_plugin(site, "blagpt-plugin-broken", "brokenplug", "import no_such_module_xyz\n", ep_name="broken")
    env = {"PYTHONPATH": str(site), "BLAGPT_LOAD_PLUGINS": "tinylm,broken"}
    out = run_cli(["plugins"], env=env, check=0).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("broken"))
    assert "blagpt-plugin-broken" in line and "0.1" in line
    assert "ModuleNotFoundError" in line and "no_such_module_xyz" in line
    listed = run_cli(["list"], env=env, check=0)
    assert "tinylm" in listed.stdout
    assert "broken" in listed.stderr
    shown = run_cli(["config", "show", "--model", "tinylm"], env=env, check=0)
    assert "name: tinylm" in shown.stdout
    strict = run_cli(["list"], env={**env, "BLAGPT_STRICT_PLUGINS": "1"})
    assert strict.returncode == 1
    assert "blagpt-plugin-broken" in strict.stderr and len(strict.stderr.strip().splitlines()) == 1


def test_plugin_failing_in_register_is_isolated(tmp_path):
    site = tmp_path / "site"
    fake_plugin(site, "blagpt-plugin-badreg", "badreg", """
        from blagpt import hookimpl
        @hookimpl
        def register_models(register):
            raise ValueError("boom in register")
    """)
    out = run_cli(["plugins"], env={"PYTHONPATH": str(site)}, plugins=["tinylm", "badreg"], check=0).stdout
    assert "registration failed: ValueError: boom in register" in out


def test_misspelled_hook_fails_loudly(tmp_path):
    site = tmp_path / "site"
    fake_plugin(site, "blagpt-plugin-typo", "typo", """
        from blagpt import hookimpl
        @hookimpl
        def build_modle(name, config, ctx):
            return None
    """)
    out = run_cli(["plugins"], env={"PYTHONPATH": str(site)}, plugins=["typo"], check=0).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("typo"))
    assert "invalid hooks" in line and "build_modle" in line


def test_duplicate_model_name_names_both_distributions(tmp_path):
    site = tmp_path / "site"
    fake_plugin(site, "blagpt-plugin-dupe", "dupeplug", GOOD_EXTRA.format(name="tinylm"))
    env = {"PYTHONPATH": str(site), "BLAGPT_LOAD_PLUGINS": "tinylm,dupeplug"}
    proc = run_cli(["config", "show", "--model", "tinylm"], env=env)
    assert proc.returncode == 2
    assert "blagpt-plugin-dupe" in proc.stderr and "blagpt-plugin-tinylm" in proc.stderr
    listing = run_cli(["list"], env=env, check=0)
    assert "registered by two distributions" in listing.stderr


def test_listing_does_not_build_models(tmp_path):
    site = tmp_path / "site"
    fake_plugin(site, "blagpt-plugin-extra", "extraplug", GOOD_EXTRA.format(name="extra"))
    env = {"PYTHONPATH": str(site), "BLAGPT_STRICT_PLUGINS": "1"}
    out = run_cli(["list"], env=env, plugins=["tinylm", "extraplug"], check=0).stdout
    assert "extra" in out and "a second model" in out


def test_load_plugins_env_selects(tmp_path):
    site = tmp_path / "site"
    fake_plugin(site, "blagpt-plugin-extra", "extraplug", GOOD_EXTRA.format(name="extra"))
    env = {"PYTHONPATH": str(site), "BLAGPT_LOAD_PLUGINS": "extraplug"}
    out = run_cli(["list"], env=env, check=0).stdout
    assert "extra" in out and "tinylm" not in out and "adamw" in out
    none = run_cli(["list"], env={**env, "BLAGPT_LOAD_PLUGINS": ""}, check=0).stdout
    assert "tinylm" not in none and "extra" not in none and "adamw" in none


def test_unknown_names_list_known_ones():
    reg = Registry.load()
    with pytest.raises(PluginError, match="known models: .*tinylm"):
        reg.model_spec("nope")
    with pytest.raises(PluginError, match="known optimizers: .*adamw"):
        reg.optimizer_spec("nope")


def test_requirements_lists_plugin_distributions():
    out = run_cli(["plugins", "--requirements"], plugins=None, check=0).stdout.splitlines()
    assert "blagpt-plugin-tinylm==0.1.0" in out
    assert not any(line.startswith("blagpt==") for line in out)


def test_adamw_param_groups_exempt_1d_embeddings_and_declared_names():
    import torch.nn as nn

    from blagpt import param_groups

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.lin = nn.Linear(4, 4)
            self.lora = nn.Linear(4, 2, bias=False)
            self.norm = nn.LayerNorm(4)

        def no_weight_decay(self):
            return {"lora.weight"}

    m = M()
    groups = param_groups(m, 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(m.lin.weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    m.no_weight_decay = lambda: {"nope"}
    with pytest.raises(ValueError, match="nope"):
        param_groups(m, 0.1)
