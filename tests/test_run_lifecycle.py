"""The run lifecycle under hostile conditions: a full disk, two processes on one run, kills, stale
temp files, a taken name, a run killed after its last checkpoint (bad input: test_run_errors.py).
Everything goes through the real CLI in subprocesses, as a user meets it; a run is held at a known
step by the test model's hold hook (``model.hold_at``/``model.hold_file``), so no test depends on
timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runs import env, limited_file_size, loss_steps, meta, one_error_line, rows, sets, start, wait_for
from conftest import run_cli

pytestmark = pytest.mark.slow


# -- 1. a full disk ---------------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped_and_resume_and_sync_work(workdir):
    run_cli(["train", "--no-track", "--until-step", "4", *sets("train.steps=8", "tracking.run_name=torn")], cwd=workdir, check=0)
    run_dir = workdir / "runs" / "torn"
    with open(run_dir / "metrics.jsonl", "a") as f:  # a process killed in the middle of an append
        f.write('{"key": "train/loss", "value": 1.2')
    synced = run_cli(["runs", "sync", str(run_dir), "--tracking-uri", f"sqlite:///{workdir}/sync.db"], cwd=workdir, check=0)
    assert "synced to MLflow run" in synced.stdout
    run_cli(["train", "--resume", "torn", "--no-track"], cwd=workdir, check=0)
    assert loss_steps(run_dir) == list(range(1, 9))
    assert (run_dir / "metrics.jsonl").read_text().endswith("\n")


def test_a_full_disk_during_a_metrics_append_fails_the_run_in_one_line_and_loses_nothing(workdir):
    args = ["train", "--no-track", *sets("train.steps=200", "tracking.run_name=full")]
    run_cli([*args, "--until-step", "30"], cwd=workdir, check=0)
    run_dir = workdir / "runs" / "full"
    size = (run_dir / "metrics.jsonl").stat().st_size
    cmd = [sys.executable, "-m", "blagpt", "train", "--resume", "full", "--no-track"]
    proc = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=limited_file_size(size + 3000))
    line = one_error_line(proc)
    assert "metrics.jsonl: cannot append metrics (File too large)" in line
    assert meta(run_dir)["status"] == "FAILED"
    assert (run_dir / "metrics.jsonl").read_text().endswith("\n")  # the failed append was undone
    steps = loss_steps(run_dir)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 30
    # the disk has room again: resume from the checkpoint (step 30) and sync both work
    again = run_cli(["train", "--resume", "full", "--no-track", "--set", "train.steps=40"], cwd=workdir, check=0)
    assert "resumed at step 30" in again.stdout
    assert loss_steps(run_dir) == list(range(1, 41))
    run_cli(["runs", "sync", str(run_dir), "--tracking-uri", f"sqlite:///{workdir}/sync.db"], cwd=workdir, check=0)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_leaves_no_temp_file(workdir):
    run_cli(["train", "--no-track", "--until-step", "4", *sets("train.steps=12", "tracking.run_name=ck")], cwd=workdir, check=0)
    run_dir = workdir / "runs" / "ck"
    before = (run_dir / "checkpoint.pt").read_bytes()
    cmd = [sys.executable, "-m", "blagpt", "train", "--resume", "ck", "--no-track", "--set", "train.checkpoint_interval=2"]
    proc = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=limited_file_size(100_000))  # the checkpoint is ~350 kB
    line = one_error_line(proc)
    assert "checkpoint.pt: cannot write the checkpoint (File too large); the previous checkpoint (step 4) is kept" in line
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert not list(run_dir.glob(".*.tmp")), list(run_dir.iterdir())
    assert meta(run_dir)["status"] == "FAILED" and "CheckpointError" in meta(run_dir)["tags"]["blagpt.error"]
    run_cli(["train", "--resume", "ck", "--no-track"], cwd=workdir, check=0)
    assert loss_steps(run_dir) == list(range(1, 13))


# -- 2, 5. two processes on one run; killed before the first checkpoint -------------------------


def test_a_second_process_on_a_running_run_is_refused_naming_the_first(workdir):
    hold = workdir / "go"
    first = start(["train", "--no-track", *sets("train.steps=6", "tracking.run_name=busy", "train.checkpoint_interval=2",
                                                "model.hold_at=4", f"model.hold_file={hold}")], workdir)
    try:
        wait_for(Path(f"{hold}.waiting"), first, "the hold of the first run")
        for args in (["train", "--no-track", *sets("train.steps=6", "tracking.run_name=busy")],
                     ["train", "--resume", "busy", "--no-track"],
                     ["runs", "sync", "runs/busy", "--tracking-uri", f"sqlite:///{workdir}/x.db"]):
            proc = run_cli(args, cwd=workdir)
            line = one_error_line(proc)
            assert f"runs/busy: this run is in use by process {first.pid} " in line, line
        hold.write_text("")
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, out + err
    finally:
        if first.poll() is None:
            first.kill()
    assert loss_steps(workdir / "runs" / "busy") == [1, 2, 3, 4, 5, 6]  # one writer: every step once


def test_killed_before_its_first_checkpoint_a_run_can_be_resumed_or_started_again(workdir):
    hold = workdir / "go"
    args = ["train", "--no-track", *sets("train.steps=6", "tracking.run_name=early", "model.hold_at=3", f"model.hold_file={hold}")]
    for again in (["train", "--resume", "early", "--no-track"], args):
        proc = start(args, workdir)
        wait_for(Path(f"{hold}.waiting"), proc, "the hold")
        Path(f"{hold}.waiting").unlink()
        proc.kill()  # SIGKILL: no handler runs, the lock is the kernel's to drop
        proc.wait()
        run_dir = workdir / "runs" / "early"
        assert not (run_dir / "checkpoint.pt").exists() and loss_steps(run_dir) == [1, 2]
        hold.write_text("")
        res = run_cli(again, cwd=workdir, check=0)
        assert "again from step 0" in res.stdout
        assert loss_steps(run_dir) == [1, 2, 3, 4, 5, 6] and meta(run_dir)["status"] == "FINISHED"
        hold.unlink()
        if again is not args:
            import shutil

            shutil.rmtree(run_dir)


# -- 3. temp files of killed writers ------------------------------------------------------------


def test_temp_files_of_killed_checkpoint_writes_are_removed(workdir):
    run_cli(["train", "--no-track", "--until-step", "2", *sets("train.steps=4", "tracking.run_name=tmp")], cwd=workdir, check=0)
    run_dir = workdir / "runs" / "tmp"
    for pid in range(1000, 1008):  # what eight kills in the middle of a checkpoint write leave
        (run_dir / f".checkpoint.pt.{pid}.tmp").write_bytes(b"partial")
    run_cli(["train", "--resume", "tmp", "--no-track"], cwd=workdir, check=0)
    assert not list(run_dir.glob(".*.tmp"))
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt", "config.yaml", "loss_curve.png", "metrics.jsonl", "run.json"]


def test_restart_starts_a_taken_name_over_and_a_bench_folder_has_one_bench_at_a_time(workdir):
    args = ["train", "--no-track", *sets("train.steps=4", "tracking.run_name=again")]
    run_cli(args, cwd=workdir, check=0)
    taken = run_cli(args, cwd=workdir)
    assert "a run of this name exists (status FINISHED, checkpoint at step 4); continue it with --resume again, start it over with --restart" in one_error_line(taken)
    over = run_cli([*args, "--set", "train.steps=2", "--restart"], cwd=workdir, check=0)
    assert "starting this run again from step 0" in over.stdout
    assert loss_steps(workdir / "runs" / "again") == [1, 2] and meta(workdir / "runs" / "again")["checkpoint_step"] == 2

    from blagpt.run.rundir import FolderLock

    from conftest import BENCH_BASE

    (workdir / "runs" / "busy-bench").mkdir()
    with FolderLock(workdir / "runs" / "busy-bench", what="bench"):  # as a bench running in it holds it
        proc = run_cli(["bench", "--models", "tinylm", "--budget", "steps=2", "--no-track", "--name", "busy-bench", *BENCH_BASE], cwd=workdir)
    assert f"runs/busy-bench: this bench is in use by process {os.getpid()} " in one_error_line(proc)


def test_a_run_killed_after_its_last_checkpoint_finishes_on_resume(workdir):
    run_cli(["train", "--no-track", *sets("train.steps=4", "train.eval_interval=2", "tracking.run_name=last")], cwd=workdir, check=0)
    run_dir = workdir / "runs" / "last"
    record = meta(run_dir)
    (run_dir / "run.json").write_text(json.dumps({**record, "status": "RUNNING"}))  # as kill -9 after the final checkpoint leaves it
    proc = run_cli(["train", "--resume", "last", "--no-track"], cwd=workdir, check=0)
    val = [r["value"] for r in rows(run_dir) if r["key"] == "val/loss" and r["step"] == 4]
    assert f"final: val loss {val[0]:.4f} nats/token" in proc.stdout and len(val) == 1
    assert meta(run_dir)["status"] == "FINISHED" and loss_steps(run_dir) == [1, 2, 3, 4]
