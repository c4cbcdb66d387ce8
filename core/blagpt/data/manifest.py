"""``manifest.json``: what a ``data prepare`` wrote into a folder, and the check a run makes of it.

The manifest names the tokenizer and the sha256 digest of its vocabulary, the source files, the
documents, tokens and bytes of each split, the shard files, and a digest of the whole dataset
(tokenizer digest and every shard's contents): the dataset's identity in MLflow. A run checks the
manifest beside its shards against its own tokenizer, for both splits, before it trains: shards of
another tokenizer, or shards a later prepare did not write (stale), are refused in one line.
Shards without a manifest (modded-nanogpt's FineWeb files, an older prepare) get the token-id
range check instead (:func:`blagpt.data.loader.check_token_ids`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError

MANIFEST = "manifest.json"
FORMAT = 1


def write(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, **manifest}, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def read(folder: Path) -> dict[str, Any] | None:
    """The manifest in ``folder``, or None when there is none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); run data prepare again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a blagpt data manifest of format {FORMAT}")
    return data


def check(paths: list[str], tokenizer, field: str, pattern: str) -> dict[str, Any] | None:
    """The manifest of the shards ``paths`` (matched by ``pattern`` of config ``field``), after
    checking that ``tokenizer`` made them and that the manifest lists each of them; None when
    their folder has no manifest. Shards from several folders must all be of one kind."""
    folders = sorted({Path(p).parent for p in paths})
    found = [(f, read(f)) for f in folders]
    with_manifest = [(f, m) for f, m in found if m is not None]
    if not with_manifest:
        return None
    if len(with_manifest) < len(found):
        bare = next(f for f, m in found if m is None)
        raise DataError(f"{field}: {pattern}: {bare} has no {MANIFEST} but {with_manifest[0][0]} has one; prepare every folder the same way")
    for folder, m in with_manifest:
        if m.get("tokenizer_digest") != tokenizer.digest:
            raise DataError(
                f"{field}: {folder / MANIFEST}: these shards were made with tokenizer {m.get('tokenizer')!r}, "
                f"not this run's {tokenizer.name!r} (vocabulary digests differ); prepare them with --tokenizer {tokenizer.name}"
            )
        listed = {s for split in m.get("splits", {}).values() for s in split.get("shards", [])}
        stale = [Path(p).name for p in paths if Path(p).parent == folder and Path(p).name not in listed]
        if stale:
            raise DataError(f"{field}: {folder}: {stale[0]} is not one of the shards its {MANIFEST} lists (left over from another prepare?)")
    return with_manifest[0][1] if len(with_manifest) == 1 else {"digest": "+".join(m["digest"] for _, m in with_manifest),
                                                               "tokenizer": with_manifest[0][1].get("tokenizer")}


def dataset_input(stream, found: dict[str, Any] | None, context: str) -> dict[str, Any]:
    """How a run records the split ``stream`` it reads (an MLflow dataset input): the folder's
    name and the split's role, the manifest's digest (without one: a digest of the shard files' names and sizes),
    where it is, and its size."""
    import hashlib

    paths = [Path(p) for p in stream.paths]
    if found is not None:
        digest = found["digest"]
    else:
        digest = hashlib.sha256("|".join(f"{p.resolve()}:{p.stat().st_size}" for p in paths).encode()).hexdigest()
    folder = paths[0].parent.resolve()
    return {"name": f"{folder.name}/{context}", "digest": digest[:32], "source": str(folder / Path(stream.pattern).name), "context": context,
            "profile": {"tokens": len(stream), "shards": len(paths), "tokenizer": (found or {}).get("tokenizer")}}
