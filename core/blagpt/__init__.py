"""blagpt: train language-model architectures installed as plugins, and compare them fairly.

The public API for plugin authors is what this module exports; everything else is internal.
Names are imported on first use, so ``blagpt --help`` does not pay for pydantic or torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Batch": "specs",
    "BuildContext": "specs",
    "LossOutput": "specs",
    "ModelConfig": "specs",
    "ModelSpec": "specs",
    "OptimizerConfig": "specs",
    "OptimizerSpec": "specs",
    "BlagptError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "hookimpl": "hookspecs",
    "param_groups": "builtins",
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
    from .builtins import param_groups
    from .errors import BlagptError, ConfigError, DataError
    from .hookspecs import hookimpl
    from .specs import Batch, BuildContext, LossOutput, ModelConfig, ModelSpec, OptimizerConfig, OptimizerSpec
