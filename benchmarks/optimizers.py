"""The optimizers plugin against AdamW: step time and loss after a fixed number of steps.

    python benchmarks/optimizers.py                          # 200 steps, blagpt tiny, bytes
    python benchmarks/optimizers.py --steps 100 --only muon,soap
    python benchmarks/optimizers.py --model tinylm --tokenizer gpt2
    python benchmarks/optimizers.py --set muon.lr=0.03 --set soap.lr=0.01

Every optimizer trains the same model (same initialisation, same batches of the embedded
Shakespeare corpus) with its registered defaults, under the trainer's default schedule (linear
warmup, cosine decay to 10%, from ``blagpt.config.TrainConfig`` and ``blagpt.run.schedule.lr_factor``)
and gradient clipping at 1. Printed, one row per optimizer:

- ``step ms``: median wall time of a whole training step (forward, backward, clip, optimizer);
- ``opt ms``: median time of ``optimizer.step()`` alone;
- ``x AdamW``: both as ratios to AdamW's, measured in the same process (so the same machine load);
- ``train loss``: mean training loss over the last 10 steps; ``val loss``: next-token loss in
  nats on a fixed slice of the validation split after the last step.

The model is the ``blagpt`` plugin's ``tiny`` preset when it is installed, else the core's test
model ``tinylm`` (said in the output). heavyball runs eagerly (compile off, as on CPU by default).
"""

from __future__ import annotations

import argparse
import glob
import math
import statistics
import sys
import time

import numpy as np
import torch

from blagpt import Batch, BuildContext
from blagpt.config import TrainConfig, parse_set, resolve
from blagpt.data.prepare import embedded_dataset
from blagpt.data.shards import read_shard
from blagpt.data.tokenizers import get_tokenizer
from blagpt.plugin.registry import get_registry
from blagpt.run.schedule import lr_factor

OPTIMIZERS = ["adamw", "soap", "ademamix", "adopt", "muon"]


def load_tokens(pattern: str) -> np.ndarray:
    return np.concatenate([read_shard(f) for f in sorted(glob.glob(pattern))]).astype(np.int64)


def batches(tokens: np.ndarray, n: int, batch: int, seq: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - seq - 1, size=(n, batch))
    return [torch.from_numpy(np.stack([tokens[s : s + seq + 1] for s in row])) for row in starts]


def run(reg, model_raw: dict, opt_raw: dict, args, ctx, train_b, val_b) -> dict:
    cfg = resolve({"model": model_raw, "optimizer": opt_raw, "data": {"tokenizer": ctx.tokenizer}}, reg)
    torch.manual_seed(args.seed)
    model = reg.build_model(cfg.model, ctx)
    opt = reg.build_optimizer(model, cfg.optimizer, ctx)
    peaks = [g["lr"] for g in opt.param_groups]
    sched = TrainConfig(steps=args.steps)
    step_t, opt_t, losses = [], [], []
    for step, tokens in enumerate(train_b):
        t0 = time.perf_counter()
        f = lr_factor(step, args.steps, sched)
        for g, peak in zip(opt.param_groups, peaks):
            g["lr"] = peak * f
        out = reg.compute_loss(model, Batch(tokens), cfg.model)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        losses.append(out.loss.item())
        step_t.append(t2 - t0)
        opt_t.append(t2 - t1)
        if not math.isfinite(losses[-1]):
            break
    model.eval()
    with torch.no_grad():
        val = statistics.fmean(reg.compute_loss(model, Batch(b), cfg.model).nll.mean().item() for b in val_b)
    skip = min(5, len(step_t) // 2)  # first steps include lazy state allocation
    return {
        "step": statistics.median(step_t[skip:]),
        "opt": statistics.median(opt_t[skip:]),
        "train": statistics.fmean(losses[-10:]),
        "val": val,
        "steps": len(losses),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--model", default=None, help="registered model (default: blagpt if installed, else tinylm)")
    p.add_argument("--preset", default=None, help="model preset (default: tiny for blagpt)")
    p.add_argument("--tokenizer", default="bytes")
    p.add_argument("--only", default=None, help="comma-separated optimizers (AdamW always runs as the baseline)")
    p.add_argument("--set", action="append", default=[], help="OPTIMIZER.FIELD=VALUE, e.g. muon.lr=0.03")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    reg = get_registry()
    model = args.model or ("blagpt" if "blagpt" in reg.models else "tinylm")
    preset = args.preset if args.preset is not None else ("tiny" if model == "blagpt" else None)
    model_raw = {"name": model, **({"preset": preset} if preset else {})}
    names = OPTIMIZERS if not args.only else ["adamw"] + [n for n in args.only.split(",") if n != "adamw"]
    overrides: dict[str, dict] = {}
    for item in args.set:
        (opt_name, *field), value = parse_set(item)
        overrides.setdefault(opt_name, {})[".".join(field)] = value

    vocab = get_tokenizer(args.tokenizer).vocab_size
    ctx = BuildContext(vocab_size=vocab, max_seq_len=args.seq_len, tokenizer=args.tokenizer)
    train_glob, val_glob = embedded_dataset(args.tokenizer)
    train_b = batches(load_tokens(train_glob), args.steps, args.batch, args.seq_len, args.seed)
    val_b = batches(load_tokens(val_glob), 8, args.batch, args.seq_len, args.seed + 1)

    print(
        f"model {model}{'+' + preset if preset else ''}, tokenizer {args.tokenizer}, {args.steps} steps of "
        f"{args.batch}x{args.seq_len} tokens, {args.threads} thread(s), torch {torch.__version__}, "
        f"start ln(V) = {math.log(vocab):.3f}",
        flush=True,
    )
    rows = {}
    for name in names:
        opt_raw = {"name": name, **overrides.get(name, {})}
        rows[name] = run(reg, model_raw, opt_raw, args, ctx, train_b, val_b)
        print(f"  {name}: done ({rows[name]['step'] * 1e3:.1f} ms/step)", file=sys.stderr, flush=True)

    base = rows["adamw"]
    print(f"{'optimizer':<10} {'step ms':>8} {'x AdamW':>8} {'opt ms':>8} {'x AdamW':>8} {'train loss':>11} {'val loss':>9}")
    for name, r in rows.items():
        note = "" if r["steps"] == args.steps else f"  (stopped at step {r['steps']}: non-finite loss)"
        print(
            f"{name:<10} {r['step'] * 1e3:8.1f} {r['step'] / base['step']:8.2f} {r['opt'] * 1e3:8.2f} "
            f"{r['opt'] / base['opt']:8.2f} {r['train']:11.3f} {r['val']:9.3f}{note}"
        )
    if overrides:
        print("overrides:", overrides)


if __name__ == "__main__":
    main()
