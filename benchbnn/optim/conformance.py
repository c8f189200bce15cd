"""The optimizer conformance kit: properties every benchbnn optimizer must have.

``benchbnn check NAME...`` runs them from the command line,
:func:`benchbnn.testing.conformance_tests` under pytest, and :func:`check_optimizer` /
:func:`check_property` from Python. Each property is a small function that runs an optimizer
on small tensors (three binary tensors and one
real-valued one) for at most a few hundred steps under controlled gradients
(:func:`benchbnn.optim.testing.exact_gradients`) and returns a :class:`PropertyResult`: passed,
failed (with a minimal reproducer: the seed, shapes, hyperparameters, step and offending values,
and a short Python snippet) or skipped (with the reason). Optimizers that declare
``needs_closure`` are stepped with a closure whose loss is ``sum(p * g)``, so that its gradient
is the prescribed one at whatever weights the optimizer writes in before each call (several
calls per step for Monte Carlo optimizers such as BayesBiNN). Every optimizer is built with a
run context, as the engine builds it (:func:`benchbnn.optim.testing.run_context`: 1,000
training examples, the property's seed), so that optimizers that need the training-set size
or seed their generators from the run's seed can be checked.

The properties (names as ``benchbnn check --property`` takes them):

* ``binary-weights``: after every step the binary weights are exactly +-1 (``forward="sign"``);
  for ``"latent"`` and ``"identity"`` optimizers the weights evaluated inside
  ``evaluation_weights()`` (their signs for ``"latent"``, as binary layers use them; every
  sampled network for :class:`~benchbnn.optim.base.EvaluationSamples`) are +-1, and the training
  weights are back in place afterwards;
* ``flip-count``: ``flip_count`` after each step equals the number of weights whose sign
  (``sgn0``) changed in that step;
* ``state-dict``: a ``state_dict()`` saved mid-run (through ``torch.save``) and loaded into a
  fresh optimizer, built with another seed on copied weights, continues bit-identically
  (weights, flip counts and state buffers);
* ``foreach`` and ``compiled``: the ``"foreach"`` and ``"compiled"`` implementations give
  bit-identical weights and flip counts to ``"reference"`` at every step on CPU. A rule that
  torch.compile cannot compile fails ``compiled`` (with the compiler's error and the fix:
  tensor operations only, no Python branch on a tensor value); ``compiled`` is skipped, with
  the reason, only where torch.compile itself is unavailable. The
  one allowance is the rounding rule of the project's tests: compiled kernels may round
  real-valued (latent) weights differently in the last bits, so for ``forward="latent"`` and
  ``"identity"`` the compiled weights must have the reference's signs and flip counts exactly
  and its values within :data:`ULPS` float32 ulps;
* ``determinism``: two optimizers built with the same seed and given the same gradients follow
  the same trajectory (this covers optimizers that draw random numbers, such as pbop);
* ``hparam-ranges``: every declared hyperparameter can be built and stepped at its default and
  at the finite, closed ends of its valid range (booleans at both values), and every
  schedulable one accepts a schedule that sweeps its valid range;
* ``dtypes``: float16, bfloat16 and float64 weights behave as float32 weights
  (:func:`benchbnn.optim.testing.dtype_problems`).

* ``data-parallel``: two processes (gloo, started with ``torch.multiprocessing``) step the
  optimizer on their averaged gradients, as data-parallel training does, and must end with
  identical weights and state (no rank-dependent randomness or arithmetic). The ranks are fresh
  processes: they import the plugin module the optimizer came from (``-p``,
  ``BENCHBNN_PLUGINS``, ``register_plugin(module)``) or its class; an optimizer no fresh
  process can import (a class defined in a function, a plugin object that is no importable
  module) is skipped with the reason before any process starts.

A failure's snippet runs as printed in a fresh ``python -c``: for an optimizer from a plugin
module that no fresh process discovers (the registry's provenance "local module" or
"in-process"), it first puts the module's folder on ``sys.path`` and registers the module; for
a class, it imports the class.
"""

from __future__ import annotations

import copy
import importlib
import io
import logging
import math
import sys
import traceback
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from benchbnn.core.binary import sgn0
from benchbnn.core.plugins import (
    IN_PROCESS,
    LOCAL_MODULE,
    get_optimizer,
    get_registry,
    list_optimizers,
    register_plugin,
)
from benchbnn.core.specs import HParam, OptimizerSpec
from benchbnn.optim.base import EvaluationSamples, compile_unavailable_reason
from benchbnn.optim.testing import dtype_problems, exact_gradients, initial_weights, run_context

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "PROPERTIES",
    "SHAPES",
    "PropertyResult",
    "check_optimizer",
    "check_property",
    "resolve_spec",
]

#: Shapes of the binary tensors: a small convolution, a dense layer and a vector.
SHAPES: tuple[tuple[int, ...], ...] = ((8, 3, 3, 3), (20, 12), (6,))
#: Shape of the one real-valued parameter (stepped by the optimizer's Adam side).
REAL_SHAPE: tuple[int, ...] = (5,)
DEFAULT_STEPS = 60
DEFAULT_SEED = 0
#: Steps taken at each hyperparameter value by ``hparam-ranges``.
RANGE_STEPS = 3
#: Offending values shown in a failure.
SHOWN = 5


@dataclass
class PropertyResult:
    """What one property found for one optimizer.

    ``status`` is "passed", "failed" or "skipped"; ``reason`` says why (for a failure: the step
    and the offending values); ``details`` holds the reproducer's parameters (seed, shapes,
    hyperparameters, step) and ``snippet`` a short Python program that reproduces a failure.
    """

    optimizer: str
    prop: str
    status: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    snippet: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def report(self) -> str:
        """Human-readable lines: the verdict and, for a failure, the reproducer."""
        head = f"{self.optimizer}: {self.prop}: {self.status}"
        if self.reason:
            head += f" ({self.reason})" if self.status != "failed" else f": {self.reason}"
        lines = [head]
        if self.status == "failed":
            for key, value in self.details.items():
                lines.append(f"    {key}: {value}")
            if self.snippet:
                lines.append("    reproduce with:")
                lines += [f"        {line}" for line in self.snippet.splitlines()]
        return "\n".join(lines)


class _Failure(Exception):
    def __init__(self, message: str, step: int | None = None, **values: Any) -> None:
        super().__init__(message)
        self.step = step
        self.values = values


class _Skip(Exception):
    pass


def resolve_spec(optimizer: Any) -> OptimizerSpec:
    """An OptimizerSpec from a registered name, a spec, or a BinaryOptimizer subclass."""
    if isinstance(optimizer, OptimizerSpec):
        return optimizer
    if isinstance(optimizer, str):
        return get_optimizer(optimizer)
    if isinstance(optimizer, type):
        return OptimizerSpec.from_class(optimizer)
    raise TypeError(f"expected an optimizer name, spec or class, got {optimizer!r}")


# --- where an optimizer comes from: what a fresh process needs to get it -------------------


@dataclass(frozen=True)
class _Origin:
    """How a fresh Python process (a reproducer snippet, a data-parallel rank) gets ``spec``.

    ``name``: the registered name to look up (None: build from the class ``class_ref``, a
    ``(module, qualname)`` pair; with a ``problem``, the optimizer's name for messages).
    ``module``/``plugin``: a plugin module to import and register first (None for an installed
    distribution, which every process discovers). ``folder``: where that module (or the
    class's module) is imported from. ``problem``: why no fresh process can get the optimizer
    ("" when one can).
    """

    name: str | None
    module: str | None = None
    plugin: str | None = None
    folder: str | None = None
    class_ref: tuple[str, str] | None = None
    problem: str = ""


def _import_root(module: types.ModuleType) -> str | None:
    """The sys.path folder ``module`` was imported from (None for a module without a file)."""
    filename = getattr(module, "__file__", None)
    if not filename:
        return None
    path = Path(filename).resolve()
    depth = module.__name__.count(".") + (path.stem == "__init__")
    return str(path.parents[depth]) if depth < len(path.parents) else None


def _importable(obj: Any, name: str) -> types.ModuleType | None:
    """``obj`` when it is the module that ``import name`` gives in this process and it comes
    from a file (so a fresh process can import it too); otherwise None."""
    if not isinstance(obj, types.ModuleType) or sys.modules.get(name) is not obj:
        return None
    return obj if getattr(obj, "__file__", None) and name != "__main__" else None


def _class_origin(spec: OptimizerSpec) -> _Origin:
    """The origin of an optimizer given as a class (or an unregistered spec of one)."""
    factory = spec.factory
    unloadable = (
        f"{spec.name!r} was given as an object, not a registered name, and a fresh process "
        f"cannot import it"
    )
    if not isinstance(factory, type) or OptimizerSpec.from_class(factory) != spec:
        return _Origin(spec.name, problem=f"{unloadable} (a spec not built from its class alone)")
    module = _importable(sys.modules.get(factory.__module__), factory.__module__)
    found: Any = module
    for part in factory.__qualname__.split("."):
        found = getattr(found, part, None)
    if module is None or found is not factory:
        return _Origin(
            spec.name,
            problem=f"{unloadable} (define the class at the top level of an importable module, "
            f"or register its plugin: install it or load it with BENCHBNN_PLUGINS)",
        )
    return _Origin(
        None,
        folder=_import_root(module),
        class_ref=(factory.__module__, factory.__qualname__),
    )


def _origin(spec: OptimizerSpec) -> _Origin:
    """Where ``spec`` comes from, read from the registry's provenance of its name."""
    registry = get_registry()
    entry = registry.entries.get("optimizer", {}).get(spec.name)
    if entry is None or (entry.spec is not spec and entry.spec.factory is not spec.factory):
        return _class_origin(spec)
    info = entry.plugin
    if info.distribution not in (LOCAL_MODULE, IN_PROCESS):
        return _Origin(spec.name)  # an installed distribution: every process discovers it
    module = _importable(registry.plugin_manager.get_plugin(info.name), info.module)
    if module is None:
        return _Origin(
            spec.name,
            problem=f"{spec.name!r} was registered in this process from {info.module!r}, which "
            f"a fresh process cannot import (install the plugin, or load a module of it with "
            f"BENCHBNN_PLUGINS)",
        )
    return _Origin(spec.name, info.module, info.name, _import_root(module))


def _load(origin: _Origin) -> OptimizerSpec:
    """In a fresh process: make the optimizer of ``origin`` known and return its spec."""
    if origin.folder and origin.folder not in sys.path:
        sys.path.insert(0, origin.folder)
    if origin.class_ref is not None:
        found: Any = importlib.import_module(origin.class_ref[0])
        for part in origin.class_ref[1].split("."):
            found = getattr(found, part)
        return OptimizerSpec.from_class(found)
    if origin.module is not None:
        register_plugin(importlib.import_module(origin.module), origin.plugin)
    return get_optimizer(cast(str, origin.name))


# --- running an optimizer under controlled gradients ------------------------------------------


@dataclass
class _Setup:
    spec: OptimizerSpec
    seed: int
    steps: int
    hparams: dict[str, Any]
    shapes: tuple[tuple[int, ...], ...] = SHAPES

    def __post_init__(self) -> None:
        grads = exact_gradients((*self.shapes, REAL_SHAPE), max(self.steps, 1), seed=self.seed)
        self.grads = [step[: len(self.shapes)] for step in grads]
        self.real_grads = [step[len(self.shapes) :] for step in grads]
        latent = self.spec.forward != "sign"
        self.init = initial_weights(self.shapes, latent=latent, seed=self.seed)
        self.real_init = [torch.linspace(-0.5, 0.5, math.prod(REAL_SHAPE)).reshape(REAL_SHAPE)]


class _Run:
    """One optimizer on copies of the setup's weights."""

    def __init__(
        self,
        setup: _Setup,
        implementation: str = "reference",
        *,
        seed: int | None = None,
        hparams: Mapping[str, Any] | None = None,
        init: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.setup = setup
        init = setup.init if init is None else init
        self.params = [torch.nn.Parameter(t.detach().clone()) for t in init]
        self.real = [torch.nn.Parameter(t.detach().clone()) for t in setup.real_init]
        seed = setup.seed if seed is None else seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.opt = setup.spec.build(
                self.params,
                self.real,
                context=run_context(seed, setup.steps),
                **dict(setup.hparams if hparams is None else hparams),
            )
        self.opt.implementation = implementation
        self.needs_closure = bool(
            setup.spec.needs_closure or getattr(self.opt, "needs_closure", False)
        )

    def step(self, t: int) -> None:
        grads = [*self.setup.grads[t], *self.setup.real_grads[t]]
        everything = [*self.params, *self.real]
        if self.needs_closure:

            def closure() -> torch.Tensor:
                for p in everything:
                    p.grad = None
                loss = cast(
                    torch.Tensor, sum((p * g.to(p.dtype)).sum() for p, g in zip(everything, grads))
                )
                loss.backward()
                return loss.detach()

            self.opt.step(closure)
        else:
            for p, g in zip(everything, grads):
                p.grad = g.to(p.dtype).clone()
            self.opt.step()

    def weights(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    def flips(self) -> int:
        return int(self.opt.flip_count)

    def buffers(self) -> dict[str, list[torch.Tensor]]:
        return {
            name: [self.opt.state[p][name].detach().clone() for p in self.params]
            for name in getattr(self.opt, "state_buffers", ())
        }


def _offending(mask: torch.Tensor, *tensors: torch.Tensor) -> dict[str, Any]:
    """Up to SHOWN positions where ``mask`` holds and the tensors' values there."""
    where = mask.nonzero()[:SHOWN]
    out: dict[str, Any] = {"positions": [tuple(int(i) for i in w) for w in where]}
    for k, t in enumerate(tensors):
        out[f"values{k or ''}"] = [t[tuple(w)].item() for w in where]
    return out


#: Compiled kernels may round real-valued (latent) weights differently in the last bits: their
#: signs and flip counts must agree exactly, their values within this many float32 ulps.
ULPS = 4


def _compare(label: str, t: int, a: _Run, b: _Run, *, buffers: bool = True, ulps: int = 0) -> None:
    """Raise _Failure where ``b`` departs bit for bit from ``a`` after step ``t`` (with
    ``ulps``: real-valued weights within that many ulps, with the same signs)."""
    fa, fb = a.flips(), b.flips()
    for i, (x, y) in enumerate(zip(a.params, b.params)):
        same = (x == y) | (x.isnan() & y.isnan())
        if ulps:
            tolerance = ulps * torch.finfo(torch.float32).eps
            scale = float(x.detach().abs().max()) if x.numel() else 0.0
            close = (x - y).abs() <= tolerance * (x.abs() + scale)
            same = same | (close & (sgn0(x) == sgn0(y)))
        if not bool(same.all()):
            found = _offending(~same, x.detach(), y.detach())
            raise _Failure(
                f"{label}: weights differ after step {t + 1} "
                f"({int((~same).sum())} of tensor {i}, shape {tuple(x.shape)})",
                t + 1,
                tensor=i,
                positions=found["positions"],
                expected=found["values"],
                got=found["values1"],
            )
    if fa != fb:
        raise _Failure(
            f"{label}: flip_count {fb} against {fa} after step {t + 1}", t + 1, expected=fa, got=fb
        )
    if buffers:
        xb, yb = a.buffers(), b.buffers()
        for name, xs in xb.items():
            for i, (xt, yt) in enumerate(zip(xs, yb.get(name, []))):
                same = (xt == yt) | (xt.isnan() & yt.isnan())
                if xt.shape != yt.shape or xt.dtype != yt.dtype or not bool(same.all()):
                    raise _Failure(
                        f"{label}: state buffer {name!r} of tensor {i} differs after step {t + 1}",
                        t + 1,
                        buffer=name,
                        tensor=i,
                    )


# --- the properties ---------------------------------------------------------------------------


def _evaluated(run: _Run) -> list[tuple[str, list[torch.Tensor]]]:
    """The weights binary layers would evaluate, per network, inside evaluation_weights()."""
    forward = run.setup.spec.forward
    networks: list[tuple[str, list[torch.Tensor]]] = []

    def current() -> list[torch.Tensor]:
        ws = run.weights()
        return [sgn0(w) for w in ws] if forward == "latent" else ws

    with torch.no_grad(), run.opt.evaluation_weights() as samples:
        if samples is None:
            networks.append(("the evaluated network", current()))
        elif isinstance(samples, EvaluationSamples) and samples.count >= 1:
            for i in range(min(samples.count, 8)):
                samples.draw(i)
                networks.append((f"sampled network {i}", current()))
        else:
            raise _Failure(
                f"evaluation_weights() yielded {samples!r}; yield None or "
                f"EvaluationSamples(count >= 1, draw)"
            )
    return networks


def _binary_weights(setup: _Setup) -> str:
    run = _Run(setup)
    forward = setup.spec.forward
    for t in range(setup.steps):
        run.step(t)
        if forward == "sign":
            networks = [("the binary weights", run.weights())]
        else:
            before = run.weights()
            networks = _evaluated(run)
            after = run.weights()
            for i, (x, y) in enumerate(zip(before, after)):
                if not torch.equal(x, y):
                    raise _Failure(
                        f"evaluation_weights() did not put the training weights back "
                        f"(tensor {i}) after step {t + 1}",
                        t + 1,
                    )
        for what, ws in networks:
            for i, w in enumerate(ws):
                bad = ~((w == 1) | (w == -1))
                if bool(bad.any()):
                    found = _offending(bad, w)
                    raise _Failure(
                        f"{what}: {int(bad.sum())} weights of tensor {i} (shape "
                        f"{tuple(w.shape)}) are not +-1 after step {t + 1}",
                        t + 1,
                        tensor=i,
                        positions=found["positions"],
                        values=found["values"],
                    )
    return f"forward={forward!r}, {setup.steps} steps"


def _flip_count(setup: _Setup) -> str:
    run = _Run(setup)
    total = 0
    for t in range(setup.steps):
        before = [sgn0(w) for w in run.weights()]
        run.step(t)
        changed = sum(int((b != sgn0(w)).sum()) for b, w in zip(before, run.weights()))
        got = run.flips()
        if got != changed:
            raise _Failure(
                f"flip_count is {got} after step {t + 1}, but {changed} weights changed sign",
                t + 1,
                flip_count=got,
                sign_changes=changed,
            )
        total += changed
    return f"{total} flips in {setup.steps} steps" + (" (none: a weak check)" if not total else "")


def _state_dict(setup: _Setup) -> str:
    k = max(setup.steps // 2, 1)
    a = _Run(setup)
    for t in range(k):
        a.step(t)
    buffer = io.BytesIO()
    torch.save(a.opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    b = _Run(setup, seed=setup.seed + 1, init=a.weights())
    with torch.no_grad():
        for p, w in zip(b.params, a.params):
            p.copy_(w)
        for p, w in zip(b.real, a.real):
            p.copy_(w)
    b.opt.load_state_dict(copy.deepcopy(saved))
    for t in range(k, setup.steps):
        a.step(t)
        try:
            b.step(t)
        except Exception as exc:
            raise _Failure(
                f"the restored optimizer fails at step {t + 1}: {type(exc).__name__}: {exc}",
                t + 1,
            ) from exc
        _compare(f"restored after step {k}", t, a, b)
    return f"saved after step {k}, continued to step {setup.steps}"


def _compile_failure(optimizer: Any) -> str:
    """The ``compiled`` failure of a rule that torch.compile could not compile: the error (its
    first line, :attr:`BinaryOptimizer.compile_error`) and what to change in the rule."""
    error = getattr(optimizer, "compile_error", "") or f"{type(optimizer).__qualname__}"
    return (
        f"torch.compile failed for {error}, so 'compiled' would run the "
        f"reference implementation instead. A rule must compile as one graph: use tensor "
        f"operations only and never branch in Python on a tensor value (no "
        f"'if (m > 0).any():', no .item(); use torch.where or a mask instead); see "
        f"'Implementations, and what compiled requires' in docs/plugins.md"
    )


def _agreement(setup: _Setup, implementation: str) -> str:
    if implementation == "compiled":
        reason = compile_unavailable_reason("cpu")
        if reason is not None:
            raise _Skip(f"torch.compile unavailable: {reason}")
    a = _Run(setup, "reference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        b = _Run(setup, implementation)
        for t in range(setup.steps):
            a.step(t)
            b.step(t)
            if getattr(b.opt, "_compile_failed", False):
                raise _Failure(_compile_failure(b.opt), t + 1)
            # the rounding rule of the project's tests: binary weights bit for bit; latent
            # (real-valued) weights of a compiled rule to within a few ulps, same signs
            ulps = ULPS if implementation == "compiled" and setup.spec.forward != "sign" else 0
            _compare(f"{implementation} against reference", t, a, b, buffers=False, ulps=ulps)
    if implementation == "foreach" and getattr(type(b.opt), "update_foreach", None) is None:
        return "no update_foreach: foreach runs the reference loop"
    if ulps:
        return f"{setup.steps} steps: same signs and flips, latent values within {ULPS} ulps"
    return f"{setup.steps} steps bit-identical"


def _determinism(setup: _Setup) -> str:
    a, b = _Run(setup), _Run(setup)
    for t in range(setup.steps):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(setup.seed + t)
            a.step(t)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(setup.seed + t)
            b.step(t)
        _compare("a second build with the same seed", t, a, b)
    return f"{setup.steps} steps identical"


def _range_values(h: HParam) -> list[tuple[str, Any]]:
    values: list[tuple[str, Any]] = [("default", h.default)]
    if h.kind is bool:
        return [("default", h.default), ("other", not h.default)]
    for label, end, is_open in (("low", h.low, h.low_open), ("high", h.high, h.high_open)):
        if end is None or is_open or not math.isfinite(end):
            continue
        values.append((label, h.kind(end) if h.kind in (int, float) else end))
    return values


def _schedule_for(h: HParam) -> str | None:
    """``polynomial:START:END`` sweeping the closed part of the valid range (an open or missing
    end is replaced by the default)."""
    low = h.low if h.low is not None and not h.low_open else h.default
    high = h.high if h.high is not None and not h.high_open else h.default
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return f"polynomial:{float(low)!r}:{float(high)!r}"


def _hparam_ranges(setup: _Setup) -> str:
    from benchbnn.optim.schedules import apply_schedules, validate_schedules

    spec = setup.spec
    steps = min(RANGE_STEPS, setup.steps)
    tried = 0
    for h in spec.hparams:
        for label, value in _range_values(h):
            hparams = {**setup.hparams, h.name: value}
            try:
                run = _Run(setup, hparams=hparams)
                for t in range(steps):
                    run.step(t)
            except Exception as exc:
                raise _Failure(
                    f"{h.name}={value!r} ({label} of {h.valid_range}) is refused: "
                    f"{type(exc).__name__}: {exc}",
                    hparams=hparams,
                ) from exc
            tried += 1
        if not h.schedulable:
            continue
        text = _schedule_for(h)
        if text is None:
            continue
        total = 4
        try:
            schedules = validate_schedules(spec, {h.name: text}, epochs=2, steps_per_epoch=2)
            run = _Run(setup)
            for t in range(min(total, setup.steps)):
                apply_schedules(run.opt, schedules, t, 2, total)
                run.step(t)
        except Exception as exc:
            raise _Failure(
                f"the schedule {text} of {h.name} over its valid range {h.valid_range} is "
                f"refused: {type(exc).__name__}: {exc}",
                schedule={h.name: text},
            ) from exc
        tried += 1
    return f"{tried} values and schedules, {steps} steps each"


def _dtypes(setup: _Setup) -> str:
    problems = dtype_problems(
        setup.spec, steps=setup.steps, hparams=setup.hparams or None, seed=setup.seed
    )
    if problems:
        raise _Failure("; ".join(problems), problems=problems)
    return "float16, bfloat16 and float64 weights behave as float32"


#: The properties in the order they run: name -> (function, one-line description).
#: Processes of the data-parallel property (gloo on the CPU, whatever devices the machine has).
DATA_PARALLEL_RANKS = 2


def _data_parallel_rank(
    rank: int, origin: _Origin, seed: int, steps: int, hparams: dict[str, Any], folder: str
) -> None:
    """One rank (a fresh process): get the optimizer from ``origin``, then run
    :func:`_data_parallel_steps`. An exception is written to ``folder/rank{rank}.error`` and
    the rank exits with status 1: an exception left to torch.multiprocessing would leave a
    ``pytorch-errorfile-*.pickle`` behind in the system's temporary folder."""
    try:
        _data_parallel_steps(rank, _load(origin), seed, steps, hparams, folder)
    except Exception:
        Path(folder, f"rank{rank}.error").write_text(traceback.format_exc())
        sys.exit(1)


def _data_parallel_steps(
    rank: int, spec: OptimizerSpec, seed: int, steps: int, hparams: dict[str, Any], folder: str
) -> None:
    """One rank: rank-specific gradients averaged with all_reduce, then the optimizer's step;
    the weights and state buffers are saved to ``folder/rank{rank}.pt``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=DATA_PARALLEL_RANKS,
    )
    try:
        setup = _Setup(spec, seed, steps, hparams)
        run = _Run(setup)
        everything = [*run.params, *run.real]
        for t in range(steps):
            # Each rank sees its own gradients; the mean over ranks is what data-parallel
            # training hands every rank's optimizer (exact: the gradients are powers of two).
            grads = [g * (rank + 1) for g in (*setup.grads[t], *setup.real_grads[t])]
            for g in grads:
                dist.all_reduce(g)
                g.div_(DATA_PARALLEL_RANKS)

            def closure(grads: list[torch.Tensor] = grads) -> torch.Tensor:
                for p, g in zip(everything, grads):
                    p.grad = g.to(p.dtype).clone()
                return torch.zeros(())

            torch.manual_seed(seed + t)  # every rank draws the same numbers, as the engine seeds
            if run.needs_closure:
                run.opt.step(closure)
            else:
                closure()
                run.opt.step()
        torch.save({"weights": run.weights(), "buffers": run.buffers()}, f"{folder}/rank{rank}.pt")
        dist.barrier()  # no rank tears its process group down while another still uses it
    finally:
        dist.destroy_process_group()


def _rank_error(folder: str) -> str:
    """The last line of the first traceback a rank wrote into ``folder`` (or a placeholder)."""
    for rank in range(DATA_PARALLEL_RANKS):
        path = Path(folder, f"rank{rank}.error")
        if path.exists():
            lines = path.read_text().strip().splitlines()
            return f"rank {rank}: {lines[-1] if lines else 'no traceback'}"
    return "a rank exited without a traceback (killed?)"


def _data_parallel(setup: _Setup) -> str:
    """Two processes (gloo) step the optimizer on their averaged gradients: weights and state
    must be identical on both ranks (no rank-dependent randomness or arithmetic).

    The ranks are fresh processes: they import the plugin module the optimizer came from
    (``-p``, ``BENCHBNN_PLUGINS`` or ``register_plugin``) or its class; an optimizer they cannot
    import is skipped before any process starts. Everything they write goes to one temporary
    folder, removed afterwards."""
    import tempfile

    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    origin = _origin(setup.spec)
    if origin.problem:
        raise _Skip(f"the ranks are fresh processes and {origin.problem}")
    # torch logs "Terminating process ... via signal SIGTERM" when it stops the other rank
    # after one failed; the failure is reported here, with the rank's error, instead
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    with tempfile.TemporaryDirectory(prefix="benchbnn-check-") as folder:
        args = (origin, setup.seed, setup.steps, dict(setup.hparams), folder)
        spawn_log.setLevel(logging.ERROR)
        try:
            mp.start_processes(
                _data_parallel_rank,
                args=args,
                nprocs=DATA_PARALLEL_RANKS,
                start_method="spawn",
            )
        except ProcessException:
            raise _Failure(f"a data-parallel rank failed: {_rank_error(folder)}") from None
        finally:
            spawn_log.setLevel(level)
        ranks = [torch.load(f"{folder}/rank{r}.pt") for r in range(DATA_PARALLEL_RANKS)]
    first = ranks[0]
    for rank, other in enumerate(ranks[1:], start=1):
        for i, (a, b) in enumerate(zip(first["weights"], other["weights"])):
            if not torch.equal(a, b):
                raise _Failure(
                    f"binary weights of tensor {i} differ between rank 0 and rank {rank} "
                    f"after {setup.steps} data-parallel steps",
                    setup.steps,
                    tensor=i,
                )
        for name, tensors in first["buffers"].items():
            for i, (a, b) in enumerate(zip(tensors, other["buffers"].get(name, []))):
                if not torch.equal(a, b):
                    raise _Failure(
                        f"state buffer {name!r} of tensor {i} differs between rank 0 and rank "
                        f"{rank} after {setup.steps} data-parallel steps",
                        setup.steps,
                        buffer=name,
                        tensor=i,
                    )
    return f"{setup.steps} steps on {DATA_PARALLEL_RANKS} gloo processes: identical on every rank"


PROPERTIES: dict[str, tuple[Callable[[_Setup], str], str]] = {
    "binary-weights": (_binary_weights, "binary (or evaluated) weights stay +-1"),
    "flip-count": (_flip_count, "flip_count equals the sign changes of every step"),
    "state-dict": (_state_dict, "a state_dict round trip mid-run continues bit-identically"),
    "foreach": (lambda s: _agreement(s, "foreach"), "foreach is bit-identical to reference"),
    "compiled": (lambda s: _agreement(s, "compiled"), "compiled is bit-identical to reference"),
    "determinism": (_determinism, "the same seed gives the same trajectory"),
    "hparam-ranges": (_hparam_ranges, "every hyperparameter accepts its valid range"),
    "dtypes": (_dtypes, "low-precision weights flip as float32 weights"),
    "data-parallel": (_data_parallel, "two data-parallel processes keep identical weights"),
}


def _snippet(origin: _Origin, prop: str, seed: int, steps: int, hparams: Mapping[str, Any]) -> str:
    """A Python program that reruns ``prop`` in a fresh process (``python -c``): it first makes
    the optimizer known there when no fresh process discovers it (a ``-p`` or in-process
    plugin module is imported and registered; a class is imported)."""
    lines: list[str] = []
    if origin.problem:
        lines.append(f"# cannot be run as printed: {origin.problem}")
    if origin.folder is not None and (origin.module is not None or origin.class_ref):
        lines.append(f"import sys; sys.path.insert(0, {origin.folder!r})")
    target = repr(origin.name)
    if origin.class_ref is not None:
        module, qualname = origin.class_ref
        lines.append(f"from {module} import {qualname.split('.')[0]}")
        target = qualname
    elif origin.module is not None:
        plugin = "" if origin.plugin == origin.module else f", {origin.plugin!r}"
        lines += [
            "import importlib, benchbnn",
            f"benchbnn.register_plugin(importlib.import_module({origin.module!r}){plugin})",
        ]
    lines += [
        "from benchbnn.optim.conformance import check_property",
        f"result = check_property({target}, {prop!r}, seed={seed}, steps={steps}"
        + (f", hparams={dict(hparams)!r}" if hparams else "")
        + ")",
        "print(result.report())",
    ]
    return "\n".join(lines)


def check_property(
    optimizer: Any,
    prop: str,
    *,
    seed: int = DEFAULT_SEED,
    steps: int = DEFAULT_STEPS,
    hparams: Mapping[str, Any] | None = None,
) -> PropertyResult:
    """Run one property (a name of :data:`PROPERTIES`) on ``optimizer`` (a registered name, an
    OptimizerSpec or a BinaryOptimizer subclass) and return its result; never raises for a
    misbehaving optimizer (an exception it raises is a failure)."""
    if prop not in PROPERTIES:
        raise KeyError(f"unknown property {prop!r}; known: {', '.join(PROPERTIES)}")
    spec = resolve_spec(optimizer)
    hparams = dict(hparams or {})
    details: dict[str, Any] = {
        "seed": seed,
        "shapes": [*SHAPES, REAL_SHAPE],
        "hparams": hparams or "defaults",
        "implementation": prop if prop in ("foreach", "compiled") else "reference",
    }
    run, _ = PROPERTIES[prop]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            note = run(_Setup(spec, seed, steps, hparams))
    except _Skip as exc:
        return PropertyResult(spec.name, prop, "skipped", str(exc))
    except _Failure as exc:
        if exc.step is not None:
            details["step"] = exc.step
        details.update(exc.values)
        reproduce = exc.step if exc.step is not None else steps
        return PropertyResult(
            spec.name,
            prop,
            "failed",
            str(exc),
            details,
            _snippet(_origin(spec), prop, seed, reproduce, hparams),
        )
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        details["raised at"] = f"{where.filename}:{where.lineno}"
        return PropertyResult(
            spec.name,
            prop,
            "failed",
            f"{type(exc).__name__}: {exc}",
            details,
            _snippet(_origin(spec), prop, seed, steps, hparams),
        )
    return PropertyResult(spec.name, prop, "passed", note)


def check_optimizer(
    optimizer: Any,
    properties: Sequence[str] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    steps: int = DEFAULT_STEPS,
    hparams: Mapping[str, Any] | None = None,
    progress: Callable[[PropertyResult], None] | None = None,
) -> list[PropertyResult]:
    """Every property (or the named ones) on one optimizer, in :data:`PROPERTIES` order."""
    results = []
    for prop in properties or PROPERTIES:
        result = check_property(optimizer, prop, seed=seed, steps=steps, hparams=hparams)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def installed_optimizers() -> list[str]:
    """Names of every installed optimizer (built-in and third-party)."""
    return list(list_optimizers())
