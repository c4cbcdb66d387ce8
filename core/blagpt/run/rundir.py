"""A run folder, and the one object that owns it.

A run folder (``<train.out_dir>/<run name>/``, or ``<out_dir>/<bench>/<run>/`` for a bench's runs)
holds everything a run is, whether or not MLflow received it:

- ``run.json``: names, status, params, tags, the MLflow run id, the step of the last checkpoint
  and how much of the record MLflow has (replaced atomically on every update);
- ``metrics.jsonl``: one JSON object per metric and step, appended (:class:`MetricsLog`);
- ``checkpoint.pt``: the last checkpoint (:mod:`blagpt.run.checkpoint`, replaced atomically);
  under ``train.parallel: fsdp`` it names the folder ``checkpoint-<step>-<id>/`` of its shards;
- ``config.yaml``: the resolved config the run was started (or last resumed) with;
- ``loss_curve.png``; ``.lock``: the lock of the process that owns the folder.

:class:`RunDir` is the only code that spells these names. A process that writes to a run folder
holds its lock (:class:`FolderLock`, an ``flock`` the kernel drops when the process dies, so a
crash never leaves it stuck), so two processes can never train into one folder or one MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import BlagptError, DataError
from ..lock import LOCK_FILE, FolderLock, RunInUse  # noqa: F401 - RunInUse is raised through here

log = logging.getLogger("blagpt")

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
LOSS_CURVE_FILE = "loss_curve.png"
TEMP_SUFFIX = ".tmp"


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended.

    A line counts only when its newline is written: a torn last line (the process killed, or the
    disk full, in the middle of an append) is left out by :meth:`read` and cut off by
    :meth:`repair` before anyone appends after it. A failed append is undone (the file is cut back
    to where it was) where the file system allows it, and raises a one-line :class:`DataError`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, rows: Iterable[dict]) -> None:
        data = memoryview("".join(json.dumps(r) + "\n" for r in rows).encode())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:  # unbuffered: a short write is seen here, not at close
                data = data[os.write(fd, data):]
        except OSError as e:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise DataError(f"{self.path}: cannot append metrics ({e.strerror or e}); the rows up to the last complete line are kept") from None
        finally:
            os.close(fd)

    def read(self) -> list[dict]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: empty, or a torn line
        rows = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                log.warning("warning: %s: line %d is not JSON; left out", self.path, i)
        return rows

    def repair(self) -> bool:
        """Cut a torn last line off; True if there was one."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        end = data.rfind(b"\n") + 1
        if end == len(data):
            return False
        with open(self.path, "r+b") as f:
            f.truncate(end)
        return True

    def keep_until(self, step: int) -> int:
        """Drop the rows logged after ``step`` (a resumed run logs them again); returns the rows kept."""
        rows = [r for r in self.read() if r["step"] <= step]
        tmp = self.path.with_name(f".{self.path.name}{TEMP_SUFFIX}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.path)
        return len(rows)


class RunDir:
    """One run folder: its paths, metadata, status, checkpoint, metrics and lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._meta: dict[str, Any] | None = None
        self._mutex = threading.Lock()  # the tracking thread updates run.json too
        self.lock = FolderLock(self.path)
        self.metrics = MetricsLog(self.path / METRICS_FILE)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def loss_curve_file(self) -> Path:
        return self.path / LOSS_CURVE_FILE

    def exists(self) -> bool:
        return self.run_file.is_file()

    def create(self, option: str = "train.out_dir") -> "RunDir":
        """Make the folder (and its parents); an unwritable place is a one-line error naming ``option``."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test.{os.getpid()}{TEMP_SUFFIX}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise BlagptError(f"{option}: cannot write the run folder {self.path} ({e.strerror or e})") from None
        return self

    # -- metadata ----------------------------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        """``run.json`` as a dict ({} when there is none); an unreadable file is a DataError."""
        if self._meta is None:
            self._meta = self.read_meta()
        return self._meta

    def refresh(self) -> "RunDir":
        """Forget the cached ``run.json`` (another process may have changed it)."""
        self._meta = None
        return self

    def read_meta(self) -> dict[str, Any]:
        try:
            text = self.run_file.read_text()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise DataError(f"{self.run_file}: unreadable ({e.strerror or e})") from None
        try:
            meta = json.loads(text)
        except ValueError as e:
            raise DataError(f"{self.run_file}: not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise DataError(f"{self.run_file}: expected a JSON object")
        return meta

    def update(self, **fields: Any) -> None:
        """Set fields of ``run.json`` (written to a temp file, then renamed over it)."""
        with self._mutex:
            meta = {**self.meta, **fields}
            tmp = self.path / f".{RUN_FILE}.{os.getpid()}.{threading.get_ident()}{TEMP_SUFFIX}"
            try:
                tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
                os.replace(tmp, self.run_file)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise DataError(f"{self.run_file}: cannot write ({e.strerror or e})") from None
            self._meta = meta

    @property
    def status(self) -> str | None:
        return self.meta.get("status")

    @property
    def kind(self) -> str:
        """``train`` for a training run, ``bench``/``ablate`` for a comparison's own folder."""
        return self.meta.get("kind", "train")

    # -- checkpoint --------------------------------------------------------------------------

    @property
    def has_checkpoint(self) -> bool:
        return self.checkpoint_file.is_file()

    @property
    def checkpoint_step(self) -> int | None:
        """The step of the last checkpoint written, or None (from ``run.json``: no file read)."""
        if not self.has_checkpoint:
            return None
        step = self.meta.get("checkpoint_step")
        return int(step) if step is not None else None

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        from . import checkpoint

        checkpoint.save(self.checkpoint_file, payload, kept=self.checkpoint_step)
        self.update(checkpoint_step=int(payload["step"]))

    def load_checkpoint(self) -> dict[str, Any]:
        from . import checkpoint

        return checkpoint.load(self.checkpoint_file)

    def remove_checkpoint(self) -> None:
        """Delete the checkpoint (``checkpoint.pt`` first, then any sharded folders)."""
        from . import checkpoint

        self.checkpoint_file.unlink(missing_ok=True)
        checkpoint.remove_shards(self.path)

    # -- ownership ---------------------------------------------------------------------------

    def remove_temp_files(self) -> list[str]:
        """Delete the temp files of writes that never finished (a killed process leaves
        ``.checkpoint.pt.<pid>.tmp``, or a folder of shards ``.checkpoint-<step>-<id>.tmp/``). Call it holding the lock: nobody else writes here then."""
        gone = []
        for p in self.path.glob(f".*{TEMP_SUFFIX}"):
            try:
                if p.is_dir():  # the shards of a sharded checkpoint never published
                    shutil.rmtree(p)
                else:
                    p.unlink()
                gone.append(p.name)
            except OSError:
                pass
        return gone

    def take_ownership(self) -> None:
        """Lock the folder, then clean up what a killed owner left: temp files, a torn metrics line."""
        self.lock.acquire()
        try:
            gone = self.remove_temp_files()
            if gone:
                log.info("%s: removed %d unfinished temp file(s) of an earlier process", self.path, len(gone))
            self.metrics.repair()
        except BaseException:
            self.lock.release()
            raise

    # -- finding runs ------------------------------------------------------------------------

    @classmethod
    def find(cls, ref: str, out_dir: str | Path, option: str = "--resume") -> "RunDir":
        """A run folder from a path, a run name (under ``out_dir``, or under a bench folder in it),
        or an MLflow run id. Folders whose ``run.json`` cannot be read are skipped with a warning."""
        for cand in (Path(ref), Path(out_dir) / ref):
            if (cand / RUN_FILE).is_file():
                return cls(cand)
        named = [r for r in cls.scan(out_dir) if r.name == ref or ref in r.mlflow_ids()]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            where = ", ".join(str(r.path) for r in named[:5])
            raise BlagptError(f"{option} {ref}: several runs match ({where}); give the run folder's path")
        raise BlagptError(f"{option} {ref}: no run folder, run name under {out_dir}/ (or a bench folder in it) or MLflow run id matches")

    @classmethod
    def scan(cls, out_dir: str | Path) -> Iterator["RunDir"]:
        """The readable run folders under ``out_dir``: its own, and those of benches in it."""
        root = Path(out_dir)
        for path in sorted([*root.glob(f"*/{RUN_FILE}"), *root.glob(f"*/*/{RUN_FILE}")]):
            run = cls(path.parent)
            try:
                run.meta
            except DataError as e:
                log.warning("warning: skipping %s", e)
                continue
            yield run

    def mlflow_ids(self) -> set[str]:
        """The MLflow run id of this run, and those of MLflow runs it replaced."""
        ids = set(self.meta.get("replaced_mlflow_run_ids", []))
        if self.meta.get("mlflow_run_id"):
            ids.add(self.meta["mlflow_run_id"])
        return ids
