"""Training-step throughput of BlaGPT's ``gpt2`` preset against a minimal reference GPT.

The reference below is an independent, minimal GPT-2 (learned positions, pre-LayerNorm, fused QKV,
SDPA, GELU MLP, tied embeddings, cross-entropy inside ``forward`` like BlaGPT's) of identical shape
and parameter count (checked). Both train with
AdamW on the same random batches; a step is forward + loss + backward + optimizer step. Timing
alternates between the two models, one step each (ABBA order), so a change of machine load hits
both alike;
the figure is the median over the timed steps. On a CPU shared with other jobs, wall time mostly
measures the neighbours: run with ``--threads 1`` and the process's CPU time is reported too
(time this process actually ran), which is the figure to quote there.

    python benchmarks/blagpt_throughput.py                       # CPU, eager and compiled
    python benchmarks/blagpt_throughput.py --size small --seq-len 512 --modes eager
    python benchmarks/blagpt_throughput.py --device cuda --size 124m --seq-len 1024 --batch 16 --bf16

Two references: ``ref-nll`` returns the per-token NLL with the loss, as blagpt's ``compute_loss``
contract requires of every model (and as the core's default loss computes it): the like-for-like
comparison; ``ref-mean`` returns the mean loss only (nanoGPT), for scale. Prints tokens/s of each
and the ratio BlaGPT / reference (>= 1.0: no slower).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from blagpt import Batch
from blagpt.nn import padded_vocab

from blagpt_plugin_blagpt import PRESETS, BlaGPT, BlaGPTConfig, compute_loss


class RefBlock(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.c_out(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, max_len: int, n_layers: int, d: int, n_heads: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(max_len, d)
        self.h = nn.ModuleList(RefBlock(d, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, per_token: bool = False):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        if targets is None:
            return logits
        # the loss inside forward, as nanoGPT does, so that a compiled model fuses it too
        z, y = logits.float().flatten(0, 1), targets.flatten()
        if not per_token:  # nanoGPT: the mean loss only
            return F.cross_entropy(z, y)
        # blagpt's contract: the per-token NLL (B, T) besides the loss, as the core's default loss
        nll = F.cross_entropy(z, y, reduction="none").view_as(targets)
        return nll.mean(), nll.detach()


def ref_mean_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens[:, :-1], targets=tokens[:, 1:])


def ref_nll_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens[:, :-1], targets=tokens[:, 1:], per_token=True)[0]


def blagpt_loss(cfg):
    return lambda model, tokens: compute_loss("blagpt", model, Batch(tokens), cfg).loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="mini", choices=["tiny", "mini", "small", "124m", "350m"])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50257, help="tokenizer vocabulary (padded to 50304)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model and mode")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    cfg = BlaGPTConfig(**{**PRESETS["gpt2"], **PRESETS[args.size]})
    torch.manual_seed(0)
    ours = BlaGPT(cfg, args.vocab, args.seq_len).to(dev)
    V = padded_vocab(args.vocab, cfg.vocab_multiple)
    refs = []
    for _ in range(2):  # one per loss flavour, same initialisation
        torch.manual_seed(1)
        refs.append(RefGPT(V, args.seq_len, cfg.n_layers, cfg.d_model, cfg.n_heads).to(dev))
    ref = refs[0]
    n_ours, n_ref = (sum(p.numel() for p in m.parameters()) for m in (ours, ref))
    assert n_ours == n_ref, (n_ours, n_ref)
    print(
        f"gpt2+{args.size}: L={cfg.n_layers} d={cfg.d_model} H={cfg.n_heads} V={V} params={n_ours / 1e6:.2f}M "
        f"(reference {n_ref / 1e6:.2f}M); B={args.batch} T={args.seq_len} device={dev} "
        f"threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    tokens_per_step = args.batch * args.seq_len
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=g).to(dev) for _ in range(8)]
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if args.bf16 else torch.autocast(dev.type, enabled=False)

    for mode in args.modes.split(","):
        runners = []
        for name, model, loss_fn in (
            ("ref-nll", refs[0], ref_nll_loss),
            ("ref-mean", refs[1], ref_mean_loss),
            ("blagpt", ours, blagpt_loss(cfg)),
        ):
            fwd = torch.compile(model) if mode == "compiled" else model
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")

            def step(i, fwd=fwd, opt=opt, loss_fn=loss_fn):
                with amp:
                    loss = loss_fn(fwd, data[i % len(data)])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss

            t0 = time.perf_counter()
            for i in range(args.warmup):
                step(i)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            print(f"  [{mode}] {name}: warmup (incl. compile) {time.perf_counter() - t0:.1f}s")
            runners.append((name, step, [], []))
        for i in range(args.steps):
            for name, step, walls, cpus in runners if i % 2 == 0 else runners[::-1]:  # ABBA order
                t0, c0 = time.perf_counter(), time.process_time()
                loss = step(i)
                loss.item()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        clocks = [("wall", 2)] + ([("cpu", 3)] if dev.type == "cpu" and torch.get_num_threads() == 1 else [])
        for clock, k in clocks:
            tps = {}
            for r in runners:
                name, times = r[0], r[k]
                tps[name] = tokens_per_step / statistics.median(times)
                spread = tokens_per_step / min(times), tokens_per_step / max(times)
                print(
                    f"  [{mode}] {name:8s} {tps[name]:10.0f} tokens/s by {clock} time "
                    f"(median of {args.steps}; best {spread[0]:.0f}, worst {spread[1]:.0f})"
                )
            if dev.type == "cuda":
                fl = ours.flops_per_token(args.seq_len) * tps["blagpt"]
                print(f"  [{mode}] blagpt model FLOP/s {fl / 1e12:.1f} TFLOP/s")
            print(
                f"  [{mode}] ratio blagpt/reference by {clock} time = {tps['blagpt'] / tps['ref-nll']:.3f} "
                f"(vs the mean-loss-only reference: {tps['blagpt'] / tps['ref-mean']:.3f})"
            )
    assert math.isfinite(loss.item())


if __name__ == "__main__":
    main()
