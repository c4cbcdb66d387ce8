"""MLflow tracking that never stalls or loses a run.

Every run writes its own record to its run folder first: ``run.json`` (names, params, tags, the
MLflow run id once known) and ``metrics.jsonl`` (one JSON line per metric). A background thread
mirrors that record to MLflow in batches (one ``log_batch`` per second at most, not one request
per metric), with bounded retries and a request timeout (``tracking.timeout_s``). If the tracking
server is down or hangs, training goes on; whatever did not reach MLflow stays in the run folder
and ``blagpt runs sync RUN_DIR`` uploads it later (creating the MLflow run if it never existed).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
BATCH_MAX = 900  # MLflow accepts 1000 metrics per log_batch


def configure_mlflow_http(timeout_s: float) -> None:
    """Bound MLflow's HTTP retries and timeouts (defaults: 7 retries, 120 s: minutes of blocking)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(round(timeout_s)))))


class RunRecord:
    """The run folder's own copy of everything tracked (the source of truth)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta_path = self.dir / RUN_FILE
        self.metrics_path = self.dir / METRICS_FILE
        self.meta: dict[str, Any] = json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}
        self._lock = threading.Lock()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.meta.update(fields)
            tmp = self.meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.meta, indent=1, sort_keys=True, default=str))
            os.replace(tmp, self.meta_path)

    def append_metrics(self, step: int, values: dict[str, float], timestamp_ms: int) -> list[dict]:
        rows = [{"key": k, "value": float(v), "step": int(step), "ts": timestamp_ms} for k, v in values.items()]
        with self._lock, open(self.metrics_path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        return rows

    def read_metrics(self) -> list[dict]:
        with self._lock:
            if not self.metrics_path.exists():
                return []
            text = self.metrics_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def truncate_metrics_after(self, step: int) -> None:
        """Drop metrics logged after ``step`` (a resumed run repeats them)."""
        rows = [r for r in self.read_metrics() if r["step"] <= step]
        with self._lock:
            tmp = self.metrics_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, self.metrics_path)
        if self.meta.get("metrics_synced", 0) > len(rows):
            self.update(metrics_synced=len(rows))


class Tracker:
    """Mirrors a :class:`RunRecord` to MLflow from a background thread.

    ``log`` and ``log_params`` return at once. ``close`` waits at most ``2 * timeout_s`` for the
    mirror to catch up and returns whether everything reached MLflow.
    """

    def __init__(self, record: RunRecord, uri: str | None, experiment: str, run_name: str, timeout_s: float, enabled: bool = True) -> None:
        self.record, self.uri, self.experiment, self.run_name = record, uri, experiment, run_name
        self.timeout_s = timeout_s
        self.enabled = enabled
        self.error: str | None = None
        self._q: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        if enabled:
            configure_mlflow_http(timeout_s)
            self._thread = threading.Thread(target=self._work, name="blagpt-mlflow", daemon=True)
            self._thread.start()

    # -- main thread ---------------------------------------------------------------------

    def log(self, step: int, values: dict[str, float]) -> None:
        self.record.append_metrics(step, values, int(time.time() * 1000))
        if self.enabled:
            self._q.put(("metrics", None))

    def log_params(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        self.record.update(params={**self.record.meta.get("params", {}), **params}, tags={**self.record.meta.get("tags", {}), **tags})
        if self.enabled:
            self._q.put(("params", None))

    def log_artifact(self, path: str | Path) -> None:
        arts = sorted(set(self.record.meta.get("artifacts", [])) | {str(Path(path).resolve())})
        self.record.update(artifacts=arts)
        if self.enabled:
            self._q.put(("artifact", str(path)))

    def close(self, status: str = "FINISHED") -> bool:
        """Finish the MLflow run; True if everything in the run folder reached MLflow."""
        self.record.update(status=status)
        if not self.enabled or self._thread is None:
            return False
        self._q.put(("end", status))
        self._thread.join(timeout=2 * self.timeout_s + 5)
        synced = not self._thread.is_alive() and self.error is None and self.record.meta.get("synced_all", False)
        return bool(synced)

    @property
    def run_id(self) -> str | None:
        return self.record.meta.get("mlflow_run_id")

    # -- background thread ---------------------------------------------------------------

    def _work(self) -> None:
        try:
            self.client = sync_client(self.uri)
            ensure_run(self.client, self.record, self.experiment, self.run_name)
        except Exception as e:  # noqa: BLE001 - server down: keep the record, stop mirroring
            self.error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            self._drain_until_end()
            return
        while True:
            item = self._q.get()
            items = [item]
            deadline = time.monotonic() + 1.0
            while items[-1][0] != "end" and time.monotonic() < deadline:
                try:
                    items.append(self._q.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                upload(self.client, self.record)
                for kind, payload in items:
                    if kind == "end":
                        self.client.set_terminated(self.record.meta["mlflow_run_id"], status=payload)
                        self.record.update(synced_all=self.record.meta.get("metrics_synced", 0) >= len(self.record.read_metrics()))
                        return
            except Exception as e:  # noqa: BLE001
                self.error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                self._drain_until_end()
                return

    def _drain_until_end(self) -> None:
        while self._q.get()[0] != "end":
            pass


def sync_client(uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_run(client, record: RunRecord, experiment: str, run_name: str) -> str:
    """The record's MLflow run id, creating the experiment and run when they do not exist yet."""
    run_id = record.meta.get("mlflow_run_id")
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={"blagpt.run_dir": str(record.dir.resolve())})
    record.update(mlflow_run_id=run.info.run_id, mlflow_experiment_id=exp_id, tracking_uri=client.tracking_uri)
    return run.info.run_id


def upload(client, record: RunRecord) -> None:
    """Send to MLflow whatever of the record it does not have yet (params, tags, metrics, artifacts)."""
    from mlflow.entities import Metric, Param, RunTag

    run_id = record.meta["mlflow_run_id"]
    params = record.meta.get("params", {})
    sent_params = set(record.meta.get("params_synced", []))
    todo = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in sent_params]
    tags = [RunTag(k, str(v)) for k, v in record.meta.get("tags", {}).items() if k not in set(record.meta.get("tags_synced", []))]
    for i in range(0, max(len(todo), len(tags)), 100):
        client.log_batch(run_id, params=todo[i : i + 100], tags=tags[i : i + 100])
    record.update(params_synced=sorted(params), tags_synced=sorted(record.meta.get("tags", {})))
    rows = record.read_metrics()
    done = record.meta.get("metrics_synced", 0)
    while done < len(rows):
        chunk = rows[done : done + BATCH_MAX]
        client.log_batch(run_id, metrics=[Metric(r["key"], r["value"], r["ts"], r["step"]) for r in chunk])
        done += len(chunk)
        record.update(metrics_synced=done)
    sent_arts = set(record.meta.get("artifacts_synced", []))
    for art in record.meta.get("artifacts", []):
        if art not in sent_arts and Path(art).exists():
            client.log_artifact(run_id, art)
            sent_arts.add(art)
            record.update(artifacts_synced=sorted(sent_arts))


def sync_run_dir(run_dir: str | Path, uri: str | None = None, timeout_s: float = 30.0) -> str:
    """Upload a run folder's record to MLflow (``blagpt runs sync``); returns the MLflow run id."""
    configure_mlflow_http(timeout_s)
    record = RunRecord(run_dir)
    if not record.meta:
        from .errors import BlagptError

        raise BlagptError(f"{run_dir}: not a blagpt run folder (no {RUN_FILE})")
    client = sync_client(uri or record.meta.get("tracking_uri") or record.meta.get("requested_tracking_uri"))
    run_id = ensure_run(client, record, record.meta.get("experiment", "blagpt"), record.meta.get("run_name", record.dir.name))
    upload(client, record)
    client.set_terminated(run_id, status=record.meta.get("status", "FINISHED"))
    record.update(synced_all=True)
    return run_id


def loss_curve_png(record: RunRecord, path: str | Path) -> Path:
    """Training and validation loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for r in record.read_metrics():
        if r["key"] in ("train/loss", "val/loss"):
            series.setdefault(r["key"], []).append((r["step"], r["value"]))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, marker="o" if key == "val/loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(record.meta.get("run_name", ""))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
