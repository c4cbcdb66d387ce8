"""Checkpoints: written atomically, loaded weights-only.

One file per run folder, replaced atomically: written to a temp file in the same folder, fsynced,
then renamed over the old one. A crash, a full disk or a diverged run therefore never leaves a
half-written or poisoned checkpoint: there is the new one or the previous one. A failed write
removes its temp file and raises a one-line :class:`CheckpointError`. The file holds everything an
exact resume needs: model and optimizer state, the step, the loader position, the RNG state of every
rank and the resolved config. Loading uses ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import BlagptError

FORMAT = 1


class CheckpointError(BlagptError):
    """A checkpoint could not be written or read."""


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(path: str | Path, payload: dict[str, Any], kept: int | None = None) -> Path:
    """Write ``payload`` to ``path`` atomically. ``kept``: the step of the checkpoint already at
    ``path`` (named in the error message when this write fails)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = None
    try:
        with open(tmp, "wb") as f:
            out = _Writer(f)
            torch.save({"format": FORMAT, **payload}, out)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - OSError, or torch's RuntimeError wrapping one
        tmp.unlink(missing_ok=True)
        e = (out.error if out is not None else None) or e
        why = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:200]
        before = f"the previous checkpoint (step {kept}) is kept" if kept is not None else "there is no earlier checkpoint"
        raise CheckpointError(f"{path}: cannot write the checkpoint ({why}); {before}") from None
    return path


class _Writer:
    """The file torch.save writes to, remembering the OSError (disk full) that torch's writer
    reports only as an unexpected position."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _load_file(path: Path, prefix: str, missing: str) -> Any:
    """``torch.load(weights_only=True)`` of an existing file; any failure is a one-line error."""
    if not path.is_file():
        raise CheckpointError(f"{prefix}{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt file, foreign pickle
        raise CheckpointError(f"{prefix}{path}: cannot load weights-only ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    state = _load_file(path, "", "checkpoint not found")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a blagpt checkpoint of format {FORMAT}")
    return state


def load_weights(ref: str | Path) -> dict[str, Any]:
    """Model weights for ``train.init_from``: a run folder, a blagpt checkpoint, or a state dict."""
    from .rundir import RunDir

    path = Path(ref)
    if path.is_dir():
        path = RunDir(path).checkpoint_file
    state = _load_file(path, "train.init_from: ", "no such checkpoint or state-dict file")
    if isinstance(state, dict) and state.get("format") == FORMAT and "model" in state:
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"train.init_from: {path}: expected a blagpt checkpoint or a dict of tensors")
    return state
