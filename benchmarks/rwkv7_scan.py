"""RWKV-7 speed on CPU: the chunked delta-rule kernel vs the step-by-step recurrence, and the
124M-class model against a same-size transformer.

    python benchmarks/rwkv7_scan.py                       # everything
    python benchmarks/rwkv7_scan.py --only scan           # part 1 only
    python benchmarks/rwkv7_scan.py --only models --seq-len 256 --threads 1

Part 1 times forward + backward at T = 1024 at the ``124m`` preset's sizes (d_model 768, heads
of 64: 12 heads), (a) of the delta-rule kernel alone (``wkv7_chunked`` vs ``wkv7_recurrent``)
and (b) of one whole time-mixing layer (projections, LoRAs, group norm included) with
``kernel=chunked`` vs ``kernel=recurrent``, and prints the ratios. Chunked: best of
``--repeats`` after a warm-up; step-by-step: one run (it is the slow side).

Part 2 runs, for rwkv7+124m (also with ``recompute_kernel``) and the transformer baseline, a few
forward + backward passes of one (batch, seq_len) micro-batch, each model in its own subprocess,
and prints parameters, tokens/s and peak memory: the process's peak resident memory minus its
resident memory once the model is built (activations, gradients and temporaries), measured in a
separate one-step run with glibc's mmap threshold fixed so that freed tensors leave the resident
set (on CUDA: torch's peak allocated memory). The baseline is the ``blagpt`` model's
``gpt2+124m`` preset when a plugin registers it; otherwise the core's test transformer
``tinylm`` at GPT-2 small's shape, which is said in the output.

The machine these figures come from is shared: compare ratios from one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def best_time(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_scan(seq_len: int, batch: int, chunk_size: int, repeats: int) -> None:
    import torch

    from blagpt_plugin_rwkv7.model import RWKV7Config, TimeMix
    from blagpt_plugin_rwkv7.wkv import MAX_ABS_LOG_W, wkv7_chunked, wkv7_recurrent

    C, N = 768, 64
    H = C // N
    g = torch.Generator().manual_seed(0)
    shape = (batch, seq_len, H, N)
    kappa = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
    inputs = [
        torch.randn(shape, generator=g),  # r
        -MAX_ABS_LOG_W * torch.sigmoid(torch.randn(shape, generator=g)),  # log w
        torch.randn(shape, generator=g),  # k
        torch.randn(shape, generator=g),  # v
        -kappa,  # a
        kappa * torch.sigmoid(torch.randn(shape, generator=g)),  # b
    ]
    inputs = [x.requires_grad_() for x in inputs]

    def kernel(fn, **kw):
        def f():
            for x in inputs:
                x.grad = None
            y, h = fn(*inputs, **kw)
            (y.square().mean() + h.square().mean()).backward()

        return f

    print(f"# part 1: forward + backward, B={batch} T={seq_len} H={H} N={N}, "
          f"chunk_size={chunk_size}, {torch.get_num_threads()} threads")
    t_chunk = best_time(kernel(wkv7_chunked, chunk_size=chunk_size), repeats)
    t_step = best_time(kernel(wkv7_recurrent), 1, warmup=False)
    print(f"delta-rule kernel   chunked {t_chunk * 1e3:9.1f} ms   step-by-step {t_step * 1e3:9.1f} ms   "
          f"ratio {t_step / t_chunk:6.1f}x")

    torch.manual_seed(0)
    cfg = RWKV7Config(d_model=C, n_layers=12, head_size=N, chunk_size=chunk_size)
    layer = TimeMix(cfg, layer=0)
    with torch.no_grad():  # W_o starts at zero; give the output a gradient path to everything
        layer.W_o.weight.normal_(std=0.02)
    x = torch.randn(batch, seq_len, C, requires_grad=True)

    def layer_run(kind):
        def f():
            layer.kernel = kind
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x, None)[0].square().mean().backward()

        return f

    t_chunk = best_time(layer_run("chunked"), repeats)
    t_step = best_time(layer_run("recurrent"), 1, warmup=False)
    print(f"time-mixing layer   chunked {t_chunk * 1e3:9.1f} ms   step-by-step {t_step * 1e3:9.1f} ms   "
          f"ratio {t_step / t_chunk:6.1f}x")


def baseline_spec() -> tuple[str, dict, str]:
    """(model name, raw model config, note) of the transformer to compare against."""
    from blagpt.plugin.registry import get_registry

    reg = get_registry()
    if "blagpt" in reg.models and {"gpt2", "124m"} <= set(reg.models["blagpt"].presets):
        return "blagpt", {"name": "blagpt", "preset": "gpt2+124m"}, "blagpt gpt2+124m"
    return (
        "tinylm",
        {"name": "tinylm", "d_model": 768, "n_layers": 12, "n_heads": 12},
        "tinylm at 12x768 (plugins/blagpt is not installed: no gpt2+124m preset to compare against)",
    )


def rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_one(raw_model: dict, batch: int, seq_len: int, steps: int, device: str) -> dict:
    """Build one model through the registry and time forward + backward (run in a subprocess).

    ``steps`` 0: a single forward + backward, for the peak-memory run.
    """
    import torch

    from blagpt import BuildContext
    from blagpt.config import resolve
    from blagpt.plugin.registry import get_registry

    reg = get_registry()
    cfg = resolve({"model": raw_model}, reg).model
    torch.manual_seed(0)
    model = reg.build_model(cfg, BuildContext(vocab_size=50257, max_seq_len=seq_len, tokenizer="gpt2", device=device))
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    idx = torch.randint(0, 50257, (batch, seq_len + 1), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(idx[:, :-1])
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten()).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    base_rss = rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (and the memory run's one step)
    t = best_time(step, steps, warmup=False) if steps else float("nan")
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {"params": n_params, "tokens_per_s": batch * seq_len / t, "step_s": t, "peak_mb": peak}


def run_one(model_raw: dict, batch: int, seq_len: int, steps: int, device: str, threads: int | None,
            memory_run: bool) -> dict:
    cmd = [sys.executable, __file__, "--_one", json.dumps(model_raw), "--batch", str(batch),
           "--seq-len", str(seq_len), "--steps", str(0 if memory_run else steps), "--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    if memory_run:
        # A fixed mmap threshold makes glibc hand every large tensor back to the OS when it is
        # freed, so the peak resident memory tracks the live tensors; with the default (dynamic)
        # threshold freed activations stay in the heap (recomputation then shows no saving). It
        # also makes every large allocation a fresh mmap, which slows some models a lot: hence a
        # separate run for memory, and timings from runs with the default allocator.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_models(batch: int, seq_len: int, steps: int, device: str, threads: int | None) -> None:
    name, raw, note = baseline_spec()
    print(f"\n# part 2: forward + backward of a (B={batch}, T={seq_len}) micro-batch on {device}, "
          f"best of {steps} after a warm-up; baseline: {note}")
    runs = [
        ("rwkv7+124m", {"name": "rwkv7", "preset": "124m"}),
        ("rwkv7+124m recompute_kernel", {"name": "rwkv7", "preset": "124m", "recompute_kernel": True}),
        (f"{name} (baseline)", raw),
    ]
    results = {}
    for label, model_raw in runs:
        try:
            r = run_one(model_raw, batch, seq_len, steps, device, threads, memory_run=False)
            if device == "cpu":
                r["peak_mb"] = run_one(model_raw, batch, seq_len, steps, device, threads, memory_run=True)["peak_mb"]
        except RuntimeError as e:
            print(f"{label}: failed\n{e}")
            continue
        results[label] = r
        print(f"{label:30s} params {r['params'] / 1e6:7.1f}M   {r['tokens_per_s']:9.0f} tok/s   "
              f"step {r['step_s']:6.2f} s   peak memory {r['peak_mb']:8.0f} MiB")
    base = results.get(f"{name} (baseline)")
    for label, r in results.items():
        if base is not None and r is not base:
            print(f"ratio {label} / baseline: tokens/s {r['tokens_per_s'] / base['tokens_per_s']:.2f}x, "
                  f"peak memory {r['peak_mb'] / base['peak_mb']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["scan", "models"])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed forward+backward steps per model (part 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--_one", help=argparse.SUPPRESS)
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args._one:
        print(json.dumps(bench_one(json.loads(args._one), args.batch, args.seq_len, args.steps, args.device)))
        return
    if args.only in (None, "scan"):
        bench_scan(args.seq_len, args.batch, args.chunk_size, args.repeats)
    if args.only in (None, "models"):
        bench_models(args.batch, args.seq_len, args.steps, args.device, args.threads)


if __name__ == "__main__":
    main()
