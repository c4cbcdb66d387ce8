"""A run from MLflow alone: its MLflow run id and a tracking server rebuild the run folder here.

Every training run uploads its ``config.yaml`` and, each time it is written, its ``checkpoint.pt``
to its MLflow run (:mod:`.tracking`). :func:`fetch_run` downloads them into a local run folder
(``<out_dir>/<run name>``) and writes the ``run.json`` and ``metrics.jsonl`` that MLflow's record
implies: the params, the ``blagpt.*`` tags, every metric history (``system/*`` aside) and what of it
MLflow already has. The folder is then an ordinary run folder: ``blagpt sample`` loads it, and
``blagpt train --resume`` continues it into the same MLflow run (or replaces that run, as for any
resume, when MLflow holds steps past the checkpoint).

:func:`find_run` is what the commands that take ``--run``/``--resume`` call: a local run folder,
name or id first (:meth:`RunDir.find`), else, for an MLflow run id and a tracking server named
(``--tracking-uri`` or ``$MLFLOW_TRACKING_URI``), the fetched folder. A folder fetched earlier is
brought up to date when MLflow holds a later checkpoint. No tracking store is created or queried
otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from ..errors import BlagptError
from .rundir import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, TEMP_SUFFIX, RunDir
from .tracking import CONSTANT_METRICS, _version, connect, one_line

log = logging.getLogger("blagpt")

RUN_ID = re.compile(r"[0-9a-f]{32}")
FETCHED = (CHECKPOINT_FILE, CONFIG_FILE)
_NOT_KEPT_TAGS = ("blagpt.checkpoint_step", "blagpt.run_dir", "blagpt.replaced_by")


def find_run(ref: str, out_dir: str | Path, tracking_uri: str | None = None, option: str = "--run",
             timeout_s: float = 10.0) -> RunDir:
    """The run folder ``ref`` names: a local folder, run name or MLflow run id (:meth:`RunDir.find`),
    else the MLflow run ``ref`` fetched from ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``)
    into ``out_dir``. Errors are one line naming ``option``."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    try:
        local = RunDir.find(ref, out_dir, option)
    except BlagptError:
        if uri is None or not RUN_ID.fullmatch(ref):
            raise
        return fetch_run(ref, uri, out_dir, timeout_s, option)
    fetched = local.meta.get("fetched_from")
    if uri is not None and fetched and local.meta.get("mlflow_run_id") == ref:
        try:
            return fetch_run(ref, uri, out_dir, timeout_s, option)
        except BlagptError as e:
            log.warning("warning: %s; using the copy fetched before, %s", e, local.path)
    return local


def fetch_run(run_id: str, tracking_uri: str | None, out_dir: str | Path, timeout_s: float = 10.0,
              option: str = "--run") -> RunDir:
    """Download MLflow run ``run_id`` (its checkpoint, config, params, tags and metrics) into a run
    folder under ``out_dir`` and return it.

    The folder is ``<out_dir>/<run name>`` (``<run name>-<first 8 of the id>`` when a folder of
    that name holds another run). A folder fetched before is reused, its files downloaded again
    only when MLflow's checkpoint is newer. A run replaced by a resume (deleted, tagged
    ``blagpt.replaced_by``) is followed to the run that replaced it.
    """
    from mlflow.exceptions import MlflowException

    client = connect(tracking_uri, timeout_s, what=f"{option} {run_id}")
    where = f"{option} {run_id}"
    try:
        mrun = _live_run(client, run_id, where)
        rid = mrun.info.run_id
        kind = mrun.data.tags.get("blagpt.kind")
        if kind in ("bench", "ablate"):
            raise BlagptError(f"{where}: MLflow run {rid} is a {kind}'s parent run; give one of its runs (blagpt runs lists them)")
        arts = {a.path for a in client.list_artifacts(rid)}
        if not arts & set(FETCHED):
            raise BlagptError(f"{where}: MLflow run {rid} at {client.tracking_uri} has no {CHECKPOINT_FILE} or {CONFIG_FILE} "
                              "artifact (logged with tracking.log_checkpoints=false, or by an older blagpt)")
        run = _folder_for(Path(out_dir), mrun.info.run_name or rid, rid, where)
        remote_step = mrun.data.tags.get("blagpt.checkpoint_step")
        if (run.exists() and run.meta.get("fetched_from") and CHECKPOINT_FILE in arts and run.has_checkpoint
                and remote_step is not None and str(run.meta.get("checkpoint_step")) == remote_step):
            return run  # fetched before, and MLflow has no newer checkpoint
        run.create({"--run": "--out-dir", "--resume": "train.out_dir"}.get(option, option))
        with run.lock:
            _download(client, rid, run, arts)
            _write_record(client, mrun, run, remote_step)
    except BlagptError:
        raise
    except MlflowException as e:
        raise BlagptError(f"{where}: MLflow at {client.tracking_uri} failed ({one_line(e)})") from None
    except OSError as e:
        raise BlagptError(f"{where}: cannot write the run folder under {out_dir} ({e.strerror or e})") from None
    log.info("%s: fetched MLflow run %s from %s into %s", option, rid, client.tracking_uri, run.path)
    return run


def _live_run(client, run_id: str, where: str):
    """The MLflow run, following ``blagpt.replaced_by`` from a run a resume replaced."""
    from mlflow.exceptions import MlflowException

    seen = set()
    while True:
        try:
            mrun = client.get_run(run_id)
        except MlflowException as e:
            if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(e).lower():
                raise BlagptError(f"{where}: no MLflow run with this id at {client.tracking_uri}") from None
            raise
        nxt = mrun.data.tags.get("blagpt.replaced_by")
        if mrun.info.lifecycle_stage != "deleted" or not nxt or nxt in seen:
            return mrun
        seen.add(run_id)
        run_id = nxt


def _folder_for(out_dir: Path, name: str, run_id: str, where: str) -> RunDir:
    for cand in (out_dir / name, out_dir / f"{name}-{run_id[:8]}"):
        run = RunDir(cand)
        if not cand.exists() or (run.exists() and run_id in run.mlflow_ids()):
            return run
    raise BlagptError(f"{where}: {out_dir / name} and {cand} hold other runs; fetch it into another folder of runs")


def _download(client, run_id: str, run: RunDir, arts: set[str]) -> None:
    """The run's checkpoint and config, each replacing the folder's atomically."""
    tmp = Path(tempfile.mkdtemp(dir=run.path, prefix=".fetch-", suffix=TEMP_SUFFIX))
    try:
        for name in FETCHED:
            if name in arts:
                got = Path(client.download_artifacts(run_id, name, str(tmp)))
                os.replace(got, run.path / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_record(client, mrun, run: RunDir, remote_step: str | None) -> None:
    """``metrics.jsonl`` and ``run.json`` as MLflow holds the run: all of it already synced."""
    info, data = mrun.info, mrun.data
    params = dict(data.params)
    rows = []
    for key in sorted(data.metrics):
        if key.startswith("system/"):
            continue
        rows += [{"key": key, "value": m.value, "step": m.step, "ts": m.timestamp} for m in client.get_metric_history(info.run_id, key)]
    for r in [r for r in rows if r["key"] == "val/loss"]:  # the constant counts went to MLflow as params
        rows += [{"key": k, "value": float(params[k]), "step": r["step"], "ts": r["ts"]} for k in CONSTANT_METRICS if k in params]
    rows.sort(key=lambda r: (r["step"], r["ts"], r["key"]))
    metrics = run.path / f".{METRICS_FILE}{TEMP_SUFFIX}"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(metrics, run.path / METRICS_FILE)
    if remote_step is None and run.has_checkpoint:
        remote_step = run.load_checkpoint()["step"]
    tags = {k: v for k, v in data.tags.items()
            if (k.startswith("blagpt.") and k not in _NOT_KEPT_TAGS) or k in ("mlflow.note.content", "mlflow.source.git.commit")}
    arts = [str((run.path / n).resolve()) for n in FETCHED if (run.path / n).exists()]
    exp = client.get_experiment(info.experiment_id)
    steps = params.get("total_steps")
    run.update(
        run_name=info.run_name or info.run_id, kind="train", experiment=exp.name if exp else "blagpt",
        model=params.get("model.name"), optimizer=params.get("optimizer.name"), preset=params.get("model.preset"),
        status=info.status, params=params, params_synced=params, tags=tags, tags_synced=tags,
        mlflow_run_id=info.run_id, mlflow_experiment_id=info.experiment_id, tracking_uri=client.tracking_uri,
        requested_tracking_uri=client.tracking_uri, start_time_ms=info.start_time, mlflow_replace=False,
        metrics_synced=len(rows), metrics_sending=0, synced_all=True, inputs_synced=True,
        artifacts=arts, artifacts_synced={a: _version(Path(a)) for a in arts},
        checkpoint_step=int(remote_step) if remote_step is not None else None,
        steps_planned=int(steps) if steps and steps.isdigit() else None,
        fetched_from={"tracking_uri": client.tracking_uri, "run_id": info.run_id,
                      "at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    )
