"""``blagpt export`` and ``blagpt sample --weights``: safetensors weights, the resolved config and
the plugin and tokenizer they need; atomic writes, no overwriting without --force, one-line
errors for a missing or other plugin version, another tokenizer and weights that do not fit."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version

import pytest
import torch
import yaml

from blagpt.config import merge_sources, resolve
from blagpt.data.prepare import embedded_documents, prepare
from blagpt.errors import BlagptError
from blagpt.plugin.registry import Registry
from blagpt.run import checkpoint as ckpt
from blagpt.run.export import export_run, load_export
from blagpt.run.sample import encode_prompt, generate, load_model, load_run
from blagpt.run.trainer import train

from conftest import TINY, run_cli

PROMPT = "HIPPOLYTA:\nFour days"


@pytest.fixture(scope="module")
def reg():
    return Registry.load(only=["tinylm"], strict=True)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, reg):
    """One tiny tinylm run on bytes (its own small shards)."""
    root = tmp_path_factory.mktemp("export")
    prepare(embedded_documents()[:1], "bytes", root / "data")
    sets = [*TINY, f"data.train={root}/data/train_*.bin", f"data.val={root}/data/val_*.bin", "train.steps=12",
            "train.eval_interval=0", "optimizer.lr=3e-3", "tracking.enabled=false", f"train.out_dir={root / 'runs'}",
            "tracking.run_name=tiny"]
    train(resolve(merge_sources(sets=sets), reg), registry=reg, echo=lambda *a: None)
    return root / "runs"


@pytest.fixture(scope="module")
def exported(runs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "tiny"
    proc = run_cli(["export", "--run", "tiny", "--out-dir", str(runs_dir), "--out", str(out)], check=0)
    assert proc.stdout.startswith(f"exported to {out}/ (model.safetensors ")
    return out


def greedy(run, n=40):
    ids, _ = encode_prompt(PROMPT, run.tokenizer, run.context)
    return list(generate(run.model, ids, n, context=run.context, vocab_size=run.tokenizer.vocab_size,
                         eot=run.tokenizer.eot, temperature=0.0))


def test_export_holds_the_checkpoint_weights_config_and_provenance(exported, runs_dir):
    from safetensors.torch import load_file

    assert sorted(p.name for p in exported.iterdir()) == ["config.yaml", "export.json", "model.safetensors"]
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    saved = ckpt.load(runs_dir / "tiny" / "checkpoint.pt")
    weights = load_file(exported / "model.safetensors")
    assert weights.keys() == saved["model"].keys()
    assert all(torch.equal(weights[k], saved["model"][k]) for k in weights)
    meta = json.loads((exported / "export.json").read_text())
    assert meta["model"] == "tinylm" and meta["context"] == 32 and meta["format"] == 1
    assert meta["plugin"] == {"distribution": "blagpt-plugin-tinylm", "version": version("blagpt-plugin-tinylm"), "entry_point": "tinylm"}
    assert meta["tokenizer"]["name"] == "bytes" and meta["tokenizer"]["vocab_size"] == 257
    assert meta["source"]["run"] == "tiny" and meta["source"]["step"] == 12
    config = yaml.safe_load((exported / "config.yaml").read_text())
    assert config == saved["config"]


def test_sample_from_the_export_is_sample_from_the_run(exported, runs_dir, reg, tmp_path):
    from_run = load_run("tiny", str(runs_dir), "cpu", registry=reg)
    from_export = load_model(weights=str(exported), device="cpu", registry=reg)
    assert from_export.step == 12 and from_export.context == 32 and not from_export.model.training
    assert greedy(from_export) == greedy(from_run)
    args = ["--prompt", PROMPT, "--tokens", "30", "--temperature", "1", "--seed", "2", "--device", "cpu"]
    a = run_cli(["sample", "--weights", str(exported), *args], cwd=tmp_path, check=0)
    b = run_cli(["sample", "--run", "tiny", "--out-dir", str(runs_dir), *args], cwd=tmp_path, check=0)
    assert a.stdout == b.stdout and len(a.stdout) > len(PROMPT)
    assert a.stderr.startswith("tiny: model tinylm at step 12")


def test_a_non_empty_folder_is_refused_unless_force(exported, runs_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = run_cli(["export", "--run", "tiny", "--out-dir", str(runs_dir), "--out", str(out)])
    assert proc.returncode != 0 and proc.stderr.strip() == f"error: --out {out}: folder is not empty; give an empty or new folder, or --force to replace it"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    run_cli(["export", "--run", "tiny", "--out-dir", str(runs_dir), "--out", str(out), "--force"], check=0)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "export.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_empty_existing_folder_is_fine_and_a_failed_export_leaves_nothing(runs_dir, reg, tmp_path):
    (tmp_path / "empty").mkdir()
    export_run("tiny", tmp_path / "empty", str(runs_dir), registry=reg)
    assert (tmp_path / "empty" / "model.safetensors").is_file()
    with pytest.raises(BlagptError, match=r"^--run nope: no run folder"):
        export_run("nope", tmp_path / "new", str(runs_dir), registry=reg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def edited(exported, tmp_path, file, change):
    copy = tmp_path / "edited"
    shutil.copytree(exported, copy)
    path = copy / file
    if file.endswith(".json"):
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    else:
        data = yaml.safe_load(path.read_text())
        change(data)
        path.write_text(yaml.safe_dump(data))
    return copy


def test_another_plugin_version_tokenizer_or_shape_is_one_line(exported, reg, tmp_path):
    have = version("blagpt-plugin-tinylm")
    cases = [
        (edited(exported, tmp_path / "v", "export.json", lambda m: m["plugin"].update(version="9.9")),
         rf"model 'tinylm' was exported from blagpt-plugin-tinylm 9\.9, but blagpt-plugin-tinylm {have} is installed "
         r"\(blagpt plugins install blagpt-plugin-tinylm==9\.9\)$"),
        (edited(exported, tmp_path / "t", "export.json", lambda m: m["tokenizer"].update(digest="0" * 64)),
         r"tokenizer 'bytes' here is not the one exported \('bytes', 257 ids, digest 000000000000\)"),
        (edited(exported, tmp_path / "s", "config.yaml", lambda c: c["model"].update(d_model=16)),
         r"model.safetensors: weights do not load into model 'tinylm': .*size mismatch"),
    ]
    for path, message in cases:
        with pytest.raises(BlagptError, match=rf"^--weights {path}: {message}") as e:
            load_export(path, "cpu", reg)
        assert "\n" not in str(e.value)


def test_a_missing_plugin_or_a_folder_that_is_no_export_is_one_line(exported, tmp_path):
    proc = run_cli(["sample", "--weights", str(exported), "--device", "cpu"], cwd=tmp_path, plugins=("nosuchplugin",))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and proc.stdout == ""
    assert lines[0].startswith(
        f"error: --weights {exported}: model 'tinylm' needs the plugin blagpt-plugin-tinylm {version('blagpt-plugin-tinylm')}, "
        "which is not installed (blagpt plugins install blagpt-plugin-tinylm=="
    )
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "export.json").write_text("{}")
    for args, message in [
        (["--weights", str(tmp_path / "half")], f"error: --weights {tmp_path / 'half'}: not an export folder: no model.safetensors, config.yaml"),
        (["--weights", str(tmp_path / "nope")], f"error: --weights {tmp_path / 'nope'}: no such folder"),
        ([], "error: give either --run RUN or --weights DIR"),
        (["--weights", str(exported), "--run", "x"], "error: give either --run RUN or --weights DIR"),
    ]:
        proc = run_cli(["sample", *args, "--device", "cpu"], cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith(message), proc.stderr


def test_tied_weights_are_stored_once_and_load_back(reg, tmp_path):
    """A model sharing a tensor between two names (a tied head) exports and loads: safetensors
    stores shared tensors once, and loading restores the tie."""
    from safetensors.torch import load_file, save_model

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 3)
            self.head = torch.nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

    a = Tied()
    save_model(a, str(tmp_path / "m.safetensors"))
    assert len(load_file(tmp_path / "m.safetensors")) == 1
    from safetensors.torch import load_model as st_load

    b = Tied()
    assert st_load(b, str(tmp_path / "m.safetensors"), strict=False) == (set(), [])
    assert torch.equal(b.head.weight, a.emb.weight) and b.head.weight is b.emb.weight
