"""Facts about the machine a figure was measured on: CPU model, usable cores, load."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


#: CPU feature flags that execute bfloat16 arithmetic natively (x86 ``/proc/cpuinfo`` "flags",
#: Arm "Features"): AVX-512 BF16 dot products, AMX tiles, Arm BF16.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16_cpu(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (one of :data:`NATIVE_BF16_FLAGS`).

    Without such instructions PyTorch emulates bfloat16 on the CPU, slower than float32. Reads
    :func:`cpu_flags` unless ``flags`` is given; False where the flags cannot be read.
    """
    found = cpu_flags() if flags is None else flags
    return any(flag in found for flag in NATIVE_BF16_FLAGS)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where the system has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # Windows
        return None
