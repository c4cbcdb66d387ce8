"""``blagpt data``: text to token shards."""

from __future__ import annotations

import os
import sys

import click

from . import CONTEXT, cli


@cli.group(context_settings=CONTEXT)
def data():
    """Prepare token shards."""


@data.command("prepare", context_settings=CONTEXT)
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--tokenizer", required=True, help="Tokenizer of the shards: gpt2, bytes, hf:PATH/tokenizer.json, tiktoken:PATH.tiktoken, or a plugin's (blagpt list).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder for train_*.bin, val_*.bin and manifest.json (an earlier prepare's shards there are replaced).")
@click.option("--text-field", default="text", show_default=True, help="Field of a JSONL record, or column of a parquet file, that holds the text.")
@click.option("--val-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Share of the text (in bytes) held out for validation.")
@click.option("--split-on", default=None, help="Separator of documents inside a text file (e.g. '\\f'); default: one document per file.")
@click.option("--shard-tokens", default=100_000_000, show_default=True, type=click.IntRange(min=1), help="Tokens per shard.")
@click.option("--workers", default=min(8, os.cpu_count() or 1), show_default=True, type=click.IntRange(min=1), help="Tokenizer processes.")
def data_prepare(sources, tokenizer, out_dir, text_field, val_fraction, split_on, shard_tokens, workers):
    """Tokenize SOURCE... into shards: text files (.txt, .md), JSONL (.jsonl, .jsonl.gz) and parquet
    files, folders of them, globs, or - for stdin.

    Every document is checked to decode back to its text (bits per byte stay exact); the folder
    gets a manifest.json (tokenizer and its vocabulary digest, sources, counts) that training
    checks against the run's tokenizer.

    \b
    Examples:
      blagpt data prepare corpus.txt --tokenizer gpt2 --out data/corpus
      blagpt data prepare 'fineweb/*.parquet' --tokenizer tiktoken:cl100k_base.tiktoken --out data/fw --workers 16
      blagpt data prepare docs.jsonl.gz --text-field body --tokenizer hf:tok/tokenizer.json --out data/docs
      cat *.txt | blagpt data prepare - --tokenizer bytes --out data/stdin
    Then train on them: blagpt train --model blagpt --set data.train='data/corpus/train_*.bin' --set data.val='data/corpus/val_*.bin'
    """
    from ..data.prepare import prepare
    from ..data.sources import Corpus
    from ..errors import ConfigError

    if split_on is not None:
        try:
            split_on = split_on.encode().decode("unicode_escape")
        except UnicodeDecodeError as e:
            raise ConfigError(f"--split-on {split_on!r}: not a valid escape sequence ({e.reason}); e.g. '\\f' or '\\n\\n'") from None
        if not split_on:
            raise ConfigError("--split-on: expected a non-empty separator, e.g. '\\f'")
    corpus = Corpus.from_sources(list(sources), text_field, split_on)
    m = prepare(corpus, tokenizer, out_dir, val_fraction, shard_tokens, progress=sys.stderr.isatty(), option="--out", workers=workers)
    tr, va = m["splits"]["train"], m["splits"]["val"]
    mb = (tr["bytes"] + va["bytes"]) / 1e6
    click.echo(f"{out_dir}: {tr['tokens']:,} training and {va['tokens']:,} validation tokens ({m['tokenizer']}) from "
               f"{tr['documents'] + va['documents']:,} documents, {mb:,.1f} MB of text in {m['seconds']:.2f} s "
               f"({mb / max(m['seconds'], 1e-9):,.2f} MB/s with {workers} worker{'s' if workers > 1 else ''})")
