"""The run folder's owner (RunDir, MetricsLog, FolderLock) and the trainer's phases, one at a time."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest
import torch

from blagpt.config import merge_sources, resolve
from blagpt.errors import BlagptError, ConfigError
from blagpt.plugin.registry import Registry
from blagpt.run.distributed import setup_distributed
from blagpt.run.resume import Resume
from blagpt.run.rundir import FolderLock, MetricsLog, RunDir, RunInUse
from blagpt.run.trainer import Trainer

from conftest import TINY


@pytest.fixture(scope="module")
def reg():
    return Registry.load(only=["tinylm"], strict=True)


def test_metrics_log_drops_a_torn_last_line_and_cuts_it_before_appending(tmp_path, caplog):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert log.read() == [] and not log.repair()
    log.append([{"key": "a", "value": 1.0, "step": 1}, {"key": "b", "value": 2.0, "step": 1}])
    with open(log.path, "ab") as f:
        f.write(b'{"key": "a", "val')  # torn
    assert [r["key"] for r in log.read()] == ["a", "b"]
    assert log.repair() and log.path.read_bytes().endswith(b"}\n")
    log.append([{"key": "a", "value": 3.0, "step": 2}])
    assert [r["value"] for r in log.read()] == [1.0, 2.0, 3.0]
    with open(log.path, "ab") as f:  # a damaged line in the middle: left out, with a warning
        f.write(b"garbage\n")
    log.append([{"key": "a", "value": 4.0, "step": 3}])
    with caplog.at_level(logging.WARNING, logger="blagpt"):
        assert [r["value"] for r in log.read()] == [1.0, 2.0, 3.0, 4.0]
    assert "line 4 is not JSON" in caplog.text
    assert log.keep_until(2) == 3 and [r["step"] for r in log.read()] == [1, 1, 2]


def test_folder_lock_refuses_a_second_holder_by_name_and_a_dead_holder_holds_nothing(tmp_path):
    first = FolderLock(tmp_path).acquire()
    with pytest.raises(RunInUse, match=rf"this run is in use by process {__import__('os').getpid()} on "):
        FolderLock(tmp_path).acquire()
    first.release()
    FolderLock(tmp_path).acquire().release()
    # a process that holds the lock and is killed -9 leaves a .lock file that locks nothing
    code = ("import sys, time; from blagpt.run.rundir import FolderLock; FolderLock(sys.argv[1]).acquire(); "
            "open(sys.argv[1] + '/held', 'w').close(); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "held").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(RunInUse, match=rf"process {proc.pid} "):
            FolderLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    FolderLock(tmp_path).acquire().release()


def _run(path, **meta):
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps(meta))
    return path


def test_find_by_path_name_bench_child_mlflow_id_and_replaced_id(tmp_path, caplog):
    out = tmp_path / "runs"
    a = _run(out / "a", mlflow_run_id="id-a")
    child = _run(out / "bench1" / "m-123.s0", mlflow_run_id="id-c", replaced_mlflow_run_ids=["old-c"])
    _run(out / "bench1", kind="bench", mlflow_run_id="id-b")
    (out / "broken").mkdir()
    (out / "broken" / "run.json").write_text("{")
    assert RunDir.find(str(a), str(out)).path == a
    assert RunDir.find("a", str(out)).path == out / "a"
    with caplog.at_level(logging.WARNING, logger="blagpt"):
        assert RunDir.find("m-123.s0", str(out)).path == child
        assert RunDir.find("id-c", str(out)).path == child
        assert RunDir.find("old-c", str(out)).path == child
        assert RunDir.find("id-a", str(out)).path == a
    assert "skipping" in caplog.text and "broken/run.json: not valid JSON" in caplog.text
    _run(out / "bench2" / "m-123.s0")
    with pytest.raises(BlagptError, match="--run m-123.s0: several runs match"):
        RunDir.find("m-123.s0", str(out), option="--run")
    with pytest.raises(BlagptError, match="--resume nope: no run folder"):
        RunDir.find("nope", str(out))


def cfg_of(reg, *sets):
    return resolve(merge_sources(sets=[*TINY, "tracking.enabled=false", *sets]), reg)


def test_resume_config_names_every_field_that_differs(workdir, reg):
    from blagpt.run.trainer import train

    train(cfg_of(reg, "train.steps=4", "tracking.run_name=x"), registry=reg, until_step=2, echo=lambda *a: None)
    point = Resume.open("x", "runs")
    assert point.step == 2 and point.state is not None
    ok = point.config(["train.tokens=4096", "train.eval_interval=1", "tracking.experiment=e", "train.compile=false"], reg)
    assert ok.train.tokens == 4096 and ok.train.steps is None  # a new budget replaces the old one
    with pytest.raises(ConfigError, match=r"model.d_model \(32 -> 48\), train.seq_len \(32 -> 16\) differ"):
        point.config(["model.d_model=48", "train.seq_len=16"], reg)


def test_trainer_phases_run_one_at_a_time(workdir, reg):
    """The seams: build data, model and optimizer, restore, and two steps, without a whole run."""
    t = Trainer(cfg_of(reg, "train.steps=5", "train.log_interval=5", "tracking.run_name=phases"), registry=reg, echo=lambda *a: None)
    t.dist = setup_distributed("cpu")
    with t.owned_run():
        t.build_data()
        assert t.layout.accum == 1 and t.tokens_per_step == 4 * 32
        t.build_model_and_optimizer()
        assert t.budget.steps == 5 and t.n_params > 0
        t.restore()
        t.wrap_model()
        t.start_tracking()
        first = t.train_step()
        second = t.train_step()
        assert (first.step, second.step, t.step) == (1, 2, 2)
        assert first.loss.device.type == "cpu" and first.loss.dim() == 0 and torch.isfinite(first.loss)
        assert not t.host_step(2) and t.host_step(5)
        assert t.maybe_evaluate(second) == {}  # not an evaluation step
        t.maybe_log(second, {})
        assert not RunDir(t.run.path).metrics.read()  # not a logging step: nothing read back, nothing logged
        t.maybe_checkpoint(second, force=True)
        assert RunDir(t.run.path).checkpoint_step == 2
    assert RunDir(t.run.path).status == "FINISHED"
