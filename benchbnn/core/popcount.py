"""The exact binary convolution by XNOR and population count (a C++ extension built on first use).

With ``x`` and ``w`` exactly -1 or +1, a product is +1 where they agree and -1 where they
differ, so a tap's sum over ``C`` input channels is ``C - 2 * popcount(bits(x) xor bits(w))``
with one bit per value (1 for +1); taps in the zero padding add nothing and are skipped. Every
partial sum is an integer below 2**24, so the float32 result is BIT-IDENTICAL to
``F.conv2d`` (as the int8 convolution's is, :mod:`benchbnn.core.int8`). One 512-bit
AVX512-VPOPCNTDQ instruction counts 512 products, where one VNNI instruction of oneDNN's int8
convolution multiplies 64 pairs: BinaryNet's five binary convolutions (batch 50, 2 threads,
packing of input and weight included) take 21.9 ms against 69.5 ms with oneDNN int8 at
width 1.0, 2.6 against 5.7 ms at width 0.25 (AMD Zen 4). CPUs with AVX2 but no vector
population count (AMD Zen 3, Intel before Ice Lake) count the bits of each byte by two table
lookups (``vpshufb``) and sum the counts in byte lanes: on a Zen 3 the five convolutions take
66.2 against 364.6 ms in float32 at width 1.0, 9.4 against 41.8 ms at width 0.25.

The kernel (``popcount.cpp`` beside this file) is compiled by
:func:`torch.utils.cpp_extension.load` the first time a process needs it, with
``-march=native`` (about 25 s once; then loaded from torch's extension cache, whose folder
``TORCH_EXTENSIONS_DIR`` chooses), under a name that includes the source, torch's version and
the CPU, so that a cache shared between machines never runs code built for another CPU. It is
only tried on Linux x86-64 CPUs with AVX512-VPOPCNTDQ or AVX2 (:func:`popcount_pays`); where
the build fails (no C++ compiler, say) the int8 operator falls back to oneDNN's kernel, with one
warning, and the results are the same bits.
"""

from __future__ import annotations

import platform
from pathlib import Path
from types import ModuleType

import torch

from benchbnn.core.machine import cpu_flags
from benchbnn.core.native import BASE_FLAGS, NativeKernels, native_builds_here

__all__ = [
    "conv2d_popcount",
    "popcount_applies",
    "popcount_pays",
    "popcount_ready",
]

SOURCE = Path(__file__).with_name("popcount.cpp")

#: the CPU flag of the vector population count the kernel's AVX-512 path is written for
POPCOUNT_FLAG = "avx512_vpopcntdq"
#: the CPU flags (``/proc/cpuinfo``) of the kernel's vector paths: AVX512-VPOPCNTDQ, or AVX2
#: (population counts by table lookup, for CPUs without a vector population count)
POPCOUNT_FLAGS = (POPCOUNT_FLAG, "avx2")


def popcount_pays(flags: frozenset[str] | None = None, system: str | None = None) -> bool:
    """Whether to try the kernel here: Linux on x86-64 with one of :data:`POPCOUNT_FLAGS` (read
    from ``/proc/cpuinfo`` and ``platform`` unless given)."""
    found = cpu_flags() if flags is None else flags
    return (
        native_builds_here(system)
        and platform.machine().lower() in ("x86_64", "amd64")
        and any(flag in found for flag in POPCOUNT_FLAGS)
    )


#: The kernel's source and build (integer arithmetic only: no float flags needed).
KERNELS = NativeKernels(
    SOURCE,
    "popcount",
    purpose="the popcount convolution",
    fallback="binary convolutions use oneDNN's int8 kernel instead (the same results)",
    flags=BASE_FLAGS,
    applies=popcount_pays,
)


def _extension() -> ModuleType | None:
    """The built kernel, or None (after one warning) where it cannot be built here."""
    return KERNELS.module()


def popcount_ready() -> bool:
    """Whether the kernel is built here (building or loading it the first time: call it before
    anything is timed, as the engine does, so that a one-time build is not counted as a step)."""
    return KERNELS.ready()


def popcount_applies(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """Whether :func:`conv2d_popcount` computes this convolution: no groups, a CPU tensor,
    and the kernel built here (building it the first time)."""
    return groups == 1 and x.device.type == "cpu" and popcount_ready()


def conv2d_popcount(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, dilation)`` for float32 ``x`` (N, C, H, W)
    and ``weight`` (C_out, C, kH, kW) of exactly -1 or +1 (not checked), bit for bit; zero
    padding of ``padding`` per side. Returns (N, C_out, H_out, W_out) float32 in channels_last
    memory. Call only where :func:`popcount_applies`."""
    extension = _extension()
    assert extension is not None, "conv2d_popcount called where popcount_applies is False"
    nhwc = x.permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        nhwc = nhwc.contiguous()
    out: torch.Tensor = extension.conv2d_popcount(
        nhwc, weight.contiguous(), stride[0], stride[1], padding[0], padding[1], dilation[0],
        dilation[1],
    )  # fmt: skip
    return out.permute(0, 3, 1, 2)
