"""What a bench or an ablation trains: entries, seeds, one base config, and a name for each run.

An :class:`Entry` is a model (and preset), an optimizer and extra ``--set`` items. A :class:`Plan`
turns entries x seeds into :class:`Child` runs, each resolved from the same base config, so data,
sequence length, global batch, evaluation text and budget are the same for all. A child's run
name is ``<model>-<config hash>.s<seed>``: a run whose resolved config (seed aside) is the same is
shared by every entry that asks for it. The plan's name defaults to a hash of its identity without
the seed count, so asking for more seeds reuses the seeds already trained.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..config import merge_sources, replace_budget, resolve
from ..errors import BlagptError, ConfigError

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


@dataclass
class Child:
    """One planned training run: an entry at one seed."""

    entry: Entry
    seed: int
    name: str = ""
    config: Any = None  # the resolved RunConfig, or None when it does not resolve
    error: str | None = None
    tags: dict[str, str] = field(default_factory=dict)  # MLflow tags of the run (a tuning trial's point, ...)


def parse_models(text: str, optimizers: list[str], tokenizers: list[str] | None = None) -> list[Entry]:
    """``--models a,b@preset`` x ``--optimizers x,y`` [x ``--tokenizers t,u``] -> entries labelled
    ``a``, ``b@preset`` (with ``/optimizer`` and ``/tokenizer`` appended when several are compared)."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise ConfigError("--models: expected a comma-separated list like blagpt@gpt2+tiny,rene@tiny")
    toks = tokenizers or [None]
    out = []
    for m in models:
        name, _, preset = m.partition("@")
        if not re.fullmatch(r"[a-z0-9_][a-z0-9_.-]*", name):
            raise ConfigError(f"--models: {m!r} is not NAME or NAME@PRESET")
        for opt in optimizers:
            for tok in toks:
                label = m + (f"/{opt}" if len(optimizers) > 1 else "") + (f"/{tok}" if len(toks) > 1 else "")
                sets = ((f"model.preset={preset}",) if preset else ()) + ((f"data.tokenizer={tok}",) if tok else ())
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
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"--budget {text!r}: must be a positive, finite number")
    if kind in ("tokens", "steps"):
        return f"{BUDGET_KEYS[kind]}={int(round(number))}"
    return f"{BUDGET_KEYS[kind]}={number!r}"


def with_budget(raw: dict[str, Any], item: str) -> dict[str, Any]:
    """``raw`` with its budget replaced by ``item`` (a ``train.<budget>=value`` set)."""
    return replace_budget(raw, item)


def section(raw: dict, name: str) -> dict:
    """A section of a raw (unvalidated) config, or {} if it is missing or not a mapping (the
    children's validation reports the latter)."""
    value = raw.get(name)
    return value if isinstance(value, dict) else {}


def config_digest(cfg) -> str:
    """Hash of a resolved run config without what does not change the training (seed, names, paths)."""
    data = cfg.model_dump(mode="json")
    data["train"].pop("seed", None)
    data["train"].pop("out_dir", None)
    data.pop("tracking", None)
    if data.get("task") == {"name": "lm"}:  # the default task: run names as before tasks existed
        data.pop("task")
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


class Plan:
    """A bench's or an ablation's identity, base config, seeds, name and folder."""

    def __init__(self, kind: str, identity: dict[str, Any], base_raw: dict[str, Any], seeds: int, name: str | None = None) -> None:
        if seeds < 1:
            raise ConfigError(f"--seeds: expected at least 1, got {seeds}")
        self.kind, self.seeds = kind, seeds
        has_eval_bytes = section(base_raw, "train").get("eval_bytes") is not None
        on_task = section(base_raw, "task").get("name", "lm") != "lm"  # a generated task has its own test sequences
        self.base_raw = merge_sources(base=base_raw, sets=[] if has_eval_bytes or on_task else [f"train.eval_bytes={DEFAULT_EVAL_BYTES}"])
        # the identity: what changes results (tracking settings and the seed count do not)
        self.identity = {"kind": kind, **identity, "base": {k: v for k, v in self.base_raw.items() if k != "tracking"}}
        key = hashlib.sha1(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        self.name = name or f"{kind}-{key}"
        if not re.fullmatch(r"[A-Za-z0-9_.@+-]+", self.name):
            raise ConfigError(f"--name {self.name!r}: use letters, digits and . _ - @ + only")
        self.dir = Path(section(self.base_raw, "train").get("out_dir", "runs")) / self.name
        tracking = section(self.base_raw, "tracking")
        self.tracking_enabled = tracking.get("enabled", True) is not False
        self.tracking_uri = tracking.get("uri")
        self.experiment = tracking.get("experiment", "blagpt")
        self._warned = False

    def children(self, entries: list[Entry], registry, echo: Callable[[str], None], seeds: int | None = None,
                 tags: dict[Entry, dict[str, str]] | None = None) -> list[Child]:
        """Every entry at every seed (``seeds``, default the plan's), resolved (a config error fails
        that entry only); seed-major order, so every entry has a first result before any has a
        second. ``tags``: extra MLflow tags of an entry's runs."""
        base_seed = int(section(self.base_raw, "train").get("seed", 0))
        out = []
        for s in range(self.seeds if seeds is None else seeds):
            for e in entries:
                child = Child(e, base_seed + s, tags=dict((tags or {}).get(e, {})))
                sets = [f"model.name={e.model}", f"optimizer.name={e.optimizer}", *e.sets, f"train.seed={child.seed}"]
                try:
                    cfg = resolve(merge_sources(base=self.base_raw, sets=sets), registry)
                except BlagptError as err:
                    child.error, child.name = str(err), f"{e.model}-invalid.s{child.seed}"
                else:
                    child.config, child.name = cfg, f"{e.model}-{config_digest(cfg)}.s{child.seed}"
                out.append(child)
        if not self._warned:
            self._warned = True
            _warn_unequal(out, registry, echo)
        return out

    def trials(self, entries: list[Entry], points: list[tuple[tuple[str, str], ...]], registry, echo: Callable[[str], None]) -> list[Child]:
        """Tuning trials: every entry at every grid point, one run each at the first seed, scored
        on the tuning slice (``train.eval_on=tune``); point-major order."""
        out = []
        for point in points:
            sets = tuple(f"{k}={v}" for k, v in point)
            trial_entries = [replace(e, sets=(*e.sets, *sets, "train.eval_on=tune")) for e in entries]
            label = " ".join(sets)
            tags = {e: {"blagpt.role": "trial", "blagpt.trial": label} for e in trial_entries}
            out += self.children(trial_entries, registry, echo, seeds=1, tags=tags)
        return out


def _warn_unequal(children: list[Child], registry, echo: Callable[[str], None]) -> None:
    cfgs = [c.config for c in children if c.config is not None]
    toks = sorted({c.tokenizer_name(registry) for c in cfgs})
    if len(toks) > 1 and cfgs and cfgs[0].train.budget_kind in ("steps", "tokens"):
        echo(
            f"note: entries use different tokenizers ({', '.join(toks)}): a {cfgs[0].train.budget_kind} budget gives "
            "them different amounts of text; val bpb compares them on the same bytes, and --budget flops= or time= "
            "gives equal compute"
        )
