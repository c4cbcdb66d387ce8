"""Hierarchical models against the BlaGPT `gpt2` preset, on CPU (issue 5's benchmark).

Part 1, speed and memory at the 124M-class presets: one forward + backward of B x T tokens (best
of --repeats), tokens/s and the peak resident memory of a fresh process per model.
Part 2, quality after the same short budget: each model's `tiny` preset trained by the core
trainer for --steps steps on the embedded corpus, val bpb on the same 8,000 bytes of text
(`train.eval_bytes`, the same text whatever the tokenizer). Byte models see fewer characters per
step than token models at the same tokens per step: the budget is equal in tokens, not in text.

    python benchmarks/hierarchical.py [--threads 1] [--seq-len 1024] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SCRIPT = os.path.abspath(__file__)
ENTRIES = [  # (label, model, preset, tokenizer)
    ("blagpt gpt2", "blagpt", "gpt2", "gpt2"),
    ("megabyte (bytes)", "megabyte", None, "bytes"),
    ("megabyte (gpt2)", "megabyte", None, "gpt2"),
    ("hourglass", "hourglass", None, "gpt2"),
    ("ftp", "ftp", None, "gpt2"),
]


def size_preset(model: str, preset: str | None, tokenizer: str, size: str) -> str:
    if model == "megabyte" and size == "124m" and tokenizer == "gpt2":
        size = "124m-gpt2"
    return f"{preset}+{size}" if preset else size


def one(model: str, preset: str, tokenizer: str, seq_len: int, repeats: int) -> dict:
    """Runs in its own process: build, time forward + backward, report peak RSS (VmHWM)."""
    import torch

    from blagpt.config import merge_sources, resolve
    from blagpt.data.tokenizers import get_tokenizer
    from blagpt.plugin.registry import Registry
    from blagpt.plugin.specs import Batch, BuildContext

    reg = Registry.load(only=[model])
    cfg = resolve(merge_sources(sets=[f"model.name={model}", f"model.preset={preset}", f"data.tokenizer={tokenizer}"]), reg)
    vocab = get_tokenizer(tokenizer).vocab_size
    torch.manual_seed(0)
    net = reg.build_model(cfg.model, BuildContext(vocab, seq_len, tokenizer))
    batch = Batch(torch.randint(0, vocab, (1, seq_len + 1)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        reg.compute_loss(net, batch, cfg.model).loss.backward()
        best = min(best, time.perf_counter() - t0)
        net.zero_grad(set_to_none=True)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return {"params": sum(p.numel() for p in net.parameters()), "tok_s": seq_len / best, "peak_mib": hwm / 1024}


def quality(model: str, preset: str, tokenizer: str, steps: int) -> dict:
    from blagpt.config import merge_sources, resolve
    from blagpt.plugin.registry import Registry
    from blagpt import train

    reg = Registry.load(only=[model])
    sets = [f"model.name={model}", f"model.preset={preset}", f"data.tokenizer={tokenizer}", f"train.steps={steps}",
            "train.seq_len=128", "train.micro_batch_size=8", "train.eval_interval=0", "train.eval_bytes=8000",
            "tracking.enabled=false", f"tracking.run_name={model}-{tokenizer}-{preset}", f"train.log_interval={steps}"]
    res = train(resolve(merge_sources(sets=sets), reg), registry=reg, echo=lambda *a: None)
    return {"val_bpb": res.final["val/bpb"], "val_bytes": res.final["val/bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "PRESET", "TOKENIZER"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.one:
        print(json.dumps(one(*a.one, a.seq_len, a.repeats)))
        return
    print(f"CPU, {a.threads} thread(s); speed: 1 x {a.seq_len} tokens forward + backward, best of {a.repeats}")
    print(f"{'entry':18} {'preset':12} {'params':>10} {'tokens/s':>9} {'peak MiB':>9} | {'tiny val bpb':>12} {'bytes':>6}")
    os.chdir(tempfile.mkdtemp())
    for label, model, preset, tok in ENTRIES:
        big = size_preset(model, preset, tok, "124m")
        out = subprocess.run(
            [sys.executable, SCRIPT, "--threads", str(a.threads), "--seq-len", str(a.seq_len),
             "--repeats", str(a.repeats), "--one", model, big, tok],
            capture_output=True, text=True, check=True,
        )
        s = json.loads(out.stdout.strip().splitlines()[-1])
        q = quality(model, size_preset(model, preset, tok, "tiny"), tok, a.steps)
        print(f"{label:18} {big:12} {s['params'] / 1e6:9.2f}M {s['tok_s']:9.1f} {s['peak_mib']:9.0f} | "
              f"{q['val_bpb']:12.4f} {q['val_bytes']:6.0f}", flush=True)


if __name__ == "__main__":
    main()
