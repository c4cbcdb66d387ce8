"""The user's story, end to end, from wheels into a fresh virtual environment, offline.

Wheels of the core, blagpt-plugin-ssm and blagpt-plugin-rene are built from copies of this
checkout (so the build leaves nothing in the working tree), a new venv is made with
``python -m venv``, and ``pip install --no-index`` pulls rene, the core and ssm from those wheels
and every third-party dependency from the wheelhouse that ``make wheelhouse`` downloads once
(``.wheelhouse/``, or ``$BLAGPT_WHEELHOUSE``). pip runs with no configuration file and no
``PIP_*`` variables, so it sees only these folders. Then, in that venv: ``blagpt list`` and a short
``blagpt train`` of rene; a plugin made by that venv's ``blagpt new-plugin`` (templates from the
installed wheel), built as a wheel, installed with ``blagpt plugins install --no-index``, listed,
trained, its generated tests run, and uninstalled with ``blagpt plugins uninstall``.
The test environment (.venv) is only used to build the wheels.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = Path(os.environ.get("BLAGPT_WHEELHOUSE", ROOT / ".wheelhouse"))
NEW = "wheeltest"  # the generated plugin
TINY_RUN = ["--no-track", "--set", "data.tokenizer=bytes", "--set", "train.seq_len=64", "--set", "train.micro_batch_size=8",
            "--set", "train.eval_tokens=2048", "--set", "train.log_interval=1", "--set", "train.eval_interval=0"]


class Env:
    """The fresh venv, the folders around it, and how to run things in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.wheels = root / "wheels"
        self.work = root / "work"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "BLAGPT_", "VIRTUAL_ENV", "MLFLOW_"))}
        self.env.update(
            PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="1", BLAGPT_STRICT_PLUGINS="1", BLAGPT_CACHE=str(root / "cache"),
        )

    def run(self, *cmd, cwd=None, timeout=600) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd or self.work, env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}: {' '.join(map(str, cmd))}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}")
        return proc

    def blagpt(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.run(self.bin / "blagpt", *args, **kw)

    def build_wheels(self, out: Path, *sources: Path) -> None:
        """Wheels of ``sources`` into ``out``: ``pip wheel`` with the test environment's setuptools,
        no build isolation, no index."""
        self.run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, *sources, cwd=self.root)


def copy_source(src: Path, dst: Path, *names: str) -> Path:
    """Copy ``names`` (default: all) of ``src`` into ``dst`` without build leftovers."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "runs", ".pytest_cache")
    dst.mkdir(parents=True)
    for name in names or [p.name for p in src.iterdir()]:
        p = src / name
        shutil.copytree(p, dst / name, ignore=skip) if p.is_dir() else shutil.copy2(p, dst / name)
    return dst


def final_val_loss(stdout: str) -> float:
    m = re.search(r"^final: val loss ([0-9.]+|nan|inf) nats/token", stdout, re.M)
    assert m, f"no final val loss in:\n{stdout[-2000:]}"
    return float(m.group(1))


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    assert (WHEELHOUSE / ".complete").is_file(), (
        f"{WHEELHOUSE}: no wheelhouse of the core's dependencies; run `make wheelhouse` (once, with network access to the index)"
    )
    e = Env(tmp_path_factory.mktemp("wheels"))
    src = e.root / "src"
    e.build_wheels(
        e.wheels,
        copy_source(ROOT, src / "blagpt", "pyproject.toml", "README.md", "core"),
        copy_source(ROOT / "plugins" / "ssm", src / "ssm"),
        copy_source(ROOT / "plugins" / "rene", src / "rene"),
    )
    e.run(sys.executable, "-m", "venv", e.venv, cwd=e.root)
    e.work.mkdir()
    e.run(e.bin / "python", "-m", "pip", "install", "-q", "--no-compile", "--no-index",
          "--find-links", e.wheels, "--find-links", WHEELHOUSE, "blagpt-plugin-rene")
    yield e
    shutil.rmtree(e.venv, ignore_errors=True)  # 1.4 GB; pytest keeps the rest of its temp folders


def test_rene_from_wheels_lists_and_trains(venv):
    where = venv.run(venv.bin / "python", "-c", "import blagpt, blagpt_plugin_rene as r; print(blagpt.__file__); print(r.__file__)").stdout.split()
    assert all(Path(p).is_relative_to(venv.venv) for p in where), where  # the wheels, not this checkout
    listed = venv.blagpt("list").stdout
    assert re.search(r"^rene\s+blagpt-plugin-rene\s", listed, re.M) and re.search(r"^mamba2\s+blagpt-plugin-ssm\s", listed, re.M)
    out = venv.blagpt("train", "--model", "rene", "--set", "model.preset=tiny", "--set", "train.steps=4", *TINY_RUN).stdout
    assert "model rene" in out and math.isfinite(final_val_loss(out))


def test_a_new_plugin_from_its_wheel_installs_trains_passes_its_tests_and_uninstalls(venv):
    made = venv.blagpt("new-plugin", NEW, "--dir", venv.root / "new").stdout
    folder = venv.root / "new" / f"blagpt-plugin-{NEW}"
    assert f"blagpt train --model {NEW}" in made and (folder / f"blagpt_plugin_{NEW}" / "model.py").is_file()
    new_wheels = venv.root / "new-wheels"
    venv.build_wheels(new_wheels, folder)

    # blagpt plugins install: pip in the venv blagpt runs in, then the listing from a fresh process
    installed = venv.blagpt("plugins", "install", "--no-index", "--find-links", new_wheels, "--find-links", WHEELHOUSE, f"blagpt-plugin-{NEW}[test]")
    assert f"running: {venv.bin / 'python'} -m pip install --no-index" in installed.stderr
    assert re.search(rf"^{NEW}\s+blagpt-plugin-{NEW}\s+0\.1\.0\s+model {NEW}$", installed.stdout, re.M), installed.stdout
    assert re.search(rf"^{NEW}\s+blagpt-plugin-{NEW}\s", venv.blagpt("list").stdout, re.M)

    out = venv.blagpt("train", "--model", NEW, "--set", "model.preset=tiny", "--set", "train.steps=30", *TINY_RUN).stdout
    first = float(re.search(r"^step 1/30 \| loss ([0-9.]+)", out, re.M).group(1))
    final = final_val_loss(out)
    assert final < first - 1.0, f"loss did not fall: step 1 {first}, final val {final}"

    tests = venv.run(venv.bin / "pytest", "-q", "-p", "no:cacheprovider", cwd=folder).stdout
    summary = tests.strip().splitlines()[-1]
    assert summary.startswith("16 passed") and not re.search(r"failed|skipped|xfail|xpass|error", summary), summary

    refused = subprocess.run([venv.bin / "blagpt", "plugins", "uninstall", "blagpt"], env=venv.env, capture_output=True, text=True)
    assert refused.returncode == 1 and "refusing to uninstall the core distribution 'blagpt'" in refused.stderr
    removed = venv.blagpt("plugins", "uninstall", f"blagpt-plugin-{NEW}")
    assert f"Successfully uninstalled blagpt-plugin-{NEW}" in removed.stdout + removed.stderr
    assert NEW not in removed.stdout.split("PLUGIN", 1)[-1]
    assert NEW not in venv.blagpt("list").stdout and "rene" in venv.blagpt("list").stdout


def wheel_templates(root: Path, pyproject: str | None = None) -> set[str]:
    """The template files inside a core wheel built from a copy of this checkout (with another
    pyproject.toml text if given)."""
    import zipfile

    e = Env(root)
    src = copy_source(ROOT, root / "src", "pyproject.toml", "README.md", "core")
    if pyproject is not None:
        (src / "pyproject.toml").write_text(pyproject)
    e.build_wheels(root / "out", src)
    (whl,) = (root / "out").glob("blagpt-*.whl")
    return {n.removeprefix("blagpt/") for n in zipfile.ZipFile(whl).namelist() if n.startswith("blagpt/templates/")}


def test_the_core_wheel_ships_every_template(tmp_path):
    tree = {p.relative_to(ROOT / "core" / "blagpt").as_posix() for p in (ROOT / "core" / "blagpt" / "templates").rglob("*.tmpl")}
    assert len(tree) >= 10 and wheel_templates(tmp_path / "a") == tree
    # the check fails when the package-data entry is missing (nothing else ships them)
    text = (ROOT / "pyproject.toml").read_text()
    assert text.count(', "templates/**/*.tmpl"') == 1
    assert wheel_templates(tmp_path / "b", text.replace(', "templates/**/*.tmpl"', "")) == set()
