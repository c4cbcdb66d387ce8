"""``blagpt bench`` and ``blagpt compare`` end to end on the tiny test model, through the real CLI.

Every training run is a child process, as in real use; the tests read back what MLflow recorded
and what the bench folder holds.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

from blagpt.compare.leaderboard import welch_p_less

from conftest import BENCH_BASE, fake_plugin, run_cli

BASE = BENCH_BASE


def read_csv(path):
    with open(path) as f:
        return {r["entry"]: r for r in csv.DictReader(f)}


def metrics(run_dir, key):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["value"] for r in rows if r["key"] == key}


@pytest.mark.slow
def test_bench_table_equals_what_mlflow_recorded_and_compare_rebuilds_it(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    proc = run_cli(["bench", "--models", "tinylm,tinylm@wide", "--seeds", "2", "--budget", "steps=6", "--name", "b1",
                    "--tracking-uri", uri, *BASE], cwd=workdir, check=0)
    assert "tinylm (baseline)" in proc.stdout and "MLflow parent run:" in proc.stdout
    bench_dir = workdir / "runs" / "b1"
    table = read_csv(bench_dir / "leaderboard.csv")
    assert set(table) == {"tinylm", "tinylm@wide"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("blagpt")
    (parent,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'b1'")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    values = {}
    for c in children:
        values.setdefault(c.data.tags["blagpt.entry"], []).append((int(c.data.params["train.seed"]), c))
    bpb = {}
    for entry, runs in values.items():
        runs.sort(key=lambda x: x[0])
        assert [s for s, _ in runs] == [0, 1]
        bpb[entry] = [c.data.metrics["val/bpb"] for _, c in runs]
        row = table[entry]
        # the table's numbers are MLflow's, to the last bit
        assert float(row["val_bpb_mean"]) == statistics.fmean(bpb[entry])
        assert float(row["val_bpb_std"]) == statistics.stdev(bpb[entry])
        assert float(row["val_loss_mean"]) == statistics.fmean(c.data.metrics["val/loss"] for _, c in runs)
        assert float(row["wall_s"]) == statistics.fmean(c.data.metrics["train/elapsed_s"] for _, c in runs)
        tps = [statistics.median(m.value for m in client.get_metric_history(c.info.run_id, "train/tokens_per_s")) for _, c in runs]
        assert float(row["tokens_per_s"]) == statistics.fmean(tps)
        assert float(row["params"]) == float(runs[0][1].data.params["n_params"])
        assert bpb[entry][0] != bpb[entry][1]  # the seed changes the result
    assert float(table["tinylm@wide"]["p_value"]) == welch_p_less(bpb["tinylm@wide"], bpb["tinylm"])
    assert table["tinylm"]["p_value"] == ""  # the baseline

    # plots: real, non-empty images, logged to the parent run with the tables
    import matplotlib.image

    for name in ("bpb_vs_tokens.png", "bpb_vs_time.png"):
        img = matplotlib.image.imread(bench_dir / name)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img[..., :3].std() > 0.05
    # the parent run holds each entry's figures, not only its mean (MLflow keys: '@' made '_')
    pm = client.get_run(parent.info.run_id).data.metrics
    for entry, key in (("tinylm", "tinylm"), ("tinylm@wide", "tinylm_wide")):
        assert pm[f"val_bpb_mean/{key}"] == float(table[entry]["val_bpb_mean"])
        assert pm[f"val_bpb_sd/{key}"] == float(table[entry]["val_bpb_std"])
        assert pm[f"val_bpb_ci95_lo/{key}"] == float(table[entry]["val_bpb_ci95_lo"])
    assert pm["p/tinylm_wide"] == float(table["tinylm@wide"]["p_value"]) and "p_holm/tinylm_wide" in pm
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.md", "leaderboard.csv", "bpb_vs_tokens.png", "bpb_vs_time.png"} <= logged

    # compare rebuilds the same table from MLflow alone
    cmp = run_cli(["compare", "b1", "--tracking-uri", uri, "--out", "cmp"], cwd=workdir, check=0)
    assert "4 run(s)" in cmp.stdout
    assert (workdir / "cmp" / "leaderboard.csv").read_text() == (bench_dir / "leaderboard.csv").read_text()
    # the same run twice, by id, counts once; an unknown reference is a one-line error
    one = children[0]
    cmp2 = run_cli(["compare", one.info.run_id, one.info.run_id, "--tracking-uri", uri, "--out", "cmp2"], cwd=workdir, check=0)
    assert "1 run(s)" in cmp2.stdout
    bad = run_cli(["compare", "nope", "--tracking-uri", uri], cwd=workdir)
    assert bad.returncode == 1 and bad.stderr.startswith("error: compare: 'nope' is no MLflow run id")


BOOM = """
from blagpt import ModelConfig, ModelSpec, hookimpl

class BoomConfig(ModelConfig):
    name: str = "boom"

@hookimpl
def register_models(register):
    register(ModelSpec("boom", BoomConfig, "a model whose build fails", tokenizers=("bytes",)))

@hookimpl
def build_model(name, config, ctx):
    if name == "boom":
        raise RuntimeError("boom: cannot build")
"""


@pytest.mark.slow
def test_failing_entries_are_listed_with_their_reason_and_the_others_go_on(workdir):
    site = workdir / "site"
    fake_plugin(site, "blagpt-plugin-boom", "boom_plugin", BOOM, ep_name="boom")
    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = run_cli(["bench", "--models", "tinylm@diverge,boom,tinylm@nope,tinylm", "--budget", "steps=6", "--no-track",
                    "--name", "b2", *BASE], cwd=workdir, env=env, plugins=("tinylm", "boom"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "3 of 4 runs failed" in proc.stderr
    table = read_csv(workdir / "runs" / "b2" / "leaderboard.csv")
    assert table["tinylm"]["errors"] == "" and float(table["tinylm"]["val_bpb_mean"]) > 0
    assert "loss is nan at step 3" in table["tinylm@diverge"]["errors"]
    assert "RuntimeError: boom: cannot build" in table["boom"]["errors"]
    assert "unknown preset 'nope'" in table["tinylm@nope"]["errors"]
    assert list(table)[0] == "tinylm"  # finished entries rank above failed ones
    # the baseline (first entry) failed: no p-values, no crash
    assert all(r["p_value"] == "" for r in table.values())
    # a second run does not retry the failures unless asked
    again = run_cli(["bench", "--models", "tinylm@diverge,boom,tinylm@nope,tinylm", "--budget", "steps=6", "--no-track",
                     "--name", "b2", *BASE], cwd=workdir, env=env, plugins=("tinylm", "boom"))
    assert "failed before (TrainingDiverged: loss is nan at step 3" in again.stdout and "done already" in again.stdout


def _start_bench(workdir, name):
    """A bench of two runs; the second (preset ``held``) waits at its 6th step (after the
    checkpoint of step 4) until the file ``hold`` exists, so the test acts at a known step."""
    cmd = [sys.executable, "-m", "blagpt", "bench", "--models", "tinylm,tinylm@held", "--budget", "steps=8", "--no-track",
           "--name", name, "--set", "train.checkpoint_interval=2", *BASE]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BLAGPT_LOAD_PLUGINS": "tinylm", "BLAGPT_STRICT_PLUGINS": "0"}
    return cmd, env, subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(cond, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


def _second_run_held(proc, workdir, name):
    """The second run's folder, once that run waits at its hold (step 5 done, checkpoint at 4)."""
    for line in proc.stdout:
        if line.startswith("[2/2] tinylm@held seed 0: training"):
            run = line.split("training ")[1].strip()
            break
    else:
        raise AssertionError("the bench never started its second run: " + proc.stderr.read())
    _wait(lambda: (workdir / "hold.waiting").exists(), "the hold of the second run")
    return workdir / "runs" / name / run


def _status(run_dir):
    return json.loads((run_dir / "run.json").read_text()).get("status")


def _rerun_resumes(cmd, env, workdir, run_dir):
    again = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[1/2] tinylm seed 0: done already" in again.stdout
    assert f"[2/2] tinylm@held seed 0: resuming {run_dir.name} from its checkpoint" in again.stdout, again.stdout
    assert _status(run_dir) == "FINISHED"
    assert sorted(metrics(run_dir, "train/loss")) == list(range(1, 9))  # every step once


@pytest.mark.slow
def test_a_killed_bench_resumes_finished_runs_kept_the_interrupted_one_from_its_checkpoint(workdir):
    cmd, env, proc = _start_bench(workdir, "b3")
    run_dir = _second_run_held(proc, workdir, "b3")
    proc.kill()  # SIGKILL: no handler runs in the bench; its run gets SIGTERM (parent-death signal)
    proc.wait()
    (workdir / "hold").write_text("")  # the orphaned run finishes its step, checkpoints and stops
    _wait(lambda: _status(run_dir) != "RUNNING", "the orphaned run's stop")
    assert _status(run_dir) == "KILLED"
    assert max(metrics(run_dir, "train/loss")) == 6
    _rerun_resumes(cmd, env, workdir, run_dir)


@pytest.mark.slow
def test_ctrl_c_stops_the_bench_with_a_checkpoint_and_exit_130(workdir):
    cmd, env, proc = _start_bench(workdir, "b4")
    run_dir = _second_run_held(proc, workdir, "b4")
    proc.send_signal(signal.SIGINT)
    (workdir / "hold").write_text("")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted: run the same command again to resume" in err
    assert _status(run_dir) == "KILLED" and max(metrics(run_dir, "train/loss")) == 6
    _rerun_resumes(cmd, env, workdir, run_dir)


@pytest.mark.slow
def test_ctrl_c_twice_stops_the_run_at_once_and_a_rerun_still_resumes_it(workdir):
    cmd, env, proc = _start_bench(workdir, "b5")
    run_dir = _second_run_held(proc, workdir, "b5")
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:  # the bench passed the first Ctrl-C on
        if "stopping: the running run checkpoints" in line:
            break
    err_log = workdir / "runs" / "b5" / "logs" / f"{run_dir.name}.err"
    _wait(lambda: "SIGINT: stopping after this step" in err_log.read_text(), "the run's acknowledgement of the first Ctrl-C")
    proc.send_signal(signal.SIGINT)  # the second: stop at once, mid-step (the run is still held)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert _status(run_dir) == "KILLED" and max(metrics(run_dir, "train/loss")) == 5
    assert json.loads((run_dir / "run.json").read_text())["checkpoint_step"] == 4
    (workdir / "hold").write_text("")
    _rerun_resumes(cmd, env, workdir, run_dir)
