"""Ctrl-C and SIGTERM during training: finish the step, checkpoint, stop; a second one stops at once."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


class StopRequested(KeyboardInterrupt):
    """A second interrupt: the run stops at once (it keeps its last checkpoint)."""


class StopFlag:
    """Set by the first SIGINT/SIGTERM: the loop checkpoints at the end of the current step and
    exits. The second signal raises :class:`StopRequested` where the loop is."""

    def __init__(self, announce: bool = True) -> None:
        self.set = False
        self.announce = announce
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:
            raise StopRequested
        self.set = True
        if self.announce:  # os.write: safe inside a signal handler, unlike print
            msg = f"{signal.Signals(signum).name}: stopping after this step with a checkpoint (again to stop at once)\n"
            try:
                os.write(sys.stderr.fileno(), msg.encode())
            except (OSError, ValueError):
                pass

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
