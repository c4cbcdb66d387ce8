"""Helpers of the tests that drive runs through the real CLI and watch their folders."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from conftest import TINY


def sets(*extra):
    return [x for s in [*TINY, "train.eval_interval=0", "train.log_interval=1", *extra] for x in ("--set", s)]


def env(**extra):
    return {**os.environ, "PYTHONUNBUFFERED": "1", "BLAGPT_LOAD_PLUGINS": "tinylm", "BLAGPT_STRICT_PLUGINS": "0", **extra}


def start(args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "blagpt", *args], cwd=cwd, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for(path: Path, proc=None, what="the file", timeout=300):
    """Until ``path`` exists (an event the run writes), failing early if ``proc`` ended."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what} appeared:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{what} never appeared"
        time.sleep(0.05)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def loss_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in rows(run_dir) if r["key"] == "train/loss"]


def meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def one_error_line(proc) -> str:
    """The CLI's error: exactly one line on stderr starting with 'error: ', no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("blagpt: ")]
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def limited_file_size(limit: int):
    """preexec_fn: files of the child may not grow beyond ``limit`` bytes, as on a full disk: the
    kernel writes what fits and the next write fails (EFBIG; Python ignores SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
