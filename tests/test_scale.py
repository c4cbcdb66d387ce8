"""``blagpt scale`` end to end: the grid trains, the frontier and fit come from the runs' own
figures, a rerun resumes (trains nothing), and bad sizes or budgets are one-line errors."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from blagpt.compare.scale import fit_power_law

from conftest import BENCH_BASE, run_cli

ARGS = ["scale", "--models", "tinylm", "--size", "s=model.d_model=16", "--size", "m=model.d_model=32",
        "--budget", "flops=2e8,6e8,2e9", "--name", "sc", "--no-track", *BENCH_BASE, "--set", "train.eval_interval=0",
        "--set", "train.log_interval=10", "--set", "optimizer.lr=1e-2"]


def _val_bpb(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["value"] for r in rows if r["key"] == "val/bpb"][-1], [r["value"] for r in rows if r["key"] == "train/flops"][-1]


@pytest.mark.slow
def test_scale_fits_the_frontier_of_its_runs_and_a_rerun_resumes(workdir):
    proc = run_cli(ARGS, cwd=workdir, check=0)
    folder = workdir / "runs" / "sc"
    record = json.loads((folder / "scale.json").read_text())
    (model,) = record["models"]
    assert len(model["cells"]) == 6
    # the frontier: per budget the size with the lowest val bpb, read back from the run folders
    runs = {}
    for cfg in (folder / "configs").glob("*.yaml"):
        bpb, flops = _val_bpb(folder / cfg.stem)
        runs.setdefault(yaml.safe_load(cfg.read_text())["train"]["flops"], []).append((bpb, flops))
    assert len(runs) == 3
    front = sorted(min(v) for v in runs.values())
    front.sort(key=lambda p: p[1])
    assert [c["val_bpb"][0] for c in model["frontier"]] == [p[0] for p in front]
    want = fit_power_law([p[1] for p in front], [p[0] for p in front])
    assert model["fit"]["alpha"] == pytest.approx(want.alpha, rel=1e-9) and model["fit"]["E"] == pytest.approx(want.E, abs=1e-9)
    assert "1 seed: no bootstrap interval" in model["note"]
    assert "alpha" in proc.stdout and (folder / "scale.png").stat().st_size > 10_000
    assert statistics.fmean(c["flops"] for c in model["cells"]) > 0

    again = run_cli(ARGS, cwd=workdir, check=0)
    assert again.stdout.count("done already") == 6
    assert json.loads((folder / "scale.json").read_text()) == record


def test_scale_refuses_bad_sizes_and_budgets_in_one_line(workdir):
    for extra, msg in ((["--size", "s", "--budget", "flops=1e8,2e8"], "--size 's'"),
                       (["--sizes", "a", "--budget", "flops"], "--budget 'flops'"),
                       (["--sizes", "a", "--budget", "flops=1e8,1e8"], "listed twice"),
                       (["--sizes", "a,a", "--budget", "flops=1e8"], "listed twice")):
        proc = run_cli(["scale", "--models", "tinylm", *extra, "--no-track"], cwd=workdir)
        assert proc.returncode != 0 and msg in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
