"""Checkpoints: written atomically, loaded weights-only.

One file per run folder, replaced atomically: written to a temp file in the same folder, fsynced,
then renamed over the old one. A crash, a full disk or a diverged run therefore never leaves a
half-written or poisoned checkpoint: there is the new one or the previous one. A failed write
removes its temp file and raises a one-line :class:`CheckpointError`. The file holds everything an
exact resume needs: model and optimizer state, the step, the loader position, the RNG state of every
rank and the resolved config. Loading uses ``torch.load(weights_only=True)``: no pickled code runs.

Under ``train.parallel: fsdp`` model and optimizer state are sharded: every rank writes its shards
with ``torch.distributed.checkpoint`` (DCP) into a hidden temp folder, rank 0 renames it to
``checkpoint-<step>-<id>/`` and only then replaces ``checkpoint.pt``, which holds everything else
(step, loader position, RNG of every rank, config) and names that folder (``"sharded"``). The older
folder is removed after. A crash at any point leaves ``checkpoint.pt`` naming a complete folder: the
new one or the previous one. DCP reshards on load, so such a checkpoint resumes on any number of
ranks. Its metadata file is read by an unpickler that accepts only DCP's own metadata classes, and
its non-tensor values (optimizer hyper-parameters) with ``weights_only=True``: still no pickled code.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
import shutil
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import BlagptError

if TYPE_CHECKING:
    from .distributed import Dist

FORMAT = 1
SHARDS_PREFIX = "checkpoint-"  # the folder of a sharded checkpoint's DCP files, next to checkpoint.pt


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
    """The checkpoint at ``path``. A sharded one holds no ``model``/``optimizer``: ``state["shards"]``
    is then the path of its DCP folder (see :func:`load_sharded`, :func:`model_weights`)."""
    path = Path(path)
    state = _load_file(path, "", "checkpoint not found")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a blagpt checkpoint of format {FORMAT}")
    if "sharded" in state:
        folder = path.parent / str(state["sharded"])
        if not (folder / ".metadata").is_file():
            raise CheckpointError(f"{path}: its sharded state {folder} is missing or incomplete (no .metadata)")
        state["shards"] = str(folder)
    return state


def model_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The full model state dict of a loaded checkpoint, sharded or not (read in this process)."""
    if "shards" not in state:
        return state["model"]
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = _SafeReader(state["shards"])
    meta = reader.read_metadata()  # a bad metadata file fails here, in one line
    weights = {k.removeprefix("model."): torch.empty(m.size, dtype=m.properties.dtype)
               for k, m in meta.state_dict_metadata.items() if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    try:
        with _single_process_quiet():
            dcp.load({"model": weights}, storage_reader=reader, planner=_SafeLoadPlanner(), no_dist=True)
    except (Exception, dcp.CheckpointException) as e:  # noqa: BLE001 - a damaged shard file
        raise CheckpointError(f"{state['shards']}: cannot read the sharded model weights ({_why(e)})") from None
    return weights


def save_sharded(run, model: torch.nn.Module, optimizer: torch.optim.Optimizer, payload: dict[str, Any], d: "Dist") -> None:
    """Every rank: write model and optimizer shards with DCP, then (rank 0) make them the run's
    checkpoint with ``payload`` (everything but model and optimizer). Atomic: see the module doc."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from .rundir import TEMP_SUFFIX

    name = d.broadcast(f"{SHARDS_PREFIX}{int(payload['step']):08d}-{uuid.uuid4().hex[:8]}")
    tmp = run.path / f".{name}{TEMP_SUFFIX}"
    d.on_main(tmp.mkdir)
    kept = run.checkpoint_step if d.main else None
    model_sd, optim_sd = get_state_dict(model, optimizer)
    error = None
    try:
        with _single_process_quiet():
            dcp.save({"model": model_sd, "optimizer": optim_sd}, storage_writer=FileSystemWriter(tmp, sync_files=True),
                     no_dist=d.world == 1)
    except (Exception, dcp.CheckpointException) as e:  # noqa: BLE001 - DCP raises on every rank when one fails
        error = e

    def publish() -> None:
        if error is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            before = f"the previous checkpoint (step {kept}) is kept" if kept is not None else "there is no earlier checkpoint"
            raise CheckpointError(f"{run.path}: cannot write the sharded checkpoint ({_why(error)}); {before}")
        final = run.path / name
        os.replace(tmp, final)
        _fsync_dir(run.path)
        run.save_checkpoint({**payload, "sharded": name})  # the switch: checkpoint.pt now names `final`
        remove_shards(run.path, keep=name)

    d.on_main(publish)


def load_sharded(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank: load the sharded checkpoint ``state`` (from :func:`load`) into ``model`` and
    ``optimizer``, as sharded now (any number of ranks; one process: plain tensors)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    reader = _SafeReader(state["shards"])
    reader.read_metadata()  # a bad metadata file fails here in one line, not inside DCP's logged retries
    model_sd, optim_sd = get_state_dict(model, optimizer)
    target = {"model": model_sd, "optimizer": optim_sd}
    try:
        with _single_process_quiet():
            dcp.load(target, storage_reader=reader, planner=_SafeLoadPlanner(),
                     no_dist=not torch.distributed.is_initialized())
    except (Exception, dcp.CheckpointException) as e:  # noqa: BLE001 - missing keys (another model), damaged files
        raise CheckpointError(f"{state['shards']}: cannot load the sharded checkpoint into this model and optimizer ({_why(e)})") from None
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])


def remove_shards(folder: Path, keep: str | None = None) -> None:
    """Delete the sharded-checkpoint folders in a run folder, except ``keep``."""
    for p in Path(folder).glob(f"{SHARDS_PREFIX}*"):
        if p.is_dir() and p.name != keep:
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every call in one process that it assumes one process: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*single process", category=UserWarning)
        yield


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(e: BaseException) -> str:
    """One line saying what went wrong; for DCP's CheckpointException, the first failed rank's error."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, (first, _) = min(failures.items(), key=lambda kv: kv[0])
        return f"rank {rank}: {_why(first)}"
    if isinstance(e, CheckpointError):
        return str(e)
    cause = e.__cause__ or e.__context__  # torch's file writer reports a refused write as RuntimeError
    if not isinstance(e, OSError) and isinstance(cause, OSError):
        return _why(cause)
    return e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


# DCP's metadata is a pickle: read it accepting only these globals (its dataclasses, torch.Size,
# dtypes and layouts, paths), so a crafted .metadata cannot run code.
_DCP_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
     ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
     ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


@functools.cache
def _safe_dcp() -> tuple[type, type]:
    """DCP's ``FileSystemReader`` and ``DefaultLoadPlanner``, made safe: the reader reads the metadata
    with :class:`_MetadataUnpickler`, the planner reads non-tensor values with
    ``torch.load(weights_only=True)`` (DCP's own uses ``weights_only=False``). Built on first use, so
    importing this module does not import ``torch.distributed.checkpoint``."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            file = Path(self.path) / ".metadata"
            try:
                with open(file, "rb") as f:
                    meta = _MetadataUnpickler(f).load()
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
                raise CheckpointError(f"{file}: cannot read the sharded checkpoint's metadata ({_why(e)})") from None
            if getattr(meta, "storage_meta", None) is None:
                meta.storage_meta = StorageMeta()
            meta.storage_meta.load_id = self.load_id
            return meta

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            obj = torch.load(value, weights_only=True)  # raises on anything but plain data and tensors
            again = io.BytesIO()
            torch.save(obj, again)
            again.seek(0)
            super().load_bytes(read_item, again)

    return SafeReader, SafeLoadPlanner


def _SafeReader(path):  # noqa: N802 - used like the class it returns
    return _safe_dcp()[0](path)


def _SafeLoadPlanner():  # noqa: N802
    return _safe_dcp()[1]()


def load_weights(ref: str | Path) -> dict[str, Any]:
    """Model weights for ``train.init_from``: a run folder, a blagpt checkpoint, or a state dict."""
    from .rundir import RunDir

    path = Path(ref)
    if path.is_dir():
        path = RunDir(path).checkpoint_file
    state = _load_file(path, "train.init_from: ", "no such checkpoint or state-dict file")
    if isinstance(state, dict) and state.get("format") == FORMAT and "sharded" in state:
        try:
            state = model_weights(load(path))
        except CheckpointError as e:
            raise CheckpointError(f"train.init_from: {e}") from None
    elif isinstance(state, dict) and state.get("format") == FORMAT and "model" in state:
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"train.init_from: {path}: expected a blagpt checkpoint or a dict of tensors")
    return state
