"""``blagpt data``: text to token shards."""

from __future__ import annotations

import sys

import click

from . import CONTEXT, cli


@cli.group(context_settings=CONTEXT)
def data():
    """Prepare token shards."""


@data.command("prepare", context_settings=CONTEXT)
@click.argument("source")
@click.option("--tokenizer", type=click.Choice(["gpt2", "bytes"]), required=True, help="Tokenizer of the shards.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder for train_*.bin and val_*.bin.")
@click.option("--val-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Share of the text (in bytes) held out for validation.")
@click.option("--split-on", default=None, help="Separator of documents inside a file (e.g. '\\f'); default: one document per file.")
@click.option("--shard-tokens", default=100_000_000, show_default=True, type=click.IntRange(min=1), help="Tokens per shard.")
def data_prepare(source, tokenizer, out_dir, val_fraction, split_on, shard_tokens):
    """Tokenize SOURCE (a text file, a folder of .txt/.md files, or - for stdin) into shards.

    \b
    Examples:
      blagpt data prepare corpus.txt --tokenizer gpt2 --out data/corpus
      blagpt data prepare texts/ --tokenizer bytes --out data/texts-bytes
      cat *.txt | blagpt data prepare - --tokenizer gpt2 --out data/stdin
    Then train on them: blagpt train --model blagpt --set data.train='data/corpus/train_*.bin' --set data.val='data/corpus/val_*.bin'
    """
    from ..data.prepare import iter_documents, prepare
    from ..errors import ConfigError

    if split_on is not None:
        try:
            split_on = split_on.encode().decode("unicode_escape")
        except UnicodeDecodeError as e:
            raise ConfigError(f"--split-on {split_on!r}: not a valid escape sequence ({e.reason}); e.g. '\\f' or '\\n\\n'") from None
        if not split_on:
            raise ConfigError("--split-on: expected a non-empty separator, e.g. '\\f'")
    counts = prepare(iter_documents(source, split_on), tokenizer, out_dir, val_fraction, shard_tokens, progress=sys.stderr.isatty(), option="--out")
    click.echo(f"{out_dir}: {counts['train']:,} training and {counts['val']:,} validation tokens ({tokenizer})")
