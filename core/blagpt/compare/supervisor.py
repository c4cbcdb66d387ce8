"""Running one training run of a bench as a child process, and telling how it ended.

Each run is an ordinary ``blagpt train`` in its own process (``--launcher`` puts ``torchrun ...``
in front for several GPUs): its peak memory and its failures (out of memory, NaN, a broken plugin)
stay with it. The child writes to log files, never to a pipe: if the bench dies, the child's next
print must not fail; it gets SIGTERM instead (``PR_SET_PDEATHSIG``), checkpoints and stops.
Ctrl-C in the bench is passed on: the first stops the child after its step with a checkpoint, a
second stops it at once (its last checkpoint stays).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class Outcome:
    """How a child process ended: its exit code, the tail of its stderr, whether the bench was
    stopping when it ended (then nothing the child did counts as a failure)."""

    rc: int
    err_tail: list[str]
    stopping: bool


class Supervisor:
    def __init__(self, logs: Path, launcher: list[str], echo: Callable[[str], None]) -> None:
        self.logs, self.launcher, self.echo = logs, launcher, echo
        self.stopping = False
        self.procs: set[subprocess.Popen] = set()  # running children (several under --parallel)

    def run(self, name: str, args: list[str], env: dict[str, str] | None = None, cpus: set[int] | None = None,
            prefix: str = "") -> Outcome:
        """Run ``blagpt ARGS`` to its end, echoing its evaluation lines (after ``prefix``). ``env``:
        extra environment (a GPU, a thread count); ``cpus``: the cores it may run on. Outside the
        main thread (``--parallel``) the caller's main thread forwards signals (:meth:`stop_all`)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        cmd = [*self.launcher, "-m", "blagpt", *args, "--no-progress"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        out_path, err_path = self.logs / f"{name}.out", self.logs / f"{name}.err"
        with open(out_path, "a") as out, open(err_path, "a") as err, open(out_path) as follow:
            follow.seek(0, os.SEEK_END)
            err_start = err.tell()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True,
                                    preexec_fn=lambda: _die_with_parent(cpus))
            self.procs.add(proc)
            main = threading.current_thread() is threading.main_thread()
            old = {s: signal.signal(s, lambda signum, frame: self.stop_all()) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
            try:
                rc = self._follow(proc, follow, prefix)
            finally:
                self.procs.discard(proc)
                for s, h in old.items():
                    signal.signal(s, h)
        with open(err_path) as f:
            f.seek(err_start)
            tail = f.read()[-4000:].splitlines()
        return Outcome(rc, tail, self.stopping)

    def stop_all(self) -> None:
        """A stop request (Ctrl-C, SIGTERM): SIGINT to every running child; the first makes each
        checkpoint at the end of its step, a second stops them at once."""
        first = not self.stopping
        self.stopping = True
        for proc in list(self.procs):
            proc.send_signal(signal.SIGINT)
        if first:
            self.echo("    stopping: the running run checkpoints at the end of its step (Ctrl-C again to stop it at once)")

    def _follow(self, proc: subprocess.Popen, follow, prefix: str = "") -> int:
        pending = ""
        while True:
            rc = proc.poll()
            *lines, pending = (pending + follow.read()).split("\n")
            for line in lines:
                if line.startswith("eval step"):
                    self.echo("    " + prefix + line.rstrip())
            if rc is not None:
                return rc
            time.sleep(0.2)


def reason(rc: int, err_tail: list[str]) -> str:
    """One line saying why a child failed: its ``error:`` line, else the last line of its traceback."""
    lines = [ln.strip() for ln in err_tail if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln[len("error: "):][:300]
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return lines[-1][:300] if lines else f"exit code {rc}"


def _die_with_parent(cpus: set[int] | None = None) -> None:
    """In the child, before exec: get SIGTERM when the bench process dies (Linux), so a killed
    bench does not leave its run training unseen; SIGTERM makes the run checkpoint and stop.
    ``cpus``: pin the child (and what it starts) to these cores."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    # a child started from a thread that blocks signals (a Ray worker's) would inherit the mask
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
