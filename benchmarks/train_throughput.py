"""Training throughput of the core's loop on the test model, against a bare PyTorch loop.

Both train the same `tinylm` model (same shapes, same data, AdamW) for the same steps; the
difference is the trainer's own overhead (loader, schedule, hooks, logging, tracking off).
Prints tokens/s of each and their ratio (measured in one run; machines here are shared).

    python benchmarks/train_throughput.py [--steps 60] [--tokenizer gpt2]
"""

import argparse
import os
import tempfile
import time

import torch

from blagpt.config import merge_sources, resolve
from blagpt.plugin.registry import Registry
from blagpt.plugin.specs import Batch, BuildContext
from blagpt import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bytes"])
    a = ap.parse_args()
    reg = Registry.load(only=["tinylm"])
    sets = [
        "model.name=tinylm", f"data.tokenizer={a.tokenizer}", f"train.steps={a.steps}", "train.seq_len=128",
        "train.micro_batch_size=8", "train.eval_interval=0", "train.eval_tokens=1024", f"train.log_interval={a.steps}",
        "tracking.enabled=false", "train.warmup_steps=0",
    ]
    cfg = resolve(merge_sources(sets=sets), reg)
    os.chdir(tempfile.mkdtemp())
    t0 = time.perf_counter()
    res = train(cfg, registry=reg, echo=lambda *x: None)
    wall = time.perf_counter() - t0
    tps_trainer = [h for h in res.history if "train/tokens_per_s" in h][-1]["train/tokens_per_s"]

    # the same work in a bare loop
    from blagpt.data.loader import Layout, TokenStream, TrainLoader
    from blagpt.data.prepare import embedded_dataset

    vocab = 50257 if a.tokenizer == "gpt2" else 257
    torch.manual_seed(0)
    model = reg.build_model(cfg.model, BuildContext(vocab, 128, a.tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = TrainLoader(TokenStream(embedded_dataset(a.tokenizer)[0], "t"), 128, Layout(8, 1, 0, 1), 0)
    batches = []
    for _ in range(a.steps):
        batches.append(loader.micro_batch(0))
        loader.advance()
    t0 = time.perf_counter()
    for toks in batches:
        b = Batch(toks)
        loss = torch.nn.functional.cross_entropy(model(b.inputs).flatten(0, 1), b.targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    tps_bare = a.steps * 8 * 128 / (time.perf_counter() - t0)
    print(f"tinylm ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {a.tokenizer}), {a.steps} steps x 8 x 128 tokens, CPU threads {torch.get_num_threads()}")
    print(f"blagpt trainer : {tps_trainer:,.0f} tokens/s (whole run incl. setup: {wall:.1f} s)")
    print(f"bare loop      : {tps_bare:,.0f} tokens/s")
    print(f"ratio trainer/bare: {tps_trainer / tps_bare:.3f}")


if __name__ == "__main__":
    main()
