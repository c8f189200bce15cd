"""benchbnn: a benchmark of optimizers for binarized neural networks.

The stable Python API::

    import benchbnn
    spec = benchbnn.get_optimizer("bop2ndorder")
    opt = spec.build(binary_params, real_params, gamma=1e-7)
    model = benchbnn.get_architecture("binarynet").build(num_classes=10)
    binary, real = benchbnn.split_parameters(model)
    ds = benchbnn.get_dataset("digits").load(split="train")

Heavier pieces (engine, compare, tuning) are imported on first use so that ``import benchbnn``
and the command line start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

from benchbnn.core.config import RunConfig
from benchbnn.core.errors import (
    BenchbnnError,
    DataError,
    HyperparameterError,
    PluginError,
    RunFailed,
    RunStopped,
    UnknownNameError,
    UnsupportedInputError,
)
from benchbnn.core.names import VERSION
from benchbnn.core.plugins import (
    get_architecture,
    get_dataset,
    get_optimizer,
    get_registry,
    get_suite,
    hookimpl,
    list_architectures,
    list_datasets,
    list_optimizers,
    list_suites,
    register_plugin,
    unregister_plugin,
)
from benchbnn.core.specs import (
    ArchitectureSpec,
    DatasetSpec,
    HParam,
    OptimizerSpec,
    RunContext,
    SuiteSpec,
)

__version__ = VERSION

#: The spec of an optimizer class, derived from its declaration (what a plugin's
#: ``benchbnn_optimizers`` hook returns: ``[benchbnn.optimizer_spec(MyOptimizer)]``).
optimizer_spec = OptimizerSpec.from_class

# name -> module that defines it; resolved lazily by __getattr__ below.
_LAZY = {
    "split_parameters": "benchbnn.core.binary",
    "sgn0": "benchbnn.core.binary",
    "set_latent_mode": "benchbnn.core.binary",
    "set_binary_kernel": "benchbnn.core.binary",
    "parameter_breakdown": "benchbnn.core.binary",
    "train": "benchbnn.train.engine",
    "best_trial_hparams": "benchbnn.tune.tuning",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'benchbnn' has no attribute {name!r}")


__all__ = [
    "ArchitectureSpec",
    "BenchbnnError",
    "DataError",
    "DatasetSpec",
    "HParam",
    "HyperparameterError",
    "OptimizerSpec",
    "PluginError",
    "RunConfig",
    "RunContext",
    "RunFailed",
    "RunStopped",
    "SuiteSpec",
    "UnknownNameError",
    "UnsupportedInputError",
    "__version__",
    "get_architecture",
    "get_dataset",
    "get_optimizer",
    "get_registry",
    "get_suite",
    "hookimpl",
    "list_architectures",
    "list_datasets",
    "list_optimizers",
    "list_suites",
    "optimizer_spec",
    "register_plugin",
    "unregister_plugin",
    *_LAZY,
]
