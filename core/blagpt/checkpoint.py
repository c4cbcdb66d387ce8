"""Checkpoints: written atomically, loaded weights-only.

One file per run folder, ``checkpoint.pt``, replaced atomically (written to a temp file in the
same folder, fsynced, then renamed over the old one), so a crash or a diverged run never leaves a
half-written or poisoned checkpoint behind. It holds everything an exact resume needs: model and
optimizer state, the step, the loader position, the RNG state of every rank and the resolved
config. Loading uses ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .errors import BlagptError

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _load_file(path: Path, prefix: str, missing: str) -> Any:
    """``torch.load(weights_only=True)`` of an existing file; any failure is a one-line error."""
    if not path.is_file():
        raise BlagptError(f"{prefix}{path}: {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt file, foreign pickle
        raise BlagptError(f"{prefix}{path}: cannot load weights-only ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    state = _load_file(path, "", "checkpoint not found")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BlagptError(f"{path}: not a blagpt checkpoint of format {FORMAT}")
    return state


def load_weights(ref: str | Path) -> dict[str, Any]:
    """Model weights for ``train.init_from``: a run folder, a blagpt checkpoint, or a state dict."""
    path = Path(ref)
    if path.is_dir():
        path = path / CHECKPOINT
    state = _load_file(path, "train.init_from: ", "no such checkpoint or state-dict file")
    if isinstance(state, dict) and state.get("format") == FORMAT and "model" in state:
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BlagptError(f"train.init_from: {path}: expected a blagpt checkpoint or a dict of tensors")
    return state
