"""blagpt: train language-model architectures installed as plugins, and compare them fairly.

The public API is what this module exports (for plugin authors: the specs, ``Tokenizer``,
``hookimpl``, ``param_groups`` and the errors; for scripts: ``train(cfg)``), plus two public modules:
``blagpt.nn`` (optional building blocks plugins share) and ``blagpt.testing`` (the conformance kit).
Everything else is internal; its layout shows the core's parts:

- ``blagpt.plugin``: the plugin contract (hookspecs, specs, the registry, the built-in plugin);
- ``blagpt.config``: the run config schema; ``blagpt.data``: tokenizers, shards, loaders;
- ``blagpt.run``: one run (its folder, the trainer, checkpoints, MLflow tracking, sampling);
- ``blagpt.compare``: many runs (bench, ablate, compare, the leaderboard);
- ``blagpt.cli``: the ``blagpt`` command.

Names are imported on first use, so ``blagpt --help`` does not pay for pydantic or torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Batch": "plugin.specs",
    "BuildContext": "plugin.specs",
    "LossOutput": "plugin.specs",
    "ModelConfig": "plugin.specs",
    "ModelSpec": "plugin.specs",
    "OptimizerConfig": "plugin.specs",
    "OptimizerSpec": "plugin.specs",
    "TokenizerSpec": "plugin.specs",
    "Task": "plugin.specs",
    "TaskConfig": "plugin.specs",
    "TaskSequences": "plugin.specs",
    "TaskSpec": "plugin.specs",
    "Tokenizer": "data.tokenizers",
    "BlagptError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "hookimpl": "plugin.hookspecs",
    "param_groups": "plugin.builtins",
    "train": "run.trainer",
    "TrainResult": "run.trainer",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'blagpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .plugin.builtins import param_groups
    from .errors import BlagptError, ConfigError, DataError
    from .plugin.hookspecs import hookimpl
    from .data.tokenizers import Tokenizer
    from .plugin.specs import Batch, BuildContext, LossOutput, ModelConfig, ModelSpec, OptimizerConfig, OptimizerSpec, TokenizerSpec
    from .plugin.specs import Task, TaskConfig, TaskSequences, TaskSpec
    from .run.trainer import TrainResult, train
