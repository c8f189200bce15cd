"""The host side of every optimizer: binary groups and real-valued Adam groups in one object.

A binary-network optimizer updates two kinds of parameters at once. Binary weights follow the
optimizer's own rule; every real-valued parameter (batch norm, full-precision layers, scales)
follows Adam, the role larq's CaseOptimizer plays. :class:`BinaryOptimizer` is a
``torch.optim.Optimizer`` that holds both kinds and knows no optimizer by name: a plugin
subclasses it, declares once (as class attributes) its name, its rule's hyperparameters, the
real-valued side's, its per-weight state buffers, how binary layers use its weights (``forward``)
and whether its step needs a closure, and supplies the per-tensor rule
(:meth:`BinaryOptimizer.update`); the declaration is checked when the class is defined, and the
plugin's spec is derived from it (``benchbnn.optimizer_spec(cls)``). The base class then provides

* three interchangeable implementations of the same step, chosen by ``implementation``:
  ``"reference"`` runs the rule eagerly one tensor at a time (the readable specification),
  ``"foreach"`` runs the plugin's multi-tensor ``update_foreach`` (or the reference loop when a
  plugin has none), and ``"compiled"`` runs the rule through ``torch.compile`` with dynamic
  shapes on flattened tensors, so one compilation serves every tensor size and the whole rule
  becomes one fused pass over memory;
* the flip statistics (:attr:`flip_count`, :attr:`flip_ratio`) produced by the rule itself,
  kept as device tensors so that reading them (and syncing a GPU) is the caller's choice;
* state that round-trips through ``state_dict()`` (per-weight buffers, the step counter and any
  extra state such as a random generator);
* float32 state and float32 arithmetic for binary weights of any dtype (:func:`state_dtype`):
  a rule sees float32 copies of float16, bfloat16 and float64 weights and gradients, and the
  +-1 it decides is written back, so flips do not depend on how the weights are stored.

Small building blocks (:func:`ema_`, :func:`flip_`, :func:`counter_uniform`, :func:`adam_`)
are public so that plugins compose their rules from the same pieces.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import platform
import shutil
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from benchbnn.core.binary import sgn0
from benchbnn.core.errors import BenchbnnError, PluginError, did_you_mean, first_line
from benchbnn.core.native import NativeKernels
from benchbnn.core.specs import (
    FORWARD_MODES,
    RESERVED_NAMES,
    HParam,
    RunContext,
    check_forward,
    check_name,
    check_ste_window,
    resolve_hparams,
    validate_hparams,
)

__all__ = [
    "ADAM_BUFFERS",
    "BINARY_STATE_DTYPE",
    "FORWARD_MODES",
    "IMPLEMENTATIONS",
    "BinaryOptimizer",
    "ClosureResult",
    "EvaluationSamples",
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
    "flip_",
    "flip_above_foreach_",
    "in_dtype",
    "restoring",
    "sqrt_rn",
    "sqrt_rn_foreach",
    "state_dtype",
    "sum_counts",
]

IMPLEMENTATIONS = ("reference", "foreach", "compiled")

#: Environment variable that picks the implementation when the constructor is not told.
IMPLEMENTATION_ENV = "BENCHBNN_OPTIMIZER_IMPLEMENTATION"

#: With ``implementation=None`` the compiled path is used from this many weights on. Compiling
#: costs seconds once per process; below this size a step is so cheap that it never pays back.
COMPILE_MIN_WEIGHTS = 1_000_000
#: ... and for fewer weights when the run is long enough: from this many binary weights times
#: optimizer steps on (:attr:`~benchbnn.core.specs.RunContext.total_steps`; only in the engine,
#: which passes a context). Measured on BinaryNet at width 0.25 (649,568 binary weights, 2
#: threads): compiling the step costs 2 to 10 s with a warm inductor cache (13 to 14 s cold) and
#: saves 0.6 to 0.8 ms per step for Bop, 5.7 to 6.3 ms for Bop2ndOrder and 4.9 ms for
#: adam-latent, so the rules with state break even at about 1e9 weight-steps and Bop at about
#: 3e9 warm; this threshold favours the rules that gain most.
COMPILE_MIN_WEIGHT_STEPS = 1_000_000_000

ADAM_BUFFERS = ("exp_avg", "exp_avg_sq")

Rule = Callable[..., Any]


# --- building blocks for update rules --------------------------------------------------------


def ema_(average: torch.Tensor, x: torch.Tensor, rate: Any) -> torch.Tensor:
    """``average <- average + rate * (x - average)`` in place (no bias correction).

    The arithmetic of the Bop and Bop2ndOrder authors and of larq (``m.assign_add(gamma *
    (grad - m))`` in their TensorFlow code): a subtraction, a product and a sum, each rounded
    once, with ``rate`` rounded to the average's dtype first. It equals ``(1 - rate) * average
    + rate * x`` in exact arithmetic but rounds differently, which near a tie moves a flip by a
    step; :func:`ema_convex_` is that other order. Compiled, the rule keeps this rounding on
    CPU (benchbnn pins Inductor's C++ floating-point contraction off; with it on, the product
    and the sum fuse into one multiply-add and ``m`` differs in the last bit for 10-17% of the
    weights). Triton kernels on CUDA do fuse them; ``docs/optimizers.md`` gives the numbers.
    """
    return average.add_((x - average).mul_(rate))


def ema_foreach_(averages: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], rate: float) -> None:
    """:func:`ema_` over lists of tensors with multi-tensor kernels (identical rounding)."""
    averages, xs = list(averages), list(xs)
    diff = torch._foreach_sub(xs, averages)
    torch._foreach_mul_(diff, rate)
    torch._foreach_add_(averages, diff)


def ema_convex_(average: torch.Tensor, x: torch.Tensor, rate: Any) -> torch.Tensor:
    """``average <- (1 - rate) * average + rate * x`` in place, in that order (no correction).

    The other order of :func:`ema_`: scale the average by ``1 - rate`` (computed in Python's
    double precision, then rounded to the average's dtype), add ``rate * x``; three roundings.
    This is the order of PyTorch code written ``average.mul_(1 - rate).add_(x, alpha=rate)``,
    such as the CEMA authors' (Quist et al., ICLR 2023); note that PyTorch's CPU kernels and
    CUDA compute ``add_(x, alpha=rate)`` as one fused multiply-add, which rounds once less than
    this function, so a rule that must match such code bit for bit should call
    ``average.mul_(1 - rate).add_(x, alpha=rate)`` itself (with a float ``rate``).

    In float32 this order cannot represent small rates: ``1 - rate`` is rounded to float32, so
    a rate of 1e-7 decays the average at 1.19e-7 and a rate below 2**-25 (about 3e-8) does not
    decay it at all, while :func:`ema_` keeps the rate to float32's relative precision.
    """
    return average.mul_(1 - rate).add_(rate * x)


def ema_convex_foreach_(averages: list[torch.Tensor], xs: list[torch.Tensor], rate: float) -> None:
    """:func:`ema_convex_` over lists of tensors with multi-tensor kernels (identical rounding)."""
    torch._foreach_mul_(averages, 1 - rate)
    torch._foreach_add_(averages, torch._foreach_mul(xs, rate))


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """The square root rounded to nearest (IEEE 754): one rounding, like every other operation.

    PyTorch's eager float32 ``sqrt`` on CPU is within one ulp but is not always the nearest
    float (measured with PyTorch 2.14's MKL build: about one value in six, on uniform random
    inputs; its kernel calls MKL's vector math library), while compiled kernels use the
    processor's IEEE square root. Here
    eager CPU float32 takes the root in float64 and rounds it once to float32, which is the
    correctly rounded result: float64 has more than 2 * 24 + 2 significant bits, so the double
    rounding cannot err. Compiled code and other devices use ``torch.sqrt`` directly.
    """
    if x.dtype == torch.float32 and x.device.type == "cpu" and not torch.compiler.is_compiling():
        return x.double().sqrt_().to(torch.float32)
    return torch.sqrt(x)


def sqrt_rn_foreach(xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`sqrt_rn` over a list of tensors."""
    return [sqrt_rn(x) for x in xs]


def flip_(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negate ``w`` where ``mask`` is true; return how many weights flipped (0-d int64)."""
    w.copy_(torch.where(mask, -w, w))
    return mask.sum()


def flip_above_foreach_(
    ws: Sequence[torch.Tensor], signals: Sequence[torch.Tensor], threshold: float
) -> torch.Tensor:
    """Flip each ``w`` where its ``signal > threshold`` (strictly); return the total count.

    There are no multi-tensor comparisons in PyTorch, so the decision runs tensor by tensor.
    """
    return sum_counts([flip_(w, s > threshold) for w, s in zip(ws, signals)], ws[0].device)


def sum_counts(counts: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The sum of per-tensor counts as one 0-d int64 tensor on ``device`` (no host sync)."""
    if not counts:
        return torch.zeros((), dtype=torch.int64, device=device)
    return torch.stack([c.to(device=device, dtype=torch.int64) for c in counts]).sum()


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # An integer hash with xor-shifts and odd multipliers below 2**31: the products of 32-bit
    # values stay below 2**63, so int64 arithmetic is exact on every backend.
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


#: Right shifts of int32 values are arithmetic in PyTorch; these masks keep the bits a logical
#: shift of the same 32-bit pattern keeps (``0xFFFF`` after ``>> 16``, ``0x1FFFF`` after
#: ``>> 15``, ``0xFFFFFF`` after ``>> 8``).
_LOW16, _LOW17, _LOW24 = 0xFFFF, 0x1FFFF, 0xFFFFFF


def _mix32_int32(x: torch.Tensor) -> torch.Tensor:
    # _mix32 on int32 tensors holding the same 32-bit patterns: products wrap modulo 2**32
    # (two's complement, on every backend), which keeps exactly the low 32 bits that _mix32's
    # ``& _MASK32`` keeps, and masked arithmetic shifts equal logical ones. Half the width of
    # int64 lanes, and no 64-bit multiplies: about half the instructions per value.
    x = x ^ ((x >> 16) & _LOW16)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & _LOW17)
    x = x * 0x5BD1E995
    return x ^ ((x >> 16) & _LOW16)


#: Tensors with fewer elements than this hash their positions in int32 lanes.
_INT32_POSITIONS = 2**31

#: Knuth's multiplicative-hashing constant for 32 bits, ``2**32`` over the golden ratio
#: (0x9E3779B9) negated modulo ``2**32``; the Linux kernel's ``GOLDEN_RATIO_32``. Odd, so that
#: ``index * _WEYL`` is a bijection of 32-bit patterns, and below 2**31, so that int64 products
#: with 32-bit values stay exact.
_WEYL = 0x61C88647

#: Positions per block of the compiled CPU kernel's index (see :func:`_scrambled_index`): a
#: multiple of every vector width Inductor tiles a loop with (16 float32 lanes with AVX-512).
_LANES = 64


def _int32_pattern(value: int) -> int:
    """The int32 value whose two's-complement bits are ``value mod 2**32``."""
    value &= _MASK32
    return value - 2**32 if value >= 2**31 else value


#: ``lane * _WEYL`` modulo 2**32 for every lane of a block, as int32 patterns. A parameter
#: (never trained) so that torch.compile treats its shape as static with ``dynamic=True``.
_LANE_WEYL = torch.nn.Parameter(
    torch.tensor([_int32_pattern(lane * _WEYL) for lane in range(_LANES)], dtype=torch.int32),
    requires_grad=False,
)


def _scrambled_index(like: torch.Tensor) -> torch.Tensor:
    """``index * _WEYL`` modulo 2**32 as int32 patterns, shaped like ``like`` (below 2**31 values).

    Eagerly this is ``arange * _WEYL`` in int32 lanes (products wrap modulo 2**32). Compiled
    for the CPU it is built as ``block * (_LANES * _WEYL) + _LANE_WEYL[lane]`` with ``index =
    _LANES * block + lane``: the same bits (modular arithmetic), but Inductor then computes the
    block term once per vector and loads the lane term as one contiguous vector, whereas an
    ``arange`` becomes a vector assembled lane by lane (about 40 instructions per 16 values
    with GCC and AVX-512, more than the whole hash; measured on the generated code).
    """
    n = like.numel()
    if like.device.type == "cpu" and torch.compiler.is_compiling():
        blocks = torch.arange(n, device=like.device, dtype=torch.int32) // _LANES
        block_term = blocks * _int32_pattern(_LANES * _WEYL)
        lane_term = _LANE_WEYL.repeat((n + _LANES - 1) // _LANES)[:n]
        return (block_term + lane_term).view(like.shape)
    index = torch.arange(n, device=like.device, dtype=torch.int32)
    return (index * _int32_pattern(_WEYL)).view(like.shape)


def counter_uniform(like: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Float32 uniforms in [0, 1) shaped like ``like``, a pure function of (``key``, position).

    A counter-based generator: each value hashes its row-major index together with ``key`` (an
    int64 tensor below 2**31, drawn from an optimizer-owned ``torch.Generator``), so a compiled
    update makes its random numbers inside the fused kernel instead of reading a noise tensor,
    and every implementation and device produces the same bits. Values are multiples of
    2**-24, so ``u < 1`` always holds and ``u < 0`` never does.

    The value at position ``i`` (counted modulo 2**32) is the 24 high bits of

        mix((i * 0x61C88647 mod 2**32) xor mix(key))

    with ``mix`` the xor-shift-multiply function of :func:`_mix32` (two multiplies, three
    xor-shifts, all modulo 2**32), over 2**24. The key is mixed once per tensor; each value
    costs one multiply by the golden-ratio constant (Knuth's multiplicative hashing) and one
    ``mix``. Multiplying before the xor makes two keys' streams unrelated: equal inputs for
    positions ``i`` and ``j`` under keys whose mixes differ by ``d`` need ``i*c xor j*c = d``,
    which scatters instead of shifting one stream along the other. tests/test_optim_one_pass.py
    checks the uniforms of consecutive positions and keys (mean, chi-square on 4096 bins, lag
    correlations, pairs), a plain-Python copy of this definition and the pinned first values.

    Until 2026-11-30 (issue 19) the value was ``mix(mix(i) xor key)``: two mixes per value,
    which with the index built by ``arange`` made PBop's compiled step 2.3x its memory floor on
    one core. The stream changed then, and with it every PBop and BayesBiNN run's coins.

    Computed in int32 lanes (the same bits, see :func:`_mix32_int32`) for tensors below 2**31
    elements, with the index of :func:`_scrambled_index`; larger tensors use int64 lanes.
    """
    if like.numel() < _INT32_POSITIONS:
        key_mix = _mix32_int32(key.to(torch.int32))
        bits = _mix32_int32(_scrambled_index(like) ^ key_mix)
        return ((bits >> 8) & _LOW24).to(torch.float32) * (2.0**-24)
    return _counter_uniform_int64(like, key)


def _counter_uniform_int64(like: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """:func:`counter_uniform` in int64 lanes (the definition; any number of elements)."""
    index = torch.arange(like.numel(), device=like.device, dtype=torch.int64).view(like.shape)
    scrambled = ((index & _MASK32) * _WEYL) & _MASK32
    bits = _mix32(scrambled ^ _mix32(key & _MASK32))
    return (bits >> 8).to(torch.float32) * (2.0**-24)


def adam_(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    beta1: Any,
    beta2: Any,
    eps: Any,
    step_size: Any,
) -> None:
    """One Adam step on one tensor, with Keras's epsilon placement.

    ``m <- m + (1 - beta1)(g - m)``, ``v <- v + (1 - beta2)(g^2 - v)``,
    ``p <- p - step_size * m / (sqrt(v) + eps)`` where ``step_size`` already holds the bias
    corrections (see :func:`adam_step_size`). Epsilon is added to the uncorrected ``sqrt(v)``
    ("epsilon hat" in Kingma and Ba, section 2) as Keras does, because the papers' numbers come
    from Keras; PyTorch adds it after correcting ``v``. The two differ only while ``sqrt(v)`` is
    comparable to eps, which at 1e-7 is negligible.
    """
    m.add_((g - m) * (1 - beta1))
    v.add_((g * g - v) * (1 - beta2))
    p.sub_(step_size * m / (torch.sqrt(v) + eps))


def adam_foreach_(
    ps: list[torch.Tensor],
    gs: list[torch.Tensor],
    ms: list[torch.Tensor],
    vs: list[torch.Tensor],
    *,
    beta1: float,
    beta2: float,
    eps: float,
    step_size: float,
) -> None:
    """:func:`adam_` over lists of tensors with multi-tensor kernels (identical rounding)."""
    diff = torch._foreach_sub(gs, ms)
    torch._foreach_mul_(diff, 1 - beta1)
    torch._foreach_add_(ms, diff)
    diff = torch._foreach_mul(gs, gs)
    torch._foreach_sub_(diff, vs)
    torch._foreach_mul_(diff, 1 - beta2)
    torch._foreach_add_(vs, diff)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_mul(ms, step_size)
    torch._foreach_div_(update, denom)
    torch._foreach_sub_(ps, update)


def adam_step_size(lr: float, beta1: float, beta2: float, step: int) -> float:
    """Adam's learning rate with both bias corrections folded in, for step ``step`` (from 1)."""
    return lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)


def adam_kwargs(group: Mapping[str, Any]) -> dict[str, float]:
    """The keyword arguments of :func:`adam_` for a param group at its current step."""
    return {
        "beta1": group["beta1"],
        "beta2": group["beta2"],
        "eps": group["eps"],
        "step_size": adam_step_size(group["lr"], group["beta1"], group["beta2"], group["step"]),
    }


def adam_hparams(
    lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-7
) -> tuple[HParam, ...]:
    """The hyperparameters of the Adam part, with the papers' defaults unless told otherwise."""
    return (
        HParam(
            "lr",
            lr,
            low=0.0,
            high=10.0,
            search=(1e-4, 1e-1),
            log=True,
            help="Adam learning rate of the real-valued parameters",
        ),
        HParam(
            "beta1", beta1, low=0.0, high=0.9999, help="Adam decay rate of the gradient average"
        ),
        HParam(
            "beta2",
            beta2,
            low=0.0,
            high=0.999999,
            help="Adam decay rate of the squared-gradient average",
        ),
        HParam(
            "eps",
            eps,
            low=0.0,
            high=1.0,
            help="Adam epsilon, added to sqrt(v) before bias correction (Keras placement)",
        ),
    )


# --- dtypes ----------------------------------------------------------------------------------

#: The dtype of every binary rule's per-weight state and arithmetic, whatever the weights' dtype.
BINARY_STATE_DTYPE = torch.float32


def state_dtype(param_dtype: torch.dtype, kind: str = "binary") -> torch.dtype:
    """The dtype in which a parameter's optimizer state is kept and its update is computed.

    Binary weights (``kind="binary"``) always get float32, the precision of the authors' code
    (their TensorFlow optimizers run in float32): a weight of +-1 is stored exactly in every
    floating dtype, so whether it flips must not depend on that storage. A float16 average
    would underflow (``0.01 * (1e-4)**2`` is below float16's smallest subnormal, and Bop2ndOrder's
    epsilon 1e-10 is 0 in float16) and a bfloat16 one stalls (``m + 1e-3 * (1 - m)`` stops
    growing at 0.5 because the increment is below half an ulp). Float64 weights get float32 too,
    so that they flip exactly as float32 weights given the same gradients (a float64 gradient is
    rounded to float32 once, when it enters the rule); a rule wanting more than the authors'
    precision is a different rule. The same holds for latent weights (``latent_weights=True``):
    the rule computes in float32 and the new latent value is rounded into the weight's dtype.

    Real-valued parameters (``kind="real"``, Adam) get float32 for float16 and bfloat16 (the
    moments of small gradients would underflow, as in the master-weight recipe of mixed
    precision training) and their own dtype for float32 and float64.
    """
    if kind == "binary":
        return BINARY_STATE_DTYPE
    return torch.promote_types(param_dtype, torch.float32)


def in_dtype(rule: Rule, dtype: torch.dtype) -> Rule:
    """``rule`` run on ``dtype`` copies of the weight and gradient, the weight written back.

    :class:`BinaryOptimizer` wraps every rule this way for a parameter whose dtype is not its
    :func:`state_dtype`: the rule sees float32 tensors whatever the parameter's storage, its
    state buffers are float32 already, and the result is rounded into the parameter once (exact
    for +-1). Compiled, the casts fuse into the rule's kernel.
    """

    def run(w: torch.Tensor, g: torch.Tensor, *buffers: torch.Tensor, **kwargs: Any) -> Any:
        work = w.to(dtype)
        count = rule(work, g.to(dtype), *buffers, **kwargs)
        w.copy_(work)
        return count

    run.__qualname__ = f"in_dtype({getattr(rule, '__qualname__', rule)}, {dtype})"
    return run


# --- choosing an implementation --------------------------------------------------------------


def compile_unavailable_reason(device: torch.device | str = "cpu") -> str | None:
    """Why ``torch.compile`` cannot build fused kernels for ``device`` here, or None if it can."""
    device = torch.device(device)
    if os.environ.get("TORCHDYNAMO_DISABLE", "").strip() not in ("", "0"):
        return "TORCHDYNAMO_DISABLE is set"
    if not hasattr(torch, "compile"):
        return "this PyTorch has no torch.compile"
    if platform.system() == "Windows":
        return "torch.compile is not supported on Windows by this package"
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return f"torch.compile does not support Python {sys.version.split()[0]}"
    except Exception as exc:
        return f"torch._dynamo cannot be imported ({exc})"
    if device.type == "cpu":
        compiler = os.environ.get("CXX") or "c++"
        if not any(shutil.which(c) for c in (compiler, "g++", "clang++")):
            return "no C++ compiler found (install g++ or clang++, or set CXX)"
    elif device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "triton is not installed"
        if not has_triton():
            return "triton is not installed"
    else:
        return f"fused kernels are not built for {device.type} devices"
    return None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _check_implementation(value: str | None) -> str | None:
    if value is None or value in IMPLEMENTATIONS:
        return value
    raise BenchbnnError(
        f"unknown optimizer implementation {value!r}; choose one of {', '.join(IMPLEMENTATIONS)}"
        " (or leave it unset for the fastest available)"
    )


_compiled_rules: dict[tuple[Rule, torch.dtype | None], Rule] = {}

#: Inductor options of the compiled rules. With dynamic shapes the C++ backend decides whether
#: to parallelize a loop from the size of the first tensor it compiled for (or of whichever
#: tensor filled the on-disk FX graph cache), so a small first tensor left every later step
#: single-threaded. ``cpp.dynamic_threads`` always emits the OpenMP region and lets the runtime
#: use the current thread count, whatever size compiled first. Triton ignores it.
#: ``cpp.enable_floating_point_contract_flag`` "off" (Inductor's default, pinned here against
#: the TORCHINDUCTOR_CPP_ENABLE_FLOATING_POINT_CONTRACT_FLAG variable) keeps the C++ compiler
#: from fusing a product and a sum into one multiply-add, so the compiled rule rounds once per
#: operation as the reference does; with "fast" the moving averages differ in the last bit for
#: 10-17% of the weights. Triton kernels (CUDA) fuse multiply-adds whatever this flag says.
#: ``realize_opcount_threshold`` 0 makes Inductor keep every intermediate that has several
#: users (such as the flip mask) as a node of its own instead of recomputing it inside each
#: user. Without it the flip count, a reduction, recomputed the mask from the weights that
#: the flip then overwrites; a reduction cannot feed a later loop in the same C++ kernel, so
#: CEMA, SGDAT and adam-latent were split into two loops and streamed the weights and a state
#: buffer twice (2.0x the bandwidth floor instead of 1.2x, ``benchbnn bench`` on one core).
#: The kept intermediates live in registers of the one fused loop; none is written to memory
#: (tests/test_optim_one_pass.py counts the loops of every built-in rule).
_COMPILE_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {
    "cpp.dynamic_threads": True,
    "cpp.enable_floating_point_contract_flag": "off",
    "realize_opcount_threshold": 0,
}


def _compiled(rule: Rule, dtype: torch.dtype | None = None) -> Rule:
    """One compiled wrapper per rule (run :func:`in_dtype` unless ``dtype`` is None), shared
    by every optimizer instance in the process."""
    key = (rule, dtype)
    if key not in _compiled_rules:
        target = rule if dtype is None else _own_code(in_dtype(rule, dtype))
        _compiled_rules[key] = torch.compile(
            target, dynamic=True, fullgraph=True, options=_COMPILE_OPTIONS
        )
    return _compiled_rules[key]


#: One compiled call per (rule, dtype, number of tensors) that steps every tensor of a
#: parameter group at once.
_compiled_groups: dict[tuple[Rule, torch.dtype | None, int], Callable[..., torch.Tensor]] = {}


def _compiled_group(
    rule: Rule, dtype: torch.dtype | None, tensors: int
) -> Callable[..., torch.Tensor]:
    """``rule`` (run :func:`in_dtype` unless ``dtype`` is None) over a list of ``tensors``
    tensors in one compiled call, returning the summed count (0-d int64).

    The per-tensor code is the rule's, as :func:`_compiled` compiles it (the same elementwise
    kernels, so the same bits); what changes is that torch.compile's guards and Python wrappers
    run once per step instead of once per tensor: about 0.1 ms a tensor on a CPU core, half a
    millisecond of a Bop step over BinaryNet's nine binary tensors (measured: 8.5 against 9.0
    ms, 1 thread). Sizes and hyperparameter values are dynamic; each number of tensors gets a
    code object of its own (:func:`_own_code`), so models of many sizes in one process never
    reach torch.compile's recompilation limit.
    """
    key = (rule, dtype, tensors)
    if key not in _compiled_groups:
        target = rule if dtype is None else in_dtype(rule, dtype)

        def step_all(
            tensors: list[list[torch.Tensor]],
            args: dict[str, Any],
            per_tensor: list[dict[str, Any]],
        ) -> torch.Tensor:
            total = torch.zeros((), dtype=torch.int64, device=tensors[0][0].device)
            for flat, extra in zip(tensors, per_tensor):
                count = target(*flat, **args, **extra)
                if count is not None:
                    total = total + count
            return total

        step_all = _own_code(step_all, f"{len(_compiled_groups)}_group")
        _compiled_groups[key] = torch.compile(
            step_all, dynamic=True, fullgraph=True, options=_COMPILE_OPTIONS
        )
    return _compiled_groups[key]


def _own_code(fn: Rule, suffix: str | None = None) -> Rule:
    """A copy of the function ``fn`` with a code object of its own.

    torch.compile keeps its cache, and its limit of eight recompilations, per code object, and
    every :func:`in_dtype` wrapper shares one: without a copy, a process that compiles a few
    rules for a few weight dtypes (a conformance run) exceeds the limit and falls back to the
    reference path. With a copy each (rule, dtype) pair has its own cache.
    """
    tag = str(len(_compiled_rules)) if suffix is None else suffix
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{tag}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__
    return copy


def _kernel_arg(value: Any, device: torch.device) -> Any:
    # Floats become 0-d float64 tensors so that a changed (scheduled) value never triggers a
    # recompilation, and derived scalars such as ``1 - gamma`` round exactly as Python's do
    # before the product with a float32 tensor casts them. Other values stay constants.
    if isinstance(value, float):
        dtype = torch.float32 if device.type == "mps" else torch.float64
        return torch.full((), value, dtype=dtype, device=device)
    return value


# --- the optimizer ---------------------------------------------------------------------------


class ClosureResult(NamedTuple):
    """What benchbnn's training closure returns: the batch's mean loss and the logits.

    Both are detached. The closure (see :attr:`BinaryOptimizer.needs_closure`) runs the forward
    and backward pass on the current batch, averages the gradients over data-parallel ranks and
    adds the suite's L2 term, so after each call every parameter's ``.grad`` holds the gradient
    at the weights the parameters held during that call.
    """

    loss: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class EvaluationSamples:
    """Evaluate the mean prediction of ``count`` sampled networks (what an optimizer's
    :meth:`~BinaryOptimizer.evaluation_weights` may yield).

    ``draw(i)`` puts network ``i`` (0 <= i < count) in place: it writes +-1 values into the
    binary weights (in place, no gradients). The engine calls it for every network and every
    evaluation batch, so it must put the same network in place every time it gets the same
    ``i`` within one evaluation (derive its random numbers from ``i``), and the same on every
    data-parallel rank. The engine averages the networks' softmax outputs; the loss is the
    cross-entropy of that average.
    """

    count: int
    draw: Callable[[int], None]


@contextlib.contextmanager
def restoring(params: Iterable[torch.Tensor]) -> Iterator[None]:
    """Keep a copy of ``params`` and write it back on exit, whatever the body wrote into them.

    The usual body of :meth:`BinaryOptimizer.evaluation_weights`::

        @contextlib.contextmanager
        def evaluation_weights(self):
            with restoring(self.binary_params):
                for p in self.binary_params:
                    p.copy_(sgn0(p))
                yield None
    """
    params = list(params)
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)


#: Declarations of a class in the current form (one place for everything, generic constructor).
_CLASS_DECLARATIONS = ("rule_hparams", "option_hparams", "real_hparams", "shared_hparams")
_ADAM_NAMES = ("lr", "beta1", "beta2", "eps")
#: What the fix of a rule hyperparameter named like one of Adam's suggests instead.
_RENAME = {"lr": "step_size"}


class BinaryOptimizer(torch.optim.Optimizer):
    """Binary weights follow :meth:`update`; real-valued parameters follow Adam.

    A subclass declares, once, everything the host needs, as class attributes: its name and
    references, the rule's hyperparameters (:attr:`rule_hparams`), the real-valued side's
    (:attr:`real_hparams`, Adam's), its per-weight state buffers, how binary layers use its
    weights while training (:attr:`forward`), whether its step needs a closure, what to do when
    a run diverges; and it implements :meth:`update` (one tensor, in place, returning how many
    weights flipped), optionally ``update_foreach`` (a multi-tensor version). The constructor is
    generic and the plugin's spec is derived from the class::

        class MyBop(BinaryOptimizer):
            name = "my-bop"
            description = "flip where the gradient average exceeds a threshold"
            rule_hparams = (
                HParam("threshold", 1e-8, low=0.0, high=1.0, search=(1e-10, 1e-5), log=True),
                HParam("gamma", 1e-4, low=0.0, high=1.0, search=(1e-6, 1e-2), log=True),
            )
            state_buffers = ("m",)

            @staticmethod
            def update(w, g, m, *, gamma, threshold):
                ema_(m, g, gamma)
                return flip_(w, w * m > threshold)

        @benchbnn.hookimpl
        def benchbnn_optimizers():
            return [benchbnn.optimizer_spec(MyBop)]

    ``MyBop(binary_params, real_params=(), *, implementation=None, context=None, **hparams)``
    sorts the hyperparameters by declaration into ``param_groups[0]`` (the binary weights,
    ``kind="binary"``: the rule's hyperparameters and the shared ones), ``param_groups[1]``
    (the real-valued parameters, ``kind="real"``: ``lr``, ``beta1``, ``beta2``, ``eps``) and
    :attr:`options` (``option_hparams``: checked like the others, kept out of the groups), and
    validates every value. Binary groups carry ``lr`` too (unused by a flip rule) because
    ``torch.optim.lr_scheduler`` insists that every group has one; each group also counts its
    ``step`` (Adam's bias correction, like Keras, uses one count per optimizer). Either list of
    parameters may be empty. ``context`` is the run's :class:`~benchbnn.core.specs.RunContext`
    (None outside the engine), kept as :attr:`context`.

    The declaration is checked when the class is defined (PluginError naming the class and the
    fix): unusable defaults, a rule hyperparameter named like one of the real-valued side's,
    ``update``'s positional parameters after ``(w, g)`` against :attr:`state_buffers`, its
    keyword-only parameters against the declared hyperparameters, and contradictory forward
    declarations.

    The older spelling still works: a class that declares the whole table as :attr:`hparams`,
    its :attr:`rule_keys`, ``latent_weights = True``, and an ``__init__`` that calls
    ``super().__init__(binary_params, real_params, binary={...}, real={...}, options={...},
    implementation=implementation)``, listed with a written-out ``OptimizerSpec``.

    After every :meth:`step`, :attr:`flip_count` is a 0-d int64 tensor on the weights' device
    with the number of binary weights the rule flipped (for latent-weight rules: sign changes),
    and :attr:`flip_ratio` that count divided by :attr:`num_binary_weights`.

    ``update`` receives plain floats on the reference path and 0-d tensors on the compiled one,
    so write it with tensor operations only and no Python branching on tensor values (that is
    also what keeps host syncs out of the step). A rule that torch.compile cannot capture falls
    back to the reference path with one warning. Real-valued groups run :func:`adam_` (through
    multi-tensor kernels unless ``implementation="reference"``).

    Dtypes are the base class's business, not the rule's: per-weight buffers are created in
    :func:`state_dtype` (float32 for binary weights of every dtype; float32 or the parameter's
    own dtype for Adam), and ``update``, ``update_foreach`` and the compiled rule receive the
    weights and gradients in that dtype (copies for a float16, bfloat16 or float64 binary
    weight, written back after the rule). A rule written for float32 therefore flips the same
    weights whatever dtype the model stores them in.
    """

    # -- the declaration (class attributes) ---------------------------------------------------

    #: The name the optimizer is listed under (lower-case kebab-case), for optimizer_spec().
    name: ClassVar[str] = ""
    #: One line for listings (default: the first line of the class docstring).
    description: ClassVar[str] = ""
    #: Where the rule comes from (paper, code).
    reference: ClassVar[str] = ""
    #: Raise by one whenever the rule computes other numbers from the same hyperparameters (a
    #: new random stream, another arithmetic): versions above 1 enter every run's identity, so
    #: stores never mix runs of the old and the new rule (see OptimizerSpec.rule_version).
    rule_version: ClassVar[int] = 1
    #: The rule's hyperparameters: kept in the binary group, passed to :meth:`update` by name.
    rule_hparams: ClassVar[tuple[HParam, ...]] = ()
    #: Hyperparameters checked like the others but kept out of the groups, in :attr:`options`
    #: (e.g. a seed, a number of samples read by :meth:`run_closure`).
    option_hparams: ClassVar[tuple[HParam, ...]] = ()
    #: The real-valued side's hyperparameters: Adam's (``adam_hparams(lr=...)`` changes the
    #: defaults), or () for an optimizer that takes no real-valued parameters.
    real_hparams: ClassVar[tuple[HParam, ...]] = adam_hparams()
    #: Names of ``real_hparams`` the rule reads too (copied into the binary group, one value,
    #: scheduled together), e.g. adam-latent's Adam on the latent weights.
    shared_hparams: ClassVar[tuple[str, ...]] = ()
    #: Every hyperparameter the constructor accepts (derived: shared, rule, option, the other
    #: real-valued ones; the older spelling declares it directly).
    hparams: ClassVar[tuple[HParam, ...]] = ()
    #: Names of the per-weight buffers of every binary weight, in the order :meth:`update` takes
    #: them after ``(w, g)``; created by :meth:`init_state` (zeros unless overridden).
    state_buffers: ClassVar[tuple[str, ...]] = ()
    #: Keyword arguments of :meth:`update` that :meth:`tensor_kwargs` supplies per tensor.
    tensor_keys: ClassVar[tuple[str, ...]] = ()
    #: Keyword arguments of :meth:`update` that :meth:`rule_kwargs` computes from the group.
    derived_keys: ClassVar[tuple[str, ...]] = ()
    #: Group keys passed to :meth:`update` (derived: its keyword-only parameters less
    #: ``tensor_keys`` and ``derived_keys``).
    rule_keys: ClassVar[tuple[str, ...]] = ()
    #: How binary layers use the binary weights while training: "sign" (exactly +-1, set when
    #: built), "latent" (sign with a straight-through gradient) or "identity" (as they are;
    #: needs :meth:`evaluation_weights`). See :data:`benchbnn.core.specs.FORWARD_MODES`.
    forward: ClassVar[str] = "sign"
    #: For forward="latent": the rule hyperparameter that is also the layers' STE window.
    ste_window: ClassVar[str | None] = None
    #: True when :meth:`step` must be given a closure (see :meth:`run_closure`).
    needs_closure: ClassVar[bool] = False
    #: What to change when a run diverges (empty: a generic advice naming the hyperparameters).
    divergence_advice: ClassVar[str] = ""
    #: Derived: True unless forward == "sign" (the weights are not set to +-1 when built).
    latent_weights: ClassVar[bool] = False
    #: Derived: True when the class overrides :meth:`evaluation_weights`.
    provides_evaluation_weights: ClassVar[bool] = False
    #: Optional multi-tensor rule: ``update_foreach(ws, gs, *buffer_lists, **kwargs) -> count``.
    #: (This, :attr:`update_native` and :attr:`native_kernels` are inherited by a subclass only
    #: when it keeps the parent's :meth:`update`: a class that defines ``update`` declares them
    #: beside it or has none.)
    update_foreach: ClassVar[Rule | None] = None
    #: Optional C++ kernels for the CPU (:class:`benchbnn.core.native.NativeKernels`): built
    #: when an optimizer with the ``"compiled"`` implementation is created on a CPU, so that a
    #: first build (20 to 30 s) is not part of a timed step; :meth:`update_native` calls them.
    native_kernels: ClassVar[NativeKernels | None] = None
    #: Optional fast path of the ``"compiled"`` implementation for one float32 CPU tensor:
    #: ``update_native(w, g, *buffers, **kwargs) -> int | None`` takes what :meth:`update`
    #: takes on the reference path (plain floats), updates in place with the reference's exact
    #: bits and returns the flips, or returns None where it does not apply (kernels not built
    #: here, an option it does not cover): torch.compile's kernel then runs.
    update_native: ClassVar[Callable[..., int | None] | None] = None
    #: "class" (declared as above) or "legacy" (the whole table in ``hparams``); set per class.
    _style: ClassVar[str] = "class"
    #: ``rule_keys`` as the class declared them (the older spelling), else None.
    _explicit_rule_keys: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _declare(cls)

    def __init__(
        self,
        binary_params: Iterable[torch.Tensor],
        real_params: Iterable[torch.Tensor] = (),
        *,
        binary: Mapping[str, Any] | None = None,
        real: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        implementation: str | None = None,
        context: Any = None,
        **hparams: Any,
    ) -> None:
        owner = f"optimizer {type(self).__name__}"
        if binary is None and real is None:
            if options is not None:
                raise BenchbnnError(
                    f"{owner}: options= belongs to the older binary=/real=/options= spelling; "
                    f"pass every hyperparameter by name"
                )
            binary, real, options = _sort_hparams(type(self), hparams)
        elif hparams:
            raise BenchbnnError(
                f"{owner} got hyperparameters both by name ({', '.join(sorted(hparams))}) and "
                f"as binary=/real=/options= tables; pass them by name only"
            )
        binary, real, options = dict(binary or {}), dict(real or {}), dict(options or {})
        values = resolve_hparams(owner, self.hparams, {**binary, **real, **options})
        #: Validated hyperparameters that are not per-group (e.g. a seed), by name.
        self.options = {k: values[k] for k in options}
        #: The run's RunContext (train_size, steps, world_size, device, seed); None outside
        #: the engine.
        self.context = context
        binary_params, real_params = _check_params(binary_params, real_params)
        missing = sorted(set(_ADAM_NAMES) - set(real))
        if real_params and missing:
            raise BenchbnnError(
                f"{owner} got real-valued parameters but no Adam hyperparameters "
                f"{', '.join(missing)}; declare them (benchbnn.optim.base.adam_hparams())"
            )
        binary_group = {k: values[k] for k in binary}
        binary_group.setdefault("lr", real.get("lr", 0.0))
        groups = [
            {"params": binary_params, "kind": "binary", "step": 0, **binary_group},
            {"params": real_params, "kind": "real", "step": 0, **{k: values[k] for k in real}},
        ]
        super().__init__(groups, defaults={})
        self.num_binary_weights = sum(p.numel() for p in binary_params)
        self._device = (binary_params or real_params or [torch.empty(0)])[0].device
        self.flip_count = torch.zeros((), dtype=torch.int64, device=self._device)
        self._requested = _check_implementation(implementation)
        #: Where and why torch.compile failed on this optimizer ("" while it has not): the
        #: rule's name, then the error's type and first line in parentheses, e.g.
        #: ``"MyOpt.update (Unsupported: ...)"``. The step then runs the reference.
        self.compile_error = ""
        self.implementation = self._choose_implementation()
        if (
            self.implementation == "compiled"
            and self._device.type == "cpu"
            and self.native_kernels is not None
        ):
            self.native_kernels.module()  # a first build here, not in the first timed step
        self.setup()
        with torch.no_grad():
            for p in binary_params:
                value = self.init_weight(p)
                if value is not p:
                    p.copy_(self._checked(value, p, "init_weight(param)"))
            self._init_state()

    # -- what subclasses provide ------------------------------------------------------------

    @staticmethod
    def update(*args: Any, **kwargs: Any) -> Any:  # (w, g, *buffers, **rule keys)
        """Update one binary tensor in place and return the number of flips (0-d int64).

        ``update(w, g, *state_buffers, *, <rule hyperparameters>)``: the positional parameters
        after the weight ``w`` and its gradient ``g`` are the :attr:`state_buffers` in order;
        the keyword-only ones are hyperparameters of the binary group (rule and shared ones),
        :attr:`derived_keys` and :attr:`tensor_keys`.
        """
        raise NotImplementedError

    def rule_kwargs(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of :meth:`update` for this step (default: the ``rule_keys``).

        Override to add :attr:`derived_keys` (e.g. adam-latent's bias-corrected step size).
        """
        return {key: group[key] for key in self.rule_keys}

    def tensor_kwargs(self, group: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """Per-tensor keyword arguments (the :attr:`tensor_keys`, e.g. random keys), one dict
        per param in the group."""
        return None

    def extra_state(self) -> dict[str, Any]:
        """State outside ``self.state`` that a checkpoint must keep (e.g. a generator)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def setup(self) -> None:
        """Called once by the constructor, after the groups, :attr:`options` and
        :attr:`context` are set and before :meth:`init_weight` and :meth:`init_state` (e.g. to
        seed a generator)."""

    def init_weight(self, param: torch.Tensor) -> torch.Tensor:
        """The initial value of a binary weight (called once per weight when built).

        Default: ``sgn0(param)`` for ``forward="sign"`` (exactly +-1), else ``param`` unchanged
        (the architecture's initialisation). Override e.g. to start continuous weights at
        ``tanh(param)``. Return a tensor of the parameter's shape; it is copied in.
        """
        return sgn0(param) if self.forward == "sign" else param

    def init_state(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """The initial value of state buffer ``name`` of the binary weight ``param``.

        Default: zeros. Called once per buffer and weight when built (after :meth:`setup` and
        :meth:`init_weight`); the result, of ``param``'s shape, is stored in
        :func:`state_dtype` (float32) on ``param``'s device. Draw random values from a
        generator seeded from :attr:`context` (``context.seed``, the same on every rank) or an
        option, so that runs repeat.
        """
        return torch.zeros_like(
            param, dtype=state_dtype(param.dtype), memory_format=torch.preserve_format
        )

    def run_closure(self, closure: Callable[[], Any]) -> Any:
        """Call ``closure`` as the step needs and leave in each parameter's ``.grad`` the
        gradient :meth:`update` (and Adam) should use; return the first call's result.

        :meth:`step` calls it, under ``torch.no_grad()``, when it is given a closure; each call
        of ``closure`` runs with gradients enabled and first clears every ``.grad``. The
        default calls it once. An optimizer that declares :attr:`needs_closure` overrides it,
        e.g. to draw several weight samples (writing them into the binary weights), call the
        closure at each and average the gradients (Monte-Carlo estimators such as BayesBiNN's).
        """
        return closure()

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[EvaluationSamples | None]:
        """The weights to evaluate: a context manager the engine enters around every evaluation.

        On entry, put the weights to evaluate in place (e.g. the signs of continuous weights,
        with :func:`restoring` to put the training weights back on exit) and yield None to have
        the network evaluated as it then is, or an :class:`EvaluationSamples` to have the
        predictions of several sampled networks averaged. The engine checks that every binary
        layer then uses exactly +-1 weights. The default yields None and changes nothing, which
        suits ``forward="sign"`` and ``"latent"``; ``forward="identity"`` must override it.
        """
        yield None

    # -- properties every optimizer has ----------------------------------------------------------

    @property
    def binary_params(self) -> list[torch.Tensor]:
        """The binary weights (``param_groups[0]["params"]``)."""
        return list(self.param_groups[0]["params"])

    def _checked(self, value: Any, param: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(param.shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise BenchbnnError(
                f"optimizer {type(self).__name__}: {what} must return a tensor of the "
                f"parameter's shape {tuple(param.shape)}, got {got}"
            )
        return value

    @property
    def flip_ratio(self) -> torch.Tensor:
        """Flips in the last step divided by the number of binary weights (0-d float tensor)."""
        return self.flip_count / max(self.num_binary_weights, 1)

    def state_bytes_per_binary_weight(self) -> float:
        """Bytes of optimizer state kept per binary weight (4.0 per buffer: they are float32)."""
        total = sum(
            self.state[p][name].nbytes
            for group in self.param_groups
            if group["kind"] == "binary"
            for p in group["params"]
            for name in self.state_buffers
        )
        return total / max(self.num_binary_weights, 1)

    @property
    def implementation(self) -> str:
        """The implementation used by :meth:`step`: "reference", "foreach" or "compiled"."""
        return self._implementation

    @implementation.setter
    def implementation(self, value: str | None) -> None:
        value = _check_implementation(value)
        if value is None:
            self._requested = None
            value = self._choose_implementation()
        if value == "compiled":
            reason = compile_unavailable_reason(self._device)
            if reason is not None:
                _warn_once(f"benchbnn: torch.compile unavailable ({reason}); using 'foreach'")
                value = "foreach"
        self._implementation = value

    def _choose_implementation(self) -> str:
        from_env = _check_implementation(os.environ.get(IMPLEMENTATION_ENV) or None)
        wanted = self._requested or from_env
        if wanted is not None:
            return wanted
        if self.pays_to_compile() and compile_unavailable_reason(self._device) is None:
            return "compiled"
        return "foreach"

    def pays_to_compile(self) -> bool:
        """Whether the default implementation compiles the step (where torch.compile works):
        from :data:`COMPILE_MIN_WEIGHTS` binary weights on, or from
        :data:`COMPILE_MIN_WEIGHT_STEPS` binary weights times the run's steps (the engine's
        :attr:`context`, ``total_steps``) on."""
        weights = self.num_binary_weights
        steps = getattr(self.context, "total_steps", None) or 0
        return weights >= COMPILE_MIN_WEIGHTS or weights * int(steps) >= COMPILE_MIN_WEIGHT_STEPS

    # -- state -------------------------------------------------------------------------------

    def _buffer_names(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return self.state_buffers if group["kind"] == "binary" else ADAM_BUFFERS

    def _init_state(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                dtype = state_dtype(p.dtype, group["kind"])
                for name in self._buffer_names(group):
                    if group["kind"] == "binary":
                        value = self._checked(self.init_state(name, p), p, f"init_state({name!r})")
                        value = value.to(device=p.device, dtype=dtype)
                    else:
                        value = torch.zeros_like(
                            p, dtype=dtype, memory_format=torch.preserve_format
                        )
                    self.state[p][name] = value

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        extra = self.extra_state()
        if extra:
            state["benchbnn"] = extra
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("benchbnn", {})
        super().load_state_dict(state_dict)
        self._restore_state_dtypes(state_dict)
        self.load_extra_state(extra)

    def _restore_state_dtypes(self, state_dict: Mapping[str, Any]) -> None:
        """Undo the cast of ``torch.optim.Optimizer.load_state_dict``, which converts every
        floating-point state tensor to its parameter's dtype (a float32 average of a bfloat16
        weight would come back in bfloat16): declared buffers take :func:`state_dtype`, other
        state tensors the dtype they were saved in."""
        saved = state_dict["state"]
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"]):
            names = self._buffer_names(group)
            for p, key in zip(group["params"], saved_group["params"]):
                for name, value in saved.get(key, {}).items():
                    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                        continue
                    dtype = state_dtype(p.dtype, group["kind"]) if name in names else value.dtype
                    self.state[p][name] = value.to(device=p.device, dtype=dtype)

    # -- the step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; record the flips of binary weights.

        With a closure, :meth:`run_closure` calls it first (gradients enabled during each call)
        and its result is returned. An optimizer that declares :attr:`needs_closure` refuses to
        step without one.
        """
        if closure is None and self.needs_closure:
            raise BenchbnnError(
                f"optimizer {type(self).__name__} needs a closure: call step(closure) with a "
                f"function that clears the gradients, runs the forward and backward pass on the "
                f"current batch and returns the loss (benchbnn's engine does)"
            )
        loss = None
        if closure is not None:
            loss = self.run_closure(_with_grad(closure))
        counts = []
        for group in self.param_groups:
            group["step"] += 1
            chosen = [(i, p) for i, p in enumerate(group["params"]) if p.grad is not None]
            if group["kind"] == "binary":
                per_tensor = self.tensor_kwargs(group)  # drawn every step, grads or not
                if chosen:
                    counts.append(
                        self._run_group(
                            chosen,
                            type(self).update,
                            type(self).update_foreach,
                            self.state_buffers,
                            self.rule_kwargs(group),
                            per_tensor,
                            "binary",
                        )
                    )
            elif chosen:
                self._run_group(
                    chosen,
                    adam_,
                    adam_foreach_,
                    ADAM_BUFFERS,
                    adam_kwargs(group),
                    None,
                    "real",
                    compile_allowed=False,
                )
        self.flip_count = sum_counts([c for c in counts if c is not None], self._device)
        return loss

    def _run_group(
        self,
        chosen: list[tuple[int, torch.Tensor]],
        rule: Rule,
        rule_foreach: Rule | None,
        buffer_names: Sequence[str],
        kwargs: dict[str, Any],
        per_tensor: list[dict[str, Any]] | None,
        kind: str,
        compile_allowed: bool = True,
    ) -> torch.Tensor | None:
        for _, p in chosen:
            if p.grad is not None and p.grad.is_sparse:
                raise BenchbnnError(f"{type(self).__name__} does not support sparse gradients")
        extra = [per_tensor[i] if per_tensor else {} for i, _ in chosen]
        items = [
            (p, p.grad, [self.state[p][n] for n in buffer_names], e, _cast_dtype(p, kind))
            for (_, p), e in zip(chosen, extra)
        ]
        mode = self.implementation
        if mode == "compiled" and not compile_allowed:
            mode = "foreach"
        if mode == "foreach" and rule_foreach is not None:
            return _run_foreach(rule_foreach, items, kwargs)
        if mode == "compiled" and not self._compile_failed:
            return self._run_compiled(rule, items, kwargs)
        return _run_reference(rule, items, kwargs, self._device)

    def kernel(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, an elementwise update written with torch operations that works in place on
        its tensor arguments, as this optimizer's implementation runs it.

        For an optimizer whose :meth:`step` does more than one rule per tensor (BayesBiNN's
        sampling and its update): with the ``"compiled"`` implementation, ``fn`` is compiled
        once per process and called with flat aliases of its contiguous tensor arguments (one
        fused loop for every size and shape, as the rules run) and float arguments as 0-d
        tensors (a scheduled value never recompiles); otherwise, or when a tensor is not
        contiguous, ``fn`` runs eagerly. A compilation that fails warns once and runs ``fn``
        eagerly from then on, as :meth:`step` does for the rules. Returns a callable taking
        ``fn``'s arguments (what ``fn`` returns is dropped when compiled).
        """
        if self.implementation != "compiled" or self._compile_failed:
            return fn

        def run(*args: Any) -> None:
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0]
            if not all(t.is_contiguous() for t in tensors):
                fn(*args)
                return
            flat = [
                _kernel_arg(
                    _flat_alias(a) if isinstance(a, torch.Tensor) and a.dim() > 0 else a,
                    self._device,
                )
                for a in args
            ]
            try:
                _compiled(fn)(*flat)
            except Exception as exc:
                self._compile_failure(fn, exc)
                fn(*args)

        return run

    def _run_compiled(self, rule: Rule, items: list, kwargs: dict[str, Any]) -> torch.Tensor:
        counts: list[torch.Tensor | None] = []
        if rule is type(self).update and type(self).update_native is not None:
            items = self._run_native(items, kwargs, counts)
        args = {k: _kernel_arg(v, self._device) for k, v in kwargs.items()}
        eager: list = []
        grouped: dict[torch.dtype | None, list] = {}
        for item in items:
            p, g, bufs, _, cast = item
            if not self._compile_failed and all(t.is_contiguous() for t in (p, g, *bufs)):
                grouped.setdefault(cast, []).append(item)
            else:
                eager.append(item)
        counts.append(_run_reference(rule, eager, kwargs, self._device))
        for cast, members in grouped.items():
            counts.append(self._run_compiled_group(rule, members, kwargs, args, cast))
        return sum_counts([c for c in counts if c is not None], self._device)

    def _run_native(
        self, items: list, kwargs: dict[str, Any], counts: list[torch.Tensor | None]
    ) -> list:
        """Step every item :meth:`update_native` takes (float32, contiguous, on the CPU, no
        dtype cast), appending its flips to ``counts``; return the items left for the compiled
        rule."""
        native = type(self).update_native
        assert native is not None
        left = []
        for item in items:
            p, g, bufs, extra, cast = item
            tensors = (p, g, *bufs)
            if cast is None and all(
                t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                for t in tensors
            ):
                flips = native(p, g, *bufs, **kwargs, **extra)
                if flips is not None:
                    for t in (p, *bufs):  # written through a raw pointer: tell autograd
                        torch.autograd.graph.increment_version(t)
                    counts.append(torch.tensor(int(flips), dtype=torch.int64))
                    continue
            left.append(item)
        return left

    def _run_compiled_group(
        self, rule: Rule, items: list, kwargs: dict[str, Any], args: dict[str, Any], cast: Any
    ) -> torch.Tensor | None:
        """Step the contiguous ``items`` of one dtype in one compiled call (one guard check);
        on a compile failure, fall back to the reference for every optimizer of the process."""
        tensors = [[_flat_alias(t) for t in (p, g, *bufs)] for p, g, bufs, _, _ in items]
        per_tensor = [
            {k: _flat_like(v, p) for k, v in extra.items()} for p, _, _, extra, _ in items
        ]
        try:
            return _compiled_group(rule, cast, len(items))(tensors, args, per_tensor)
        except Exception as exc:
            self._compile_failure(rule, exc)
            return _run_reference(rule, items, kwargs, self._device)

    def _compile_failure(self, fn: Callable[..., Any], exc: BaseException) -> None:
        """Record that torch.compile failed on ``fn`` (:attr:`compile_error`: from now on every
        optimizer step runs the reference) and warn once per process."""
        self.compile_error = f"{getattr(fn, '__qualname__', fn)} ({first_line(exc)})"
        _warn_once(
            f"benchbnn: torch.compile failed for {self.compile_error}; falling back to the "
            f"reference implementation"
        )

    @property
    def _compile_failed(self) -> bool:
        """Whether torch.compile has failed on this optimizer (see :attr:`compile_error`)."""
        return bool(self.compile_error)


def _with_grad(closure: Callable[[], Any]) -> Callable[[], Any]:
    """``closure`` run with gradients enabled (the step itself runs under no_grad)."""

    def call() -> Any:
        with torch.enable_grad():
            return closure()

    return call


def _flat_alias(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor sharing ``t``'s memory and version counter that is not a view.

    torch.compile guards on the shape of a view's base, so passing ``t.view(-1)`` would compile
    once per parameter rank; a plain alias keeps one compilation for every size.
    """
    return torch.Tensor._make_subclass(torch.Tensor, t.detach().view(-1))


def _flat_like(value: Any, p: torch.Tensor) -> Any:
    """A per-tensor keyword argument as the compiled rule gets it: a contiguous tensor of
    ``p``'s shape flat like ``p`` (:func:`_flat_alias`, so that a rule's ``view_as(w)`` and
    elementwise arithmetic see matching 1-D tensors and one compilation serves every rank);
    anything else (a 0-d random key, a float) as it is."""
    if (
        isinstance(value, torch.Tensor)
        and value.dim() > 0
        and value.shape == p.shape
        and value.is_contiguous()
    ):
        return _flat_alias(value)
    return value


def _cast_dtype(p: torch.Tensor, kind: str) -> torch.dtype | None:
    """The dtype ``p``'s update must be computed in when it is not ``p``'s own, else None."""
    dtype = state_dtype(p.dtype, kind)
    return None if dtype == p.dtype else dtype


def _run_reference(rule: Rule, items: list, kwargs: dict[str, Any], device: torch.device):
    counts = [
        (rule if cast is None else in_dtype(rule, cast))(p, g, *bufs, **kwargs, **extra)
        for p, g, bufs, extra, cast in items
    ]
    counts = [c for c in counts if c is not None]
    return sum_counts(counts, device) if counts else None


def _run_foreach(rule_foreach: Rule, items: list, kwargs: dict[str, Any]) -> Any:
    """The multi-tensor rule over every item, on copies in the state dtype where the
    parameter's dtype differs (:func:`in_dtype` for lists); those weights are written back."""
    work = [(p, g) if cast is None else (p.to(cast), g.to(cast)) for p, g, _, _, cast in items]
    lists = [
        list(column) for column in zip(*[[w, g, *item[2]] for (w, g), item in zip(work, items)])
    ]
    per = {k: [item[3][k] for item in items] for k in items[0][3]}
    count = rule_foreach(*lists, **kwargs, **per)
    for (w, _), (p, *_) in zip(work, items):
        if w is not p:
            p.copy_(w)
    return count


def _check_params(
    binary_params: Iterable[torch.Tensor], real_params: Iterable[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    binary_params, real_params = list(binary_params), list(real_params)
    seen: set[int] = set()
    for where, params in (("binary", binary_params), ("real-valued", real_params)):
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise BenchbnnError(
                    f"{where} parameters must be tensors, got {type(p).__name__}; pass "
                    "model parameters (e.g. from benchbnn.split_parameters(model))"
                )
            if not p.is_floating_point():
                raise BenchbnnError(f"{where} parameter of dtype {p.dtype} is not floating point")
            if id(p) in seen:
                raise BenchbnnError(
                    f"a parameter of shape {tuple(p.shape)} was passed twice; each parameter "
                    "must be either binary or real-valued, once"
                )
            seen.add(id(p))
    return binary_params, real_params


# --- the declaration, checked when a class is defined -------------------------------------------


def _owner(cls: type) -> str:
    return f"optimizer class {cls.__module__}.{cls.__qualname__}"


def _where(cls: type, attribute: str) -> str:
    """``Bop.rule_hparams``: the class of ``cls``'s MRO that declares ``attribute``."""
    for klass in cls.__mro__:
        if attribute in vars(klass):
            label = f"{klass.__qualname__}.{attribute}"
            if klass is BinaryOptimizer and attribute == "real_hparams":
                label += " (the default: adam_hparams())"
            return label
    return f"{cls.__qualname__}.{attribute}"


def _overrides(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(BinaryOptimizer, method)


def _names(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


def _declare(cls: type[BinaryOptimizer]) -> None:
    """Check ``cls``'s declaration and derive ``hparams``, ``rule_keys``, ``latent_weights``,
    ``provides_evaluation_weights`` and the constructor's signature (PluginError otherwise)."""
    owner = _owner(cls)
    own = vars(cls)
    current = [a for a in _CLASS_DECLARATIONS if a in own]
    if current and "hparams" in own:
        raise PluginError(
            f"{owner} declares both hparams (the older spelling, the whole table) and "
            f"{', '.join(current)}; declare the rule's hyperparameters in rule_hparams only "
            f"(hparams is derived from the declarations)"
        )
    if current:
        cls._style = "class"
    elif "hparams" in own:
        cls._style = "legacy"
    if "rule_keys" in own:
        cls._explicit_rule_keys = tuple(own["rule_keys"])
    for attribute in ("state_buffers", "tensor_keys", "derived_keys", "shared_hparams"):
        value = getattr(cls, attribute)
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise PluginError(
                f"{owner}: {attribute} must be a tuple of names, e.g. ('m',), not {value!r}"
            )
        setattr(cls, attribute, tuple(value))
    if "update" in own:
        # a new rule: a multi-tensor version or C++ kernel inherited from the parent computes
        # the parent's rule, so they apply only when declared beside it
        for attribute in ("update_foreach", "update_native", "native_kernels"):
            if attribute not in own:
                setattr(cls, attribute, None)
    _declare_forward(cls, owner)
    if cls._style == "class":
        cls.hparams = _derive_hparams(cls, owner)
    else:
        cls.hparams = tuple(cls.hparams)
    validate_hparams(owner, cls.hparams)
    for h in cls.hparams:
        if h.name in RESERVED_NAMES or not h.name.isidentifier():
            raise PluginError(
                f"{owner}: a hyperparameter may not be called {h.name!r} (names are Python "
                f"identifiers other than {', '.join(RESERVED_NAMES)}); rename it"
            )
    if cls.name:
        try:
            check_name(cls.name, "optimizer")
        except PluginError as exc:
            raise PluginError(f"{owner}: {exc}") from None
    if not isinstance(cls.needs_closure, bool):
        raise PluginError(f"{owner}: needs_closure must be True or False")
    if not isinstance(cls.divergence_advice, str):
        raise PluginError(f"{owner}: divergence_advice must be text")
    cls.provides_evaluation_weights = _overrides(cls, "evaluation_weights")
    check_ste_window(owner, cls.ste_window, cls.hparams, cls.forward)
    check_forward(owner, cls.forward, cls.ste_window, cls.provides_evaluation_weights)
    cls.rule_keys = _check_rule(cls, owner)
    cls.__signature__ = _signature(cls)  # type: ignore[attr-defined]


def _declare_forward(cls: type[BinaryOptimizer], owner: str) -> None:
    """``forward`` from the older ``latent_weights`` where only that is declared; then the
    derived ``latent_weights`` (True unless the weights are set to +-1 when built)."""
    own = vars(cls)
    if "latent_weights" in own and "forward" in own:
        if bool(own["latent_weights"]) != (own["forward"] != "sign"):
            raise PluginError(
                f"{owner} declares latent_weights={own['latent_weights']!r} and "
                f"forward={own['forward']!r}, which contradict each other; drop latent_weights "
                f"(forward replaces it)"
            )
    elif "latent_weights" in own:
        cls.forward = "latent" if own["latent_weights"] else "sign"
    cls.latent_weights = cls.forward != "sign"


def _derive_hparams(cls: type[BinaryOptimizer], owner: str) -> tuple[HParam, ...]:
    """Shared real-valued hyperparameters, the rule's, the options, the other real-valued ones;
    a name declared in two of the tables is refused with both declarations named."""
    tables: dict[str, tuple[HParam, ...]] = {}
    for attribute in ("rule_hparams", "option_hparams", "real_hparams"):
        value = getattr(cls, attribute)
        if not isinstance(value, (tuple, list)) or not all(isinstance(h, HParam) for h in value):
            raise PluginError(
                f"{owner}: {attribute} must be a tuple of benchbnn.HParam, got {value!r}"
            )
        tables[attribute] = tuple(value)
    real = tables["real_hparams"]
    real_names = [h.name for h in real]
    if real and sorted(real_names) != sorted(_ADAM_NAMES):
        raise PluginError(
            f"{owner}: real_hparams are Adam's ({', '.join(_ADAM_NAMES)}), not "
            f"({_names(real_names)}); declare real_hparams = adam_hparams(...) with the defaults "
            f"you want, or () for an optimizer of binary weights only, and put the rule's own "
            f"hyperparameters in rule_hparams"
        )
    declared_in: dict[str, str] = {}
    for attribute, table in tables.items():
        for h in table:
            first = declared_in.setdefault(h.name, attribute)
            if first != attribute:
                raise PluginError(_collision(cls, owner, h.name, first, attribute))
    for name in cls.shared_hparams:
        if name not in real_names:
            raise PluginError(
                f"{owner}: shared_hparams names {name!r}, which {_where(cls, 'real_hparams')} "
                f"does not declare (shared hyperparameters are real-valued ones the rule reads "
                f"too).{did_you_mean(name, real_names)}"
            )
    shared = tuple(h for h in real if h.name in cls.shared_hparams)
    others = tuple(h for h in real if h.name not in cls.shared_hparams)
    return (*shared, *tables["rule_hparams"], *tables["option_hparams"], *others)


def _collision(cls: type, owner: str, name: str, first: str, second: str) -> str:
    if {first, second} == {"rule_hparams", "real_hparams"}:
        fix = _RENAME.get(name, f"rule_{name}")
        return (
            f"{owner}: the rule's hyperparameter {name!r} ({_where(cls, 'rule_hparams')}) has "
            f"the name of the real-valued side's Adam {name!r} ({_where(cls, 'real_hparams')}), "
            f"so one value would silently serve both. Rename the rule's, e.g. "
            f"HParam({fix!r}, ...) with update(..., *, {fix}); if the rule does read Adam's "
            f"{name!r}, list it in shared_hparams instead of declaring it again"
        )
    return (
        f"{owner}: hyperparameter {name!r} is declared in both {_where(cls, first)} and "
        f"{_where(cls, second)}; rename one of them"
    )


def _check_rule(cls: type[BinaryOptimizer], owner: str) -> tuple[str, ...]:
    """``update`` (and ``update_foreach``) against the declaration; returns the rule keys."""
    explicit: tuple[str, ...] | None = cls._explicit_rule_keys
    if cls.update is BinaryOptimizer.update:  # no rule yet: a base for other classes
        return explicit or ()
    P = inspect.Parameter
    for attribute in ("update", "update_foreach", "update_native"):
        raw = inspect.getattr_static(cls, attribute)
        if raw is not None and not isinstance(raw, staticmethod):
            raise PluginError(
                f"{owner}: {attribute} must be a @staticmethod (it is called without self); "
                f"write @staticmethod above def {attribute}(...)"
            )
    signature = inspect.signature(cls.update)
    text = f"{cls.__qualname__}.update{signature}"
    params = list(signature.parameters.values())
    positional = [p.name for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind is P.VAR_POSITIONAL for p in params)
    var_keyword = any(p.kind is P.VAR_KEYWORD for p in params)
    keyword_only = [p for p in params if p.kind is P.KEYWORD_ONLY]
    declared = cls.state_buffers
    if len(positional) < 2 and not var_positional:
        raise PluginError(
            f"{owner}: {text} must take the weight and its gradient first: "
            f"update(w, g, {', '.join((*declared, '*'))}, <hyperparameters>)"
        )
    buffers = tuple(positional[2:])
    if cls._style == "legacy":  # the older spelling passed buffers by position: count them only
        mismatch = len(buffers) > len(declared) or (
            len(buffers) < len(declared) and not var_positional
        )
    else:
        mismatch = buffers != (declared[: len(buffers)] if var_positional else declared)
    if mismatch:
        raise PluginError(
            f"{owner}: {text} takes the state buffers ({_names(buffers)}) after (w, g), but "
            f"{_where(cls, 'state_buffers')} declares ({_names(declared)}); the positional "
            f"parameters after w, g must be the state buffers, by name and in order: declare "
            f"state_buffers = {buffers!r} or write update(w, g, {', '.join((*declared, '*'))}, "
            f"...)"
        )
    names = [p.name for p in keyword_only]
    supplied = {*cls.tensor_keys, *cls.derived_keys}
    for attribute, hook in (("tensor_keys", "tensor_kwargs"), ("derived_keys", "rule_kwargs")):
        keys = getattr(cls, attribute)
        for key in keys:
            if key not in names and not var_keyword:
                raise PluginError(
                    f"{owner}: {attribute} names {key!r} but {text} has no keyword-only "
                    f"parameter {key!r}"
                )
        if keys and not _overrides(cls, hook):
            raise PluginError(
                f"{owner}: {attribute} = {keys!r}, but the class does not override {hook}(), "
                f"which must supply them"
            )
    if explicit is not None:  # the older spelling lists the rule's keys itself
        for key in explicit:
            if key not in names and key not in positional and not var_keyword:
                raise PluginError(
                    f"{owner}: rule_keys names {key!r} but {text} does not take it; add it to "
                    f"update's keyword-only parameters or remove it from rule_keys"
                )
        keys = explicit
    else:
        keys = _rule_keys(cls, owner, text, keyword_only, supplied, var_keyword)
    required = [p.name for p in keyword_only if p.default is P.empty]
    _check_companions(cls, owner, len(declared), required)
    return keys


def _rule_keys(
    cls: type[BinaryOptimizer],
    owner: str,
    text: str,
    keyword_only: list[inspect.Parameter],
    supplied: set[str],
    var_keyword: bool,
) -> tuple[str, ...]:
    """The rule keys derived from ``update``'s keyword-only parameters, each checked against
    the hyperparameters of the binary group."""
    legacy = cls._style == "legacy"
    custom = _overrides(cls, "rule_kwargs")
    if legacy:
        group = {h.name for h in cls.hparams}
    else:
        group = {h.name for h in cls.rule_hparams} | set(cls.shared_hparams)
    real_names = {h.name for h in cls.real_hparams}
    required = [p.name for p in keyword_only if p.default is inspect.Parameter.empty]
    for key in required:
        if key in group or key in supplied or (legacy and custom):
            continue
        if key in real_names:
            fix = _RENAME.get(key, f"rule_{key}")
            raise PluginError(
                f"{owner}: {text} takes {key!r}, a hyperparameter of the real-valued side "
                f"({_where(cls, 'real_hparams')}), not of the rule: list {key!r} in "
                f"shared_hparams if the rule reads Adam's value, or declare the rule's own under "
                f"another name, e.g. HParam({fix!r}, ...) in rule_hparams"
            )
        raise PluginError(
            f"{owner}: {text} takes keyword argument {key!r}, which is not a declared "
            f"hyperparameter of the rule ({_where(cls, 'rule_hparams')}: "
            f"{_names(sorted(group))}).{did_you_mean(key, group)} Rename the argument, declare "
            f"HParam({key!r}, ...) in rule_hparams, or list it in derived_keys or tensor_keys "
            f"if rule_kwargs() or tensor_kwargs() supplies it"
        )
    names = [p.name for p in keyword_only]
    if not legacy and not var_keyword and not custom and not _overrides(cls, "run_closure"):
        for h in cls.rule_hparams:
            if h.name not in names:
                raise PluginError(
                    f"{owner}: the rule's hyperparameter {h.name!r} "
                    f"({_where(cls, 'rule_hparams')}) never reaches the rule: {text} has no "
                    f"keyword-only parameter {h.name!r}. Add it to update (and update_foreach), "
                    f"or declare it in option_hparams if it does not feed the rule"
                )
    return tuple(k for k in names if k not in supplied and (k in group or k in required))


def _check_companions(
    cls: type[BinaryOptimizer], owner: str, buffers: int, required: list[str]
) -> None:
    """``update_foreach`` takes the lists update takes tensors of, and ``update_native`` the
    tensors; both take update's keyword arguments."""
    for attribute, what, parts in (
        ("update_foreach", "lists", "ws, gs and one list per state buffer"),
        ("update_native", "tensors", "w, g and one per state buffer"),
    ):
        hook = getattr(cls, attribute)
        if hook is None:
            continue
        P = inspect.Parameter
        signature = inspect.signature(hook)
        text = f"{cls.__qualname__}.{attribute}{signature}"
        params = list(signature.parameters.values())
        positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
        if not any(p.kind is P.VAR_POSITIONAL for p in params) and len(positional) != 2 + buffers:
            raise PluginError(
                f"{owner}: {text} takes {len(positional)} {what}, but the rule has "
                f"{2 + buffers} tensors ({parts})"
            )
        if any(p.kind is P.VAR_KEYWORD for p in params):
            continue
        taken = {p.name for p in params if p.kind in (P.KEYWORD_ONLY, P.POSITIONAL_OR_KEYWORD)}
        missing = [k for k in required if k not in taken]
        if missing:
            raise PluginError(
                f"{owner}: {text} does not take {_names(missing)}, which update takes; the two "
                f"get the same keyword arguments"
            )


def _signature(cls: type[BinaryOptimizer]) -> inspect.Signature | None:
    """The generic constructor's signature with every hyperparameter and its default (None for
    a class with an ``__init__`` of its own, whose signature is then its own)."""
    for klass in cls.__mro__:
        if klass is BinaryOptimizer:
            break
        if "__init__" in vars(klass):
            return None
    P = inspect.Parameter
    return inspect.Signature(
        [
            P("binary_params", P.POSITIONAL_OR_KEYWORD),
            P("real_params", P.POSITIONAL_OR_KEYWORD, default=()),
            *(P(h.name, P.KEYWORD_ONLY, default=h.default) for h in cls.hparams),
            P("implementation", P.KEYWORD_ONLY, default=None),
            P("context", P.KEYWORD_ONLY, default=None),
        ]
    )


def _sort_hparams(
    cls: type[BinaryOptimizer], given: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Hyperparameters given by name, with the defaults of the others, sorted by declaration
    into the binary group, the real-valued group and the options. Unknown names go to the
    binary group, where validation reports them."""
    if cls._style == "legacy":
        adam = {h.name for h in cls.real_hparams}
        rule = tuple(h for h in cls.hparams if h.name not in adam)
        real = tuple(h for h in cls.hparams if h.name in adam)
        option: tuple[HParam, ...] = ()
    else:
        rule, option, real = cls.rule_hparams, cls.option_hparams, cls.real_hparams
    pick = lambda table: {h.name: given.get(h.name, h.default) for h in table}
    binary, real_values, options = pick(rule), pick(real), pick(option)
    for name in cls.shared_hparams:
        binary[name] = real_values[name]
    known = {*binary, *real_values, *options}
    binary.update({k: v for k, v in given.items() if k not in known})
    return binary, real_values, options
