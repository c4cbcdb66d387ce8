"""``blagpt runs``: the runs MLflow holds, and uploading what it missed."""

from __future__ import annotations

import time

import click

from ..errors import BlagptError
from . import CONTEXT, _table, cli


@cli.group(context_settings=CONTEXT, invoke_without_command=True)
@click.option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).")
@click.option("--experiment", default="blagpt", show_default=True, help="MLflow experiment.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="How many runs.")
@click.option("--timeout-s", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Give up on a server that does not answer within this many seconds.")
@click.pass_context
def runs(ctx, tracking_uri, experiment, limit, timeout_s):
    """List recent MLflow runs: name, model, preset, optimizer, steps reached, val loss, val bpb, start time.

    \b
    Examples:
      blagpt runs
      blagpt runs --tracking-uri http://127.0.0.1:5000 --limit 5
      blagpt runs sync runs/blagpt-20261127-120000-000    # upload a run the server missed
    """
    if ctx.invoked_subcommand is not None:
        return
    import os

    from ..run.tracking import connect, one_line

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:  # MLflow's default store: a client would create it; nothing was tracked if it is not there
        from mlflow import get_tracking_uri

        default = get_tracking_uri()
        path = default[len("sqlite:///"):] if default.startswith("sqlite:///") else None
        if path is not None and not os.path.exists(path):
            click.echo(f"no MLflow store at {path}: no run was tracked here (give --tracking-uri, or set MLFLOW_TRACKING_URI)")
            return
    client = connect(uri, timeout_s, what="runs")
    try:
        exp = client.get_experiment_by_name(experiment)
        found = [] if exp is None else client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
        )
    except Exception as e:  # noqa: BLE001 - unreachable server, bad URI: one line, not a traceback
        raise BlagptError(f"cannot read runs from MLflow at {client.tracking_uri}: {one_line(e)}") from None
    if exp is None:
        click.echo(f"no experiment {experiment!r} at {client.tracking_uri}")
        return
    rows = [("RUN", "MODEL", "PRESET", "OPTIMIZER", "STEPS", "VAL LOSS", "VAL BPB", "STATUS", "STARTED", "RUN ID")]
    for r in found:
        m, p = r.data.metrics, r.data.params
        fmt = lambda k: f"{m[k]:.4f}" if k in m else "-"  # noqa: E731
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.info.start_time / 1000)) if r.info.start_time else "-"
        rows.append((r.info.run_name, p.get("model.name", "-"), p.get("model.preset", "-"), p.get("optimizer.name", "-"),
                     _steps(m, p), fmt("val/loss"), fmt("val/bpb"), r.info.status, started, r.info.run_id))
    _table(rows)


def _steps(metrics: dict, params: dict) -> str:
    """The steps the run reached (its last train/tokens over tokens_per_step), of those planned."""
    try:
        done = round(metrics["train/tokens"] / float(params["tokens_per_step"]))
    except (KeyError, ValueError, ZeroDivisionError):
        return "-"
    planned = params.get("total_steps", "")
    return f"{done}/{planned}" if planned.isdigit() and int(planned) != done else str(done)


@runs.command("sync", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--tracking-uri", help="Upload to this URI instead of the one the run was started with.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), help="Give up on a server that does not answer within this many seconds (default: the run's tracking.timeout_s).")
def runs_sync(run_dir, tracking_uri, timeout_s):
    """Upload a run folder's params, metrics and artifacts that MLflow did not receive.

    Refused while the run is training (its own tracker uploads it).

    \b
    Example:
      blagpt runs sync runs/blagpt-20261127-120000-000 --tracking-uri http://127.0.0.1:5000
    """
    from ..run.tracking import sync_run_dir

    run_id = sync_run_dir(run_dir, tracking_uri, timeout_s)
    click.echo(f"{run_dir}: synced to MLflow run {run_id}")
