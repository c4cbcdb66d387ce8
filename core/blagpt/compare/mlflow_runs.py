"""``blagpt compare``: the leaderboard and plots of a bench, made from runs already in MLflow.

A reference is an MLflow run id, a run name, or an experiment name. A run with children (a bench
or an ablation) stands for its children; an experiment stands for its runs that have no children.
Runs are grouped into entries by their ``blagpt.entry`` tag (set by ``blagpt bench``); other runs
are grouped when their parameters agree in everything but the seed and the run's own names, and are
labelled by model, preset and optimizer.
"""

from __future__ import annotations

from typing import Any

from ..errors import BlagptError
from .leaderboard import SCALAR_KEYS, SERIES_KEYS, RunData

# parameters that differ between seeds of one entry, or between runs for reasons that do not
# change what was trained
_NOT_IDENTITY = ("train.seed", "train.out_dir", "tracking.", "world_size", "grad_accum")


def find_runs(client, refs: list[str], experiment: str) -> list[Any]:
    """MLflow runs for ``refs`` (run ids, run names, experiment names), parents replaced by children."""
    from mlflow.exceptions import MlflowException

    found: dict[str, Any] = {}
    for ref in refs:
        runs = []
        try:
            runs = [client.get_run(ref)]
        except MlflowException:
            exp = client.get_experiment_by_name(ref)
            if exp is not None:
                runs = _search(client, [exp.experiment_id], "")
                parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
                runs = [r for r in runs if r.info.run_id not in parents]
            else:
                named = client.get_experiment_by_name(experiment)
                if named is not None:
                    runs = _search(client, [named.experiment_id], f"attributes.run_name = '{_quote(ref)}'")
        if not runs:
            raise BlagptError(f"compare: {ref!r} is no MLflow run id, experiment, or run name in experiment {experiment!r} at {client.tracking_uri}")
        for run in runs:
            children = _search(client, [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
            for r in children or [run]:
                found[r.info.run_id] = r
    return list(found.values())


def is_trial(run) -> bool:
    """A bench's tuning trial (scored on the tuning slice, not a leaderboard run)."""
    return run.data.tags.get("blagpt.role") == "trial"


def run_data(client, runs: list[Any]) -> tuple[list[RunData], list[str]]:
    """:class:`RunData` of each run from its MLflow params, tags and metric histories, and the
    entry labels in order of first appearance (oldest run first)."""
    runs = sorted(runs, key=lambda r: r.info.start_time or 0)
    keys = {r.info.run_id: _identity(r) for r in runs}
    labels: dict[tuple, str] = {}
    out, order = [], []
    for r in runs:
        label = r.data.tags.get("blagpt.entry")
        if label is None:
            ident = keys[r.info.run_id]
            if ident not in labels:
                p = r.data.params
                base = p.get("model.name", "?") + (f"@{p['model.preset']}" if p.get("model.preset") not in (None, "None") else "")
                base += f"/{p.get('optimizer.name', '?')}"
                taken = sum(1 for v in labels.values() if v.split(" #")[0] == base)
                labels[ident] = base + (f" #{taken + 1}" if taken else "")
            label = labels[ident]
        if label not in order:
            order.append(label)
        rows = []
        for key in (*SERIES_KEYS, *SCALAR_KEYS):
            rows += [{"key": key, "value": m.value, "step": m.step} for m in client.get_metric_history(r.info.run_id, key)]
        params = dict(r.data.params)
        try:
            seed = int(params.get("train.seed", 0))
        except ValueError:
            seed = 0
        out.append(RunData.from_metrics(rows, name=r.info.run_name, entry=label, seed=seed, status=r.info.status,
                                        params=params, run_id=r.info.run_id, error=r.data.tags.get("blagpt.error"),
                                        tags=dict(r.data.tags)))
    return out, order


def _identity(run) -> tuple:
    return tuple(sorted((k, v) for k, v in run.data.params.items() if not k.startswith(_NOT_IDENTITY)))


def _search(client, exp_ids: list[str], flt: str) -> list[Any]:
    out, token = [], None
    while True:
        page = client.search_runs(exp_ids, filter_string=flt, max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _quote(s: str) -> str:
    return s.replace("'", "\\'")
