"""Plugin discovery and the typed face of the hooks.

Plugins are found through the entry-point group ``blagpt`` and loaded one at a time: a plugin that
fails to import, to register, or to validate its hooks is recorded with its error and left out,
and every other plugin keeps working. ``BLAGPT_STRICT_PLUGINS=1`` turns such a failure into an
exception; ``BLAGPT_LOAD_PLUGINS=a,b`` loads only the entry points named ``a`` and ``b`` (set but
empty: none). The built-ins (optimizer ``adamw``, the default ``compute_loss``) are always there.

The rest of the core calls the hooks only through the functions at the bottom of this module.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Callable, Iterable

import pluggy

from . import hookspecs
from ..errors import BlagptError
from .specs import ModelSpec, OptimizerSpec, TaskSpec, TokenizerSpec

if TYPE_CHECKING:
    import torch

    from .specs import Batch, BuildContext, LossOutput, ModelConfig, OptimizerConfig, Task, TaskConfig

GROUP = "blagpt"
CORE_DIST = "blagpt"


class PluginError(BlagptError):
    """A plugin could not be loaded or a registered name is unusable."""


@dataclass
class PluginInfo:
    """One discovered plugin: where it comes from and what it registered (or why it failed)."""

    name: str
    dist: str
    version: str
    module: str
    models: list[str] = field(default_factory=list)
    optimizers: list[str] = field(default_factory=list)
    tokenizers: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class Registry:
    """A plugin manager plus the specs every plugin registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.models: dict[str, ModelSpec] = {}
        self.optimizers: dict[str, OptimizerSpec] = {}
        self.tokenizers: dict[str, TokenizerSpec] = {}
        self.tasks: dict[str, TaskSpec] = {}
        self._loaded_tokenizers: dict[str, object] = {}
        self.owner: dict[tuple[str, str], PluginInfo] = {}  # (kind, name) -> plugin
        self.conflicts: dict[tuple[str, str], str] = {}  # (kind, name) -> message

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, strict: bool | None = None, only: Iterable[str] | None = None) -> "Registry":
        """Discover and register the built-ins and every entry point of the group ``blagpt``.

        ``strict`` and ``only`` default to ``BLAGPT_STRICT_PLUGINS`` and ``BLAGPT_LOAD_PLUGINS``.
        """
        if strict is None:
            strict = _env_flag("BLAGPT_STRICT_PLUGINS")
        if only is None and "BLAGPT_LOAD_PLUGINS" in os.environ:
            only = [s.strip() for s in os.environ["BLAGPT_LOAD_PLUGINS"].split(",") if s.strip()]
        reg = cls()
        from . import builtins
        from .. import __version__

        reg._add(PluginInfo("builtins", CORE_DIST, __version__, builtins.__name__), lambda: builtins)
        wanted = None if only is None else set(only)
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if wanted is not None and ep.name not in wanted:
                continue
            info = _info_for(ep)
            if info.name in reg.plugins:
                info.error = f"entry point name {ep.name!r} is also used by {reg.plugins[ep.name].dist}"
                reg.plugins[f"{info.name} ({info.dist})"] = info
            else:
                reg._add(info, ep.load)
        if wanted is not None:
            for missing in sorted(wanted - set(reg.plugins)):
                reg.plugins[missing] = PluginInfo(missing, "?", "?", "?", error="not installed (named in BLAGPT_LOAD_PLUGINS)")
        if strict:
            broken = [p for p in reg.plugins.values() if not p.ok]
            msgs = [f"plugin {p.name} ({p.dist} {p.version}): {p.error}" for p in broken]
            msgs += list(reg.conflicts.values())
            if msgs:
                raise PluginError("BLAGPT_STRICT_PLUGINS is set and " + "; ".join(msgs))
        return reg

    def _add(self, info: PluginInfo, load: Callable[[], object]) -> None:
        """Import, register and validate one plugin; on any failure record it and unregister it."""
        self.plugins[info.name] = info
        try:
            module = load()
        except BaseException as e:  # noqa: BLE001 - a plugin may raise anything, even SystemExit
            if isinstance(e, KeyboardInterrupt):
                raise
            info.error = f"import failed: {_one_line(e)}"
            return
        try:
            self.pm.register(module, name=info.name)
            self.pm.check_pending()
        except Exception as e:  # noqa: BLE001
            info.error = f"invalid hooks: {_one_line(e)}"
            if self.pm.get_plugin(info.name) is not None:
                self.pm.unregister(name=info.name)
            return
        models: list[ModelSpec] = []
        optimizers: list[OptimizerSpec] = []
        tokenizers: list[TokenizerSpec] = []
        tasks: list[TaskSpec] = []
        try:
            for hook, sink, kind in (
                (self.pm.hook.register_models, models, ModelSpec),
                (self.pm.hook.register_optimizers, optimizers, OptimizerSpec),
                (self.pm.hook.register_tokenizers, tokenizers, TokenizerSpec),
                (self.pm.hook.register_tasks, tasks, TaskSpec),
            ):
                for impl in hook.get_hookimpls():
                    if impl.plugin_name == info.name:
                        impl.function(register=_collector(sink, kind))
        except Exception as e:  # noqa: BLE001
            info.error = f"registration failed: {_one_line(e)}"
            self.pm.unregister(name=info.name)
            return
        for kind, specs, table in (("model", models, self.models), ("optimizer", optimizers, self.optimizers),
                                   ("tokenizer", tokenizers, self.tokenizers), ("task", tasks, self.tasks)):
            for spec in specs:
                self._claim(kind, spec, table, info)

    def _claim(self, kind: str, spec, table: dict, info: PluginInfo) -> None:
        key = (kind, spec.name)
        getattr(info, kind + "s").append(spec.name)
        if key in self.conflicts:
            self.conflicts[key] += f" and {info.dist} {info.version}"
            return
        if key in self.owner:
            first = self.owner.pop(key)
            del table[spec.name]
            self.conflicts[key] = (
                f"{kind} {spec.name!r} is registered by two distributions, "
                f"{first.dist} {first.version} and {info.dist} {info.version}"
            )
            return
        self.owner[key] = info
        table[spec.name] = spec

    # -- lookups -------------------------------------------------------------------------

    def model_spec(self, name: str) -> ModelSpec:
        return self._lookup("model", name, self.models)

    def optimizer_spec(self, name: str) -> OptimizerSpec:
        return self._lookup("optimizer", name, self.optimizers)

    def task_spec(self, name: str) -> TaskSpec:
        return self._lookup("task", name, self.tasks)

    def build_task(self, config: "TaskConfig") -> "Task":
        """The :class:`blagpt.Task` of ``config`` (a task other than ``lm``), through its spec's ``build``."""
        spec = self.task_spec(config.name)
        if spec.build is None:
            raise PluginError(f"task {config.name!r} reads the run's data; it has no generated sequences")
        task = spec.build(config)
        for attr in ("vocab_size", "sequences"):
            if not hasattr(task, attr):
                raise PluginError(f"task {config.name!r}: its build() returned {type(task).__name__}, which has no {attr!r} (expected a blagpt.Task)")
        return task

    def tokenizer_spec(self, ref: str) -> TokenizerSpec:
        """The spec of tokenizer reference ``ref`` (``gpt2``, ``hf:PATH``); a reference whose
        argument does not fit its spec is a PluginError."""
        name, sep, arg = ref.partition(":")
        spec = self._lookup("tokenizer", name, self.tokenizers, [f"{n}:{s.argument.split()[0]}" if s.argument else n
                                                                   for n, s in sorted(self.tokenizers.items())])
        if spec.argument and not arg:
            raise PluginError(f"tokenizer {name!r} takes an argument: {name}:{spec.argument.split()[0]} ({spec.argument})")
        if sep and not spec.argument:
            raise PluginError(f"tokenizer {name!r} takes no argument, got {ref!r}")
        return spec

    def load_tokenizer(self, ref: str):
        """The :class:`blagpt.Tokenizer` ``ref`` names, loaded once per registry."""
        if ref not in self._loaded_tokenizers:
            spec = self.tokenizer_spec(ref)
            tok = spec.load(ref.partition(":")[2] or None)
            for attr in ("vocab_size", "eot", "encode", "decode_bytes", "token_bytes", "digest"):
                if not hasattr(tok, attr):
                    raise PluginError(f"tokenizer {ref!r}: its load() returned {type(tok).__name__}, which has no {attr!r} (expected a blagpt.Tokenizer)")
            if not getattr(tok, "name", None):
                tok.name = ref
            self._loaded_tokenizers[ref] = tok
        return self._loaded_tokenizers[ref]

    def _lookup(self, kind: str, name: str, table: dict, known: list[str] | None = None):
        if name in table:
            return table[name]
        if (kind, name) in self.conflicts:
            raise PluginError(self.conflicts[(kind, name)] + "; uninstall one of them")
        broken = [p for p in self.plugins.values() if not p.ok and p.name == name]
        hint = f" (plugin {name!r} is installed but broken: {broken[0].error})" if broken else ""
        known = ", ".join(known if known is not None else sorted(table)) or "none installed"
        raise PluginError(f"unknown {kind} {name!r}{hint}; known {kind}s: {known}")

    def owner_of(self, kind: str, name: str) -> PluginInfo:
        return self.owner[(kind, name)]

    # -- typed hook calls ----------------------------------------------------------------

    def build_model(self, config: "ModelConfig", ctx: "BuildContext") -> "torch.nn.Module":
        """Build ``config.name`` through the ``build_model`` hook; an error if no plugin does."""
        self.model_spec(config.name)
        model = self.pm.hook.build_model(name=config.name, config=config, ctx=ctx)
        if model is None:
            raise PluginError(f"no plugin built model {config.name!r} (its build_model hook returned None)")
        return model

    def build_optimizer(
        self, model: "torch.nn.Module", config: "OptimizerConfig", ctx: "BuildContext"
    ) -> "torch.optim.Optimizer":
        """Build ``config.name`` through the ``build_optimizer`` hook."""
        self.optimizer_spec(config.name)
        opt = self.pm.hook.build_optimizer(name=config.name, model=model, config=config, ctx=ctx)
        if opt is None:
            raise PluginError(f"no plugin built optimizer {config.name!r} (its build_optimizer hook returned None)")
        return opt

    def compute_loss(
        self, model: "torch.nn.Module", batch: "Batch", config: "ModelConfig"
    ) -> "LossOutput":
        """One micro-batch's loss through the ``compute_loss`` hook (default: next-token CE)."""
        return self.pm.hook.compute_loss(name=config.name, model=model, batch=batch, config=config)


def _collector(sink: list, kind: type) -> Callable[[object], None]:
    def register(spec: object) -> None:
        if not isinstance(spec, kind):
            raise TypeError(f"register() expects a blagpt.{kind.__name__}, got {type(spec).__name__}")
        sink.append(spec)

    return register


def _info_for(ep: EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    return PluginInfo(
        name=ep.name,
        dist=dist.name if dist is not None else "?",
        version=dist.version if dist is not None else "?",
        module=ep.value,
    )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    where = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    loc = f" at {os.path.basename(where[0].filename)}:{where[0].lineno}" if where else ""
    return f"{type(e).__name__}: {text}{loc}"


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry.load()
    return _REGISTRY
