"""Exact integer forward passes for binary layers (oneDNN int8 convolutions on the CPU).

A binary convolution whose input and weight are both exactly -1 or +1 has integer partial sums
whose magnitude is at most ``C_in * kH * kW`` (far below 2**24), so every float32 partial sum is
exact and the float32 result does not depend on the summation order. An 8-bit integer
convolution with 32-bit accumulation computes the same integers, hence BIT-IDENTICAL outputs,
several times faster on CPUs with VNNI dot-product instructions (AVX512-VNNI, AVX-VNNI).

The input goes to oneDNN as unsigned 8-bit codes ``c = x + 1`` (``-1 -> 0``, ``+1 -> 2``) with zero
point 0, the weight as signed 8-bit ``-1 / +1``, both with scale 1. The padding is written into
the codes (code 1, ``x = 0``, where ``F.conv2d`` pads ``x`` with 0) and oneDNN convolves without
padding of its own, so every tap of every output position reads a code ``x + 1`` and the integer
result is ``conv(x, W) + S``, ``S`` the sum of the output channel's weights, the same everywhere:
oneDNN subtracts it as a negative bias, with no pass of its own over the output. Every term is
an integer below 2**24, so the float32 result is exact. (An earlier version let oneDNN pad with
code 0 and subtracted the padding's term, a per-call convolution of ones and a pass over the
output: 0.34 ms more of a width-0.25 BinaryNet step's 5.5 ms of binary convolutions.) Zero
point 0 is for speed: oneDNN refuses a raw int8 weight and the weight changes every step, so
it is prepacked on every call, and with a source zero point the prepacking also computes a
zero-point compensation, which made it 4x to 5x slower (7.7 against 1.4 to 1.9 ms for a 512 ->
512 channel 3x3 weight, 2 threads; 14 ms of a width-1.0 BinaryNet step before). PyTorch caches
the packed format per weight shape without the zero point, so whichever zero point a process
prepacks a shape with first decides that shape's format (and speed) for the whole process;
benchbnn always uses 0.

The whole int8 convolution is one operator, ``torch.ops.benchbnn.conv2d_int8``, opaque to
torch.compile, so that the compiled graph around it is the float convolution's and fuses the
same way (with the conversions traced into the graph, inductor fused them with the batch-norm
kernels before and rounded a running mean differently).

Where the XNOR-popcount kernel is built (:mod:`benchbnn.core.popcount`: x86-64 CPUs with
AVX512-VPOPCNTDQ or AVX2), the operator computes ungrouped convolutions with it instead of
oneDNN: the same integers, so the same bits, two to three times faster than oneDNN's int8 with
VNNI, four to six times faster than float32 on an AVX2 CPU without VNNI. "int8" names this
exact integer forward, whichever kernel computes it.

Only the forward pass is integer. :class:`Int8BinaryConv2d`'s backward is the float one autograd
runs for ``F.conv2d`` (``aten.convolution_backward`` on the saved float +-1 input and weight), so
gradients are bit-identical to the float path's too.

:data:`BINARY_KERNELS` are the choices of the engine's ``binary_kernel`` switch: ``"auto"`` (int8
where it applies, on CPUs where oneDNN's int8 pays, :func:`int8_pays`, or the popcount kernel
does, :func:`benchbnn.core.popcount.popcount_pays`), ``"int8"`` (where it applies; refused where
the operators are missing) and ``"float"`` (never).
"""

from __future__ import annotations

import platform
from typing import Any

import torch

from benchbnn.core.errors import BenchbnnError
from benchbnn.core.machine import cpu_flags
from benchbnn.core.names import BINARY_KERNELS, TAG_BINARY_KERNEL
from benchbnn.core.popcount import conv2d_popcount, popcount_applies, popcount_pays

__all__ = [
    "BINARY_KERNELS",
    "TAG_BINARY_KERNEL",
    "binary_conv2d_int8",
    "conv2d_int8",
    "int8_available",
    "int8_pays",
    "resolve_binary_kernel",
]

#: CPU flags (``/proc/cpuinfo``) of the 8-bit dot-product instructions that make oneDNN's int8
#: convolution faster than its float32 one (measured here with AVX512-VNNI, BinaryNet's layers
#: at width 0.25, batch 50: 3.3x to 3.7x for the convolution alone, 1.7x to 2.2x with the input
#: conversion and the weight prepacking)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: processor architectures (``platform.machine()``) of those instructions
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


def int8_available() -> bool:
    """Whether this torch has oneDNN (mkldnn) and its quantized convolution operators."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.onednn
    return hasattr(ops, "qconv_prepack") and hasattr(ops, "qconv2d_pointwise")


def int8_pays(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """Whether oneDNN's int8 convolution beats its float32 one here: an x86 CPU with one of
    :data:`VNNI_FLAGS`. Reads :func:`benchbnn.core.machine.cpu_flags` and
    ``platform.machine()`` unless given."""
    arch = (platform.machine() if machine is None else machine).lower()
    found = cpu_flags() if flags is None else flags
    return arch in X86_MACHINES and any(flag in found for flag in VNNI_FLAGS)


def resolve_binary_kernel(
    kernel: str, device: torch.device, flags: frozenset[str] | None = None
) -> str:
    """``"int8"`` or ``"float"``: the kernel binary layers use for ``kernel`` on ``device``.

    ``kernel`` is one of :data:`BINARY_KERNELS`. "auto" gives "int8" on a CPU device where the
    operators exist (:func:`int8_available`) and an integer kernel pays: oneDNN's
    (:func:`int8_pays`) or XNOR-popcount (:func:`benchbnn.core.popcount.popcount_pays`; ``flags``
    as there), else "float"; "int8" gives "int8" on a CPU with the operators; "float" gives
    "float".
    Raises BenchbnnError for an unknown ``kernel``, and for "int8" on another device or where
    the operators are missing.
    """
    if kernel not in BINARY_KERNELS:
        raise BenchbnnError(
            f"binary_kernel must be one of {', '.join(BINARY_KERNELS)}, got {kernel!r}"
        )
    if kernel == "float":
        return "float"
    usable = device.type == "cpu" and int8_available()
    if kernel == "auto":
        return "int8" if usable and (int8_pays(flags) or popcount_pays(flags)) else "float"
    if device.type != "cpu":
        raise BenchbnnError(
            f"binary_kernel int8 runs on the CPU (oneDNN), not on {device.type}; use "
            f"--binary-kernel auto or float"
        )
    if not usable:
        raise BenchbnnError(
            f"binary_kernel int8 needs torch built with oneDNN and its quantized convolution "
            f"(torch.ops.onednn.qconv2d_pointwise), which this torch {torch.__version__} lacks; "
            f"use --binary-kernel auto or float"
        )
    return "int8"


def _pair(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


def _channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is channels_last and not also contiguous (as oneDNN's float convolution
    decides the memory format of its output)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _output_channels_last(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``F.conv2d(x, weight)``'s output is channels_last: either operand is (the one
    rule the operator and its fake implementation both follow)."""
    return _channels_last(x) or _channels_last(weight)


def conv2d_int8(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, dilation, groups)`` computed in int8.

    ``x`` (N, C_in, H, W) and ``weight`` (C_out, C_in / groups, kH, kW) are float32 tensors whose
    values are exactly -1 or +1 (not checked: other values give wrong results); ``padding`` is
    numeric (zeros). Returns float32 (N, C_out, H_out, W_out), equal bit for bit to the float
    convolution, in the memory format ``F.conv2d`` gives for ``x`` (channels_last for a
    channels_last input, else contiguous). One opaque operator (``torch.ops.benchbnn.conv2d_int8``)
    for torch.compile, so that the graph around it is the float convolution's graph and fuses
    the same way.
    """
    return torch.ops.benchbnn.conv2d_int8(
        x, weight, _pair(stride), _pair(padding), _pair(dilation), int(groups)
    )


#: the per-tensor scale (1) and zero point (0) of the weight and input codes
_SCALES = torch.ones(1)
_ZERO_POINTS = torch.zeros(1, dtype=torch.int64)


def _codes(x: torch.Tensor, padding: list[int]) -> torch.Tensor:
    """``x + 1`` as uint8 (N, C, H + 2 pH, W + 2 pW), channels_last, padded with code 1.

    The codes are written as int8 (-1 and +1, exact) into a zeroed buffer, then the whole buffer
    gets 1 added in uint8: -1 and +1 read as uint8 are 255 and 1, and the addition wraps modulo
    256 to 0 and 2, and the padding's 0 becomes 1. Measured here for 50x32x32x32 values (2
    threads): 0.09 ms for the unpadded conversion, against 0.70 ms for ``x.ge(0)`` doubled, 0.72
    for ``(x + 1)`` as uint8 and 0.35 for ``x.gt(0)``."""
    n, c, h, w = x.shape
    ph, pw = padding
    codes = torch.empty(
        (n, c, h + 2 * ph, w + 2 * pw),
        dtype=torch.int8,
        device=x.device,
        memory_format=torch.channels_last,
    )
    if ph or pw:
        codes.zero_()
    codes[:, :, ph : ph + h, pw : pw + w].copy_(x)
    return codes.view(torch.uint8).add_(1)


def _conv2d_onednn(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """The convolution by oneDNN's int8 kernel (see the module docstring)."""
    # one scale and zero point for the whole weight (per-tensor): oneDNN reads per-channel ones
    # element by element (an .item() per output channel and call, 416 per BinaryNet step at
    # width 0.25), and per-tensor prepacking is faster (2.87 against 3.04 ms for a 64 -> 128
    # channel layer at 15x15, batch 50, 2 threads); the result is the same bit for bit
    codes = _codes(x, padding)
    no_padding = [0, 0]
    packed = torch.ops.onednn.qconv_prepack(
        weight.to(torch.int8), _SCALES, 1.0, 0, stride, no_padding, dilation, groups,
        list(codes.shape),
    )  # fmt: skip
    # every tap read a code x + 1: the weights' sum is in every output, and oneDNN subtracts it
    bias = -weight.sum((1, 2, 3), dtype=torch.float32)
    return torch.ops.onednn.qconv2d_pointwise(
        codes, 1.0, 0, packed, _SCALES, _ZERO_POINTS, bias, stride, no_padding, dilation, groups,
        1.0, 0, torch.float32, "none", [], "",
    )  # fmt: skip


@torch.library.custom_op("benchbnn::conv2d_int8", mutates_args=())
def _conv2d_int8_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """The operator behind :func:`conv2d_int8` (lists of two ints for the geometry)."""
    if popcount_applies(x, weight, groups):
        out = conv2d_popcount(x, weight, stride, padding, dilation)
    else:
        out = _conv2d_onednn(x, weight, stride, padding, dilation, groups)
    if _output_channels_last(x, weight):
        return out
    # standard contiguous strides, also where dimensions of size 1 let oneDNN's output pass as
    # contiguous with other strides (a 1x1 output map): later kernels choose their path by them
    return out.contiguous().view(-1).view(out.shape)


@_conv2d_int8_op.register_fake
def _(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """Shape and strides of :func:`_conv2d_int8_op`'s output, for torch.compile's tracing."""
    sides = [
        (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i]
        + 1
        for i in range(2)
    ]
    layout = torch.channels_last if _output_channels_last(x, weight) else torch.contiguous_format
    shape = (x.shape[0], weight.shape[0], *sides)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)


class Int8BinaryConv2d(torch.autograd.Function):
    """Forward :func:`conv2d_int8` of +-1 ``x`` and ``weight``; backward the float convolution's.

    The backward is ``aten.convolution_backward``, the operator autograd differentiates
    ``F.conv2d`` with, on the saved float tensors, so ``grad_input`` and ``grad_weight`` are
    bit-identical to the float path's.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (_pair(stride), _pair(padding), _pair(dilation), int(groups))
        return conv2d_int8(x, weight, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups, mask
        )
        return grad_x, grad_w, None, None, None, None


def binary_conv2d_int8(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> torch.Tensor:
    """:class:`Int8BinaryConv2d` applied: differentiable, bit-identical to ``F.conv2d`` for +-1
    float32 ``x`` and ``weight`` (shapes and memory format as :func:`conv2d_int8`). Takes the
    arguments of ``F.conv2d``; ``bias`` must be None (binary layers add theirs afterwards)."""
    if bias is not None:
        raise ValueError("binary_conv2d_int8 takes no bias; add it to the output")
    return Int8BinaryConv2d.apply(x, weight, stride, padding, dilation, groups)
