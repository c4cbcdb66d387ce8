"""Token shards: modded-nanogpt's FineWeb10B format, and its uint32 sibling for large vocabularies.

A shard is a header of 256 little-endian int32 followed by the tokens:

=========  ==================================================================================
header[0]  magic 20240520
header[1]  version: 1 = uint16 tokens (modded-nanogpt's format, readable by its loaders),
           2 = uint32 tokens (vocabularies above 65,536 ids: Llama-3, cl100k, o200k)
header[2]  token count
header[3]  bytes per token (0 in version 1 files, which are always 2; 4 in version 2)
rest       zero
=========  ==================================================================================

:func:`write_shard` writes version 1 whenever the ids fit in uint16 (``width=None``), so shards
stay readable by modded-nanogpt's tools; a prepare for a vocabulary above 65,536 writes every
shard as version 2 (``width=4``), so one dataset never mixes widths. Byte-level data uses version
1 with byte values (0..255) and 256 for end-of-text.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError

MAGIC = 20240520
VERSIONS = {1: "<u2", 2: "<u4"}  # version -> token dtype
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def width_for(vocab_size: int) -> int:
    """Bytes per token for ids below ``vocab_size``: 2 while they fit in uint16, else 4."""
    return 2 if vocab_size <= 1 << 16 else 4


def write_shard(path: str | Path, tokens, width: int | None = None) -> None:
    """Write ``tokens`` as one shard, atomically (temp file, then rename). ``width``: 2 or 4
    bytes per token; ``None``: 2 if every id fits, else 4."""
    toks = np.asarray(tokens)
    top = int(toks.max()) if toks.size else 0
    if toks.size and int(toks.min()) < 0:
        raise DataError(f"{path}: token ids must be non-negative")
    width = width or (2 if top < 1 << 16 else 4)
    if top >= 1 << (8 * width):
        raise DataError(f"{path}: token id {top} does not fit in {8 * width} bits")
    version = 1 if width == 2 else 2
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = (MAGIC, version, toks.size, 0 if version == 1 else 4)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(toks.astype(VERSIONS[version]).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write the shard ({e.strerror or e})") from None


def read_shard(path: str | Path) -> np.ndarray:
    """Memory-map one shard's tokens (uint16 or uint32), after checking magic, version and length."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: shard file not found") from None
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; expected a token shard")
    if size < HEADER_BYTES:
        raise DataError(f"{path}: truncated shard: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise DataError(f"{path}: not a token shard: magic {header[0]}, expected {MAGIC}")
    version = int(header[1])
    if version not in VERSIONS:
        raise DataError(f"{path}: unsupported shard version {version}, expected one of {sorted(VERSIONS)}")
    width = np.dtype(VERSIONS[version]).itemsize
    count = int(header[2])
    expected = HEADER_BYTES + width * count
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: header says {count} tokens ({expected} bytes), file has {size} bytes")
    if count == 0:
        return np.zeros(0, dtype=VERSIONS[version])
    return np.memmap(path, dtype=VERSIONS[version], mode="r", offset=HEADER_BYTES, shape=(count,))
