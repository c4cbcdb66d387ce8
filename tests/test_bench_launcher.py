"""``blagpt bench --launcher``: each run under torchrun (2 gloo ranks) gives what one process gives
with the same global batch."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from conftest import BENCH_BASE, run_cli


def _only_row(path):
    with open(path) as f:
        (row,) = csv.DictReader(f)
    return row


@pytest.mark.slow
def test_a_torchrun_launcher_trains_on_two_ranks_like_one_process(workdir):
    args = ["bench", "--models", "tinylm", "--budget", "steps=4", "--no-track", *BENCH_BASE, "--set", "train.global_batch_size=8"]
    launcher = f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2"
    run_cli([*args, "--name", "two", "--launcher", launcher], cwd=workdir, check=0, env={"OMP_NUM_THREADS": "1"})
    run_cli([*args, "--name", "one"], cwd=workdir, check=0)
    (two_run,) = (workdir / "runs" / "two").glob("tinylm-*.s0")
    assert json.loads((two_run / "run.json").read_text())["params"]["world_size"] == 2
    two, one = _only_row(workdir / "runs" / "two" / "leaderboard.csv"), _only_row(workdir / "runs" / "one" / "leaderboard.csv")
    assert float(two["val_loss_mean"]) == pytest.approx(float(one["val_loss_mean"]), rel=1e-4)
