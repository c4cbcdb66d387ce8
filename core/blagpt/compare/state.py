"""A bench folder's own record, ``bench.json``: the plan's identity and the failures seen.

The identity guards the folder: a bench with another plan under the same name is refused instead
of mixing its runs in. A failure is recorded only when a run failed on its own (not when the bench
was stopping), so an interrupted run is always resumed from its checkpoint by the next attempt.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import BlagptError, DataError

BENCH_FILE = "bench.json"


class BenchState:
    def __init__(self, folder: Path, identity: dict[str, Any], name: str) -> None:
        self.folder, self.name = folder, name
        self.path = folder / BENCH_FILE
        self.identity = json.loads(json.dumps(identity, default=str))  # as bench.json holds it
        self.data = self._load()

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"identity": self.identity, "failures": {}, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path}: unreadable ({e}); move the folder away to start this bench afresh") from None
        if data.get("identity") != self.identity:
            kind = data.get("identity", {}).get("kind", "bench")
            raise BlagptError(f"{self.folder}: a {kind} named {self.name!r} with another plan exists; pick another --name (or delete that folder)")
        return data

    @property
    def failures(self) -> dict[str, str]:
        return self.data.setdefault("failures", {})

    def save(self, seeds: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{BENCH_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**self.data, "seeds": seeds}, indent=1, sort_keys=True, default=str))
        os.replace(tmp, self.path)
