"""Token shards in modded-nanogpt's FineWeb10B format, read and written.

A shard is a header of 256 little-endian int32 (``[0]`` magic 20240520, ``[1]`` version 1,
``[2]`` token count, the rest zero) followed by that many uint16 tokens. Byte-level data uses the
same layout with byte values (0..255) and 256 for end-of-text.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def write_shard(path: str | Path, tokens) -> None:
    """Write ``tokens`` (ints < 65536) as one shard, atomically (temp file, then rename)."""
    toks = np.asarray(tokens)
    if toks.size and (toks.min() < 0 or toks.max() > 65535):
        raise DataError(f"{path}: token ids must fit in uint16 (0..65535)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, toks.size)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.astype("<u2").tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_shard(path: str | Path) -> np.ndarray:
    """Memory-map one shard's tokens (uint16), after checking magic, version and length."""
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
    if header[1] != VERSION:
        raise DataError(f"{path}: unsupported shard version {header[1]}, expected {VERSION}")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: header says {count} tokens ({expected} bytes), file has {size} bytes")
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
