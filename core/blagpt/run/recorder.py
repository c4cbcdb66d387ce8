"""Rank 0's side of a training run's record: it owns the run folder while the run lives.

:class:`Recorder` claims the folder (its lock; a name that is taken is refused; what a killed
owner left is cleaned up), writes ``run.json`` and ``config.yaml``, keeps the metrics up to the
step the run (re)starts at, mirrors everything to MLflow (:class:`~.tracking.Tracker`), and
records how the run ended: its status, and why it failed. Other ranks have no recorder.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..errors import BlagptError
from .resume import Resume
from .rundir import RunDir
from .tracking import CONSTANT_METRICS, Tracker, loss_curve_png, mark_restart, provenance_tags, run_description


class Recorder:
    def __init__(self, cfg, say: Callable[[str], None]) -> None:
        self.cfg, self.say = cfg, say
        self.run: RunDir | None = None
        self.tracker: Tracker | None = None
        self.created = False  # this process made the folder (removed again if the run fails before it starts)
        self.claimed_ms = int(time.time() * 1000)  # the run's start, if it starts here (MLflow's start time)

    def claim(self, resume: Resume | None, restart: bool) -> RunDir:
        """Lock the run folder: the resumed run's, or ``<out_dir>/<run name>`` for a new run (a name
        with a checkpoint or a finished run is taken unless ``restart``)."""
        self.claimed_ms = int(time.time() * 1000)
        if resume is not None:
            self.run = resume.run
            self.run.take_ownership()
            self.run.refresh()
            if resume.state is None:
                self.say(f"{self.run.path}: no checkpoint was written before it stopped; starting it again from step 0")
            return self.run
        name = self.cfg.tracking.run_name or f"{self.cfg.model.name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S-%f')[:-3]}"
        run = self.run = RunDir(Path(self.cfg.train.out_dir) / name)
        self.created = not run.path.exists()
        run.create("train.out_dir")
        run.take_ownership()
        if run.exists() and (run.has_checkpoint or run.status == "FINISHED") and not restart:
            run.lock.release()
            raise BlagptError(
                f"{run.path}: a run of this name exists (status {run.status}, checkpoint at step {run.checkpoint_step}); "
                f"continue it with --resume {name}, start it over with --restart, or pick another tracking.run_name"
            )
        if run.exists():  # started before but never checkpointed (or --restart): start again
            run.remove_checkpoint()
            self.say(f"{run.path}: starting this run again from step 0")
        return run

    def start(self, step: int, resumed_from: int | None, budget, params: dict[str, Any], registry, datasets=(),
              tokenizer: str | None = None, budget_text: str | None = None) -> None:
        """The record of a run that starts training at ``step``, and its MLflow mirror. Params whose
        value is None (an unset option) are left out, and so is ``tracking.uri`` (where the record
        goes, not what was trained: a run resumed on another machine may reach the same server
        by another name, and a changed param would replace its MLflow run)."""
        cfg, run = self.cfg, self.run
        params = {k: v for k, v in params.items() if v is not None and k != "tracking.uri"}
        run.config_file.write_text(cfg.to_yaml())
        kept = run.metrics.keep_until(step)
        mark_restart(run, kept, params)
        tags = {k: v for k, v in run.meta.get("tags", {}).items() if k != "blagpt.error"}  # an earlier attempt's
        kept_params = {k: v for k, v in run.meta.get("params", {}).items() if k in CONSTANT_METRICS and kept}
        started = run.meta.get("start_time_ms") if resumed_from is not None else None  # a new start (or --restart): now
        run.update(run_name=run.name, kind="train", experiment=cfg.tracking.experiment, model=cfg.model.name,
                   requested_tracking_uri=cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI"), status="RUNNING",
                   steps_planned=budget.steps, budget=budget.describe(), tags=tags, resumed_from=resumed_from,
                   params=kept_params, start_time_ms=started or self.claimed_ms, optimizer=cfg.optimizer.name,
                   preset=getattr(cfg.model, "preset", None))
        if list(datasets) != run.meta.get("inputs"):
            run.update(inputs=list(datasets), inputs_synced=False)
        t = cfg.tracking
        self.tracker = Tracker(run, t.uri, t.experiment, run.name, t.timeout_s, t.enabled,
                               t.system_metrics_interval_s if t.system_metrics else None)
        tags = {**provenance_tags(registry, cfg, tokenizer), "mlflow.note.content": run_description(cfg, budget_text or budget.describe())}
        self.tracker.log_params(params, tags)
        self.tracker.log_artifact(run.config_file)

    def checkpointed(self) -> None:
        """A checkpoint was written: the mirror uploads it (``tracking.log_checkpoints``)."""
        if self.tracker is not None and self.cfg.tracking.log_checkpoints:
            self.tracker.log_artifact(self.run.checkpoint_file)

    def log(self, step: int, row: dict[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log(step, row)

    def fail(self, e: Exception) -> None:
        """Why the run failed, for ``blagpt compare`` and the MLflow UI. A run that failed before it
        started training leaves no folder behind if this process made it."""
        if self.tracker is None:
            if self.created and self.run is not None and self.run.lock.held:
                shutil.rmtree(self.run.path, ignore_errors=True)
            return
        try:
            self.tracker.log_params({}, {"blagpt.error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]})
        except BlagptError:
            pass  # the disk is full: the error line on the terminal says why

    def close(self, status: str, result) -> None:
        """The loss curve, the final status, MLflow's last upload; then the folder is released."""
        if self.run is None:
            return
        try:
            if self.tracker is not None:
                self._finish(status, result)
        finally:
            self.run.lock.release()

    def _finish(self, status: str, result) -> None:
        tracker = self.tracker
        try:
            tracker.log_artifact(loss_curve_png(self.run))
        except Exception as e:  # noqa: BLE001 - a plot must not hide the real outcome
            self.say(f"warning: loss curve not drawn ({type(e).__name__}: {e})")
        try:
            result.synced = tracker.close(status)
        except BlagptError as e:
            self.say(f"warning: {e}")
        result.mlflow_run_id = tracker.run_id if tracker.enabled else None  # --no-track: this attempt is not in MLflow
        if tracker.enabled and not result.synced:
            why = f" ({tracker.error})" if tracker.error else ""
            self.say(f"warning: MLflow did not receive everything{why}; the run is kept in {self.run.path}; "
                     f"upload it with: blagpt runs sync {self.run.path}")
