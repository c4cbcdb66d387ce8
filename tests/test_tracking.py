"""MLflow tracking against a real ``mlflow server`` on 127.0.0.1, and when it is down or hangs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY, fake_plugin, free_port, hanging_server, run_cli

pytestmark = pytest.mark.slow


class Server:
    """``mlflow server`` in its own process group, stopped by its PID."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        log = open(self.root / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db", "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=log, start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(self.uri + "/health", timeout=2).status == 200:
                    return self
            except OSError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"mlflow server did not start; see {log.name}")

    def kill(self) -> None:
        """Crash it: SIGKILL to the whole process group, no graceful shutdown."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow")).start()
    yield s
    s.stop()


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def sets(*extra):
    return [x for s in [*TINY, "train.steps=6", "train.eval_interval=3", *extra] for x in ("--set", s)]


def folder_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault(r["key"], []).append((r["step"], r["value"]))
    return out


def assert_mlflow_has_folder(uri, run_id, run_dir):
    """Every metric row of the folder in MLflow (the evaluation's constant counts as params)."""
    c = client(uri)
    params = c.get_run(run_id).data.params
    for key, pts in folder_metrics(run_dir).items():
        if key in ("val/tokens", "val/bytes"):
            assert {v for _, v in pts} == {float(params[key])}, key
            continue
        got = sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))
        assert got == sorted(pts), key


UNUSED_PLUGIN = """
from blagpt import ModelConfig, ModelSpec, hookimpl

class Cfg(ModelConfig):
    name: str = "unused"

@hookimpl
def register_models(register):
    register(ModelSpec("unused", Cfg, "installed, not used by the run"))
"""


def test_run_is_logged_to_a_server(workdir, server):
    """The record an MLflow user expects: params without "None", the evaluation's constant counts
    as params, the versions of only the plugins the run used, a description, the run's real start
    time, its checkpoint and config as artifacts, and the link to its page at the end."""
    fake_plugin(workdir / "site", "blagpt-plugin-unused", "unusedplug", UNUSED_PLUGIN)
    proc = run_cli(["train", "--tracking-uri", server.uri, *sets("tracking.run_name=served")], cwd=workdir, check=0,
                   env={"PYTHONPATH": str(workdir / "site")}, plugins=("tinylm", "unusedplug"))
    assert f"tracking URI {server.uri}" in proc.stdout
    meta = json.loads((workdir / "runs/served/run.json").read_text())
    run = client(server.uri).get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert f"see it: {server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in proc.stdout
    p = run.data.params
    assert p["model.name"] == "tinylm" and p["train.seq_len"] == "32" and p["optimizer.name"] == "adamw"
    assert "None" not in p.values() and "model.preset" not in p
    assert p["val/tokens"] == "2048" and p["val/bytes"] == "2048"  # bytes: one token per byte
    assert not {"val/tokens", "val/bytes"} & set(run.data.metrics)
    plugins = {k: v for k, v in run.data.tags.items() if k.startswith("blagpt.plugin.")}
    assert plugins == {"blagpt.plugin.blagpt-plugin-tinylm": "0.1.0", "blagpt.plugin.blagpt": "0.1.0"}
    assert run.data.tags["mlflow.note.content"] == "Model tinylm (no preset), optimizer adamw, budget 6 steps x 4 seqs x 32 tokens."
    first_ts = min(json.loads(ln)["ts"] for ln in (workdir / "runs/served/metrics.jsonl").read_text().splitlines())
    assert run.info.start_time == meta["start_time_ms"] <= first_ts
    assert {"train/loss", "val/loss", "val/bpb", "train/tokens_per_s", "train/peak_mem_mb", "train/lr"} <= set(run.data.metrics)
    assert_mlflow_has_folder(server.uri, run.info.run_id, workdir / "runs/served")
    arts = {a.path for a in client(server.uri).list_artifacts(run.info.run_id)}
    assert {"config.yaml", "loss_curve.png", "checkpoint.pt"} <= arts
    assert run.data.tags["blagpt.checkpoint_step"] == "6"
    listed = run_cli(["runs", "--tracking-uri", server.uri], check=0).stdout
    row = next(ln for ln in listed.splitlines() if ln.startswith("served"))
    assert "tinylm" in row and f"{run.data.metrics['val/loss']:.4f}" in row


def test_a_run_travels_through_mlflow_alone(workdir, server, tmp_path_factory):
    """Stopped at step 4 of 6 on one machine; on another (another folder, nothing but the run id
    and the server) it is sampled, then resumed into the same MLflow run, which ends up holding
    exactly the second machine's folder; ``blagpt runs`` showed the steps reached."""
    run_cli(["train", "--tracking-uri", server.uri, "--until-step", "4", *sets("tracking.run_name=travel")], cwd=workdir, check=0)
    run_id = json.loads((workdir / "runs/travel/run.json").read_text())["mlflow_run_id"]
    listed = run_cli(["runs", "--tracking-uri", server.uri], check=0).stdout
    header = listed.splitlines()[0].split()
    row = next(ln for ln in listed.splitlines() if ln.startswith("travel ")).split()
    assert header[:5] == ["RUN", "MODEL", "PRESET", "OPTIMIZER", "STEPS"] and row[1:5] == ["tinylm", "-", "adamw", "4/6"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", row[8]), row  # STARTED, local time
    other = tmp_path_factory.mktemp("machine-b")
    sampled = run_cli(["sample", "--run", run_id, "--tracking-uri", server.uri, "--tokens", "3", "--temperature", "0"],
                      cwd=other, check=0)
    assert "travel: model tinylm at step 4" in sampled.stderr
    fetched = other / "runs/travel"
    assert json.loads((fetched / "run.json").read_text())["fetched_from"]["run_id"] == run_id
    resumed = run_cli(["train", "--resume", run_id, "--tracking-uri", server.uri], cwd=other, check=0)
    assert "resumed at step 4" in resumed.stdout
    meta = json.loads((fetched / "run.json").read_text())
    assert meta["mlflow_run_id"] == run_id and not meta.get("replaced_mlflow_run_ids")
    assert sorted(s for s, _ in folder_metrics(fetched)["train/loss"]) == [2, 4, 6]
    assert_mlflow_has_folder(server.uri, run_id, fetched)
    run = client(server.uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["blagpt.checkpoint_step"] == "6"
    again = run_cli(["sample", "--run", run_id, "--tracking-uri", server.uri, "--tokens", "3"], cwd=workdir, check=0)
    assert "travel: model tinylm at step 4" in again.stderr  # the first machine keeps its own folder
    gone = run_cli(["sample", "--run", "f" * 32, "--tracking-uri", server.uri], cwd=other)
    assert f"--run {'f' * 32}: no MLflow run with this id at {server.uri}" in gone.stderr and gone.returncode != 0


def test_system_metrics_reach_mlflow(workdir, server):
    """MLflow's own system metrics (CPU, memory...) of a run held until the first sample is in."""
    hold = workdir / "go"
    train = _held_run(workdir, server.uri, "sysm", hold, "train.steps=4", "model.hold_at=2", "tracking.system_metrics_interval_s=1")
    try:
        run_id = _wait_for(lambda: json.loads((workdir / "runs/sysm/run.json").read_text()).get("mlflow_run_id"), train)
        keys = _wait_for(lambda: [k for k in client(server.uri).get_run(run_id).data.metrics if k.startswith("system/")], train)
        hold.write_text("")
        out, _ = train.communicate(timeout=300)
    finally:
        if train.poll() is None:
            train.kill()
    assert train.returncode == 0, out
    assert "system/cpu_utilization_percentage" in keys and "system/system_memory_usage_megabytes" in keys


def _wait_for(probe, proc, deadline_s: float = 120):
    """Until ``probe()`` is truthy (an event the run or the server produces); fails if ``proc`` ended."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            got = probe()
        except (OSError, ValueError):
            got = None
        if got:
            return got
        assert proc.poll() is None, "the run ended while held"
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.2)


def test_server_down_training_goes_on_then_sync_recovers(workdir, server):
    dead = f"http://127.0.0.1:{free_port()}"
    proc = run_cli(["train", "--tracking-uri", dead, *sets("tracking.run_name=offline", "tracking.timeout_s=2")], cwd=workdir, check=0)
    assert "blagpt runs sync" in proc.stdout and "final: val loss" in proc.stdout
    run_dir = workdir / "runs/offline"
    assert "val/bpb" in folder_metrics(run_dir)
    synced = run_cli(["runs", "sync", str(run_dir), "--tracking-uri", server.uri], check=0)
    run_id = synced.stdout.strip().split()[-1]
    assert_mlflow_has_folder(server.uri, run_id, run_dir)
    assert client(server.uri).get_run(run_id).data.params["model.name"] == "tinylm"


def test_server_that_hangs_does_not_stall_training(workdir):
    with hanging_server() as (uri, held):
        # run_cli's timeout (300 s) is the only clock: a stalled run fails the test by never ending
        proc = run_cli(["train", "--tracking-uri", uri, *sets("tracking.run_name=hung", "tracking.timeout_s=1")], cwd=workdir, check=0)
        assert "MLflow did not receive everything" in proc.stdout and held
        assert "val/loss" in folder_metrics(workdir / "runs/hung")


def _wait_synced(run_json: Path, proc, deadline_s: float = 240) -> dict:
    """Until MLflow has every row the (held) run has logged so far."""
    deadline = time.monotonic() + deadline_s
    while True:
        meta = json.loads(run_json.read_text())
        total = len((run_json.parent / "metrics.jsonl").read_text().splitlines())
        if total and meta.get("metrics_synced", 0) == total:
            return meta
        assert proc.poll() is None, "the run ended while held"
        assert time.monotonic() < deadline, f"MLflow never caught up ({meta.get('metrics_synced')} of {total} rows)"
        time.sleep(0.2)


def _held_run(workdir, uri, name, hold, *extra):
    """A training run held at a known step: it waits at forward ``model.hold_at`` until ``hold`` exists."""
    env = {**os.environ, "BLAGPT_LOAD_PLUGINS": "tinylm"}
    cmd = [sys.executable, "-m", "blagpt", "train", "--tracking-uri", uri,
           *sets(f"tracking.run_name={name}", "tracking.timeout_s=2", f"model.hold_file={hold}", *extra)]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not Path(f"{hold}.waiting").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run never reached its hold"
        time.sleep(0.05)
    return proc


def test_server_killed_during_a_run(workdir, tmp_path_factory):
    """The server dies at a known step (the run is held there): everything logged before is in
    MLflow, nothing after; training finishes; ``runs sync`` uploads the rest."""
    srv = Server(tmp_path_factory.mktemp("mlflow-killed")).start()
    hold = workdir / "go"
    train = _held_run(workdir, srv.uri, "killed", hold, "train.steps=20", "train.eval_interval=10", "model.hold_at=10")
    run_dir = workdir / "runs/killed"
    try:
        at_kill = _wait_synced(run_dir / "run.json", train)["metrics_synced"]
        srv.kill()
        hold.write_text("")
        out, _ = train.communicate(timeout=600)
    finally:
        if train.poll() is None:
            train.kill()
        srv.stop()
    assert train.returncode == 0, out
    assert "final: val loss" in out and "blagpt runs sync" in out
    meta = json.loads((run_dir / "run.json").read_text())
    total = sum(len(v) for v in folder_metrics(run_dir).values())
    assert 0 < meta["metrics_synced"] == at_kill < total
    srv.start()  # same port, same database
    try:
        run_cli(["runs", "sync", str(run_dir)], check=0)  # the run's own URI, from run.json
        assert_mlflow_has_folder(srv.uri, meta["mlflow_run_id"], run_dir)
        assert client(srv.uri).get_run(meta["mlflow_run_id"]).info.status == "FINISHED"
    finally:
        srv.stop()


def test_after_a_kill_and_resume_mlflow_holds_exactly_the_run_folder(workdir, server):
    """Killed after MLflow received steps past its checkpoint, the resumed run's MLflow record is
    the folder's: the steps trained twice appear once (the MLflow run is replaced, the old one
    deleted), and lookups by the old id still find the run."""
    hold = workdir / "go"
    train = _held_run(workdir, server.uri, "kr", hold, "train.steps=10", "train.checkpoint_interval=4", "train.log_interval=1",
                      "model.hold_at=7")
    run_dir = workdir / "runs/kr"
    try:
        old = _wait_synced(run_dir / "run.json", train)
        assert max(s for pts in folder_metrics(run_dir).values() for s, _ in pts) == 6  # MLflow has steps 5, 6 past the checkpoint
        train.kill()
        train.wait()
    finally:
        if train.poll() is None:
            train.kill()
    hold.write_text("")
    run_cli(["train", "--resume", "kr", "--tracking-uri", server.uri], cwd=workdir, check=0)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["mlflow_run_id"] != old["mlflow_run_id"] and meta["replaced_mlflow_run_ids"] == [old["mlflow_run_id"]]
    assert sorted(s for s, _ in folder_metrics(run_dir)["train/loss"]) == list(range(1, 11))
    assert_mlflow_has_folder(server.uri, meta["mlflow_run_id"], run_dir)
    c = client(server.uri)
    new, gone = c.get_run(meta["mlflow_run_id"]), c.get_run(old["mlflow_run_id"])
    assert new.info.status == "FINISHED" and new.info.start_time == gone.info.start_time and new.data.params["model.name"] == "tinylm"
    assert gone.info.lifecycle_stage == "deleted" and gone.data.tags["blagpt.replaced_by"] == new.info.run_id
    found = run_cli(["sample", "--run", old["mlflow_run_id"], "--tokens", "2"], cwd=workdir, check=0)
    assert "kr: model tinylm at step 10" in found.stderr


def test_a_clean_stop_and_resume_keeps_the_mlflow_run(workdir, server):
    run_cli(["train", "--tracking-uri", server.uri, "--until-step", "4", *sets("tracking.run_name=clean")], cwd=workdir, check=0)
    first = json.loads((workdir / "runs/clean/run.json").read_text())["mlflow_run_id"]
    run_cli(["train", "--resume", "clean", "--tracking-uri", server.uri], cwd=workdir, check=0)
    meta = json.loads((workdir / "runs/clean/run.json").read_text())
    assert meta["mlflow_run_id"] == first and not meta.get("replaced_mlflow_run_ids")
    assert_mlflow_has_folder(server.uri, first, workdir / "runs/clean")


def test_default_store_is_mlflow_db_in_the_working_directory(workdir):
    env = {"MLFLOW_TRACKING_URI": ""}
    proc = run_cli(["train", *sets("tracking.run_name=local")], cwd=workdir, env=env, check=0)
    assert (workdir / "mlflow.db").is_file()
    assert f"sqlite:///{workdir}/mlflow.db" in proc.stdout
    listed = run_cli(["runs"], cwd=workdir, env=env, check=0).stdout
    assert any(ln.startswith("local ") for ln in listed.splitlines())
