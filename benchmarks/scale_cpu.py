"""Scaling out on the CPU: fsdp against ddp on 2 gloo ranks, and ``bench --parallel 2`` against
the same bench one run at a time. Prints the figures (measured once; machines here are shared, so
run it on a quiet machine for numbers to quote).

1. ``train.parallel`` ddp, fsdp and fsdp + activation checkpointing under ``torchrun`` with 2 gloo
   ranks, the test model (``tinylm``, d_model 128, 4 blocks, seq 128, global batch 16): median
   ``train/step_ms`` over the logged steps after the first, and the peak resident memory per rank.
2. ``blagpt bench`` of two entries (tinylm and tinylm@wide), sequentially and with ``--parallel 2``:
   wall time of each bench, and whether the leaderboards agree.

    python benchmarks/scale_cpu.py [--steps 40] [--bench-steps 60]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "BLAGPT_LOAD_PLUGINS": "tinylm", "OMP_NUM_THREADS": "1"}
MODEL = ["model.name=tinylm", "model.d_model=128", "model.n_layers=4", "model.n_heads=4", "data.tokenizer=bytes",
         "train.seq_len=128", "train.micro_batch_size=8", "train.global_batch_size=16", "train.eval_interval=0",
         "train.eval_tokens=1024", "train.log_interval=1"]


def sets(items):
    return [x for s in items for x in ("--set", s)]


def step_ms(run_dir: Path) -> tuple[float, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ms = [r["value"] for r in rows if r["key"] == "train/step_ms" and r["step"] > 2]
    mem = max(r["value"] for r in rows if r["key"] == "train/peak_mem_mb")
    return statistics.median(ms), mem


def parallel_modes(root: Path, steps: int) -> None:
    print(f"train.parallel on 2 gloo ranks (tinylm d128 x 4 blocks, seq 128, global batch 16, {steps} steps):")
    for name, extra in (("ddp", []), ("fsdp", ["train.parallel=fsdp"]),
                        ("fsdp+ac", ["train.parallel=fsdp", "train.activation_checkpointing=blocks"])):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "blagpt",
               "train", "--no-track", "--no-progress", *sets([*MODEL, f"train.steps={steps}", f"tracking.run_name={name}", *extra])]
        proc = subprocess.run(cmd, cwd=root, env=ENV, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
        ms, mem = step_ms(root / "runs" / name)
        print(f"  {name:8s} {ms:7.1f} ms/step (median)   peak RSS of rank 0 {mem:6.0f} MiB")


def leaderboard(bench_dir: Path) -> dict[str, str]:
    with open(bench_dir / "leaderboard.csv") as f:
        return {r["entry"]: r["val_bpb_mean"] for r in csv.DictReader(f)}


def benches(root: Path, steps: int) -> None:
    base = ["bench", "--models", "tinylm,tinylm@wide", "--budget", f"steps={steps}", "--no-track",
            *sets(["data.tokenizer=bytes", "train.seq_len=128", "train.micro_batch_size=8", "train.eval_bytes=4096",
                   "train.eval_interval=0", "train.log_interval=10"])]
    walls, boards = {}, {}
    for name, extra in (("sequential", []), ("parallel2", ["--parallel", "2"])):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "blagpt", *base, "--name", name, *extra], cwd=root, env=ENV,
                              capture_output=True, text=True)
        walls[name] = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"bench {name} failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
        boards[name] = leaderboard(root / "runs" / name)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"blagpt bench, 2 entries x {steps} steps, {cores} cores (each run 1 thread):")
    print(f"  sequential   {walls['sequential']:6.1f} s")
    print(f"  --parallel 2 {walls['parallel2']:6.1f} s   ({walls['sequential'] / walls['parallel2']:.2f}x)")
    print(f"  leaderboards identical: {boards['sequential'] == boards['parallel2']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--bench-steps", type=int, default=60)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="blagpt-scale-"))
    parallel_modes(root, a.steps)
    benches(root, a.bench_steps)


if __name__ == "__main__":
    main()
