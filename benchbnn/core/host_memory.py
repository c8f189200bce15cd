"""Keeping freed host memory inside the process, so CPU training steps do not page-fault.

A training step on the CPU allocates and frees the same large tensors every step (activations
saved for the backward pass, their gradients, convolution buffers). PyTorch's CPU allocator
takes them from the C library's ``malloc``; glibc serves a block above its mmap threshold (128
KiB at first, raised by the blocks freed, at most 32 MiB) with fresh pages from the kernel and
gives them back when it is freed (``munmap``, or trimming the heap's top), so the next step's
tensors land on new pages again, and the kernel zero-fills each page on its first write (a minor
page fault). Measured on a bare compiled BinaryNet loop at width 0.25, batch 50, 2 threads:
4,100 to 6,300 faults and 56 to 62 ms a step, against none and 49 to 50 ms with the memory kept
(width 1.0: 17,152 faults and 613 ms against none and 589 ms). In the engine the gain is mostly
in evaluation and in the first epoch (docs/speed.md, "Freed host memory, measured").

:func:`retain_freed_memory` raises glibc's mmap threshold and trim threshold (``mallopt``), so a
freed block stays in ``malloc``'s heap and the next step's allocation of the same size reuses it.
The process keeps, until it exits, the largest memory its steps needed. The setting is
process-wide and cannot be undone exactly (glibc's thresholds stop adapting once set); it is
skipped where the C library is not glibc, and ``BENCHBNN_HOST_MEMORY=release`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

from benchbnn.core.errors import BenchbnnError

__all__ = [
    "HOST_MEMORY_ENV",
    "HOST_MEMORY_MODES",
    "RETAINED",
    "host_memory_mode",
    "retain_freed_memory",
]

#: the environment variable choosing what the engine does with freed host memory, its choices
#: ("retain", the default; "release": leave the C library's own policy) and the tag value of a
#: process where :func:`retain_freed_memory` took effect
HOST_MEMORY_ENV = "BENCHBNN_HOST_MEMORY"
HOST_MEMORY_MODES = ("retain", "release")
RETAINED = "retained"

# mallopt's parameter numbers (glibc's malloc.h) and the values set: a block up to 1 GiB comes
# from the heap, and the heap's free top is returned to the kernel only beyond 2 GiB - 1 (the
# largest value mallopt's int takes)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = (1 << 31) - 1

_state: dict[str, str] = {}


def host_memory_mode() -> str:
    """The mode ``$BENCHBNN_HOST_MEMORY`` asks for ("retain" when unset or empty).

    Raises BenchbnnError naming the choices for any other value.
    """
    value = os.environ.get(HOST_MEMORY_ENV, "").strip().lower() or "retain"
    if value not in HOST_MEMORY_MODES:
        raise BenchbnnError(
            f"{HOST_MEMORY_ENV} must be one of {', '.join(HOST_MEMORY_MODES)}, got "
            f"{os.environ[HOST_MEMORY_ENV]!r} (unset it to keep freed memory for reuse)"
        )
    return value


def _glibc() -> ctypes.CDLL | None:
    """glibc's shared library, or None where the C library is another one."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> str:
    """Keep freed host memory in this process for reuse; say what the process does now.

    Returns :data:`RETAINED` once the thresholds are set (the first call sets them, later calls
    only report; a process that retained memory once keeps doing so, whatever
    ``$BENCHBNN_HOST_MEMORY`` says later), else why memory is still released: "released
    (BENCHBNN_HOST_MEMORY=release)", "released (not glibc)" or "released (mallopt refused
    ...)". Raises BenchbnnError for a bad ``$BENCHBNN_HOST_MEMORY`` (see
    :func:`host_memory_mode`), before changing anything.
    """
    mode = host_memory_mode()
    if _state.get("outcome") == RETAINED:
        return RETAINED
    if mode == "release":
        return f"released ({HOST_MEMORY_ENV}=release)"
    if "outcome" not in _state:
        libc = _glibc()
        if libc is None:
            _state["outcome"] = "released (not glibc)"
        else:
            refused = [
                name
                for name, parameter, value in (
                    ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
                    ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
                )
                if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1
            ]
            _state["outcome"] = (
                f"released (mallopt refused {', '.join(refused)})" if refused else RETAINED
            )
    return _state["outcome"]
