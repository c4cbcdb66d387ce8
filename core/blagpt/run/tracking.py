"""MLflow tracking that never stalls or loses a run, and never disagrees with the run folder.

Every run writes its own record to its run folder first (:class:`~blagpt.run.rundir.RunDir`:
``run.json`` and ``metrics.jsonl``). A background thread mirrors that record to MLflow in
batches (one ``log_batch`` per second at most, not one request per metric), with bounded retries
and a request timeout (``tracking.timeout_s``). If the tracking server is down or hangs, training
goes on; whatever did not reach MLflow stays in the run folder and ``blagpt runs sync RUN_DIR``
uploads it later (creating the MLflow run if it never existed).

The run folder is the truth, and MLflow follows it. MLflow cannot delete metric points, so when a
run resumes from a checkpoint after MLflow already received steps past it (a killed process keeps
uploading until it dies), or starts again with other params, its MLflow run is *replaced*: a new
MLflow run with the same name and start time receives the folder's record, and the old one is
deleted (to MLflow's trash, tagged ``blagpt.replaced_by``). ``run.json`` keeps the old ids, so
lookups by them still find the run.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import BlagptError
from .rundir import RunDir

BATCH_MAX = 900  # MLflow accepts 1000 metrics per log_batch
PARAM_MAX = 6000  # MLflow's longest param value


def configure_mlflow_http(timeout_s: float, retries: int = 1) -> None:
    """Bound MLflow's HTTP retries and timeouts (defaults: 7 retries, 120 s: minutes of blocking)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(round(timeout_s)))))


def connect(uri: str | None, timeout_s: float, what: str = "MLflow"):
    """An MLflow client for a command that talks to the server once (``runs``, ``runs sync``,
    ``compare``): a server that refuses or does not answer is a one-line error within
    ``timeout_s``, not minutes of retries."""
    configure_mlflow_http(timeout_s, retries=0)
    client = sync_client(uri)
    target = client.tracking_uri
    if target.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(target.rstrip("/") + "/health", timeout=timeout_s):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered; MLflow requests will say more if it cannot serve them
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise BlagptError(f"{what}: no MLflow server answers at {target} within {timeout_s:g} s ({reason})") from None
    return client


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


class Tracker:
    """Mirrors a :class:`RunDir` to MLflow from a background thread.

    ``log`` and ``log_params`` return at once (after the run folder has the data). ``close``
    waits at most ``2 * timeout_s`` for the mirror to catch up and returns whether everything
    reached MLflow.
    """

    def __init__(self, run: RunDir, uri: str | None, experiment: str, run_name: str, timeout_s: float, enabled: bool = True) -> None:
        self.run, self.uri, self.experiment, self.run_name = run, uri, experiment, run_name
        self.timeout_s, self.enabled = timeout_s, enabled
        self.error: str | None = None
        self._q: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        if enabled:
            configure_mlflow_http(timeout_s)
            self._thread = threading.Thread(target=self._work, name="blagpt-mlflow", daemon=True)
            self._thread.start()

    # -- main thread ---------------------------------------------------------------------

    def log(self, step: int, values: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.run.metrics.append({"key": k, "value": float(v), "step": int(step), "ts": ts} for k, v in values.items())
        if self.enabled:
            self._q.put(("metrics", None))

    def log_params(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        meta = self.run.meta
        self.run.update(params={**meta.get("params", {}), **params}, tags={**meta.get("tags", {}), **tags})
        if self.enabled:
            self._q.put(("params", None))

    def log_artifact(self, path: str | Path) -> None:
        arts = sorted(set(self.run.meta.get("artifacts", [])) | {str(Path(path).resolve())})
        self.run.update(artifacts=arts)
        if self.enabled:
            self._q.put(("artifact", str(path)))

    def close(self, status: str = "FINISHED") -> bool:
        """Finish the MLflow run; True if everything in the run folder reached MLflow."""
        self.run.update(status=status)
        if not self.enabled or self._thread is None:
            return False
        self._q.put(("end", status))
        self._thread.join(timeout=2 * self.timeout_s + 5)
        return bool(not self._thread.is_alive() and self.error is None and self.run.meta.get("synced_all", False))

    @property
    def run_id(self) -> str | None:
        return self.run.meta.get("mlflow_run_id")

    # -- background thread ---------------------------------------------------------------

    def _work(self) -> None:
        try:
            self.client = sync_client(self.uri)
            ensure_run(self.client, self.run, self.experiment, self.run_name)
        except Exception as e:  # noqa: BLE001 - server down: keep the record, stop mirroring
            self.error = one_line(e)
            self._drain_until_end()
            return
        while True:
            items = self._next_items()
            try:
                upload(self.client, self.run)
                for kind, payload in items:
                    if kind == "end":
                        self.client.set_terminated(self.run.meta["mlflow_run_id"], status=payload)
                        self.run.update(synced_all=self.run.meta.get("metrics_synced", 0) >= len(self.run.metrics.read()))
                        return
            except Exception as e:  # noqa: BLE001
                self.error = one_line(e)
                self._drain_until_end()
                return

    def _next_items(self) -> list[tuple[str, Any]]:
        """What arrived within a second of the first item (batched into one upload)."""
        items = [self._q.get()]
        deadline = time.monotonic() + 1.0
        while items[-1][0] != "end" and time.monotonic() < deadline:
            try:
                items.append(self._q.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return items

    def _drain_until_end(self) -> None:
        while self._q.get()[0] != "end":
            pass


def sync_client(uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# -- what MLflow has of a run folder ------------------------------------------------------------


def mark_restart(run: RunDir, kept_rows: int, params: dict[str, Any]) -> None:
    """Before a run (re)starts at some step, with ``kept_rows`` of its metrics kept: if MLflow may
    hold rows past them (sent, confirmed or not) or params of other values, its MLflow run must be
    replaced (:func:`ensure_run` does it, now or at the next ``runs sync``)."""
    meta = run.meta
    if not meta.get("mlflow_run_id"):
        return
    sent = max(int(meta.get("metrics_synced", 0)), int(meta.get("metrics_sending", 0)))
    synced_params = meta.get("params_synced", {})
    changed = isinstance(synced_params, dict) and any(
        k in synced_params and synced_params[k] != _param_text(v) for k, v in params.items()
    )
    if sent > kept_rows or changed or meta.get("mlflow_replace"):
        run.update(mlflow_replace=True)
    else:
        run.update(metrics_synced=min(int(meta.get("metrics_synced", 0)), kept_rows), metrics_sending=0, synced_all=False)


def ensure_run(client, run: RunDir, experiment: str, run_name: str) -> str:
    """The folder's MLflow run id: created (with its experiment) when there is none, replaced when
    :func:`mark_restart` found MLflow ahead of the folder."""
    meta = run.meta
    run_id = meta.get("mlflow_run_id")
    if run_id and not meta.get("mlflow_replace"):
        client.update_run(run_id, status="RUNNING")
        return run_id
    start_time = None
    if run_id:
        try:
            start_time = client.get_run(run_id).info.start_time
        except Exception:  # noqa: BLE001 - already gone
            pass
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    new = client.create_run(exp_id, run_name=run_name, start_time=start_time, tags={"blagpt.run_dir": str(run.path.resolve())})
    new_id = new.info.run_id
    replaced = list(meta.get("replaced_mlflow_run_ids", []))
    run.update(mlflow_run_id=new_id, mlflow_experiment_id=exp_id, tracking_uri=client.tracking_uri, mlflow_replace=False,
               replaced_mlflow_run_ids=replaced + ([run_id] if run_id else []),
               metrics_synced=0, metrics_sending=0, params_synced={}, tags_synced=[], artifacts_synced=[], inputs_synced=False,
               synced_all=False)
    if run_id:
        try:
            client.set_tag(run_id, "blagpt.replaced_by", new_id)
            client.delete_run(run_id)
        except Exception:  # noqa: BLE001 - deleted already, or the old server is gone
            pass
    return new_id


def _param_text(value: Any) -> str:
    return str(value)[:PARAM_MAX]


def upload(client, run: RunDir) -> None:
    """Send to MLflow whatever of the folder it does not have yet (params, tags, metrics, artifacts)."""
    from mlflow.entities import Metric, Param, RunTag

    meta = run.meta
    run_id = meta["mlflow_run_id"]
    params = {k: _param_text(v) for k, v in meta.get("params", {}).items()}
    sent_params = meta.get("params_synced", {})
    sent_params = sent_params if isinstance(sent_params, dict) else dict.fromkeys(sent_params, None)
    todo = [Param(k, v) for k, v in params.items() if k not in sent_params]
    sent_tags = set(meta.get("tags_synced", []))
    tags = [RunTag(k, str(v)) for k, v in meta.get("tags", {}).items() if k not in sent_tags]
    for i in range(0, max(len(todo), len(tags)), 100):
        client.log_batch(run_id, params=todo[i : i + 100], tags=tags[i : i + 100])
    for key in sent_tags - set(meta.get("tags", {})):  # dropped from the folder (an earlier attempt's error)
        try:
            client.delete_tag(run_id, key)
        except Exception:  # noqa: BLE001 - not there
            pass
    run.update(params_synced={**sent_params, **{p.key: p.value for p in todo}}, tags_synced=sorted(meta.get("tags", {})))
    rows = run.metrics.read()
    done = int(run.meta.get("metrics_synced", 0))
    while done < len(rows):
        chunk = rows[done : done + BATCH_MAX]
        run.update(metrics_sending=done + len(chunk))  # before sending: a kill mid-request still counts it
        client.log_batch(run_id, metrics=[Metric(r["key"], r["value"], r["ts"], r["step"]) for r in chunk])
        done += len(chunk)
        run.update(metrics_synced=done)
    if run.meta.get("inputs") and not run.meta.get("inputs_synced"):
        log_inputs(client, run_id, run.meta["inputs"])
        run.update(inputs_synced=True)
    sent_arts = set(run.meta.get("artifacts_synced", []))
    for art in run.meta.get("artifacts", []):
        if art not in sent_arts and Path(art).exists():
            client.log_artifact(run_id, art)
            sent_arts.add(art)
            run.update(artifacts_synced=sorted(sent_arts))


def log_inputs(client, run_id: str, inputs: list[dict]) -> None:
    """The run's datasets as MLflow dataset inputs (the UI's Dataset column and filter)."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    client.log_inputs(run_id, datasets=[
        DatasetInput(Dataset(d["name"], d["digest"], "local", json.dumps({"uri": d["source"]}), None, json.dumps(d.get("profile", {}))),
                     tags=[InputTag("mlflow.data.context", d["context"])])
        for d in inputs
    ])


def sync_run_dir(run_dir: str | Path, uri: str | None = None, timeout_s: float | None = None) -> str:
    """Upload a run folder's record to MLflow (``blagpt runs sync``); returns the MLflow run id.

    Refused while another process owns the folder (its own tracker uploads it). ``timeout_s``
    defaults to the run's ``tracking.timeout_s``.
    """
    run = RunDir(run_dir)
    if not run.exists():
        raise BlagptError(f"{run_dir}: not a blagpt run folder (no run.json)")
    meta = run.meta
    if timeout_s is None:
        timeout_s = float(meta.get("params", {}).get("tracking.timeout_s", 10.0))
    with run.lock:
        run.metrics.repair()
        target = uri or meta.get("tracking_uri") or meta.get("requested_tracking_uri")
        client = connect(target, timeout_s, what=f"runs sync {run_dir}")
        try:
            run_id = ensure_run(client, run, meta.get("experiment", "blagpt"), meta.get("run_name", run.name))
            upload(client, run)
            client.set_terminated(run_id, status=meta.get("status", "FINISHED"))
        except Exception as e:  # noqa: BLE001 - the server failed mid-way: what was sent is recorded
            raise BlagptError(f"runs sync {run_dir}: MLflow at {client.tracking_uri} failed ({one_line(e)}); run it again to send the rest") from None
        run.update(synced_all=True)
    return run_id


def loss_curve_png(run: RunDir) -> Path:
    """Training and validation loss against step, as the run folder's PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for r in run.metrics.read():
        if r["key"] in ("train/loss", "val/loss"):
            series.setdefault(r["key"], []).append((r["step"], r["value"]))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, marker="o" if key == "val/loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run.meta.get("run_name", ""))
    if series:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run.loss_curve_file)
    plt.close(fig)
    return run.loss_curve_file


def provenance_tags(registry, cfg) -> dict[str, str]:
    """Tags saying what made the run: model, optimizer, plugin versions, the git commit."""
    tags = {"blagpt.model": cfg.model.name, "blagpt.optimizer": cfg.optimizer.name}
    for info in registry.plugins.values():
        if info.ok:
            tags[f"blagpt.plugin.{info.dist}"] = info.version
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {**tags, **cfg.tracking.tags}


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
