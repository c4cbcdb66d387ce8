"""What the conformance kit checks: :class:`ModelTarget` (a model plugin's model) and
:class:`OptimizerTarget` (an optimizer plugin's optimizer, trained on the kit's probe model).

A target names a registered model or optimizer and the config it is checked with; it resolves
through the real entry points (:meth:`Registry.load`, honouring ``BLAGPT_LOAD_PLUGINS``) and the
core's config pipeline, exactly as ``blagpt train`` would. Every check builds what it needs from
the target (:meth:`resolve`), so a check fails on its own when its property is broken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from ..errors import BlagptError

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..plugin.registry import Registry
    from ..plugin.specs import BuildContext

DEVICE = "cpu"  # the kit checks on the CPU in fp32, whatever the machine has


@dataclass(frozen=True)
class Resolved:
    """A target resolved as a run would be: the registry, the validated run config, and the
    :class:`blagpt.BuildContext` its model and optimizer are built with."""

    registry: "Registry"
    cfg: "RunConfig"
    ctx: "BuildContext"


class _Target:
    kind: ClassVar[str]
    name: str
    config: Mapping[str, Any] | None
    seq_len: int
    micro_batch_size: int
    expected_failures: Mapping[str, str] | None
    id: str | None

    def _validate(self) -> None:
        from . import checks_for  # the package is imported before any target is made

        if not isinstance(self.name, str) or not self.name:
            raise BlagptError(f"{type(self).__name__}.name: expected a registered {self.kind} name, got {self.name!r}")
        if self.config is not None and not isinstance(self.config, Mapping):
            raise BlagptError(f"{type(self).__name__}.config: expected a mapping of {self.kind} fields, got {self.config!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 4:
            raise BlagptError(f"{type(self).__name__}.seq_len: expected an int >= 4, got {self.seq_len!r}")
        if not isinstance(self.micro_batch_size, int) or self.micro_batch_size < 1:
            raise BlagptError(f"{type(self).__name__}.micro_batch_size: expected an int >= 1, got {self.micro_batch_size!r}")
        object.__setattr__(self, "config", dict(self.config or {}))
        failures = validate_expected_failures(self.expected_failures, checks_for(self.kind), f"{type(self).__name__}.expected_failures")
        object.__setattr__(self, "expected_failures", failures)

    @property
    def target_id(self) -> str:
        """The pytest id: ``id`` if given, else the name and the preset, e.g. ``rene-tiny``."""
        if self.id:
            return self.id
        preset = (self.config or {}).get("preset")
        return f"{self.name}-{preset}" if preset else self.name

    @property
    def key(self) -> str:
        """The target's identity for caches (two equal targets share trainer runs)."""
        fields = {k: v for k, v in vars(self).items() if k not in ("expected_failures", "id")}
        return json.dumps({"kind": self.kind, **fields}, sort_keys=True, default=repr)

    # -- what a run of this target is ---------------------------------------------------------

    def run_raw(self, **train: Any) -> dict[str, Any]:
        """The raw run config (``blagpt.config.merge_sources`` form) of this target on the CPU,
        tracking off; ``train`` fields override the kit's defaults."""
        raise NotImplementedError

    def _train_section(self, train: dict[str, Any]) -> dict[str, Any]:
        return {
            "seq_len": self.seq_len,
            "micro_batch_size": self.micro_batch_size,
            "device": DEVICE,
            "precision": "fp32",
            "compile": False,
            **train,
        }

    def registry(self) -> "Registry":
        """The registry the target resolves in: every installed entry point (as limited by
        ``BLAGPT_LOAD_PLUGINS``), plus the probe model for optimizer targets."""
        return load_registry(probe=self.kind == "optimizer")

    def resolve(self, **train: Any) -> Resolved:
        """Resolve the target's run config (``train`` overrides) and its build context."""
        from ..config import resolve
        from ..data.tokenizers import get_tokenizer
        from ..plugin.specs import BuildContext

        reg = self.registry()
        cfg = resolve(self.run_raw(**train), reg)
        tok = cfg.tokenizer_name(reg)
        ctx = BuildContext(
            vocab_size=get_tokenizer(tok, reg).vocab_size,
            max_seq_len=cfg.train.seq_len,
            tokenizer=tok,
            compile=cfg.train.compile,
            device=DEVICE,
        )
        return Resolved(reg, cfg, ctx)

    def owner_entry_points(self, reg: "Registry") -> list[str]:
        """Entry-point names a separate process must load to run this target (for
        ``BLAGPT_LOAD_PLUGINS``); the core's built-ins and the probe need none."""
        from ..plugin.registry import CORE_DIST

        names = []
        for kind, name in self._owned():
            info = reg.owner_of(kind, name)
            if info.dist != CORE_DIST:
                names.append(info.name)
        return sorted(set(names))

    def _owned(self) -> list[tuple[str, str]]:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class ModelTarget(_Target):
    """A model plugin's model under test.

    Attributes:
        name: the registered model name.
        config: the ``model`` section on top of the registered spec (presets allowed through
            ``"preset"``), e.g. ``{"preset": "tiny", "dropout": 0.0}``. Targets must be
            deterministic: dropout and other training-time randomness off.
        tokenizer: ``"bytes"`` or ``"gpt2"``; ``None``: the model's default.
        seq_len: the longest sequence checked and trained on (at least 4).
        micro_batch_size: sequences per forward in trainer runs.
        lr: AdamW's peak learning rate in trainer runs.
        expected_failures: check name -> reason; those checks are marked ``xfail(strict=True)``.
        id: the pytest id; default the name and the preset (``rene-tiny``).
        compile_backend: the ``torch.compile`` backend of the ``compile`` check. The default,
            ``"aot_eager"``, traces the model with Dynamo and AOTAutograd (graph capture,
            functionalization, decompositions, the joint backward graph: what a plugin is
            responsible for) and runs the graph with eager kernels, in seconds. ``"inductor"``
            also generates CPU kernels: a minute or more per tiny model on a cold cache, and not
            the code a GPU run compiles anyway.
    """

    kind: ClassVar[str] = "model"

    name: str
    config: Mapping[str, Any] | None = None
    tokenizer: str | None = None
    seq_len: int = 32
    micro_batch_size: int = 4
    lr: float = 3e-3
    expected_failures: Mapping[str, str] | None = None
    id: str | None = None
    compile_backend: str = "aot_eager"

    def __post_init__(self) -> None:
        self._validate()
        if self.tokenizer is not None and (not isinstance(self.tokenizer, str) or not self.tokenizer):
            raise BlagptError(f"ModelTarget.tokenizer: expected None or a tokenizer reference such as 'bytes', got {self.tokenizer!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise BlagptError(f"ModelTarget.lr: expected a positive learning rate, got {self.lr!r}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise BlagptError(f"ModelTarget.compile_backend: expected a torch.compile backend name, got {self.compile_backend!r}")

    def run_raw(self, **train: Any) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "model": {**(self.config or {}), "name": self.name},
            "optimizer": {"name": "adamw", "lr": self.lr},
            "train": self._train_section(train),
            "tracking": {"enabled": False},
        }
        if self.tokenizer is not None:
            raw["data"] = {"tokenizer": self.tokenizer}
        return raw

    def _owned(self) -> list[tuple[str, str]]:
        return [("model", self.name), ("optimizer", "adamw")]


@dataclass(frozen=True, eq=False)
class OptimizerTarget(_Target):
    """An optimizer plugin's optimizer under test, trained on the kit's probe model
    (:mod:`blagpt.testing.probe`, bytes tokenizer).

    Attributes:
        name: the registered optimizer name.
        config: the ``optimizer`` section (its fields, e.g. ``{"lr": 3e-3}``); unset fields keep
            the optimizer's defaults.
        seq_len, micro_batch_size: the probe's training sequences and micro-batch.
        expected_failures: check name -> reason; those checks are marked ``xfail(strict=True)``.
        id: the pytest id; default the name.
    """

    kind: ClassVar[str] = "optimizer"

    name: str
    config: Mapping[str, Any] | None = None
    seq_len: int = 32
    micro_batch_size: int = 4
    expected_failures: Mapping[str, str] | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        self._validate()

    def run_raw(self, **train: Any) -> dict[str, Any]:
        from .probe import PROBE_NAME

        return {
            "model": {"name": PROBE_NAME},
            "optimizer": {**(self.config or {}), "name": self.name},
            "data": {"tokenizer": "bytes"},
            "train": self._train_section(train),
            "tracking": {"enabled": False},
        }

    def _owned(self) -> list[tuple[str, str]]:
        return [("optimizer", self.name)]


# -- registries ----------------------------------------------------------------------------------

_REGISTRIES: dict[tuple, "Registry"] = {}


def load_registry(probe: bool = False) -> "Registry":
    """Every installed plugin (not strict: a broken plugin is recorded, and a check of a target
    it owns says why), plus the probe model if ``probe``. Cached per set of installed entry
    points and ``BLAGPT_LOAD_PLUGINS``, so a plugin installed later in the process is seen."""
    import os

    from ..plugin.registry import GROUP, Registry

    eps = tuple(sorted((ep.name, ep.value, getattr(getattr(ep, "dist", None), "name", "?")) for ep in entry_points(group=GROUP)))
    key = (eps, os.environ.get("BLAGPT_LOAD_PLUGINS"), probe)
    if key not in _REGISTRIES:
        reg = Registry.load(strict=False)
        if probe:
            from .probe import add_probe

            add_probe(reg)
        _REGISTRIES[key] = reg
    return _REGISTRIES[key]


def validate_expected_failures(failures: Mapping[str, str] | None, known: Mapping[str, Any], where: str) -> dict[str, str]:
    """``failures`` as a dict, after checking every name is a known check and every reason is
    a non-empty string (a misspelled check name would otherwise silently run)."""
    if failures is None:
        return {}
    if not isinstance(failures, Mapping):
        raise BlagptError(f"{where}: expected a mapping of check name -> reason, got {failures!r}")
    for name, reason in failures.items():
        if name not in known:
            raise BlagptError(f"{where}: unknown check {name!r}; known checks: {', '.join(known)}")
        if not isinstance(reason, str) or not reason.strip():
            raise BlagptError(f"{where}: check {name!r} needs a reason (a non-empty string), got {reason!r}")
    return dict(failures)
