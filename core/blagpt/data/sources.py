"""Where ``data prepare`` reads documents: text, JSONL (also gzipped) and parquet files.

A source is a file, a folder (every readable file under it, sorted) or a glob; several can be
given. Formats, by suffix:

- ``.txt``, ``.md``, ``.text``: one document per file, or several separated by ``--split-on``;
- ``.jsonl``, ``.jsonl.gz``: one JSON object per line, its ``--text-field`` (default ``text``);
- ``.parquet``: the ``--text-field`` column, read a row group at a time (pyarrow:
  ``pip install 'blagpt[parquet]'``).

``-`` reads text from stdin (one document, or several with ``--split-on``). A :class:`Corpus`
can be iterated more than once and yields the same documents in the same order each time, which
``data prepare`` needs: a first pass measures the text, a second tokenizes it.
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def kind_of(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("text", TEXT_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def expand(sources: list[str]) -> list[Path]:
    """The files ``sources`` name (files, folders, globs), in order; one-line errors for the rest."""
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_file():
            if kind_of(p) is None:
                raise DataError(f"{p}: not a file data prepare reads (expected {', '.join(SUFFIXES)})")
            out.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and kind_of(q))
            if not found:
                raise DataError(f"{p}: no files to read in this folder (expected {', '.join(SUFFIXES)})")
            out += found
        elif any(c in src for c in "*?["):
            found = sorted(Path(q) for q in globlib.glob(src, recursive=True) if Path(q).is_file() and kind_of(Path(q)))
            if not found:
                raise DataError(f"{src}: no files match (expected {', '.join(SUFFIXES)})")
            out += found
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


@dataclass
class Corpus:
    """Documents from files (or stdin, read once and kept), re-iterable in a fixed order."""

    paths: list[Path]
    text_field: str = "text"
    split_on: str | None = None
    stdin_text: str | None = None
    _checked: set = field(default_factory=set)

    @classmethod
    def from_sources(cls, sources: list[str], text_field: str = "text", split_on: str | None = None) -> "Corpus":
        if sources == ["-"]:
            return cls([], text_field, split_on, stdin_text=sys.stdin.read())
        if "-" in sources:
            raise DataError("-: stdin cannot be mixed with files")
        return cls(expand(sources), text_field, split_on)

    def __iter__(self) -> Iterator[str]:
        if self.stdin_text is not None:
            yield from self._split(self.stdin_text)
            return
        for path in self.paths:
            kind = kind_of(path)
            if kind == "text":
                yield from self._split(_read_text(path))
            elif kind == "jsonl":
                yield from _jsonl(path, self.text_field)
            else:
                yield from _parquet(path, self.text_field)

    def _split(self, text: str) -> Iterator[str]:
        for doc in text.split(self.split_on) if self.split_on else [text]:
            if doc.strip():
                yield doc

    def describe(self) -> list[dict]:
        """The source files, for the manifest."""
        if self.stdin_text is not None:
            return [{"path": "-", "bytes": len(self.stdin_text.encode("utf-8"))}]
        return [{"path": str(p.resolve()), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in self.paths]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _jsonl(path: Path, text_field: str) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{path}:{n}: not a JSON object ({e})") from None
                text = record.get(text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    have = ", ".join(sorted(record)[:8]) if isinstance(record, dict) else type(record).__name__
                    raise DataError(f"{path}:{n}: no text field {text_field!r} (has {have}); choose it with --text-field")
                if text.strip():
                    yield text
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def _parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow: pip install 'blagpt[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow's own errors
        raise DataError(f"{path}: not a parquet file ({' '.join(str(e).split())[:200]})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: no column {text_field!r} (has {', '.join(names[:8])}); choose it with --text-field")
    for group in range(pf.num_row_groups):
        for text in pf.read_row_group(group, columns=[text_field]).column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text
