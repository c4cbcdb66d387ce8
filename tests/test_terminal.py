"""What a person sees in a terminal: the progress bar at 80 columns with nothing breaking through
it, Ctrl-C, the closing lines, ``blagpt list`` and ``blagpt runs``."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios

from cli_runs import env, meta, one_error_line, sets, start, wait_for
from conftest import run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args, cwd, cols=80, extra_env=None, timeout=300) -> tuple[int, str]:
    """``python -m blagpt ARGS`` on a pseudo-terminal ``cols`` wide (stdout and stderr both);
    returns the exit code and everything it wrote, escape sequences removed."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "blagpt", *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                            env={**env(), "COLUMNS": str(cols), **(extra_env or {})}, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=timeout), ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_the_bar_fits_80_columns_and_library_output_goes_above_it(workdir):
    """A fresh MLflow store (its INFO lines: "Creating initial MLflow database tables") and a
    library warning in the middle of training: neither breaks the bar, which keeps the loss, the
    learning rate and tokens/s, and fits 80 columns with a long run name shortened."""
    name = "a-rather-long-run-name-that-would-never-fit-20261202-151706-144"
    rc, out = run_in_terminal(["train", *sets("train.steps=40", "train.log_interval=5", "model.warn_at=12",
                                              f"tracking.run_name={name}")], workdir, extra_env={"MLFLOW_TRACKING_URI": ""})
    assert rc == 0, out
    assert (workdir / "mlflow.db").is_file()  # the store was created during this run
    assert "Creating initial MLflow database tables" not in out and " INFO " not in out, out
    segments = re.split(r"[\r\n]+", out)
    bars = [s for s in segments if "%|" in s]
    assert bars and all(len(s.rstrip()) <= 80 for s in bars), "\n".join(s for s in bars if len(s.rstrip()) > 80)
    last = bars[-1]
    assert "40/40" in last and re.search(r"loss \d+\.\d{4} lr \d\.\de-\d\d [\d.]+k? tok/s", last), last
    assert name not in last and last.startswith("a-rath") and "…" in last  # shortened, the bar kept
    assert re.search(r"\|█{10,}\|", last), last
    notices = [s for s in segments if "tinylm test notice" in s]
    assert len(notices) == 1 and notices[0].startswith("blagpt: warning: UserWarning: tinylm test notice"), notices


def test_ctrl_c_exits_130_after_its_checkpoint_and_the_lines_name_their_steps(workdir):
    """Stopped by Ctrl-C in step 5 (last evaluation at step 4): the checkpoint is step 5, the exit
    130, the closing line pairs the evaluation with step 4; the resume says it starts at step 5."""
    hold = workdir / "hold"
    args = ["train", "--no-track", *sets("tracking.run_name=cc", "train.steps=6", "train.eval_interval=2",
                                         "model.hold_at=5", f"model.hold_file={hold}")]
    proc = start(args, workdir)
    wait_for(workdir / "hold.waiting", proc, "the hold at step 5")
    proc.send_signal(signal.SIGINT)
    hold.write_text("")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert meta(workdir / "runs/cc")["checkpoint_step"] == 5
    assert "stopped at step 5; continue with: blagpt train --resume cc" in out
    assert re.search(r"^last evaluation: val loss \d+\.\d{4} nats/token \| val bpb \d+\.\d{4} at step 4$", out, re.M), out
    again = run_cli(["train", "--no-track", "--resume", "cc"], cwd=workdir, check=0)
    assert "resumed at step 5" in again.stdout
    assert re.search(r"^final: val loss .* at step 6$", again.stdout, re.M), again.stdout


def test_list_shows_each_models_presets():
    out = run_cli(["list"], check=0).stdout
    header = next(ln for ln in out.splitlines() if ln.startswith("MODEL"))
    row = next(ln for ln in out.splitlines() if ln.startswith("tinylm "))
    assert "PRESETS" in header and "wide,diverge,held" in row


def test_runs_never_creates_a_store_where_there_is_none(workdir):
    proc = run_cli(["runs"], cwd=workdir, env={"MLFLOW_TRACKING_URI": ""}, check=0)
    assert "no MLflow store at" in proc.stdout and "no run was tracked here" in proc.stdout
    assert not (workdir / "mlflow.db").exists() and list(workdir.iterdir()) == []
    bad = run_cli(["sample", "--run", "0" * 32], cwd=workdir, env={"MLFLOW_TRACKING_URI": ""})
    assert "--run " + "0" * 32 in one_error_line(bad) and not (workdir / "mlflow.db").exists()
