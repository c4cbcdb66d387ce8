"""An exclusive lock on a folder, held by the one process that writes to it (a run, a bench, a
``data prepare``), released by the kernel however that process ends."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import BlagptError

LOCK_FILE = ".lock"


class RunInUse(BlagptError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``<folder>/.lock``.

    The file records the holder (pid, host, command, since when) for the error message of whoever
    is refused. The lock belongs to the open file, so the kernel releases it when the holder exits
    in any way (kill -9 included); a stale ``.lock`` file of a dead process locks nothing.
    """

    def __init__(self, folder: str | Path, what: str = "run") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunInUse(f"{self.folder}: this {self.what} is in use by {holder}; wait for it to end or stop it first") from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "cmd": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:4]])}
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {info['pid']} on {info['host']} ({info['cmd']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
