"""``blagpt bench --parallel 2`` and ``--executor ray``: the runs of a bench at once, each with its
own cores, giving exactly what the same bench gives one run at a time; interrupted and run again,
a Ray bench resumes as a local one does. Runs are held at a known step by the test model's hold
hook (preset ``held``: forward 6 waits until the file ``hold`` exists), so nothing depends on timing.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_runs import wait_for
from conftest import BENCH_BASE

pytestmark = pytest.mark.slow

ENTRIES = "tinylm@held,tinylm@wide+held"
ARGS = ["bench", "--models", ENTRIES, "--budget", "steps=8", "--no-track", "--set", "train.checkpoint_interval=2", *BENCH_BASE]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "BLAGPT_LOAD_PLUGINS": "tinylm", "BLAGPT_STRICT_PLUGINS": "0", "OMP_NUM_THREADS": "1"}


def _bench(cwd, *extra, check=True):
    proc = subprocess.run([sys.executable, "-m", "blagpt", *ARGS, *extra], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _start(cwd, *extra):
    return subprocess.Popen([sys.executable, "-m", "blagpt", *ARGS, *extra], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _results(bench_dir: Path) -> dict[str, dict]:
    """Per run folder: its logged train losses and evaluations by step; and the leaderboard."""
    out = {}
    for run in sorted(p for p in bench_dir.iterdir() if (p / "metrics.jsonl").is_file() and p.name.startswith("tinylm")):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        out[run.name] = {(r["key"], r["step"]): r["value"] for r in rows if r["key"] in ("train/loss", "val/loss", "val/bpb")}
    with open(bench_dir / "leaderboard.csv") as f:
        out["leaderboard"] = {r["entry"]: (r["val_loss_mean"], r["val_bpb_mean"]) for r in csv.DictReader(f)}
    return out


def _cpus(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list"))


def _held_pids(cwd: Path, proc, n: int, timeout: float = 300) -> list[int]:
    """The pids of ``n`` runs waiting at their hold at the same time (each adds a line to hold.waiting)."""
    waiting = cwd / "hold.waiting"
    deadline = time.monotonic() + timeout
    while True:
        lines = waiting.read_text().split("\n")[:-1] if waiting.exists() else []  # complete lines only
        if len(lines) >= n:
            return [int(x) for x in lines]
        if proc.poll() is not None:
            raise AssertionError(f"the bench ended (exit {proc.returncode}) with {len(lines)} of {n} runs held:\n{proc.stderr.read()}")
        assert time.monotonic() < deadline, f"{len(lines)} of {n} runs reached their hold"
        time.sleep(0.05)


def _wait_for_text(path: Path, text: str, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, f"the bench ended before {path.name} said {text!r}"
        assert time.monotonic() < deadline, f"{path.name} never said {text!r}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The bench one run at a time (its holds open from the start)."""
    cwd = tmp_path_factory.mktemp("seq")
    (cwd / "hold").write_text("")
    _bench(cwd, "--name", "b")
    return _results(cwd / "runs" / "b")


def test_parallel_two_runs_at_once_on_their_own_cores_give_the_sequential_results(workdir, sequential):
    proc = _start(workdir, "--name", "b", "--parallel", "2")
    try:
        pids = _held_pids(workdir, proc, 2)  # both runs wait at their hold together: they run at once
        if len(os.sched_getaffinity(0)) >= 2:
            a, b = (set(_cpus(p).split(",")) for p in pids)
            assert a and b and not a & b, (a, b)  # each on its own share of the cores
        (workdir / "hold").write_text("")
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert _results(workdir / "runs" / "b") == sequential  # every logged value, bit for bit


def test_a_ray_bench_gives_the_sequential_results_and_resumes_after_ctrl_c(workdir, sequential, monkeypatch):
    import ray  # the ray extra is part of the test extra

    # a local instance on the loopback interface, for this test only: no token written to ~/.ray
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setitem(ENV, "RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        address = ray.get_runtime_context().gcs_address
        args = ["--name", "b", "--executor", "ray", "--address", address]
        proc = _start(workdir, *args)
        try:
            _held_pids(workdir, proc, 2)  # both runs are Ray tasks running at once
            proc.send_signal(signal.SIGINT)  # the bench asks its tasks to stop: each run stops after its step
            for line in proc.stdout:
                if "stopping: the running run checkpoints" in line:
                    break
            logs = list((workdir / "runs" / "b" / "logs").glob("*.err"))
            assert len(logs) == 2
            for log in logs:  # each task passed the stop on to its run (an event, not a delay)
                _wait_for_text(log, "SIGINT: stopping after this step", proc)
            (workdir / "hold").write_text("")
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, out + err
        assert "interrupted: run the same command again to resume" in err
        runs = [p for p in (workdir / "runs" / "b").iterdir() if p.name.startswith("tinylm")]
        statuses = [json.loads((r / "run.json").read_text())["status"] for r in runs]
        assert statuses == ["KILLED", "KILLED"], (statuses, out, err)
        again = _bench(workdir, *args)
        assert again.stdout.count("from its checkpoint") == 2, again.stdout
    finally:
        ray.shutdown()
    assert _results(workdir / "runs" / "b") == sequential
