"""``blagpt bench --tune`` end to end: trials on the tuning slice, each entry's seeds at its own
best point, the table equal to MLflow's record, and ``blagpt compare`` leaving the trials out."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from conftest import BENCH_BASE, run_cli


def _final(run_dir, key):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r["value"] for r in rows if r["key"] == key]
    return vals[-1] if vals else None


@pytest.mark.slow
def test_every_entry_is_tuned_alike_on_the_tuning_slice_and_trained_at_its_best(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    pairs = zip(BENCH_BASE[::2], BENCH_BASE[1::2])
    base = [x for flag, item in pairs if not item.startswith("optimizer.lr") for x in (flag, item)]
    proc = run_cli(["bench", "--models", "tinylm,tinylm@wide", "--tune", "optimizer.lr=3e-4,1e-2", "--budget", "steps=6",
                    "--name", "tb", "--tracking-uri", uri, *base], cwd=workdir, check=0)
    bench = workdir / "runs" / "tb"
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (bench / "configs").glob("*.yaml")}
    trials = {n: c for n, c in configs.items() if c["train"]["eval_on"] == "tune"}
    finals = {n: c for n, c in configs.items() if c["train"]["eval_on"] == "val"}
    assert len(trials) == 4 and len(finals) == 2
    # trials are scored on the tuning slice only; each entry's final run uses its own argmin
    best = {}
    for name, c in trials.items():
        assert _final(bench / name, "val/bpb") is None and _final(bench / name, "tune/bpb") is not None
        entry = c["tracking"]["tags"]["blagpt.entry"]
        score = _final(bench / name, "tune/bpb")
        if entry not in best or score < best[entry][0]:
            best[entry] = (score, c["optimizer"]["lr"])
    for name, c in finals.items():
        entry = c["tracking"]["tags"]["blagpt.entry"]
        assert c["optimizer"]["lr"] == best[entry][1]
        assert c["tracking"]["tags"]["blagpt.tuned"].startswith("optimizer.lr=")
        assert _final(bench / name, "val/bpb") is not None
    with open(bench / "leaderboard.csv") as f:
        table = {r["entry"]: r for r in csv.DictReader(f)}
    for entry, (_, lr) in best.items():
        assert float(table[entry]["tuned"].split("=")[1].split()[0]) == lr
        assert "(edge: optimizer.lr)" in table[entry]["tuned"]  # two values: any choice is at an edge
    assert (bench / "tuning.md").exists() and (bench / "tune_optimizer.lr.png").stat().st_size > 10_000
    assert "tuned tinylm: optimizer.lr=" in proc.stdout

    # the parent run holds each entry's choice (an entry label is no valid MLflow key: made one)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("blagpt").experiment_id], "attributes.run_name = 'tb'")
    assert parent.data.params["tuned/tinylm_wide"] == table["tinylm@wide"]["tuned"]
    assert "val_bpb_mean/tinylm_wide" in parent.data.metrics and "warning" not in proc.stdout

    # MLflow holds the trials nested under the parent; compare leaves them out and rebuilds the table
    cmp = run_cli(["compare", "tb", "--tracking-uri", uri, "--out", "cmp"], cwd=workdir, check=0)
    assert "4 tuning trial run(s) left out" in cmp.stdout and "2 run(s) from" in cmp.stdout
    assert (workdir / "cmp" / "leaderboard.csv").read_text() == (bench / "leaderboard.csv").read_text()

    # a rerun trains nothing: trials and finals are found finished
    again = run_cli(["bench", "--models", "tinylm,tinylm@wide", "--tune", "optimizer.lr=3e-4,1e-2", "--budget", "steps=6",
                     "--name", "tb", "--tracking-uri", uri, *base], cwd=workdir, check=0)
    assert again.stdout.count("done already") == 6 and "training tinylm" not in again.stdout
