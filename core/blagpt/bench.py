"""``blagpt bench`` and ``blagpt ablate``: many training runs on equal terms, resumably.

A bench trains every entry (a model, its preset, an optimizer, any extra settings) for every seed
from one base config, so data, sequence length, global batch, evaluation text and budget are the
same for all. Each training run is an ordinary ``blagpt train`` run in a child process (``--launcher``
puts ``torchrun ...`` in front for several GPUs): peak memory and failures (out of memory, NaN, a
broken plugin) stay with that run, and the others go on.

Everything lives in one bench folder, ``<train.out_dir>/<bench name>/``:

- ``bench.json``: the plan (its identity) and the failures seen;
- one run folder per child, named ``<model>-<config hash>.s<seed>``, so a run whose resolved config
  (seed aside) is the same is shared by every entry that asks for it (ablation rounds reuse runs);
- ``configs/``, ``logs/``: each child's config as launched and its output;
- ``leaderboard.md``, ``leaderboard.csv``, ``bpb_vs_tokens.png``, ``bpb_vs_time.png``;
- ``run.json``/``metrics.jsonl``: the bench's own MLflow run, parent of the children's runs.

Running the same command again resumes: finished runs are read, not redone; a run stopped part way
resumes from its checkpoint (``blagpt train --resume``); a run killed before its first checkpoint
starts again. Failed runs stay failed unless ``--retry-failed``. The bench name defaults to a hash
of the plan without the seed count, so asking for more seeds reuses the seeds already trained.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import BlagptError, ConfigError
from .leaderboard import RunData
from .tracking import RunRecord

BENCH_FILE = "bench.json"
DEFAULT_EVAL_BYTES = 65536
BUDGET_KEYS = {"tokens": "train.tokens", "flops": "train.flops", "time": "train.time_s", "steps": "train.steps"}
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15, "e": 1e18}
_TIME = {"s": 1, "m": 60, "min": 60, "h": 3600}


@dataclass(frozen=True)
class Entry:
    """One line of the leaderboard: a model (and preset), an optimizer and extra ``--set`` items."""

    label: str
    model: str
    optimizer: str = "adamw"
    sets: tuple[str, ...] = ()


def parse_models(text: str, optimizers: list[str]) -> list[Entry]:
    """``--models a,b@preset`` x ``--optimizers x,y`` -> entries labelled ``a``, ``b@preset``
    (with ``/optimizer`` appended when several optimizers are compared)."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise ConfigError("--models: expected a comma-separated list like blagpt@gpt2+tiny,rene@tiny")
    out = []
    for m in models:
        name, _, preset = m.partition("@")
        if not re.fullmatch(r"[a-z0-9_][a-z0-9_.-]*", name):
            raise ConfigError(f"--models: {m!r} is not NAME or NAME@PRESET")
        sets = (f"model.preset={preset}",) if preset else ()
        for opt in optimizers:
            label = m if len(optimizers) == 1 else f"{m}/{opt}"
            out.append(Entry(label, name, opt, sets))
    labels = [e.label for e in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--models: an entry is listed twice ({', '.join(labels)})")
    return out


def parse_budget(text: str) -> str:
    """``tokens=2M`` | ``flops=1e15`` | ``time=10m`` | ``steps=500`` -> the ``--set`` item it means."""
    kind, sep, value = text.partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in BUDGET_KEYS:
        raise ConfigError(f"--budget {text!r}: expected tokens=N, flops=F, time=S or steps=N")
    v = value.strip().lower()
    try:
        if kind == "time":
            unit = next((u for u in sorted(_TIME, key=len, reverse=True) if v.endswith(u)), "")
            number = float(v[: len(v) - len(unit)]) * _TIME.get(unit, 1)
        else:
            mult = _SUFFIX.get(v[-1:], 1.0)
            number = float(v[:-1] if v[-1:] in _SUFFIX else v) * mult
    except ValueError:
        raise ConfigError(f"--budget {text!r}: {value!r} is not a number (suffixes k, M, G, T for counts; s, m, h for time)") from None
    if number <= 0:
        raise ConfigError(f"--budget {text!r}: must be positive")
    if kind in ("tokens", "steps"):
        return f"{BUDGET_KEYS[kind]}={int(round(number))}"
    return f"{BUDGET_KEYS[kind]}={number!r}"


def with_budget(raw: dict[str, Any], item: str) -> dict[str, Any]:
    """``raw`` with its budget replaced by ``item`` (a ``train.<budget>=value`` set)."""
    from .config import merge_sources

    train = {k: v for k, v in (raw.get("train") or {}).items() if k not in ("steps", "tokens", "flops", "time_s")}
    return merge_sources(base={**raw, "train": train}, sets=[item])


@dataclass
class Child:
    """One planned training run: an entry at one seed."""

    entry: Entry
    seed: int
    name: str = ""
    config: Any = None  # the resolved RunConfig, or None when it does not resolve
    error: str | None = None


class Bench:
    """A set of entries x seeds sharing one base config, in one bench folder."""

    def __init__(
        self,
        kind: str,
        identity: dict[str, Any],
        base_raw: dict[str, Any],
        seeds: int,
        name: str | None = None,
        launcher: list[str] | None = None,
        retry_failed: bool = False,
        echo: Callable[[str], None] = print,
        registry=None,
    ) -> None:
        from .config import merge_sources
        from .plugins import get_registry

        if seeds < 1:
            raise ConfigError(f"--seeds: expected at least 1, got {seeds}")
        self.registry = registry or get_registry()
        self.kind, self.seeds, self.echo, self.retry_failed = kind, seeds, echo, retry_failed
        self.launcher = launcher or [sys.executable]
        has_eval_bytes = _section(base_raw, "train").get("eval_bytes") is not None
        self.base_raw = merge_sources(base=base_raw, sets=[] if has_eval_bytes else [f"train.eval_bytes={DEFAULT_EVAL_BYTES}"])
        # the plan's identity: what changes results (tracking settings and the seed count do not)
        self.identity = {"kind": kind, **identity, "base": {k: v for k, v in self.base_raw.items() if k != "tracking"}}
        key = hashlib.sha1(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        self.name = name or f"{kind}-{key}"
        if not re.fullmatch(r"[A-Za-z0-9_.@+-]+", self.name):
            raise ConfigError(f"--name {self.name!r}: use letters, digits and . _ - @ + only")
        self.dir = Path(_section(self.base_raw, "train").get("out_dir", "runs")) / self.name
        tracking = _section(self.base_raw, "tracking")
        self.tracking_enabled = tracking.get("enabled", True) is not False
        self.tracking_uri = tracking.get("uri")
        self.experiment = tracking.get("experiment", "blagpt")
        self.state = self._load_state()
        self.parent_run_id: str | None = None
        self._stop = False

    # -- state -------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        path = self.dir / BENCH_FILE
        if not path.exists():
            return {"identity": self.identity, "failures": {}, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        state = json.loads(path.read_text())
        if state.get("identity") != json.loads(json.dumps(self.identity, default=str)):  # as bench.json holds it
            raise BlagptError(
                f"{self.dir}: a {state.get('identity', {}).get('kind', 'bench')} named {self.name!r} with another plan exists; "
                "pick another --name (or delete that folder)"
            )
        return state

    def _save_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{BENCH_FILE}.tmp"
        tmp.write_text(json.dumps({**self.state, "seeds": self.seeds}, indent=1, sort_keys=True, default=str))
        os.replace(tmp, self.dir / BENCH_FILE)

    # -- planning ----------------------------------------------------------------------------

    def plan(self, entries: list[Entry]) -> list[Child]:
        """Resolve every child's config (a config error fails that entry only); seed-major order,
        so every entry has a first result before any has a second."""
        from .config import merge_sources, resolve

        base_seed = int(_section(self.base_raw, "train").get("seed", 0))
        children = []
        for s in range(self.seeds):
            for e in entries:
                child = Child(e, base_seed + s)
                sets = [f"model.name={e.model}", f"optimizer.name={e.optimizer}", *e.sets, f"train.seed={child.seed}"]
                try:
                    cfg = resolve(merge_sources(base=self.base_raw, sets=sets), self.registry)
                except BlagptError as err:
                    child.error = str(err)
                    child.name = f"{e.model}-invalid.s{child.seed}"
                else:
                    digest = _config_digest(cfg)
                    child.name = f"{e.model}-{digest}.s{child.seed}"
                    child.config = cfg
                children.append(child)
        self._warn_unequal(children)
        return children

    def _warn_unequal(self, children: list[Child]) -> None:
        cfgs = [c.config for c in children if c.config is not None]
        toks = sorted({c.tokenizer_name(self.registry) for c in cfgs})
        if len(toks) > 1 and cfgs and cfgs[0].train.budget_kind in ("steps", "tokens"):
            self.echo(
                f"note: entries use different tokenizers ({', '.join(toks)}): a {cfgs[0].train.budget_kind} budget gives "
                "them different amounts of text; val bpb compares them on the same bytes, and --budget flops= or time= "
                "gives equal compute"
            )

    # -- running -----------------------------------------------------------------------------

    def run(self, entries: list[Entry]) -> tuple[list[RunData], bool]:
        """Train what is not finished yet; returns every child's :class:`RunData` (labelled by
        entry) and whether the bench was interrupted."""
        children = self.plan(entries)
        self._save_state()
        self._open_parent()
        todo = len(children)
        for i, child in enumerate(children, 1):
            if self._stop:
                break
            self._run_child(child, f"[{i}/{todo}]")
        self._save_state()
        return [self.run_data(c) for c in children], self._stop

    def _run_child(self, child: Child, tag: str) -> None:
        e = child.entry
        head = f"{tag} {e.label} seed {child.seed}"
        if child.config is None:
            self.echo(f"{head}: FAILED before start: {child.error}")
            return
        run_dir = self.dir / child.name
        meta = _read_json(run_dir / "run.json")
        failure = self.state["failures"].get(child.name)
        if meta.get("status") == "FINISHED":
            self.echo(f"{head}: done already ({child.name})")
            return
        if failure and not self.retry_failed:
            self.echo(f"{head}: failed before ({failure}); --retry-failed runs it again")
            return
        self.state["failures"].pop(child.name, None)
        if (run_dir / "checkpoint.pt").exists() and meta.get("status") != "FAILED":
            cmd = ["train", "--resume", child.name, "--set", f"train.out_dir={self.dir}"]
            self.echo(f"{head}: resuming {child.name} from its checkpoint")
        else:
            if run_dir.exists():  # started, but nothing to resume from: start again
                _forget_mlflow_run(meta, self.tracking_uri)
                shutil.rmtree(run_dir)
            cmd = ["train", "--config", str(self._write_child_config(child))]
            self.echo(f"{head}: training {child.name}")
        t0 = time.monotonic()
        rc, err_tail = self._launch(child.name, cmd)
        meta = _read_json(run_dir / "run.json")
        status = meta.get("status")
        if rc == 0 and status == "FINISHED":
            final = _last_eval(run_dir)
            self.echo(f"    -> val bpb {final:.4f} ({time.monotonic() - t0:.0f} s)" if final is not None else "    -> finished")
        elif status == "KILLED" or (self._stop and rc in (0, 130, -signal.SIGINT, -signal.SIGTERM)):
            self._stop = True
            self.echo(f"    -> stopped with a checkpoint; run the same command again to resume")
        else:
            reason = meta.get("tags", {}).get("blagpt.error") or _reason(rc, err_tail)
            self.state["failures"][child.name] = reason
            self.echo(f"    -> FAILED: {reason}")
        self._save_state()

    def _write_child_config(self, child: Child) -> Path:
        cfg = child.config.model_copy(deep=True)
        cfg.train.out_dir = str(self.dir)
        cfg.tracking.run_name = child.name
        tags = {**cfg.tracking.tags, "blagpt.bench": self.name, "blagpt.entry": child.entry.label}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        cfg.tracking.tags = tags
        path = self.dir / "configs" / f"{child.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cfg.to_yaml())
        return path

    def _launch(self, name: str, args: list[str]) -> tuple[int, list[str]]:
        """Run one child to its end, echoing its evaluation lines; Ctrl-C is passed on once (the
        child checkpoints and stops at the end of its step), a second one stops it at once.

        The child writes to files, never to a pipe: if the bench dies, the child's next print
        must not fail (it gets SIGTERM, checkpoints and stops cleanly)."""
        logs = self.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        cmd = [*self.launcher, "-m", "blagpt", *args, "--no-progress"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
        with open(out_path, "a") as out, open(err_path, "a") as err, open(out_path) as follow:
            follow.seek(0, os.SEEK_END)
            err_start = err.tell()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True, preexec_fn=_die_with_parent)

            def forward(signum, frame):
                self._stop = True
                proc.send_signal(signal.SIGINT)

            old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
            pending = ""
            try:
                while True:
                    rc = proc.poll()
                    *lines, pending = (pending + follow.read()).split("\n")
                    for line in lines:
                        if line.startswith("eval step"):
                            self.echo("    " + line.rstrip())
                    if rc is not None:
                        break
                    time.sleep(0.2)
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
        with open(err_path) as f:
            f.seek(err_start)
            tail = f.read()[-4000:].splitlines()
        return rc, tail

    # -- MLflow parent run -------------------------------------------------------------------

    def _open_parent(self) -> None:
        if not self.tracking_enabled:
            return
        from .tracking import RunRecord, configure_mlflow_http, ensure_run, sync_client

        record = RunRecord(self.dir)
        try:
            configure_mlflow_http(10)
            self.parent_run_id = ensure_run(sync_client(self.tracking_uri), record, self.experiment, self.name)
        except Exception as e:  # noqa: BLE001 - the bench goes on; its folder keeps everything
            self.echo(f"warning: MLflow parent run not created ({type(e).__name__}: {' '.join(str(e).split())[:200]}); children are tracked unnested")

    def finish(self, files: dict[str, Path], params: dict[str, Any], metrics: dict[str, float], interrupted: bool) -> str | None:
        """Log the plan, the entries' means and the leaderboard files to the parent run."""
        if not self.tracking_enabled:
            return None
        from .tracking import RunRecord, Tracker

        record = RunRecord(self.dir)
        tracker = Tracker(record, self.tracking_uri, self.experiment, self.name, 10.0, True)
        tracker.log_params(params, {"blagpt.kind": self.kind})
        if metrics:
            tracker.log(0, metrics)
        for path in files.values():
            tracker.log_artifact(path)
        synced = tracker.close("KILLED" if interrupted else "FINISHED")
        if not synced:
            self.echo(f"warning: MLflow did not receive the bench summary; upload it with: blagpt runs sync {self.dir}")
        return tracker.run_id

    # -- reading results ---------------------------------------------------------------------

    def run_data(self, child: Child) -> RunData:
        run_dir = self.dir / child.name
        meta = _read_json(run_dir / "run.json")
        fields = dict(name=child.name, entry=child.entry.label, seed=child.seed, status=meta.get("status", "NOT RUN"),
                      params=meta.get("params", {}), error=child.error or self.state["failures"].get(child.name),
                      run_id=meta.get("mlflow_run_id"))
        if child.config is None or not (run_dir / "metrics.jsonl").exists():
            return RunData(**fields)
        return RunData.from_metrics(RunRecord(run_dir).read_metrics(), **fields)


# -- helpers of this module ----------------------------------------------------------------------


def _config_digest(cfg) -> str:
    """Hash of a resolved run config without what does not change the training (seed, names, paths)."""
    data = cfg.model_dump(mode="json")
    data["train"].pop("seed", None)
    data["train"].pop("out_dir", None)
    data.pop("tracking", None)
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def _section(raw: dict, name: str) -> dict:
    """A section of a raw (unvalidated) config, or {} if it is missing or not a mapping (the
    children's validation reports the latter)."""
    section = raw.get(name)
    return section if isinstance(section, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last_eval(run_dir: Path) -> float | None:
    vals = [r["value"] for r in RunRecord(run_dir).read_metrics() if r["key"] == "val/bpb"]
    return vals[-1] if vals else None


def _reason(rc: int, err_tail: list[str]) -> str:
    """One line saying why a child failed: its ``error:`` line, else the last line of its traceback."""
    lines = [ln.strip() for ln in err_tail if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln[len("error: "):][:300]
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return (lines[-1][:300] if lines else f"exit code {rc}")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the bench process dies (Linux), so a killed
    bench does not leave its run training unseen; SIGTERM makes the run checkpoint and stop."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _forget_mlflow_run(meta: dict[str, Any], uri: str | None) -> None:
    """Mark the MLflow run of an abandoned attempt as killed (best effort)."""
    run_id = meta.get("mlflow_run_id")
    if not run_id:
        return
    try:
        from .tracking import sync_client

        sync_client(meta.get("tracking_uri") or uri).set_terminated(run_id, status="KILLED")
    except Exception:  # noqa: BLE001 - the server may be down; the run is restarted anyway
        pass
