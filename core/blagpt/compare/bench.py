"""``blagpt bench`` and ``blagpt ablate``: many training runs on equal terms, resumably.

A bench trains every entry for every seed from one base config (:mod:`.plan`), each run a child
process (:mod:`.supervisor`), under one MLflow parent run (:mod:`.parent`). Everything lives in
one bench folder, ``<train.out_dir>/<bench name>/``, locked while a bench runs in it:

- ``bench.json``: the plan (its identity) and the failures seen (:mod:`.state`);
- one run folder per child, named ``<model>-<config hash>.s<seed>``;
- ``configs/``, ``logs/``: each child's config as launched and its output;
- ``leaderboard.md``, ``leaderboard.csv``, ``bpb_vs_tokens.png``, ``bpb_vs_time.png``;
- ``run.json``/``metrics.jsonl``: the bench's own MLflow run, parent of the children's runs.

With ``--tune``, every entry's trials (one run per grid point, scored on the tuning slice) train
first, then its seeds at its best point (:mod:`.tune`); ``tuning.md`` and ``tune_<field>.png``
record the choice.

Running the same command again resumes: finished runs are read, not redone; every other run with a
checkpoint resumes from it (``blagpt train --resume``), however it was stopped; a run with no
checkpoint starts again. Runs that failed on their own stay failed unless ``--retry-failed``,
which trains them again from step 0 (``blagpt train --restart``).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..run.rundir import FolderLock, RunDir
from .leaderboard import RunData, score_for
from .parent import ParentRun
from .plan import Child, Entry, Plan, section
from .tune import Choice, Grid, choose, point_sets, tuned_tag
from .state import BenchState
from .executor import Job, Sequential
from .supervisor import Supervisor, reason


class Bench:
    """A set of entries x seeds sharing one base config, in one bench folder."""

    def __init__(self, kind: str, identity: dict[str, Any], base_raw: dict[str, Any], seeds: int, name: str | None = None,
                 launcher: list[str] | None = None, retry_failed: bool = False, echo: Callable[[str], None] = print,
                 registry=None, executor=None) -> None:
        from ..plugin.registry import get_registry

        self.plan = Plan(kind, identity, base_raw, seeds, name)
        self.registry = registry or get_registry()
        self.kind, self.seeds, self.name, self.dir = kind, seeds, self.plan.name, self.plan.dir
        self.base_raw, self.experiment = self.plan.base_raw, self.plan.experiment
        self.echo, self.retry_failed = echo, retry_failed
        self.state = BenchState(self.dir, self.plan.identity, self.name)
        self.lock = FolderLock(self.dir, what=kind)
        self.supervisor = Supervisor(self.dir / "logs", launcher or [sys.executable], echo)
        self.executor = executor or Sequential()  # where the runs execute (:mod:`.executor`)
        self.grid: Grid | None = None
        self.score = score_for(str(section(self.base_raw, "task").get("name", "lm")))  # what the runs are ranked and tuned on
        self.choices: list[Choice] = []
        self.parent = ParentRun(self.dir, kind, self.name, self.plan.tracking_uri, self.experiment, self.plan.tracking_enabled, echo)

    @property
    def stopping(self) -> bool:
        return self.supervisor.stopping

    def run(self, entries: list[Entry], grid: Grid | None = None) -> tuple[list[RunData], bool]:
        """Train what is not finished yet; returns every child's :class:`RunData` (labelled by
        entry) and whether the bench was interrupted. With a tuning ``grid``, every entry's
        trials run first and its seeds then train at its best point (:mod:`.tune`); the choices
        are kept in :attr:`choices`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.lock.held:
            self.lock.acquire()
        self.state.save(self.seeds)
        if self.parent.run_id is None:
            self.parent.open()
        self.choices: list[Choice] = []
        if not grid:
            children = self.plan.children(entries, self.registry, self.echo)
            self.progress = Progress(len(children))
            self.run_all(children)
            return [self.run_data(c) for c in children], self.stopping
        trials = self.plan.trials(entries, grid.points(), self.registry, self.echo)
        self.progress = Progress(len(trials) + len(entries) * self.seeds)
        self.run_all(trials, "tune ")
        self.trials = trials
        finals, tags, unplaced = [], {}, []
        for e in entries:
            mine = {tuple(p): self.run_data(c) for p, c in zip(_points(grid, len(entries)), trials) if c.entry.label == e.label}
            choice = choose(e.label, grid, mine, self.score) if not self.stopping else Choice(e.label, error="tuning interrupted")
            self.choices.append(choice)
            if choice.best is None:
                unplaced.append(e)
                continue
            final = replace(e, sets=(*e.sets, *point_sets(choice.best)))
            finals.append(final)
            tags[final] = {"blagpt.tuned": tuned_tag(choice)}
            if not self.stopping:
                self.echo(f"tuned {e.label}: {tuned_tag(choice)} (tuning {self.score.words} {choice.best_score:.4f})")
        children = self.plan.children(finals, self.registry, self.echo, tags=tags) if not self.stopping else []
        self.progress.total = len(trials) + len(children) + len(unplaced) * self.seeds
        self.run_all(children)
        data = [self.run_data(c) for c in children]
        base_seed = int(section(self.base_raw, "train").get("seed", 0))
        for e in unplaced:
            why = next(c.error for c in self.choices if c.label == e.label)
            data += [RunData(name=f"{e.model}-untuned.s{base_seed + s}", entry=e.label, seed=base_seed + s, status="NOT RUN", error=why)
                     for s in range(self.seeds)]
        return data, self.stopping

    def run_all(self, children: list[Child], what: str = "") -> None:
        self.executor.run([self.child_job(c, what) for c in children], self.supervisor)
        self.state.save(self.seeds)

    def child_job(self, child: Child, what: str = "") -> Job:
        """The child as a :class:`~.executor.Job`: its ``blagpt train`` arguments when it starts
        (None: nothing to do), its record when it ends."""
        run = RunDir(self.dir / child.name)

        def done(outcome, seconds: float) -> None:
            self.progress.trained(seconds)
            self.record(child, run.refresh(), outcome, seconds)

        return Job(child.name, lambda: self.start_child(child, run, f"[{self.progress.next()}] {what}"), done)

    def start_child(self, child: Child, run: RunDir, tag: str) -> list[str] | None:
        point = f" {child.tags['blagpt.trial']}" if "blagpt.trial" in child.tags else ""
        head = f"{tag}{child.entry.label}{point} seed {child.seed}"
        if child.config is None:
            self.echo(f"{head}: FAILED before start: {child.error}")
            return None
        failure = self.state.failures.get(child.name)
        if run.refresh().exists() and run.status == "FINISHED":
            self.echo(f"{head}: done already ({child.name})")
            return None
        if failure and not self.retry_failed:
            self.echo(f"{head}: failed before ({failure}); --retry-failed runs it again")
            return None
        return self.child_args(child, run, failure, head)

    def child_args(self, child: Child, run: RunDir, failure: str | None, head: str) -> list[str]:
        """``blagpt train`` arguments for this child: resume it, or start it (again)."""
        if failure:  # --retry-failed: an honest failure is trained again from step 0
            self.state.failures.pop(child.name, None)
            self.echo(f"{head}: training {child.name} again from step 0 (it failed before)")
            return ["train", "--config", str(self.write_child_config(child)), "--restart"]
        if run.has_checkpoint:
            self.echo(f"{head}: resuming {child.name} from its checkpoint")
            return ["train", "--resume", child.name, "--set", f"train.out_dir={self.dir}"]
        self.echo(f"{head}: training {child.name}")
        return ["train", "--config", str(self.write_child_config(child))]

    def record(self, child: Child, run: RunDir, outcome, seconds: float) -> None:
        status = run.status if run.exists() else None
        who = "" if isinstance(self.executor, Sequential) else f" {child.name}"  # runs beside each other: say which
        if outcome.rc == 0 and status == "FINISHED":
            on = child.config.train.eval_on
            final = _last_eval(run, on, self.score.key)
            eta = self.progress.eta()
            self.echo((f"    ->{who} {on} {self.score.words} {final:.4f} ({seconds:.0f} s)" if final is not None else f"    ->{who} finished")
                      + (f"; about {eta} left" if eta else ""))
        elif outcome.stopping or status == "KILLED":
            self.supervisor.stopping = True
            self.echo(f"    ->{who} stopped; run the same command again to resume it from its last checkpoint")
        else:
            why = run.meta.get("tags", {}).get("blagpt.error") if run.exists() else None
            self.state.failures[child.name] = why or reason(outcome.rc, outcome.err_tail)
            self.echo(f"    ->{who} FAILED: {self.state.failures[child.name]}")
        self.state.save(self.seeds)

    def write_child_config(self, child: Child) -> Path:
        cfg = child.config.model_copy(deep=True)
        cfg.train.out_dir = str(self.dir)
        cfg.tracking.run_name = child.name
        tags = {**cfg.tracking.tags, **child.tags, "blagpt.bench": self.name, "blagpt.entry": child.entry.label}
        if self.parent.run_id:
            tags["mlflow.parentRunId"] = self.parent.run_id
        cfg.tracking.tags = tags
        path = self.dir / "configs" / f"{child.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cfg.to_yaml())
        return path

    def finish(self, files: dict[str, Path], params: dict[str, Any], metrics: dict[str, float], interrupted: bool) -> str | None:
        """Log the plan, the entries' figures and the leaderboard files to the parent run; release the folder."""
        try:
            return self.parent.finish(files, params, metrics, interrupted)
        finally:
            self.lock.release()

    def run_data(self, child: Child) -> RunData:
        run = RunDir(self.dir / child.name)
        meta = run.meta if run.exists() else {}
        fields = dict(name=child.name, entry=child.entry.label, seed=child.seed, status=meta.get("status", "NOT RUN"),
                      params=meta.get("params", {}), error=child.error or self.state.failures.get(child.name),
                      run_id=meta.get("mlflow_run_id"))
        fields["tags"] = {**child.tags, **meta.get("tags", {})}
        if child.config is None or not meta:
            return RunData(**fields)
        return RunData.from_metrics(run.metrics.read(), **fields)


def _points(grid: Grid, n_entries: int):
    """The grid point of each trial, in :meth:`Plan.trials` order (point-major)."""
    for point in grid.points():
        for _ in range(n_entries):
            yield point


def _last_eval(run: RunDir, on: str = "val", key: str = "bpb") -> float | None:
    vals = [r["value"] for r in run.metrics.read() if r["key"] == f"{on}/{key}"]
    return vals[-1] if vals else None


class Progress:
    """The bench's place among its runs, and the time left at the pace of the runs trained so far
    in this attempt (runs found finished cost nothing and do not count)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.seconds = total, 0, []

    def next(self) -> str:
        self.done += 1
        return f"{self.done}/{self.total}"

    def trained(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def eta(self) -> str | None:
        left = self.total - self.done
        if not self.seconds or left <= 0:
            return None
        s = left * sum(self.seconds) / len(self.seconds)
        return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"
