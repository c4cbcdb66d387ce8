"""Mamba-2 family speed on CPU: chunked SSD vs the step-by-step recurrence, and the 124M-class
models against a same-size transformer.

    python benchmarks/ssm_scan.py                    # everything
    python benchmarks/ssm_scan.py --only scan        # part 1 only
    python benchmarks/ssm_scan.py --only models --seq-len 256
    python benchmarks/ssm_scan.py --threads 1        # steadier on a shared machine

Part 1 times forward + backward at T = 1024 of the SSD scan alone (24 heads of 64 channels,
d_state 128: the ``124m`` presets' Mamba-2 layer) and of the whole Mamba-2 layer (d_model 768),
each with the chunked SSD and with the step-by-step recurrence, and prints the ratios. The
layer's projections, convolution and norm cost the same in both paths, so its ratio is lower.

Part 2 runs, for each of mamba2+124m, zamba2+124m, rene+124m (each also with ``recompute=True``) and the transformer baseline, a few
forward + backward passes of one (batch, seq_len) micro-batch, each model in its own subprocess,
and prints parameters, tokens/s and peak memory (the process's peak resident memory minus its
resident memory once the model is built: activations, gradients and temporaries). The baseline is
the ``blagpt`` model's ``gpt2+124m`` preset when a plugin registers it; otherwise the core's test
transformer ``tinylm`` at GPT-2 small's shape (12 layers, d 768, 12 heads, tied head), which is
said in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_scan(seq_len: int, chunk_size: int, batch: int, repeats: int) -> None:
    import torch

    from blagpt_plugin_ssm import Mamba2, ssd_chunked, ssd_recurrent

    torch.manual_seed(0)
    H, P, N = 24, 64, 128  # the 124m presets' Mamba-2 layer: d_model 768, expand 2, d_state 128
    print(f"[scan] forward+backward, batch={batch}, T={seq_len}, heads={H}x{P}, d_state={N}, "
          f"chunk={chunk_size}, threads={torch.get_num_threads()}")

    # The SSD scan alone: the chunked algorithm against the step-by-step recurrence.
    x = torch.randn(batch, seq_len, H, P, requires_grad=True)
    dt = (torch.rand(batch, seq_len, H) * 0.1 + 1e-3).requires_grad_(True)
    A = (-torch.rand(H) * 4 - 0.1).requires_grad_(True)
    B = torch.randn(batch, seq_len, 1, N, requires_grad=True)
    C = torch.randn(batch, seq_len, 1, N, requires_grad=True)

    def scan(fn):
        def f():
            for t in (x, dt, A, B, C):
                t.grad = None
            y, state = fn()
            (y.square().mean() + state.square().mean()).backward()

        return f

    chunked = best_time(scan(lambda: ssd_chunked(x, dt, A, B, C, chunk_size)), repeats)
    stepwise = best_time(scan(lambda: ssd_recurrent(x, dt, A, B, C)), 1)
    print(f"[scan]   SSD scan, chunked:              {chunked * 1e3:9.1f} ms")
    print(f"[scan]   SSD scan, step-by-step:         {stepwise * 1e3:9.1f} ms")
    print(f"[scan]   SSD scan ratio step-by-step / chunked: {stepwise / chunked:.1f}x")

    # The whole layer (projections, convolution and norm are the same in both paths).
    layer = Mamba2(768, d_state=N, head_dim=P, expand=2, chunk_size=chunk_size)
    u = torch.randn(batch, seq_len, 768, requires_grad=True)

    def run(reference: bool):
        def f():
            layer.zero_grad(set_to_none=True)
            u.grad = None
            layer(u, reference=reference).square().mean().backward()

        return f

    chunked = best_time(run(False), repeats)
    stepwise = best_time(run(True), 1)
    print(f"[scan]   Mamba-2 layer d_model=768, chunked:      {chunked * 1e3:9.1f} ms")
    print(f"[scan]   Mamba-2 layer d_model=768, step-by-step: {stepwise * 1e3:9.1f} ms")
    print(f"[scan]   layer ratio step-by-step / chunked: {stepwise / chunked:.1f}x")


MODELS = ["mamba2+124m", "zamba2+124m", "rene+124m",
          "mamba2+124m:recompute", "zamba2+124m:recompute", "rene+124m:recompute", "baseline"]


def model_worker(which: str, batch: int, seq_len: int, steps: int) -> None:
    """Build one model, time ``steps`` forward+backward passes after one warm-up, print JSON."""
    import torch
    import torch.nn.functional as F

    from blagpt import BuildContext
    from blagpt.config import apply_presets
    from blagpt.plugin.registry import Registry

    reg = Registry.load()
    ctx = BuildContext(vocab_size=50257, max_seq_len=max(seq_len, 1024), tokenizer="gpt2")
    note = ""
    if which == "baseline":
        if "blagpt" in reg.models and "124m" in reg.model_spec("blagpt").presets:
            name, preset = "blagpt", "gpt2+124m"
            note = "blagpt gpt2+124m"
        else:
            name, preset = "tinylm", None
            note = "tinylm at GPT-2 small shape, tied head (no `blagpt` model with a gpt2+124m preset installed)"
    else:
        name, _, preset = which.partition("+")
        preset, _, option = preset.partition(":")
    raw = {"name": name, **({"preset": preset} if preset else {})}
    if which != "baseline" and option == "recompute":
        raw["recompute"] = True
    if name == "tinylm":
        raw.update(d_model=768, n_layers=12, n_heads=12)
    spec = reg.model_spec(name)
    cfg = spec.config(**apply_presets(raw, reg))
    torch.manual_seed(0)
    model = reg.build_model(cfg, ctx)
    if name == "tinylm":
        model.head.weight = model.wte.weight
    params = sum(p.numel() for p in model.parameters())
    idx = torch.randint(50257, (batch, seq_len + 1))

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(idx[:, :-1])
        F.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten()).backward()

    rss_built = _status_kb("VmRSS")
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    peak = _status_kb("VmHWM")  # this process's peak RSS (ru_maxrss would carry the parent's over exec)
    print(json.dumps({
        "model": which, "note": note, "params": params, "tokens_per_s": batch * seq_len / dt,
        "step_s": dt, "peak_rss_mb": peak / 1024, "peak_over_built_mb": (peak - rss_built) / 1024,
    }))


def _status_kb(field: str) -> int:
    """A memory field of /proc/self/status (Linux), in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def bench_models(batch: int, seq_len: int, steps: int, threads: int, rounds: int) -> None:
    print(f"[models] forward+backward, batch={batch}, T={seq_len}, {steps} timed steps after 1 warm-up, "
          f"threads={threads or 'default'}, each model in its own process, {rounds} round(s) over the models "
          "(best tokens/s and lowest peak of the rounds: the machine's load drifts)")
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for which in MODELS:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", which, "--batch", str(batch), "--seq-len", str(seq_len),
                 "--steps", str(steps), "--threads", str(threads)],
                capture_output=True, text=True, env=os.environ.copy(),
            )
            if out.returncode != 0:
                print(f"[models] {which}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if which in best:
                r["tokens_per_s"] = max(r["tokens_per_s"], best[which]["tokens_per_s"])
                r["step_s"] = min(r["step_s"], best[which]["step_s"])
                r["peak_rss_mb"] = min(r["peak_rss_mb"], best[which]["peak_rss_mb"])
                r["peak_over_built_mb"] = min(r["peak_over_built_mb"], best[which]["peak_over_built_mb"])
            best[which] = r
    print(f"[models] {'model':<22}{'params':>10}{'tokens/s':>11}{'step s':>9}{'peak RSS MB':>13}{'over built MB':>15}")
    rows = [best[w] for w in MODELS if w in best]
    for r in rows:
        print(f"[models] {r['model']:<22}{r['params'] / 1e6:>9.1f}M{r['tokens_per_s']:>11.0f}{r['step_s']:>9.2f}"
              f"{r['peak_rss_mb']:>13.0f}{r['peak_over_built_mb']:>15.0f}")
    base = best.get("baseline")
    if base:
        print(f"[models] baseline: {base['note']}")
        for r in rows:
            if r is not base:
                print(f"[models] {r['model']}: {r['tokens_per_s'] / base['tokens_per_s']:.2f}x the baseline's tokens/s, "
                      f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x its peak RSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["scan", "models"])
    ap.add_argument("--scan-seq-len", type=int, default=1024)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--scan-batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the models (best of)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        model_worker(args.worker, args.batch, args.seq_len, args.steps)
        return
    if args.only in (None, "scan"):
        bench_scan(args.scan_seq_len, args.chunk_size, args.scan_batch, args.repeats)
    if args.only in (None, "models"):
        bench_models(args.batch, args.seq_len, args.steps, args.threads, args.rounds)


if __name__ == "__main__":
    main()
