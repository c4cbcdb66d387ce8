"""The run config: a pydantic v2 schema, its merge order and its one-line errors.

Merge order, later wins: schema defaults < the model plugin's presets (``model.preset``) <
the ``--config`` file (YAML or TOML) < ``--set a.b=value`` (values parsed as YAML scalars).

The ``model``, ``optimizer`` and ``task`` sections are typed by the config classes their plugins registered:
:func:`resolve` builds the concrete ``RunConfig`` class for the chosen names, so every error,
inside a plugin's section too, carries its full dotted path.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from .errors import ConfigError
from .plugin.specs import ModelConfig, OptimizerConfig, TaskConfig

if TYPE_CHECKING:
    from .plugin.registry import Registry


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    train: str | None = Field(
        default=None,
        description="Glob of training shards (FineWeb10B format); unset: the embedded Shakespeare corpus.",
    )
    val: str | None = Field(default=None, description="Glob of validation shards; required when `train` is set.")
    tokenizer: str = Field(
        default="auto",
        description="Tokenizer: `auto` (the model's default), a registered name (`gpt2`, `bytes`, a plugin's), "
        "`hf:PATH/tokenizer.json` or `tiktoken:PATH.tiktoken` (local vocabulary files). Must be one the model accepts.",
    )

    @model_validator(mode="after")
    def _val_with_train(self) -> "DataConfig":
        if (self.train is None) != (self.val is None):
            raise ValueError("set both `train` and `val` shard globs, or neither (embedded corpus)")
        return self


DEFAULT_STEPS = 200


class TrainConfig(_Section):
    steps: int | None = Field(
        default=None,
        gt=0,
        description=f"Optimizer steps ({DEFAULT_STEPS} when no budget is set); exclusive with the other budgets "
        "(`tokens`, `flops`, `time_s`).",
    )
    tokens: int | None = Field(
        default=None, gt=0, description="Token budget; steps = ceil(tokens / (global_batch_size * seq_len))."
    )
    flops: float | None = Field(
        default=None,
        gt=0,
        description="FLOP budget; steps = ceil(flops / (model flops_per_token x global_batch_size x seq_len)). "
        "Needs a model that reports flops_per_token.",
    )
    time_s: float | None = Field(
        default=None,
        gt=0,
        description="Wall-clock budget: seconds of training steps (evaluation and checkpoints do not count); "
        "the learning-rate schedule follows the elapsed fraction of it.",
    )
    seq_len: int = Field(default=256, gt=0, description="Tokens per training sequence.")
    micro_batch_size: int = Field(default=8, gt=0, description="Sequences per rank per forward/backward.")
    global_batch_size: int | None = Field(
        default=None,
        gt=0,
        description="Sequences per optimizer step over all ranks; gradient accumulation = "
        "global / (micro * world size). Unset: micro_batch_size x world size.",
    )
    warmup_steps: int | None = Field(
        default=None, ge=0, description="Linear learning-rate warmup steps; unset: 5% of the run's steps."
    )
    schedule: Literal["cosine", "wsd", "constant"] = Field(
        default="cosine", description="Decay after warmup: cosine, warmup-stable-decay (linear tail), or constant."
    )
    decay_frac: float = Field(default=0.2, gt=0, le=1, description="WSD: fraction of steps in the final decay.")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Max global gradient norm; null: no clipping.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="`auto`: bf16 autocast on CUDA, fp32 on CPU."
    )
    compile: bool = Field(default=False, description="torch.compile the model (and let optimizers compile).")
    seed: int = Field(default=0, description="Seed of initialisation, data order and dropout.")
    eval_interval: int = Field(default=50, ge=0, description="Evaluate every N steps (and at the end); 0: only at the end.")
    eval_tokens: int = Field(default=32768, gt=0, description="Validation tokens predicted per evaluation (a fixed slice from the start of the val split).")
    eval_bytes: int | None = Field(
        default=None,
        gt=0,
        description="If set, the validation slice is the start of the val split up to the last line start "
        "within this many UTF-8 bytes: the same text, and the same byte count, whatever the tokenizer "
        "(use it to compare byte and token models); replaces `eval_tokens`.",
    )
    eval_on: Literal["val", "tune"] = Field(
        default="val",
        description="Which held-out slice the evaluations score: `val`, the validation slice (logged as `val/*`), or "
        "`tune`, a slice of the same size at the end of the val split that never overlaps it (logged as `tune/*`): "
        "hyperparameters chosen on `tune` are not selected on the reported number (`blagpt bench --tune`).",
    )
    checkpoint_interval: int = Field(default=0, ge=0, description="Checkpoint every N steps; 0: only at the end.")
    log_interval: int = Field(default=10, gt=0, description="Log training metrics every N steps.")
    init_from: str | None = Field(
        default=None,
        description="Start from these model weights (a run folder, its checkpoint.pt, or a saved state dict), "
        "loaded weights-only, with a fresh optimizer at step 0; e.g. after growing a model.",
    )
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda` or `cuda:N`.")
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="Over several ranks: `ddp` (a full copy per rank) or `fsdp` (FSDP2: parameters, gradients and "
        "optimizer state sharded by block; bf16 compute and reduction with fp32 master weights on CUDA; sharded "
        "checkpoints that resume on any number of ranks).",
    )
    activation_checkpointing: Literal["none", "blocks"] = Field(
        default="none", description="`blocks`: recompute each block's activations in the backward pass (less memory, ~1/3 more compute)."
    )
    peak_flops: float | None = Field(
        default=None,
        gt=0,
        description="Peak FLOP/s of one device for MFU; unset: looked up by the CUDA device's name (bf16 or fp32 dense), "
        "no MFU on the CPU.",
    )
    out_dir: str = Field(default="runs", description="Folder of run folders (checkpoints, local metrics).")

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        given = [k for k in ("steps", "tokens", "flops", "time_s") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"set one budget, not {' and '.join(f'`{k}`' for k in given)}")
        if not given:
            self.__dict__["steps"] = DEFAULT_STEPS  # not an assignment: that would validate again
        return self

    @property
    def budget_kind(self) -> str:
        """Which budget the run has: ``steps``, ``tokens``, ``flops`` or ``time_s``."""
        return next((k for k in ("tokens", "flops", "time_s") if getattr(self, k) is not None), "steps")


class TrackingConfig(_Section):
    enabled: bool = Field(default=True, description="Log the run to MLflow.")
    uri: str | None = Field(
        default=None, description="MLflow tracking URI; unset: $MLFLOW_TRACKING_URI, else MLflow's local default."
    )
    experiment: str = Field(default="blagpt", description="MLflow experiment name.")
    run_name: str | None = Field(default=None, description="Run name; unset: <model>-<timestamp>.")
    timeout_s: float = Field(default=10.0, gt=0, description="Seconds one MLflow request may take before it is given up.")
    log_checkpoints: bool = Field(
        default=True,
        description="Upload checkpoint.pt to the MLflow run each time it is written (in the background), so the run can "
        "be sampled or resumed on another machine from its MLflow run id alone.",
    )
    system_metrics: bool = Field(
        default=True,
        description="Log MLflow's system metrics (system/*: CPU, memory, disk, network; NVIDIA GPUs when nvidia-ml-py is installed).",
    )
    system_metrics_interval_s: float = Field(default=10.0, ge=1, description="Seconds between two samples of the system metrics.")
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Extra MLflow tags of the run (e.g. `mlflow.parentRunId` nests it under another run).",
    )


class RunConfig(_Section):
    """A whole run. ``model``, ``optimizer`` and ``task`` are narrowed to the plugins' classes by :func:`resolve`."""

    model: ModelConfig
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @property
    def on_task(self) -> bool:
        """Whether the run trains on a generated task (``task.name`` other than ``lm``)."""
        return self.task.name != "lm"

    def tokenizer_name(self, registry: "Registry") -> str:
        if self.on_task:
            return f"task:{self.task.name}"
        if self.data.tokenizer != "auto":
            return self.data.tokenizer
        return registry.model_spec(self.model.name).tokenizers[0]

    def flat(self) -> dict[str, Any]:
        """The config as dotted keys, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = obj

        walk("", self.model_dump(mode="json"))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# -- reading and merging ------------------------------------------------------------------


def read_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or TOML (.toml) config file as a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    if p.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{p}: expected a .yaml, .yml or .toml config file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); save the config file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file ({e.strerror or e})") from None
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else (yaml.safe_load(text) or {})
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: not valid {p.suffix[1:].upper()}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def parse_set(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as a YAML scalar)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.steps=100")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def merge_sources(
    file: str | Path | None = None, sets: list[str] | tuple[str, ...] = (), base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The raw (unvalidated) config: ``base`` < file < ``--set`` items."""
    raw = copy.deepcopy(base or {})
    if file is not None:
        raw = deep_merge(raw, read_file(file))
    for item in sets:
        path, value = parse_set(item)
        node = raw
        for i, part in enumerate(path[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[: i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return raw


BUDGETS = ("steps", "tokens", "flops", "time_s")


def replace_budget(raw: dict[str, Any], item: str) -> dict[str, Any]:
    """``raw`` with its budget replaced by ``item`` (a ``train.<budget>=value`` set): one budget
    at a time, so setting ``train.tokens`` drops a ``train.steps`` the config had."""
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    kept = {k: v for k, v in train.items() if k not in BUDGETS}
    return merge_sources(base={**raw, "train": kept}, sets=[item])


# -- validation ---------------------------------------------------------------------------


def concrete_class(registry: "Registry", model: str, optimizer: str, task: str = "lm") -> type[RunConfig]:
    """``RunConfig`` with ``model``/``optimizer``/``task`` typed by the registered plugin classes."""
    mspec = registry.model_spec(model)
    ospec = registry.optimizer_spec(optimizer)
    tspec = registry.task_spec(task)
    return create_model(
        f"RunConfig_{model}_{optimizer}_{task}",
        __base__=RunConfig,
        model=(mspec.config, ...),
        optimizer=(ospec.config, Field(default_factory=lambda: ospec.config(name=optimizer))),
        task=(tspec.config, Field(default_factory=lambda: tspec.config(name=task))),
    )


def resolve(raw: dict[str, Any], registry: "Registry") -> RunConfig:
    """Validate a raw merged config against the plugins' schemas; presets applied first."""
    from .plugin.registry import PluginError

    raw = copy.deepcopy(raw)
    for section in ("model", "optimizer", "task"):
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(f"{section}: expected a section (mapping), got {raw[section]!r}")
    model_name = raw["model"].get("name")
    if not model_name:
        known = ", ".join(sorted(registry.models)) or "none installed"
        raise ConfigError(f"model.name: required (use --model NAME); known models: {known}")
    opt_name = raw["optimizer"].setdefault("name", "adamw")
    task_name = raw["task"].setdefault("name", "lm")
    for field, lookup, name in (
        ("model.name", registry.model_spec, model_name),
        ("optimizer.name", registry.optimizer_spec, opt_name),
        ("task.name", registry.task_spec, task_name),
    ):
        try:
            lookup(str(name))
        except PluginError as e:
            raise ConfigError(f"{field}: {e}") from None
    cls = concrete_class(registry, str(model_name), str(opt_name), str(task_name))
    raw["model"] = apply_presets(raw["model"], registry)
    try:
        cfg = cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, cls)) from None
    tok = cfg.data.tokenizer
    spec = registry.model_spec(cfg.model.name)
    if cfg.on_task:
        given = [f"data.{k}" for k in ("train", "val") if getattr(cfg.data, k) is not None] + (["data.tokenizer"] if tok != "auto" else [])
        if given:
            raise ConfigError(f"{given[0]}: task {cfg.task.name!r} generates its own sequences and vocabulary; unset {' and '.join(given)} "
                              "(or train with task.name=lm)")
    elif tok != "auto":
        try:
            registry.tokenizer_spec(tok)
        except PluginError as e:
            raise ConfigError(f"data.tokenizer: {e}") from None
        if not spec.accepts(tok):
            raise ConfigError(f"data.tokenizer: model {cfg.model.name!r} supports {', '.join(spec.tokenizers)}, got {tok!r}")
    if cfg.train.compile and not registry.model_spec(cfg.model.name).supports_compile:
        raise ConfigError(
            f"train.compile: model {cfg.model.name!r} declares that it cannot be compiled "
            "(its ModelSpec has supports_compile=False); set train.compile=false"
        )
    return cfg


def apply_presets(model_raw: dict[str, Any], registry: "Registry") -> dict[str, Any]:
    spec = registry.model_spec(model_raw["name"])
    preset = model_raw.get("preset")
    if preset in (None, ""):
        return model_raw
    if not isinstance(preset, str):
        raise ConfigError(f"model.preset: expected a string like 'a+b', got {preset!r}")
    merged: dict[str, Any] = {}
    for name in [p.strip() for p in preset.split("+")]:
        if name not in spec.presets:
            known = ", ".join(spec.presets) or "none"
            raise ConfigError(f"model.preset: unknown preset {name!r} of model {spec.name!r}; known: {known}")
        merged.update(spec.presets[name])
    return {**merged, **model_raw}


def format_validation_error(e: ValidationError, cls: type[BaseModel]) -> str:
    """One line: ``path: expected <type>, got <value> (<pydantic's reason>)`` per error."""
    parts = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        path = ".".join(loc) or "(top level)"
        given = err.get("input")
        if err["type"] == "extra_forbidden":
            fields = _fields_at(cls, loc[:-1])
            known = f"; known fields: {', '.join(fields)}" if fields else ""
            parts.append(f"{path}: unknown field (given {given!r}){known}")
            continue
        if err["type"] == "missing":
            parts.append(f"{path}: required field missing (expected {_expected(cls, loc)})")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("value_error", "assertion_error"):
            parts.append(f"{path}: {msg}")
        else:
            parts.append(f"{path}: expected {_expected(cls, loc)}, got {given!r} ({msg})")
    return "; ".join(parts)


def _field(node: Any, part: str):
    """The field of model class ``node`` that input key ``part`` validates (its name or an alias)."""
    fields = getattr(node, "model_fields", None) or {}
    if part in fields:
        return fields[part]
    for f in fields.values():
        choices = getattr(f.validation_alias, "choices", None) or [f.validation_alias]
        if part in choices:
            return f
    return None


def _fields_at(cls: type[BaseModel], loc: list[str]) -> list[str]:
    node: Any = cls
    for part in loc:
        field = _field(node, part)
        if field is None:
            return []
        node = field.annotation
    return sorted(getattr(node, "model_fields", {}))


def _expected(cls: type[BaseModel], loc: list[str]) -> str:
    node: Any = cls
    field = None
    for part in loc:
        found = _field(node, part)
        if found is None:  # e.g. a list index: describe the field that holds it
            break
        field = found
        node = field.annotation
    if field is None:
        return "a valid value"
    ann = field.annotation
    text = getattr(ann, "__name__", None) if isinstance(ann, type) else None
    text = text or str(ann).replace("typing.", "")
    bounds = [f"{k} {getattr(m, k)}" for m in field.metadata for k in ("gt", "ge", "lt", "le") if getattr(m, k, None) is not None]
    return text + (f" ({', '.join(bounds)})" if bounds else "")

