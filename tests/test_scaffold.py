"""`blagpt new-plugin` (the generated package works: it registers, and its own conformance tests
pass, and fail on a broken model) and `blagpt plugins install/uninstall` argument handling.

Generated plugins are not installed into the test environment: each gets a fabricated
``*.dist-info`` (metadata and entry points read from its own pyproject.toml) on ``PYTHONPATH``,
which importlib.metadata finds exactly like an installed distribution. tests/test_wheels.py
installs one for real, from a wheel, into a fresh virtual environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement

from blagpt.cli import cli
from blagpt.errors import BlagptError
from blagpt.plugin.scaffold import check_name, create_plugin, names, render

from conftest import fake_plugin, run_cli

FILES = {
    "model": [".gitignore", "README.md", "blagpt_plugin_{n}/__init__.py", "blagpt_plugin_{n}/model.py", "pyproject.toml", "tests/test_conformance.py"],
    "optimizer": [".gitignore", "README.md", "blagpt_plugin_{n}/__init__.py", "blagpt_plugin_{n}/optimizer.py", "pyproject.toml", "tests/test_conformance.py"],
}


def fabricate_dist(folder: Path, site: Path) -> dict:
    """A dist-info for the plugin source ``folder`` (name, version, entry points from its
    pyproject.toml) in ``site``; returns the pyproject's [project] table."""
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["blagpt"].items())
    (info / "entry_points.txt").write_text(f"[blagpt]\n{eps}")
    return project


def plugin_env(folder: Path, site: Path, name: str) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), str(folder)]), "BLAGPT_LOAD_PLUGINS": name, "OMP_NUM_THREADS": "1"}


# -- the generator ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["model", "optimizer"])
def test_new_plugin_writes_a_complete_package(tmp_path, kind):
    out = CliRunner().invoke(cli, ["new-plugin", "my_lm", "--kind", kind, "--dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    folder = tmp_path / "blagpt-plugin-my-lm"
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert written == sorted(f.format(n="my_lm") for f in FILES[kind])
    for path in folder.rglob("*"):
        if path.is_file():
            assert "{{" not in path.read_text(), f"{path}: a placeholder was left in"
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    assert project["name"] == "blagpt-plugin-my-lm"
    assert project["entry-points"]["blagpt"] == {"my_lm": "blagpt_plugin_my_lm"}
    reqs = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    assert set(reqs) == {"blagpt", "torch"} and reqs["torch"].specifier.contains("2.13.0")
    assert [Requirement(r).name for r in project["optional-dependencies"]["test"]] == ["pytest"]
    # what to do next: install, test, train
    lines = out.output.splitlines()
    nxt = lines[lines.index("next:") + 1 :]
    assert nxt[0].strip().startswith("pip install -e") and "blagpt-plugin-my-lm[test]" in nxt[0]
    assert nxt[1].strip().startswith("pytest ") and nxt[2].strip().startswith("blagpt train --model")
    assert ("--optimizer my_lm" in nxt[2]) == (kind == "optimizer")


def test_names():
    assert names("my_lm") == {
        "name": "my_lm", "package": "blagpt_plugin_my_lm", "dist": "blagpt-plugin-my-lm", "Class": "MyLm", "blagpt_version": names("x")["blagpt_version"],
    }
    check_name("gpt2x")
    check_name("match")  # a soft keyword is a valid identifier


@pytest.mark.parametrize("bad", ["MyLM", "1lm", "my-lm", "my lm", "_lm", "class", "blagpt", "lm\u00e9", ""])
def test_bad_names_are_usage_errors_naming_name(tmp_path, bad):
    out = CliRunner().invoke(cli, ["new-plugin", bad, "--dir", str(tmp_path)])
    assert out.exit_code == 2
    assert "Invalid value for NAME" in out.output and "expected" in out.output
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_folder_and_accepts_an_empty_one(tmp_path):
    folder = tmp_path / "blagpt-plugin-mylm"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    proc = run_cli(["new-plugin", "mylm", "--dir", str(tmp_path)], plugins=())
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {folder}: exists and is not empty; choose another --dir or NAME (nothing was written)"
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    (folder / "keep.txt").unlink()
    run_cli(["new-plugin", "mylm", "--dir", str(tmp_path)], plugins=(), check=0)
    assert (folder / "blagpt_plugin_mylm" / "model.py").is_file()


def test_an_unknown_placeholder_is_an_error():
    assert render("x = '{{name}}'", names("abc")) == "x = 'abc'"
    with pytest.raises(BlagptError, match=r"t.tmpl: unknown placeholder \{\{nmae\}\}"):
        render("{{nmae}}", names("abc"), "t.tmpl")


@pytest.mark.parametrize("kind", ["model", "optimizer"])
def test_the_generated_plugin_registers_through_its_entry_point(tmp_path, kind):
    folder, _ = create_plugin("mine", kind, tmp_path)
    fabricate_dist(folder, tmp_path / "site")
    env = {**plugin_env(folder, tmp_path / "site", "mine"), "BLAGPT_STRICT_PLUGINS": "1"}
    out = run_cli(["list"], env=env, plugins=None, check=0).stdout
    row = next(ln for ln in out.splitlines() if ln.startswith("mine "))
    assert "blagpt-plugin-mine" in row
    shown = run_cli(["config", "show", "--model", "mine" if kind == "model" else "tinylm", "--optimizer", "mine" if kind == "optimizer" else "adamw"],
                    env={**env, "BLAGPT_LOAD_PLUGINS": "mine,tinylm"}, plugins=None, check=0).stdout
    assert "name: mine" in shown


def test_the_generated_model_trains(tmp_path):
    folder, _ = create_plugin("mine", "model", tmp_path)
    fabricate_dist(folder, tmp_path / "site")
    sets = ["model.preset=tiny", "data.tokenizer=bytes", "train.steps=30", "train.seq_len=64", "train.micro_batch_size=8",
            "train.eval_tokens=2048", "train.log_interval=1", "train.eval_interval=0"]
    proc = run_cli(["train", "--model", "mine", "--no-track", *[a for s in sets for a in ("--set", s)]], cwd=tmp_path,
                   env=plugin_env(folder, tmp_path / "site", "mine"), plugins=None, check=0)
    first = float(proc.stdout.split("step 1/30 | loss ")[1].split()[0])
    final = float(proc.stdout.split("final: val loss ")[1].split()[0])
    assert abs(first - 5.549) < 0.1, f"step-1 loss {first}, expected about ln(257) = 5.549"
    assert final < first - 1.0, f"loss did not fall: step 1 {first}, final val {final}"


# -- the generated tests (the conformance kit through the generated package) ------------------


def run_generated_tests(folder: Path, site: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **plugin_env(folder, site, name), "BLAGPT_STRICT_PLUGINS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder), *args],
                          cwd=folder.parent, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("kind,passed", [("model", 16), ("optimizer", 12)])
def test_the_generated_tests_pass(tmp_path, kind, passed):
    folder, _ = create_plugin("mine", kind, tmp_path)
    fabricate_dist(folder, tmp_path / "site")
    proc = run_generated_tests(folder, tmp_path / "site", "mine")
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and summary.startswith(f"{passed} passed"), proc.stdout[-3000:] + proc.stderr[-2000:]
    for word in ("failed", "skipped", "xfail", "xpass", "error"):
        assert word not in summary, summary


@pytest.mark.slow
def test_the_generated_tests_fail_on_a_broken_model(tmp_path):
    """The generated tests can fail: a non-causal attention and an init far from ln(vocab)."""
    folder, _ = create_plugin("mine", "model", tmp_path)
    fabricate_dist(folder, tmp_path / "site")
    model_py = folder / "blagpt_plugin_mine" / "model.py"
    src = model_py.read_text()
    assert src.count("is_causal=True, dropout_p") == 1 and src.count("std=1.0 / self.cfg.d_model") == 1
    model_py.write_text(src.replace("is_causal=True, dropout_p", "is_causal=False, dropout_p").replace("std=1.0 / self.cfg.d_model", "std=1.0"))
    proc = run_generated_tests(folder, tmp_path / "site", "mine", "-k", "causal or loss_at_init")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "2 failed" in proc.stdout.strip().splitlines()[-1]
    assert "FAILED" in proc.stdout and "-causal]" in proc.stdout and "-loss_at_init]" in proc.stdout


# -- blagpt plugins install / uninstall -------------------------------------------------------


@pytest.mark.parametrize("cmd", [["plugins"], ["plugins", "install"], ["plugins", "uninstall"], ["new-plugin"]], ids=" ".join)
def test_help_has_an_example(cmd):
    out = CliRunner().invoke(cli, [*cmd, "--help"])
    assert out.exit_code == 0 and "Example" in out.output and f"blagpt {' '.join(cmd)}" in out.output


def offline_pip_env() -> dict[str, str]:
    """pip with no configuration: no index, no extra find-links (fast, offline)."""
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_NO_INPUT": "1"}


@pytest.mark.parametrize("pkg", ["blagpt", "Blagpt", "blagpt==0.1.0", "BLAGPT>=0"])
def test_uninstall_refuses_the_core(pkg):
    proc = run_cli(["plugins", "uninstall", "blagpt-plugin-nothing", pkg], plugins=())
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: plugins uninstall {pkg}: refusing to uninstall the core distribution 'blagpt' (it runs this command); use pip uninstall blagpt"
    )


def test_install_passes_pips_exit_code_on(tmp_path):
    empty = tmp_path / "wheels"
    empty.mkdir()
    missing = run_cli(["plugins", "install", "--no-index", "--find-links", str(empty), "blagpt-plugin-no-such-thing"],
                      env=offline_pip_env(), plugins=())
    assert missing.returncode == 1, missing.stderr
    assert f"running: {sys.executable} -m pip install --no-index --find-links {empty} blagpt-plugin-no-such-thing" in missing.stderr
    assert "No matching distribution found for blagpt-plugin-no-such-thing" in missing.stderr
    assert missing.stderr.splitlines()[-1] == "error: pip install failed with exit code 1 (its messages are above)"
    assert "DISTRIBUTION" not in missing.stdout  # the listing runs only after a successful install
    # pip's own usage error (exit 2) passes through too: packages go to pip verbatim
    usage = run_cli(["plugins", "install", "--no-index", "--", "--no-such-pip-option"], env=offline_pip_env(), plugins=())
    assert usage.returncode == 2 and "no such option: --no-such-pip-option" in usage.stderr


def test_install_options_reach_pip(tmp_path):
    proc = run_cli(["plugins", "install", "-U", "--pre", "--no-index", "--find-links", "a", "--find-links", "b",
                    "-e", str(tmp_path / "nothing-here"), "pkg"], env=offline_pip_env(), plugins=())
    assert proc.returncode != 0
    assert (f"-m pip install --upgrade --pre --no-index --find-links a --find-links b --editable {tmp_path / 'nothing-here'} pkg"
            in proc.stderr)


def test_install_needs_something_to_install():
    proc = run_cli(["plugins", "install"], plugins=())
    assert proc.returncode == 2 and "name at least one package or -e PATH" in proc.stderr


def test_uninstall_of_something_not_installed_is_pips_answer_then_the_listing(tmp_path):
    # A distribution in the working directory (like a plugin's source folder after `python -m
    # build`) is not installed: the listing after pip must not show it, as the `blagpt` script would not.
    fake_plugin(tmp_path, "blagpt-plugin-ghost", "ghost", "", ep_name="ghost")
    assert re.search(r"^ghost\s+blagpt-plugin-ghost", run_cli(["plugins"], cwd=tmp_path, plugins=("ghost",), check=0).stdout, re.M)
    proc = run_cli(["plugins", "uninstall", "blagpt-plugin-not-installed-here"], cwd=tmp_path, env=offline_pip_env(), plugins=("ghost",))
    assert "-m pip uninstall --yes blagpt-plugin-not-installed-here" in proc.stderr
    assert proc.returncode == 0 and "not installed" in proc.stderr  # pip only warns; then the listing
    assert "DISTRIBUTION" in proc.stdout and not re.search(r"^ghost\s+blagpt-plugin-ghost", proc.stdout, re.M), proc.stdout


def test_plugins_without_a_subcommand_still_lists():
    out = run_cli(["plugins"], check=0).stdout
    assert out.splitlines()[0].split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "PROVIDES", "/", "ERROR"]
    assert any(ln.startswith("tinylm") and "blagpt-plugin-tinylm" in ln for ln in out.splitlines())
    assert "blagpt-plugin-tinylm==" in run_cli(["plugins", "--requirements"], check=0).stdout
