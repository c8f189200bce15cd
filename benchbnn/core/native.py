"""C++ kernels compiled for this CPU on first use (torch C++ extensions), with a clean fallback.

A :class:`NativeKernels` names one C++ source file (usually beside the Python module that calls
it) and builds it with :func:`torch.utils.cpp_extension.load` the first time a process asks
for it (:meth:`NativeKernels.module`): about 20 to 30 s once, then loaded from torch's extension
cache (the folder ``TORCH_EXTENSIONS_DIR`` chooses). The build name hashes the source, the
compiler flags, torch's version and the CPU's model and flags, so a cache shared by machines
never loads code built for another CPU (the flags include ``-march=native``). Where the build
fails (no C++ compiler, headers or OpenMP) the module is None, one warning says what failed and
what runs instead, and the caller falls back to its portable path.

Two users: the XNOR-popcount convolution (:mod:`benchbnn.core.popcount`) and optimizer rules
that ship a hand-written CPU kernel (``BinaryOptimizer.native_kernels``, see
:mod:`benchbnn.optim.base`). Kernels are only tried on Linux (:func:`native_builds_here`).
"""

from __future__ import annotations

import hashlib
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import torch

from benchbnn.core.machine import cpu_flags, cpu_model

__all__ = ["BASE_FLAGS", "FLOAT_EXACT_FLAGS", "NativeKernels", "native_builds_here"]

#: Optimization for this CPU and OpenMP (without ``-fopenmp`` ATen's ``parallel_for`` compiles
#: to a single-threaded loop in the extension).
BASE_FLAGS = ("-O3", "-march=native", "-fopenmp")
#: For float kernels that must round like PyTorch, one IEEE 754 rounding per operation: no
#: fused multiply-adds (``-ffp-contract=off``); ``sqrt`` without ``errno`` and no trap
#: semantics, so that the loops vectorize (neither changes a result; ``-ffast-math``, which
#: would, is never used).
FLOAT_EXACT_FLAGS = (*BASE_FLAGS, "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math")


def native_builds_here(system: str | None = None) -> bool:
    """Whether kernels are tried on this system (``sys.platform`` unless given): Linux only,
    where GCC and OpenMP are the norm (elsewhere every caller keeps its portable path)."""
    return (sys.platform if system is None else system).startswith("linux")


class NativeKernels:
    """One C++ source of kernels, built for this CPU the first time :meth:`module` is called.

    Args:
        source: path of the ``.cpp`` file (a torch extension: ``#include <torch/extension.h>``
            and a ``PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)`` block).
        name: short name of the kernels (letters, digits, underscores), part of the build name.
        purpose: what they compute, for the warning (e.g. "md-tanh's CPU step").
        fallback: what runs where they cannot be built, for the warning.
        flags: compiler flags (default :data:`FLOAT_EXACT_FLAGS`).
        applies: an extra condition for trying the build at all, asked on the first
            :meth:`module` call (e.g. a CPU flag); None: always on Linux.
    """

    def __init__(
        self,
        source: str | Path,
        name: str,
        *,
        purpose: str,
        fallback: str,
        flags: Sequence[str] = FLOAT_EXACT_FLAGS,
        applies: Callable[[], bool] | None = None,
    ) -> None:
        if not (name.isascii() and name.replace("_", "").isalnum()):
            raise ValueError(f"a kernel name is letters, digits and underscores, got {name!r}")
        self.source = Path(source)
        self.name = name
        self.purpose = purpose
        self.fallback = fallback
        self.flags = tuple(flags)
        self.applies = applies

    def __repr__(self) -> str:
        return f"NativeKernels({self.source.name!r}, {self.name!r})"

    def build_name(self) -> str:
        """``benchbnn_<name>_<hash>``: the hash covers the source, the flags, torch's version
        and the CPU's model and flags."""
        digest = hashlib.sha256()
        for part in (self.source.read_bytes(), torch.__version__.encode(), cpu_model().encode()):
            digest.update(part)
        digest.update(" ".join(sorted(cpu_flags())).encode())
        digest.update(" ".join(self.flags).encode())
        return f"benchbnn_{self.name}_{digest.hexdigest()[:16]}"

    def tried_here(self) -> bool:
        """Whether :meth:`module` tries a build on this machine at all."""
        return native_builds_here() and (self.applies is None or self.applies())

    def module(self) -> ModuleType | None:
        """The built extension module, or None where it is not tried or failed to build (after
        one warning per process). Cached: the first call builds or loads it."""
        return _module(self)

    def ready(self) -> bool:
        """Whether the kernels are built here (building them the first time: call it before
        anything is timed)."""
        return self.module() is not None

    def reset(self) -> None:
        """Forget the cached module (tests: the next :meth:`module` builds or loads again)."""
        with _lock:
            _modules.pop(self, None)


#: Built modules (or None), by their NativeKernels (hashed by identity; the entry keeps it).
_modules: dict[NativeKernels, ModuleType | None] = {}
#: One build at a time in a process (threads asking together build once and warn once).
_lock = threading.Lock()


def _module(kernels: NativeKernels) -> ModuleType | None:
    with _lock:
        if kernels not in _modules:
            _modules[kernels] = _build(kernels) if kernels.tried_here() else None
        return _modules[kernels]


def _build(kernels: NativeKernels) -> ModuleType | None:
    try:
        from torch.utils.cpp_extension import load

        module: ModuleType = load(
            kernels.build_name(),
            sources=[str(kernels.source)],
            extra_cflags=list(kernels.flags),
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
        return module
    except Exception as exc:  # a missing compiler, headers or OpenMP: any of them
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(
            f"benchbnn: {kernels.purpose} could not be built ({first[:200]}); {kernels.fallback}",
            RuntimeWarning,
            stacklevel=4,  # _build, _module, module(), then the line that asked for it
        )
        return None
