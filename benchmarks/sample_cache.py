"""Tokens per second of `blagpt sample`'s generation loop with and without the model's decoding
cache (init_cache + forward(idx, cache=cache)), on the CPU.

Models are built through the plugins' build_model hooks from their presets and randomly
initialised (no training: speed does not depend on the weights), in fp32, batch 1. Each model
generates --tokens ids after a short prompt, at temperature 1 with a seeded generator, once with
the cache and once with the full forward on the window at every step (`--no-cache`); the line
also says whether both gave the same ids (they should: the window and the sampling are the same).
With --context below prompt + --tokens the window slides, and beyond it every step prefills the
whole window again in both modes, so the two speeds meet.

    python benchmarks/sample_cache.py [--tokens 512] [--context 1024] [--threads 1]
        [--models blagpt@blagpt+mini,rwkv7@tiny,mamba2@tiny] [--tokenizer gpt2]
"""

from __future__ import annotations

import argparse
import time

import torch


def build(registry, name: str, preset: str, context: int, tokenizer: str):
    from blagpt.config import merge_sources, resolve
    from blagpt.data.tokenizers import get_tokenizer
    from blagpt.plugin.specs import BuildContext

    sets = [f"model.name={name}", f"model.preset={preset}", f"data.tokenizer={tokenizer}", f"train.seq_len={context}",
            "tracking.enabled=false"]
    cfg = resolve(merge_sources(sets=sets), registry)
    tok = get_tokenizer(tokenizer, registry)
    torch.manual_seed(0)
    model = registry.build_model(cfg.model, BuildContext(tok.vocab_size, context, tokenizer, device="cpu"))
    return model.eval(), tok


def timed(model, tok, prompt, n, context, use_cache) -> tuple[float, list[int]]:
    from blagpt.run.sample import generate

    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    ids = list(generate(model, prompt, n, context=context, vocab_size=tok.vocab_size, eot=None, temperature=1.0,
                        generator=gen, use_cache=use_cache))
    return time.perf_counter() - t0, ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--context", type=int, default=1024, help="train.seq_len of the models (the sampling window)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="blagpt@blagpt+mini,rwkv7@tiny,mamba2@tiny")
    ap.add_argument("--tokenizer", default="gpt2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from blagpt.plugin.registry import Registry
    from blagpt.run.sample import decoding_cache

    registry = Registry.load()
    print(f"{a.tokens} generated tokens, window {a.context}, {a.tokenizer} vocabulary, CPU, {a.threads} thread(s), "
          "randomly initialised models, batch 1, fp32")
    print(f"{'model':24} {'params':>8} {'cached tok/s':>13} {'full tok/s':>11} {'speed-up':>9}  same ids")
    for entry in a.models.split(","):
        name, _, preset = entry.partition("@")
        model, tok = build(registry, name, preset, a.context, a.tokenizer)
        prompt = tok.encode("ROMEO:\nBut soft, what light")
        params = sum(p.numel() for p in model.parameters())
        if decoding_cache(model) is None:
            print(f"{entry:24} {params / 1e6:7.2f}M  (no decoding cache)")
            continue
        timed(model, tok, prompt, 8, a.context, True)  # warm-up
        timed(model, tok, prompt, 8, a.context, False)
        t_cache, ids_cache = timed(model, tok, prompt, a.tokens, a.context, True)
        t_full, ids_full = timed(model, tok, prompt, a.tokens, a.context, False)
        same = "yes" if ids_cache == ids_full else f"no (first difference at {next(i for i, (x, y) in enumerate(zip(ids_cache, ids_full)) if x != y)})"
        print(f"{entry:24} {params / 1e6:7.2f}M {a.tokens / t_cache:13.1f} {a.tokens / t_full:11.1f} {t_full / t_cache:8.1f}x  {same}")


if __name__ == "__main__":
    main()
