"""The host side of every optimizer: binary groups and real-valued Adam groups in one object.

A binary-network optimizer updates two kinds of parameters at once. Binary weights follow the
optimizer's own rule; every real-valued parameter (batch norm, full-precision layers, scales)
follows Adam, the role larq's CaseOptimizer plays. :class:`BinaryOptimizer` is a
``torch.optim.Optimizer`` that holds both kinds and knows no optimizer by name: a plugin
subclasses it and supplies the per-tensor rule (:meth:`BinaryOptimizer.update`), the names of
its per-weight state buffers and its hyperparameter table. The base class then provides

* three interchangeable implementations of the same step, chosen by ``implementation``:
  ``"reference"`` runs the rule eagerly one tensor at a time (the readable specification),
  ``"foreach"`` runs the plugin's multi-tensor ``update_foreach`` (or the reference loop when a
  plugin has none), and ``"compiled"`` runs the rule through ``torch.compile`` with dynamic
  shapes on flattened tensors, so one compilation serves every tensor size and the whole rule
  becomes one fused pass over memory;
* the flip statistics (:attr:`flip_count`, :attr:`flip_ratio`) produced by the rule itself,
  kept as device tensors so that reading them (and syncing a GPU) is the caller's choice;
* state that round-trips through ``state_dict()`` (per-weight buffers, the step counter and any
  extra state such as a random generator).

Small building blocks (:func:`ema_`, :func:`flip_`, :func:`counter_uniform`, :func:`adam_`)
are public so that plugins compose their rules from the same pieces.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from benchbnn.core.binary import sgn0
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.specs import HParam, resolve_hparams

__all__ = [
    "ADAM_BUFFERS",
    "IMPLEMENTATIONS",
    "BinaryOptimizer",
    "adam_",
    "adam_foreach_",
    "adam_hparams",
    "adam_kwargs",
    "adam_step_size",
    "compile_unavailable_reason",
    "counter_uniform",
    "ema_",
    "ema_foreach_",
    "flip_",
    "flip_above_foreach_",
    "sum_counts",
]

IMPLEMENTATIONS = ("reference", "foreach", "compiled")

#: Environment variable that picks the implementation when the constructor is not told.
IMPLEMENTATION_ENV = "BENCHBNN_OPTIMIZER_IMPLEMENTATION"

#: With ``implementation=None`` the compiled path is used from this many weights on. Compiling
#: costs seconds once per process; below this size a step is so cheap that it never pays back.
COMPILE_MIN_WEIGHTS = 1_000_000

ADAM_BUFFERS = ("exp_avg", "exp_avg_sq")

Rule = Callable[..., Any]


# --- building blocks for update rules --------------------------------------------------------


def ema_(average: torch.Tensor, x: torch.Tensor, rate: Any) -> torch.Tensor:
    """``average <- (1 - rate) * average + rate * x`` in place (no bias correction)."""
    return average.mul_(1 - rate).add_(rate * x)


def ema_foreach_(averages: list[torch.Tensor], xs: list[torch.Tensor], rate: float) -> None:
    """:func:`ema_` over lists of tensors with multi-tensor kernels (same rounding)."""
    torch._foreach_mul_(averages, 1 - rate)
    torch._foreach_add_(averages, torch._foreach_mul(xs, rate))


def flip_(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negate ``w`` where ``mask`` is true; return how many weights flipped (0-d int64)."""
    w.copy_(torch.where(mask, -w, w))
    return mask.sum()


def flip_above_foreach_(
    ws: list[torch.Tensor], signals: list[torch.Tensor], threshold: float
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


def counter_uniform(like: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Float32 uniforms in [0, 1) shaped like ``like``, a pure function of (``key``, position).

    A counter-based generator: each value hashes its row-major index together with ``key`` (an
    int64 tensor below 2**31, drawn from an optimizer-owned ``torch.Generator``), so a compiled
    update makes its random numbers inside the fused kernel instead of reading a noise tensor,
    and every implementation and device produces the same bits. Values are multiples of
    2**-24, so ``u < 1`` always holds and ``u < 0`` never does.
    """
    index = torch.arange(like.numel(), device=like.device, dtype=torch.int64).view(like.shape)
    bits = _mix32(_mix32(index & _MASK32) ^ key)
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


_compiled_rules: dict[Rule, Rule] = {}

#: Inductor options of the compiled rules. With dynamic shapes the C++ backend decides whether
#: to parallelize a loop from the size of the first tensor it compiled for (or of whichever
#: tensor filled the on-disk FX graph cache), so a small first tensor left every later step
#: single-threaded. ``cpp.dynamic_threads`` always emits the OpenMP region and lets the runtime
#: use the current thread count, whatever size compiled first. Triton ignores it.
_COMPILE_OPTIONS = {"cpp.dynamic_threads": True}


def _compiled(rule: Rule) -> Rule:
    """One compiled wrapper per rule, shared by every optimizer instance in the process."""
    if rule not in _compiled_rules:
        _compiled_rules[rule] = torch.compile(
            rule, dynamic=True, fullgraph=True, options=_COMPILE_OPTIONS
        )
    return _compiled_rules[rule]


def _kernel_arg(value: Any, device: torch.device) -> Any:
    # Floats become 0-d float64 tensors so that a changed (scheduled) value never triggers a
    # recompilation, and derived scalars such as ``1 - gamma`` round exactly as Python's do
    # before the product with a float32 tensor casts them. Other values stay constants.
    if isinstance(value, float):
        dtype = torch.float32 if device.type == "mps" else torch.float64
        return torch.full((), value, dtype=dtype, device=device)
    return value


# --- the optimizer ---------------------------------------------------------------------------


class BinaryOptimizer(torch.optim.Optimizer):
    """Binary weights follow :meth:`update`; real-valued parameters follow Adam.

    Subclasses set the class attributes and implement :meth:`update` (one tensor, in place,
    returning how many weights flipped); ``update_foreach`` is an optional multi-tensor version.
    The constructor takes the hyperparameter values sorted into ``binary`` (the binary group),
    ``real`` (the Adam group) and ``options`` (checked like the others but kept out of the
    groups, in :attr:`options`), and validates all of them against :attr:`hparams`.
    ``param_groups[0]`` holds the binary weights (``kind="binary"``) with the rule's
    hyperparameters, ``param_groups[1]`` the real-valued parameters (``kind="real"``) with
    ``lr``, ``beta1``, ``beta2``, ``eps``. Binary groups carry ``lr`` too (unused by a flip
    rule) because ``torch.optim.lr_scheduler`` insists that every group has one; each group
    also counts its ``step`` (Adam's bias correction, like Keras, uses one count per optimizer).
    Either list may be empty.

    After every :meth:`step`, :attr:`flip_count` is a 0-d int64 tensor on the weights' device
    with the number of binary weights the rule flipped (for latent-weight rules: sign changes),
    and :attr:`flip_ratio` that count divided by :attr:`num_binary_weights`.

    Writing an optimizer takes a hyperparameter table, a constructor that sorts the values
    into the two groups, and the rule for one tensor, built from the public pieces here::

        class MyBop(BinaryOptimizer):
            hparams = (HParam("threshold", 1e-8, low=0.0, high=1.0), *adam_hparams())
            state_buffers = ("m",)
            rule_keys = ("threshold",)

            def __init__(self, binary_params, real_params=(), *, threshold=1e-8, lr=0.01,
                         beta1=0.9, beta2=0.999, eps=1e-7, implementation=None):
                super().__init__(binary_params, real_params, binary={"threshold": threshold},
                                 real={"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps},
                                 implementation=implementation)

            @staticmethod
            def update(w, g, m, *, threshold):
                ema_(m, g, 1e-4)
                return flip_(w, w * m > threshold)

    ``update`` receives plain floats on the reference path and 0-d tensors on the compiled one,
    so write it with tensor operations only and no Python branching on tensor values (that is
    also what keeps host syncs out of the step). A rule that torch.compile cannot capture falls
    back to the reference path with one warning. Real-valued groups run :func:`adam_` (through
    multi-tensor kernels unless ``implementation="reference"``).
    """

    #: Hyperparameters accepted by the constructor, with valid ranges (checked on construction).
    hparams: ClassVar[tuple[HParam, ...]] = ()
    #: Names of the per-weight buffers the rule keeps for every binary weight (zeros at start).
    state_buffers: ClassVar[tuple[str, ...]] = ()
    #: Group keys passed to :meth:`update` as keyword arguments (see :meth:`rule_kwargs`).
    rule_keys: ClassVar[tuple[str, ...]] = ()
    #: True when the binary parameters are real-valued latent weights (no sgn0 on build).
    latent_weights: ClassVar[bool] = False
    #: Optional multi-tensor rule: ``update_foreach(ws, gs, *buffer_lists, **kwargs) -> count``.
    update_foreach: ClassVar[Rule | None] = None

    def __init__(
        self,
        binary_params: Iterable[torch.Tensor],
        real_params: Iterable[torch.Tensor] = (),
        *,
        binary: Mapping[str, Any],
        real: Mapping[str, Any],
        options: Mapping[str, Any] | None = None,
        implementation: str | None = None,
    ) -> None:
        owner = f"optimizer {type(self).__name__}"
        options = dict(options or {})
        values = resolve_hparams(owner, self.hparams, {**binary, **real, **options})
        #: Validated hyperparameters that are not per-group (e.g. a seed), by name.
        self.options = {k: values[k] for k in options}
        binary_params, real_params = _check_params(binary_params, real_params)
        missing = sorted({"lr", "beta1", "beta2", "eps"} - set(real))
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
        self._compile_failed = False
        self.implementation = self._choose_implementation()
        with torch.no_grad():
            if not self.latent_weights:
                for p in binary_params:
                    p.copy_(sgn0(p))
            self._init_state()

    # -- what subclasses provide ------------------------------------------------------------

    @staticmethod
    def update(w: torch.Tensor, g: torch.Tensor, *buffers: torch.Tensor, **kwargs: Any):
        """Update one binary tensor in place and return the number of flips (0-d int64)."""
        raise NotImplementedError

    def rule_kwargs(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of :meth:`update` for this step (default: the ``rule_keys``)."""
        return {key: group[key] for key in self.rule_keys}

    def tensor_kwargs(self, group: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """Per-tensor keyword arguments (e.g. random keys), one dict per param in the group."""
        return None

    def extra_state(self) -> dict[str, Any]:
        """State outside ``self.state`` that a checkpoint must keep (e.g. a generator)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # -- properties every optimizer has ----------------------------------------------------------

    @property
    def flip_ratio(self) -> torch.Tensor:
        """Flips in the last step divided by the number of binary weights (0-d float tensor)."""
        return self.flip_count / max(self.num_binary_weights, 1)

    def state_bytes_per_binary_weight(self) -> float:
        """Bytes of optimizer state kept per binary weight (4.0 per float32 buffer)."""
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
        big = self.num_binary_weights >= COMPILE_MIN_WEIGHTS
        if big and compile_unavailable_reason(self._device) is None:
            return "compiled"
        return "foreach"

    # -- state -------------------------------------------------------------------------------

    def _init_state(self) -> None:
        for group in self.param_groups:
            names = self.state_buffers if group["kind"] == "binary" else ADAM_BUFFERS
            for p in group["params"]:
                for name in names:
                    self.state[p][name] = torch.zeros_like(p, memory_format=torch.preserve_format)

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
        self.load_extra_state(extra)

    # -- the step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; record the flips of binary weights."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
        compile_allowed: bool = True,
    ) -> torch.Tensor | None:
        for _, p in chosen:
            if p.grad.is_sparse:
                raise BenchbnnError(f"{type(self).__name__} does not support sparse gradients")
        extra = [per_tensor[i] if per_tensor else {} for i, _ in chosen]
        items = [
            (p, p.grad, [self.state[p][n] for n in buffer_names], e)
            for (_, p), e in zip(chosen, extra)
        ]
        mode = self.implementation
        if mode == "compiled" and not compile_allowed:
            mode = "foreach"
        if mode == "foreach" and rule_foreach is not None:
            lists = [list(column) for column in zip(*[[p, g, *bufs] for p, g, bufs, _ in items])]
            per = {k: [e[k] for *_, e in items] for k in extra[0]}
            return rule_foreach(*lists, **kwargs, **per)
        if mode == "compiled" and not self._compile_failed:
            return self._run_compiled(rule, items, kwargs)
        return _run_reference(rule, items, kwargs, self._device)

    def _run_compiled(self, rule: Rule, items: list, kwargs: dict[str, Any]) -> torch.Tensor:
        fn = _compiled(rule)
        args = {k: _kernel_arg(v, self._device) for k, v in kwargs.items()}
        counts = []
        for p, g, bufs, extra in items:
            tensors = (p, g, *bufs)
            if self._compile_failed or not all(t.is_contiguous() for t in tensors):
                counts.append(rule(p, g, *bufs, **kwargs, **extra))
                continue
            flat = [_flat_alias(t) for t in tensors]
            try:
                counts.append(fn(*flat, **args, **extra))
            except Exception as exc:
                self._compile_failed = True
                _warn_once(
                    f"benchbnn: torch.compile failed for {getattr(rule, '__qualname__', rule)} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    "falling back to the reference implementation"
                )
                counts.append(rule(p, g, *bufs, **kwargs, **extra))
        return sum_counts([c for c in counts if c is not None], self._device)


def _flat_alias(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor sharing ``t``'s memory and version counter that is not a view.

    torch.compile guards on the shape of a view's base, so passing ``t.view(-1)`` would compile
    once per parameter rank; a plain alias keeps one compilation for every size.
    """
    return torch.Tensor._make_subclass(torch.Tensor, t.detach().view(-1))


def _run_reference(rule: Rule, items: list, kwargs: dict[str, Any], device: torch.device):
    counts = [rule(p, g, *bufs, **kwargs, **extra) for p, g, bufs, extra in items]
    counts = [c for c in counts if c is not None]
    return sum_counts(counts, device) if counts else None


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
