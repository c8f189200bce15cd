"""Optimizers for binary networks: the base class plugins subclass, its building blocks, schedules.

:mod:`benchbnn.optim.base` holds :class:`BinaryOptimizer` (binary rule and real-valued Adam in one
``torch.optim.Optimizer``, with reference, multi-tensor and compiled implementations) and the small
pieces rules are written with; :mod:`benchbnn.optim.elementary` has float32 ``exp`` and ``tanh``
that eager and compiled code round alike; :mod:`benchbnn.optim.schedules` turns schedule data into
per-step hyperparameter values. Everything a plugin needs is importable from here.
"""

from benchbnn.core.native import NativeKernels
from benchbnn.optim import schedules  # noqa: F401  (installs the reader of default schedules)
from benchbnn.optim.base import (
    ADAM_BUFFERS,
    FORWARD_MODES,
    IMPLEMENTATIONS,
    BinaryOptimizer,
    ClosureResult,
    EvaluationSamples,
    RunContext,
    adam_,
    adam_foreach_,
    adam_hparams,
    adam_kwargs,
    adam_step_size,
    compile_unavailable_reason,
    counter_uniform,
    ema_,
    ema_convex_,
    ema_convex_foreach_,
    ema_foreach_,
    flip_,
    flip_above_foreach_,
    restoring,
    sqrt_rn,
    sqrt_rn_foreach,
    state_dtype,
    sum_counts,
)
from benchbnn.optim.elementary import exp_nonpositive, tanh32

__all__ = [
    "ADAM_BUFFERS",
    "FORWARD_MODES",
    "IMPLEMENTATIONS",
    "BinaryOptimizer",
    "ClosureResult",
    "EvaluationSamples",
    "NativeKernels",
    "RunContext",
    "adam_",
    "adam_foreach_",
    "adam_hparams",
    "adam_kwargs",
    "adam_step_size",
    "compile_unavailable_reason",
    "counter_uniform",
    "ema_",
    "ema_convex_",
    "ema_convex_foreach_",
    "ema_foreach_",
    "exp_nonpositive",
    "flip_",
    "flip_above_foreach_",
    "restoring",
    "sqrt_rn",
    "sqrt_rn_foreach",
    "state_dtype",
    "sum_counts",
    "tanh32",
]
