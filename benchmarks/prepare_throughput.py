"""``data prepare`` throughput: MB of text per second with 1 worker and with 2, against tiktoken's
own ``encode_ordinary_batch`` (its Rust threads) and a plain ``encode_ordinary`` loop on the same
text. ``prepare`` does more than encode: it checks that every document decodes back to its text,
and writes shards and a manifest.

    python benchmarks/prepare_throughput.py [--copies 2] [--tokenizer gpt2] [--workers 1,2]

Prints one line per measurement; the figures of one run are comparable with each other (the
machine is shared, so runs are not).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from blagpt.data.prepare import embedded_documents, prepare
from blagpt.data.tokenizers import get_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=2, help="Copies of the embedded corpus (5 MB each).")
    ap.add_argument("--tokenizer", default="gpt2")
    ap.add_argument("--workers", default="1,2", help="Comma-separated worker counts for prepare.")
    a = ap.parse_args()
    docs = embedded_documents() * a.copies
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"{len(docs)} documents, {mb:.1f} MB of text, tokenizer {a.tokenizer}")
    tok = get_tokenizer(a.tokenizer)
    if hasattr(tok, "_enc"):  # tiktoken-based: its own batch encoder and loop, the baseline
        t0 = time.perf_counter()
        tok._enc.encode_ordinary_batch(docs)
        s = time.perf_counter() - t0
        print(f"tiktoken encode_ordinary_batch (its threads): {mb / s:7.2f} MB/s ({s:.2f} s)")
        t0 = time.perf_counter()
        for d in docs:
            tok._enc.encode_ordinary(d)
        s = time.perf_counter() - t0
        print(f"tiktoken encode_ordinary, one thread:        {mb / s:7.2f} MB/s ({s:.2f} s)")
    for w in [int(x) for x in a.workers.split(",")]:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            m = prepare(docs, a.tokenizer, out, workers=w)
            s = time.perf_counter() - t0
        per = f", {mb / s / w:.2f} MB/s per worker" if w > 1 else ""
        print(f"blagpt prepare, {w} worker(s):                 {mb / s:7.2f} MB/s ({s:.2f} s wall, {m['seconds']:.2f} s tokenizing{per})")


if __name__ == "__main__":
    main()
