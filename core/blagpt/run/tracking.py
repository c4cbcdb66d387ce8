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

What MLflow gets beyond the folder's rows: the run's start time is the folder's (``start_time_ms``
in ``run.json``, taken when the run claimed its folder, not when the mirror first reached the
server); the evaluation's constant counts (``val/tokens``, ``val/bytes``) arrive as params, not as
metric series; each checkpoint is uploaded as the artifact ``checkpoint.pt`` once it is written
(``tracking.log_checkpoints``), with the tag ``blagpt.checkpoint_step``, so that
:func:`blagpt.run.fetch.fetch_run` can rebuild the run folder on another machine; MLflow's own
system metrics (``system/*``: CPU, memory, disk, network, NVIDIA GPUs through nvidia-ml-py) are
sampled by :class:`mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor` straight into
the MLflow run (``tracking.system_metrics``); they are not part of the folder's record.
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
CONSTANT_METRICS = ("val/tokens", "val/bytes")  # the same at every evaluation: MLflow params, not series
CHECKPOINT_ARTIFACT = "checkpoint.pt"


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

    def __init__(self, run: RunDir, uri: str | None, experiment: str, run_name: str, timeout_s: float, enabled: bool = True,
                 system_metrics_s: float | None = None) -> None:
        self.run, self.uri, self.experiment, self.run_name = run, uri, experiment, run_name
        self.timeout_s, self.enabled, self.system_metrics_s = timeout_s, enabled, system_metrics_s
        self.error: str | None = None
        self._q: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._monitor = None
        self.uploading: str | None = None  # the artifact the mirror is sending now (close waits for it)
        if enabled:
            configure_mlflow_http(timeout_s)
            self._thread = threading.Thread(target=self._work, name="blagpt-mlflow", daemon=True)
            self._thread.start()

    # -- main thread ---------------------------------------------------------------------

    def log(self, step: int, values: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.run.metrics.append({"key": k, "value": float(v), "step": int(step), "ts": ts} for k, v in values.items())
        constants = {k: _count(values[k]) for k in CONSTANT_METRICS if k in values and k not in self.run.meta.get("params", {})}
        if constants:
            self.log_params(constants, {})
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
        # Bounded: a server that hangs fails each request within timeout_s. An artifact upload in
        # progress (a large checkpoint) is waited for: it is what another machine resumes from.
        deadline = time.monotonic() + 2 * self.timeout_s + 5
        while self._thread.is_alive() and (time.monotonic() < deadline or self.uploading):
            self._thread.join(timeout=0.2)
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
        self._start_system_metrics()
        while True:
            items = self._next_items()
            try:
                upload(self.client, self.run, self)
                for kind, payload in items:
                    if kind == "end":
                        self._stop_system_metrics()
                        self.client.set_terminated(self.run.meta["mlflow_run_id"], status=payload)
                        self.run.update(synced_all=self.run.meta.get("metrics_synced", 0) >= len(self.run.metrics.read()))
                        return
            except Exception as e:  # noqa: BLE001
                self.error = one_line(e)
                self._stop_system_metrics()
                self._drain_until_end()
                return

    def _start_system_metrics(self) -> None:
        """MLflow's system-metrics monitor on this run (every ``system_metrics_s`` seconds)."""
        if not self.system_metrics_s:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run.meta["mlflow_run_id"], sampling_interval=self.system_metrics_s,
                                                 resume_logging=True, tracking_uri=self.client.tracking_uri)
            self._monitor.start()
        except Exception as e:  # noqa: BLE001 - psutil missing or broken: the run goes on without them
            self._monitor = None
            import logging

            logging.getLogger("blagpt").warning("warning: MLflow system metrics not logged (%s)", one_line(e))

    def _stop_system_metrics(self) -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            try:
                monitor.finish()
            except Exception:  # noqa: BLE001 - its last sample is lost, nothing else
                pass

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
    changed = isinstance(synced_params, dict) and (
        any(k in synced_params and synced_params[k] != _param_text(v) for k, v in params.items())
        or any(k not in params and k not in CONSTANT_METRICS for k in synced_params)  # MLflow cannot delete a param
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
    start_time = meta.get("start_time_ms")
    if run_id and start_time is None:
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
               metrics_synced=0, metrics_sending=0, params_synced={}, tags_synced={}, artifacts_synced={}, inputs_synced=False,
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


def _count(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _version(path: Path) -> str | None:
    """What tells one version of a file from the next (a checkpoint is replaced, not edited)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"


def mlflow_key(name: str) -> str:
    """``name`` with every character MLflow refuses in a param or metric key (it allows letters,
    digits, ``_ - . / :`` and spaces) replaced by ``_``: an entry label such as ``blagpt@gpt2+tiny``."""
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in name)


def upload(client, run: RunDir, tracker: "Tracker | None" = None) -> None:
    """Send to MLflow whatever of the folder it does not have yet (params, tags, metrics, artifacts;
    an artifact file replaced since it was sent is sent again)."""
    from mlflow.entities import Metric, Param, RunTag

    meta = run.meta
    run_id = meta["mlflow_run_id"]
    params = {mlflow_key(k): _param_text(v) for k, v in meta.get("params", {}).items()}
    sent_params = meta.get("params_synced", {})
    sent_params = sent_params if isinstance(sent_params, dict) else dict.fromkeys(sent_params, None)
    todo = [Param(k, v) for k, v in params.items() if k not in sent_params]
    sent_tags = meta.get("tags_synced", {})
    sent_tags = dict(sent_tags) if isinstance(sent_tags, dict) else dict.fromkeys(sent_tags)  # a list: keys, values unknown
    now_tags = {k: str(v) for k, v in meta.get("tags", {}).items()}
    tags = [RunTag(k, v) for k, v in now_tags.items() if k not in sent_tags or (sent_tags[k] is not None and sent_tags[k] != v)]
    for i in range(0, max(len(todo), len(tags)), 100):
        client.log_batch(run_id, params=todo[i : i + 100], tags=tags[i : i + 100])
    for key in set(sent_tags) - set(now_tags):  # dropped from the folder (an earlier attempt's error)
        try:
            client.delete_tag(run_id, key)
        except Exception:  # noqa: BLE001 - not there
            pass
    run.update(params_synced={**sent_params, **{p.key: p.value for p in todo}}, tags_synced=now_tags)
    rows = run.metrics.read()
    done = int(run.meta.get("metrics_synced", 0))
    while done < len(rows):
        chunk = rows[done : done + BATCH_MAX]
        run.update(metrics_sending=done + len(chunk))  # before sending: a kill mid-request still counts it
        metrics = [Metric(r["key"], r["value"], r["ts"], r["step"]) for r in chunk if r["key"] not in CONSTANT_METRICS]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
        done += len(chunk)
        run.update(metrics_synced=done)
    if run.meta.get("inputs") and not run.meta.get("inputs_synced"):
        log_inputs(client, run_id, run.meta["inputs"])
        run.update(inputs_synced=True)
    sent_arts = run.meta.get("artifacts_synced", {})
    sent_arts = dict(sent_arts) if isinstance(sent_arts, dict) else dict.fromkeys(sent_arts, "")  # a list: sent once, any version
    for art in run.meta.get("artifacts", []):
        step = run.meta.get("checkpoint_step")  # read before the file: a newer file is sent again next time
        version = _version(Path(art))
        if version is None or sent_arts.get(art) in (version, ""):
            continue
        if tracker is not None:
            tracker.uploading = art
        try:
            client.log_artifact(run_id, art)
        finally:
            if tracker is not None:
                tracker.uploading = None
        if Path(art).name == CHECKPOINT_ARTIFACT and step is not None:
            client.set_tag(run_id, "blagpt.checkpoint_step", str(step))
        sent_arts[art] = version
        run.update(artifacts_synced=sent_arts)


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


def provenance_tags(registry, cfg, tokenizer: str | None = None) -> dict[str, str]:
    """Tags saying what made the run: model, optimizer, the versions of the plugins it used (the
    model's, the optimizer's, the tokenizer's and the core's; not every installed one), the git
    commit."""
    tags = {"blagpt.model": cfg.model.name, "blagpt.optimizer": cfg.optimizer.name}
    used = [("model", cfg.model.name), ("optimizer", cfg.optimizer.name)]
    if tokenizer is not None:
        used.append(("tokenizer", tokenizer.partition(":")[0]))
    from importlib.metadata import version

    tags["blagpt.plugin.blagpt"] = version("blagpt")
    for kind, name in used:
        info = registry.owner.get((kind, name))
        if info is not None:
            tags[f"blagpt.plugin.{info.dist}"] = info.version
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {**tags, **cfg.tracking.tags}


def run_description(cfg, budget_text: str) -> str:
    """The MLflow run's description (the UI's Description box): what was trained, and how long."""
    preset = getattr(cfg.model, "preset", None)
    model = f"{cfg.model.name}" + (f" (preset {preset})" if preset else " (no preset)")
    return f"Model {model}, optimizer {cfg.optimizer.name}, budget {budget_text}."


def ui_url(tracking_uri: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """The run's page in the MLflow UI of an http(s) tracking server, else None."""
    if not (tracking_uri and experiment_id and run_id) or not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
