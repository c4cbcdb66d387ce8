"""Where a bench's training runs execute: one after another, N at once on this machine, or as Ray
tasks on a cluster.

A bench hands its executor a list of :class:`Job`: each knows how to start (``start()`` returns the
``blagpt`` arguments, or ``None`` when there is nothing to do: finished already, failed before) and
what to do when it ends (``done(outcome, seconds)``, always called in the bench's main thread, so
the bench's own files have one writer). The bench folder stays the single record whatever the
executor: every run writes its run folder there (and its MLflow run), and a bench run again resumes
the same way.

- :class:`Sequential`: one run at a time (the default).
- :class:`Parallel`: ``--parallel N`` runs at once. On CUDA each gets its own GPUs through
  ``CUDA_VISIBLE_DEVICES`` (the launcher's ``--nproc_per_node`` of them); on the CPU each gets its
  own share of the cores (``sched_setaffinity`` and ``OMP_NUM_THREADS``). A run's result does not
  depend on what runs beside it; it is identical to the same run alone with the same number of
  threads (tested on the CPU with N=2).
- :class:`RayExecutor`: ``--executor ray [--address ADDR]``: each run is a Ray task that starts the
  run's process on whichever node Ray picks (``num_gpus`` = the launcher's processes per node on a
  CUDA cluster). The bench folder (``train.out_dir``) must be on a filesystem every node sees.
  Ctrl-C reaches the tasks through a file in the bench's log folder (``.stop``, a line per Ctrl-C):
  each running run stops as under a local Ctrl-C (a checkpoint after its step; a second stops it at
  once), a task not started yet does not start; the bench waits for them, and the same command
  resumes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import BlagptError
from .supervisor import Outcome, Supervisor

STOP_FILE = ".stop"  # in the bench's log folder: a line per stop request, read by the Ray tasks


@dataclass
class Job:
    """One training run of a bench."""

    name: str
    start: Callable[[], list[str] | None]
    done: Callable[[Outcome, float], None]


def processes_per_run(launcher: list[str] | None) -> int:
    """Processes (GPUs) one run takes: the launcher's ``--nproc_per_node`` (or ``--nproc-per-node``), else 1."""
    args = list(launcher or [])
    for i, a in enumerate(args):
        for flag in ("--nproc_per_node", "--nproc-per-node"):
            if a == flag and i + 1 < len(args) and args[i + 1].isdigit():
                return int(args[i + 1])
            if a.startswith(flag + "=") and a.split("=", 1)[1].isdigit():
                return int(a.split("=", 1)[1])
    return 1


class Sequential:
    """One run after another, each with the whole machine."""

    def run(self, jobs: list[Job], supervisor: Supervisor) -> None:
        for job in jobs:
            if supervisor.stopping:
                break
            args = job.start()
            if args is None:
                continue
            t0 = time.monotonic()
            outcome = supervisor.run(job.name, args)
            job.done(outcome, time.monotonic() - t0)


class Parallel:
    """``n`` runs at once, each on its own GPUs or its own cores."""

    def __init__(self, n: int, launcher: list[str] | None = None, device: str = "auto") -> None:
        self.n, self.per_run = n, processes_per_run(launcher)
        self.slots = self._slots(device)

    def _slots(self, device: str) -> list[tuple[dict[str, str], set[int] | None]]:
        gpus = _visible_gpus() if device in ("auto", "cuda") else []
        if gpus:
            need = self.n * self.per_run
            if len(gpus) < need:
                raise BlagptError(f"--parallel {self.n}: needs {self.n} x {self.per_run} GPUs, this machine shows {len(gpus)}")
            share = lambda i: gpus[i * self.per_run:(i + 1) * self.per_run]  # noqa: E731
            return [({"CUDA_VISIBLE_DEVICES": ",".join(share(i))}, None) for i in range(self.n)]
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        if len(cores) < self.n:
            raise BlagptError(f"--parallel {self.n}: more runs at once than the {len(cores)} CPU cores this process may use")
        shares = [cores[i::self.n] for i in range(self.n)]
        # each process of a run (torchrun ranks) gets its part of the share as threads
        return [({"OMP_NUM_THREADS": str(max(1, len(c) // self.per_run)), "MKL_NUM_THREADS": str(max(1, len(c) // self.per_run)),
                  "CUDA_VISIBLE_DEVICES": ""}, set(c)) for c in shares]

    def run(self, jobs: list[Job], supervisor: Supervisor) -> None:
        pending, free = list(jobs), list(range(self.n))
        ended: queue.Queue = queue.Queue()
        running = 0

        def work(job: Job, args: list[str], slot: int) -> None:
            env, cpus = self.slots[slot]
            t0 = time.monotonic()
            try:
                outcome = supervisor.run(job.name, args, env=env, cpus=cpus, prefix=f"{job.name}: ")
            except Exception as e:  # noqa: BLE001 - e.g. the log folder unwritable: the bench reports it
                outcome = Outcome(1, [f"error: {e}"], supervisor.stopping)
            ended.put((job, outcome, time.monotonic() - t0, slot))

        with _forward_signals(supervisor):
            while pending or running:
                while pending and free and not supervisor.stopping:
                    job = pending.pop(0)
                    args = job.start()
                    if args is not None:
                        threading.Thread(target=work, args=(job, args, free.pop(0)), name=f"run {job.name}", daemon=True).start()
                        running += 1
                if supervisor.stopping:
                    pending.clear()
                if not running:
                    continue
                try:
                    job, outcome, seconds, slot = ended.get(timeout=0.2)  # short waits: signals reach the main thread
                except queue.Empty:
                    continue
                running -= 1
                free.append(slot)
                job.done(outcome, seconds)


class RayExecutor:
    """Each run a Ray task: ``num_gpus`` from the launcher on a CUDA cluster, else one CPU."""

    def __init__(self, address: str | None = None, launcher: list[str] | None = None, device: str = "auto") -> None:
        try:
            import ray
        except ImportError:
            raise BlagptError("--executor ray: Ray is not installed; pip install 'blagpt[ray]'") from None
        self.ray, self.launcher = ray, launcher
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise BlagptError(f"--address {address}: cannot connect to a Ray cluster ({' '.join(str(e).split())[:200]})") from None
        gpus = ray.cluster_resources().get("GPU", 0) if device in ("auto", "cuda") else 0
        self.num_gpus = processes_per_run(launcher) if gpus else 0
        self.num_cpus = 1 if gpus else processes_per_run(launcher)  # on CPUs: a core per process of the run

    def run(self, jobs: list[Job], supervisor: Supervisor) -> None:
        ray = self.ray
        task = ray.remote(_ray_run).options(num_gpus=self.num_gpus, num_cpus=self.num_cpus, max_retries=0)
        logs = supervisor.logs.absolute()
        logs.mkdir(parents=True, exist_ok=True)
        stop = logs / STOP_FILE
        stop.unlink(missing_ok=True)  # a stop of an earlier attempt

        def ask_stop() -> None:
            with open(stop, "a") as f:
                f.write("stop\n")

        refs: dict[Any, Job] = {}
        started: dict[Any, float] = {}
        with _forward_signals(supervisor, also=ask_stop):
            for job in jobs:
                if supervisor.stopping:
                    break
                args = job.start()
                if args is None:
                    continue
                ref = task.remote(os.getcwd(), str(logs), supervisor.launcher, job.name, args, _forwarded_env())
                refs[ref], started[ref] = job, time.monotonic()
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.2)
                for ref in ready:
                    job = refs.pop(ref)
                    try:
                        rc, tail, stopped = ray.get(ref)
                        outcome = Outcome(rc, tail, stopped or supervisor.stopping)
                    except ray.exceptions.RayError as e:
                        outcome = Outcome(1, [f"error: the Ray task failed: {' '.join(str(e).split())[:300]}"], supervisor.stopping)
                    job.done(outcome, time.monotonic() - started.pop(ref))

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _ray_run(cwd: str, logs: str, launcher: list[str], name: str, args: list[str], env: dict[str, str]) -> tuple[int, list[str], bool]:
    """A Ray task: the run's ``blagpt`` process on this node, to its end, in the bench's working
    directory ``cwd`` (the same path on every node: a shared filesystem). Cancelling the task
    (KeyboardInterrupt here) stops the run as Ctrl-C does: a checkpoint at the end of its step."""
    from pathlib import Path

    from .supervisor import Supervisor

    os.chdir(cwd)  # the run's relative paths (bench folder, config) are the bench's
    stop = Path(logs) / STOP_FILE
    if stop.exists():  # the bench was stopped before this task started
        return -2, ["error: the bench was stopped before this run started"], True
    sup = Supervisor(Path(logs), launcher, echo=lambda line: None)
    result: dict[str, Outcome] = {}
    thread = threading.Thread(target=lambda: result.setdefault("o", sup.run(name, args, env=env)), daemon=True)
    thread.start()
    seen = 0
    while thread.is_alive():
        try:
            thread.join(0.2)
            asked = len(stop.read_text().splitlines()) if stop.exists() else 0
        except KeyboardInterrupt:  # ray.cancel
            asked = seen + 1
        if asked > seen and sup.procs:  # each stop request once, to the running process
            sup.stop_all()
            seen += 1
    o = result.get("o") or Outcome(1, ["error: the run's supervisor ended without an outcome"], sup.stopping)
    return o.rc, o.err_tail, o.stopping


def _forwarded_env() -> dict[str, str]:
    """What a run started by a Ray task on another node should see of this environment."""
    keep = ("MLFLOW_", "BLAGPT_", "OMP_NUM_THREADS", "PYTHONPATH", "HF_")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}


class _forward_signals:
    """In the main thread: Ctrl-C / SIGTERM stop every running run (:meth:`Supervisor.stop_all`),
    and call ``also`` (e.g. cancel Ray tasks)."""

    def __init__(self, supervisor: Supervisor, also: Callable[[], Any] | None = None) -> None:
        self.supervisor, self.also, self.old = supervisor, also, {}

    def __enter__(self):
        import signal

        def handler(signum, frame):
            self.supervisor.stop_all()
            if self.also is not None:
                self.also()

        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for s, h in self.old.items():
            signal.signal(s, h)


def _visible_gpus() -> list[str]:
    """The GPU ids this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else torch's count."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA
        return []


def make_executor(kind: str, parallel: int, address: str | None, launcher: list[str] | None, device: str = "auto"):
    """The executor the CLI options ask for."""
    if kind == "ray":
        return RayExecutor(address, launcher, device)
    if address is not None:
        raise BlagptError("--address: only with --executor ray")
    if parallel > 1:
        return Parallel(parallel, launcher, device)
    return Sequential()


def describe(executor) -> str:
    if isinstance(executor, Parallel):
        return f"{executor.n} runs at once"
    if isinstance(executor, RayExecutor):
        return f"Ray tasks ({executor.num_gpus} GPU(s) each)" if executor.num_gpus else "Ray tasks"
    return "one run at a time"


__all__ = ["Job", "Parallel", "RayExecutor", "Sequential", "make_executor", "processes_per_run"]
