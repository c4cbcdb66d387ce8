"""blagpt: train language-model architectures installed as plugins, and compare them fairly.

The public API for plugin authors is what this module exports; everything else is internal.
"""

from .builtins import param_groups
from .errors import BlagptError, ConfigError, DataError
from .hookspecs import hookimpl
from .specs import (
    Batch,
    BuildContext,
    LossOutput,
    ModelConfig,
    ModelSpec,
    OptimizerConfig,
    OptimizerSpec,
)

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BlagptError",
    "BuildContext",
    "ConfigError",
    "DataError",
    "LossOutput",
    "ModelConfig",
    "ModelSpec",
    "OptimizerConfig",
    "OptimizerSpec",
    "hookimpl",
    "param_groups",
    "__version__",
]
