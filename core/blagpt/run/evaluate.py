"""A trained run scored after training (``blagpt eval``), and the score recorded in the run.

:func:`evaluate_data` measures a run's model on other token shards (another corpus prepared by
``blagpt data prepare``) with the very :class:`~.evaluator.Evaluator` that validated it during
training: nats per token and bits per byte (the tokenizer's byte counts), on a slice of the data
cut exactly as training cuts its validation slice (``eval_tokens`` / ``eval_bytes``, by default
the run's own). Shards of another tokenizer are refused in one line (their ``manifest.json``;
without one, the token-id range check).

:func:`record_eval` adds an evaluation to the run's record: metric rows in ``metrics.jsonl`` at the
checkpoint's step, an entry in ``run.json``'s ``evals`` (what was evaluated, the data's digest,
the figures), the data as a dataset input; then the run folder is synced to its MLflow run (an
unreachable server leaves it in the folder for ``blagpt runs sync``). The harness adapter
(:mod:`.harness`) records its task metrics the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import BlagptError, ConfigError
from .rundir import RunDir

NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass
class DataEval:
    """One evaluation of a run on token shards."""

    name: str  # the metrics' middle part: eval/<name>/loss
    pattern: str
    loss: float  # nats per predicted token
    bpb: float
    tokens: int
    bytes: int
    digest: str  # the manifest's dataset digest (without one: of the shard files' names and sizes)
    dataset: dict[str, Any] = field(default_factory=dict)  # the MLflow dataset input

    @property
    def metrics(self) -> dict[str, float]:
        return {f"eval/{self.name}/loss": self.loss, f"eval/{self.name}/bpb": self.bpb}

    def entry(self, step: int) -> dict[str, Any]:
        return {"kind": "data", "name": self.name, "data": self.pattern, "digest": self.digest, "step": step,
                "tokens": self.tokens, "bytes": self.bytes, "metrics": self.metrics, "at": utc_now()}


def check_name(name: str, option: str = "--name") -> str:
    if not NAME.fullmatch(name):
        raise ConfigError(f"{option}: {name!r} is not usable in a metric name; expected letters, digits, '_', '-' or '.'")
    return name


def evaluate_data(run, registry, pattern: str, name: str | None = None, eval_tokens: int | None = None,
                  eval_bytes: int | None = None, batch_size: int | None = None) -> DataEval:
    """Score ``run`` (a :class:`~.sample.LoadedRun`) on the shards matching ``pattern``.

    The slice: ``eval_tokens`` predicted tokens or, with ``eval_bytes``, the text up to the last
    shared line start within that many bytes (:func:`~blagpt.data.loader.val_slice`); neither
    given: the run's ``train.eval_tokens`` / ``train.eval_bytes``. ``batch_size``: sequences per
    forward (default the run's ``train.micro_batch_size``). ``name``: default the data folder's.
    """
    from ..data import manifest
    from ..data.loader import TokenStream, check_token_ids, val_slice
    from .distributed import Dist
    from .evaluator import Evaluator

    if eval_tokens is not None and eval_bytes is not None:
        raise ConfigError("--eval-tokens and --eval-bytes: give one of them (bytes cut the same text for every tokenizer)")
    tok, t = run.tokenizer, run.config.train
    stream = TokenStream(pattern, "evaluation", field="--data")
    found = manifest.check(stream.paths, tok, "--data", pattern)
    if found is None:
        check_token_ids(stream, tok, "--data")
    if eval_tokens is None and eval_bytes is None:
        eval_tokens, eval_bytes = t.eval_tokens, t.eval_bytes
    val = val_slice(stream, run.context, 0, 1, tok, eval_tokens, eval_bytes)
    dataset = manifest.dataset_input(stream, found, "evaluation")
    name = check_name(name) if name is not None else _folder_name(stream.paths[0])
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.autocast_bf16)
    evaluator = Evaluator(val, tok.token_bytes, batch_size or t.micro_batch_size, run.context, Dist(device=run.device),
                          autocast, registry.compute_loss, run.config.model)
    try:
        out = evaluator(run.model)
    finally:
        run.model.eval()  # the evaluator leaves a model in training mode, as training wants it
    dataset["profile"] = {**dataset["profile"], "eval_tokens": int(out["val/tokens"]), "eval_bytes": int(out["val/bytes"])}
    digest = found["digest"] if found is not None else dataset["digest"]
    return DataEval(name, pattern, out["val/loss"], out["val/bpb"], int(out["val/tokens"]), int(out["val/bytes"]), digest, dataset)


def _folder_name(path: str) -> str:
    """The data folder's name, made usable in a metric name."""
    raw = Path(path).resolve().parent.name
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", raw).strip("_") or "data"


def record_eval(run: RunDir, step: int, metrics: dict[str, float], entry: dict[str, Any],
                dataset: dict[str, Any] | None = None) -> None:
    """Add one evaluation to the run folder (the caller holds ``run.lock``): metric rows at
    ``step``, ``entry`` appended to ``run.json``'s ``evals``, ``dataset`` to its inputs."""
    import time

    run.refresh()
    run.metrics.repair()
    ts = int(time.time() * 1000)
    run.metrics.append({"key": k, "value": float(v), "step": int(step), "ts": ts} for k, v in metrics.items())
    fields: dict[str, Any] = {"evals": [*run.meta.get("evals", []), entry], "synced_all": False}
    inputs = list(run.meta.get("inputs", []))
    if dataset is not None and dataset not in inputs:
        fields.update(inputs=[*inputs, dataset], inputs_synced=False)
    run.update(**fields)


def sync_eval(run: RunDir, uri: str | None, timeout_s: float | None, say: Callable[[str], None]) -> str | None:
    """Mirror the run folder (with its new evaluations) to its MLflow run, holding ``run.lock``;
    returns the MLflow run id, or None (a line said why) when MLflow was not reached.

    Only what MLflow lacks is sent; the MLflow run's status and end time stay those of the
    training. A run that never had an MLflow run gets one only when ``uri`` is given.
    ``timeout_s``: default the run's ``tracking.timeout_s``."""
    from .tracking import connect, ensure_run, one_line, upload

    run.refresh()
    meta = run.meta
    if not meta.get("mlflow_run_id") and uri is None:
        say(f"note: {run.path} has no MLflow run (trained without tracking); the evaluation is kept in the folder; "
            f"upload it with: blagpt runs sync {run.path} --tracking-uri URI")
        return None
    if timeout_s is None:
        timeout_s = float(meta.get("params", {}).get("tracking.timeout_s", 10.0))
    target = uri or meta.get("tracking_uri") or meta.get("requested_tracking_uri")
    later = f"the evaluation is kept in {run.path}; upload it with: blagpt runs sync {run.path}"
    try:
        client = connect(target, timeout_s, what=f"eval {run.path}")
    except BlagptError as e:
        say(f"warning: {e}; {later}")
        return None
    try:
        if meta.get("mlflow_run_id") and not meta.get("mlflow_replace"):
            run_id = meta["mlflow_run_id"]
            upload(client, run)
        else:  # no MLflow run yet, or one to replace (a resume found MLflow ahead): as runs sync does
            run_id = ensure_run(client, run, meta.get("experiment", "blagpt"), meta.get("run_name", run.name))
            upload(client, run)
            client.set_terminated(run_id, status=meta.get("status", "FINISHED"))
    except Exception as e:  # noqa: BLE001 - the server failed mid-way: what was sent is recorded
        say(f"warning: MLflow at {client.tracking_uri} failed ({one_line(e)}); {later}")
        return None
    run.update(synced_all=True)
    return run_id


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
