"""Run config: merge order, presets, one-line errors with dotted paths, show and schema."""

from __future__ import annotations

import json

import pytest
import yaml

from blagpt.config import merge_sources, resolve
from blagpt.errors import ConfigError
from blagpt.plugin.registry import Registry

from conftest import run_cli


@pytest.fixture(scope="module")
def reg():
    return Registry.load(only=["tinylm"])


def test_merge_order_defaults_presets_file_sets(tmp_path, reg):
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  name: tinylm\n  preset: wide\n  n_layers: 3\ntrain:\n  steps: 7\n  seq_len: 16\n")
    cfg = resolve(merge_sources(f, ["train.steps=9", "model.n_heads=4"]), reg)
    assert cfg.model.d_model == 128  # from the preset
    assert cfg.model.n_heads == 4  # --set beats the preset
    assert cfg.model.n_layers == 3  # file beats the default
    assert cfg.train.steps == 9 and cfg.train.seq_len == 16
    assert cfg.train.micro_batch_size == 8  # default
    assert cfg.optimizer.name == "adamw" and cfg.optimizer.beta2 == 0.95


def test_toml_file(tmp_path, reg):
    f = tmp_path / "run.toml"
    f.write_text('[model]\nname = "tinylm"\n[train]\nschedule = "wsd"\n')
    assert resolve(merge_sources(f), reg).train.schedule == "wsd"


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["train.steps=abc"], "train.steps: expected int | None (gt 0), got 'abc'"),
        (["model.n_layers=x"], "model.n_layers: expected int (gt 0), got 'x'"),
        (["model.bogus=1"], "model.bogus: unknown field (given 1); known fields: d_model"),
        (["train.bogus=1"], "train.bogus: unknown field"),
        (["optimizer.lr=-1"], "optimizer.lr: expected float (gt 0), got -1"),
        (["train.schedule=linear"], "train.schedule: expected Literal['cosine', 'wsd', 'constant'], got 'linear'"),
        (["train.tokens=1000", "train.steps=5"], "train: set one budget, not `steps` and `tokens`"),
        (["model.preset=nope"], "model.preset: unknown preset 'nope' of model 'tinylm'; known: wide, diverge, held"),
        (["optimizer.name=nope"], "optimizer.name: unknown optimizer 'nope'; known optimizers: adamw"),
        (["data.train=x*.bin"], "data: set both `train` and `val` shard globs"),
        (["data.tokenizer=words"], "data.tokenizer: unknown tokenizer 'words'; known tokenizers: bytes, gpt2, hf:PATH, tiktoken:PATH, widebytes"),
    ],
)
def test_errors_name_the_path_the_type_and_the_value(reg, sets, expected):
    with pytest.raises(ConfigError) as e:
        resolve(merge_sources(sets=["model.name=tinylm", *sets]), reg)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg


def test_missing_model_lists_known(reg):
    with pytest.raises(ConfigError, match="model.name: required .*known models: tinylm"):
        resolve(merge_sources(), reg)


def test_bad_files(tmp_path, reg):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        merge_sources(bad)
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        merge_sources(tmp_path / "nope.yaml")
    txt = tmp_path / "run.txt"
    txt.write_text("x")
    with pytest.raises(ConfigError, match="expected a .yaml, .yml or .toml"):
        merge_sources(txt)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        merge_sources(sets=["novalue"])


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    proc = run_cli(["config", "show", "--model", "tinylm", "--set", "train.steps=abc"])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "train.steps" in proc.stderr and "'abc'" in proc.stderr and "int" in proc.stderr
    proc = run_cli(["train", "--model", "tinylm", "--set", "model.nope=1", "--no-track"], cwd=tmp_path)
    assert proc.returncode == 2 and "model.nope: unknown field" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_config_show_is_the_resolved_yaml_and_round_trips(tmp_path, reg):
    out = run_cli(["config", "show", "--model", "tinylm", "--set", "model.preset=wide"], check=0).stdout
    data = yaml.safe_load(out)
    assert data["model"]["d_model"] == 128 and data["optimizer"]["name"] == "adamw"
    f = tmp_path / "again.yaml"
    f.write_text(out)
    assert resolve(merge_sources(f), reg).model_dump() == resolve(yaml.safe_load(out), reg).model_dump()


def test_config_schema_is_json_schema():
    generic = json.loads(run_cli(["config", "schema"], check=0).stdout)
    assert set(generic["properties"]) == {"model", "optimizer", "task", "data", "train", "tracking"}
    typed = json.loads(run_cli(["config", "schema", "--model", "tinylm"], check=0).stdout)
    model_ref = typed["properties"]["model"]["$ref"].split("/")[-1]
    assert "d_model" in typed["$defs"][model_ref]["properties"]
    assert typed["$defs"][model_ref]["properties"]["d_model"]["description"]
