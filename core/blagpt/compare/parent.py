"""The MLflow parent run of a bench or an ablation: its runs are nested under it.

The bench folder records it like a run folder (``run.json``, ``metrics.jsonl``, kind ``bench`` or
``ablate``), so ``blagpt runs sync BENCH_DIR`` uploads what the server missed, as for any run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..run.rundir import RunDir
from ..run.tracking import Tracker, configure_mlflow_http, ensure_run, one_line, sync_client


class ParentRun:
    def __init__(self, folder: Path, kind: str, name: str, uri: str | None, experiment: str, enabled: bool,
                 echo: Callable[[str], None]) -> None:
        self.run = RunDir(folder)
        self.kind, self.name, self.uri, self.experiment, self.enabled, self.echo = kind, name, uri, experiment, enabled, echo
        self.run_id: str | None = None

    def open(self) -> str | None:
        """Create (or find) the parent run; a server that is down leaves the runs unnested."""
        if not self.enabled:
            return None
        self.run.update(kind=self.kind, run_name=self.name, experiment=self.experiment, requested_tracking_uri=self.uri,
                        attempt=int(self.run.meta.get("attempt", 0)) + 1)
        try:
            configure_mlflow_http(10)
            self.run_id = ensure_run(sync_client(self.uri), self.run, self.experiment, self.name)
        except Exception as e:  # noqa: BLE001 - the bench goes on; its folder keeps everything
            self.echo(f"warning: MLflow parent run not created ({one_line(e)}); its runs are tracked unnested")
        return self.run_id

    def finish(self, files: dict[str, Path], params: dict[str, Any], metrics: dict[str, float], interrupted: bool) -> str | None:
        """Log the plan, the entries' figures and the leaderboard files to the parent run."""
        if not self.enabled:
            return None
        tracker = Tracker(self.run, self.uri, self.experiment, self.name, 10.0, True)
        tracker.log_params(params, {"blagpt.kind": self.kind})
        if metrics:  # one point per attempt (each rerun of the bench): a rerun never doubles a point
            tracker.log(int(self.run.meta.get("attempt", 1)), metrics)
        for path in files.values():
            tracker.log_artifact(path)
        if not tracker.close("KILLED" if interrupted else "FINISHED"):
            self.echo(f"warning: MLflow did not receive the {self.kind} summary; upload it with: blagpt runs sync {self.run.path}")
        return tracker.run_id
