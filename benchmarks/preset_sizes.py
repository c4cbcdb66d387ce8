"""Parameter counts of every installed model at a preset, total and without embeddings.

Each model is resolved and built the way a run builds it (``blagpt.config.resolve`` on the merged
config, then the registry's ``build_model`` with a ``BuildContext``), with the tokenizer and the
sequence length given here; "without embeddings" is the core's ``embedding_params`` rule, the
``n_params_non_embedding`` a run logs. Used to size the ``bench`` presets (150k non-embedding
parameters with bytes at seq_len 256) so that a bench compares architectures at matched size.

    python benchmarks/preset_sizes.py                          # every model at ``bench``
    python benchmarks/preset_sizes.py --preset tiny
    python benchmarks/preset_sizes.py --preset bench --model blagpt=gpt2+bench --model blagpt=blagpt+bench
    python benchmarks/preset_sizes.py --set model.n_layers=3 --model blagpt   # try a size
"""

from __future__ import annotations

import argparse

import torch

from blagpt.config import merge_sources, resolve
from blagpt.data.tokenizers import get_tokenizer
from blagpt.errors import BlagptError
from blagpt.plugin.registry import get_registry
from blagpt.plugin.specs import BuildContext
from blagpt.run.trainer import embedding_params


def count(registry, model: str, preset: str, tokenizer: str, seq_len: int, sets: list[str]) -> tuple[int, int, list[str]]:
    """Total and non-embedding parameters of ``model`` at ``preset``, and the names of the linear
    layers the rule counts as output heads (a hidden layer exactly as wide as the padded
    vocabulary is counted too, by shape: the list shows when that happens)."""
    raw = merge_sources(sets=[f"model.name={model}", f"model.preset={preset}", f"data.tokenizer={tokenizer}",
                              f"train.seq_len={seq_len}", *sets])
    cfg = resolve(raw, registry)
    tok_name = cfg.tokenizer_name(registry)
    vocab = get_tokenizer(tok_name, registry).vocab_size
    torch.manual_seed(0)
    net = registry.build_model(cfg.model, BuildContext(vocab, seq_len, tok_name))
    total = sum(p.numel() for p in net.parameters())
    rows = {m.num_embeddings for m in net.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings >= vocab}
    heads = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features in rows]
    return total, total - embedding_params(net, vocab), heads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench", help="preset of every model (default: bench)")
    ap.add_argument("--model", action="append", default=[],
                    help="NAME or NAME=PRESET (repeatable); default: every installed model at --preset")
    ap.add_argument("--tokenizer", default="bytes")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--set", action="append", default=[], help="extra --set item applied to every model")
    ap.add_argument("--target", type=int, default=150_000, help="non-embedding target, for the last column")
    args = ap.parse_args()
    registry = get_registry()
    entries = [m.partition("=") for m in args.model]
    if not entries:  # every installed model that has the preset (the test plugin tinylm has none)
        has = [m for m in sorted(registry.models) if all(p in registry.model_spec(m).presets for p in args.preset.split("+"))]
        left = sorted(set(registry.models) - set(has))
        if left:
            print(f"(no preset {args.preset!r}: {', '.join(left)})")
        entries = [(m, "", "") for m in has]
    print(f"{'model':<10} {'preset':<18} {'total':>12} {'non-embedding':>14} {'vs target':>10}  linear layers counted as heads")
    for name, _, preset in entries:
        preset = preset or args.preset
        try:
            total, non_emb, heads = count(registry, name, preset, args.tokenizer, args.seq_len, args.set)
        except BlagptError as e:
            raise SystemExit(f"error: {name}={preset}: {e}") from None
        print(f"{name:<10} {preset:<18} {total:>12,} {non_emb:>14,} {non_emb / args.target - 1:>+10.1%}  {' '.join(heads) or '-'}")


if __name__ == "__main__":
    main()
