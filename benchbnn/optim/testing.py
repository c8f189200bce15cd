"""Checks that an optimizer flips the same weights whatever dtype the weights are stored in.

:class:`~benchbnn.optim.base.BinaryOptimizer` keeps the state of binary weights in float32 and
runs their rule in float32 (:func:`~benchbnn.optim.base.state_dtype`), so a weight of +-1
stored in float16, bfloat16 or float64 must flip at exactly the steps where the same weight
stored in float32 flips, given the same gradients. The functions here run an optimizer under
controlled gradients and compare; the test-suite runs them for every registered optimizer, and
they are the pieces a conformance kit (``benchbnn check``) runs for third-party plugins:

* :func:`exact_gradients` draws gradients that every tested dtype represents exactly;
* :func:`run_in_dtype` steps one optimizer on weights of one dtype and records its flips;
* :func:`dtype_problems` compares float16, bfloat16 and float64 runs with a float32 run and
  describes every difference (an empty list means the optimizer conforms);
* :func:`run_context` is the :class:`~benchbnn.core.specs.RunContext` these runs build every
  optimizer with, as the engine does (an optimizer may need the training-set size);
* :func:`gradient_step` steps an optimizer on prescribed gradients, through a closure when it
  declares ``needs_closure`` (every call of the closure sets the same gradients).

What a fair comparison is: a model stored in bfloat16 hands its optimizer bfloat16 gradients
(PyTorch requires ``p.grad`` to have ``p``'s dtype), so feeding a bfloat16 run ``bf16(g)`` and
a float32 run ``g`` would measure how the input was rounded, not what the optimizer does. Every
run therefore receives the same values, chosen so that each dtype holds them exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from benchbnn.core.plugins import get_optimizer
from benchbnn.core.specs import OptimizerSpec, RunContext
from benchbnn.optim.base import BINARY_STATE_DTYPE

__all__ = [
    "DTYPES",
    "SHAPES",
    "DtypeRun",
    "dtype_problems",
    "exact_gradients",
    "gradient_step",
    "initial_weights",
    "run_context",
    "run_in_dtype",
]

#: The storage dtypes compared with float32.
DTYPES = (torch.float16, torch.bfloat16, torch.float64)

#: Shapes of the binary tensors of a run: a small convolution, a dense layer and a vector.
SHAPES: tuple[tuple[int, ...], ...] = ((16, 3, 3, 3), (40, 30), (10,))

#: Significant bits of bfloat16 (7 stored + 1 implicit): integers below 2**8 are exact.
_BITS = 8
#: Exponents of the gradients: 2**-24 is float16's smallest subnormal, so every multiple of it
#: below 2**-14 is exact in float16, and values below 1 with 8 significant bits are exact too.
_MIN_EXPONENT, _MAX_EXPONENT = -24, -_BITS


@dataclass
class DtypeRun:
    """What :func:`run_in_dtype` observed.

    ``flips[t]`` is ``flip_count`` after step ``t + 1``; ``weights[t]`` every binary weight
    after that step, flattened and concatenated, in float64 (which holds every dtype's values
    exactly); ``state`` the final per-weight buffers by name, one tensor per parameter, in the
    dtype the optimizer kept them in; ``implementation`` the one that ran ("reference" when a
    compiled rule fell back to it).
    """

    dtype: torch.dtype
    implementation: str = ""
    flips: list[int] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)
    state: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def exact_gradients(
    shapes: Sequence[Sequence[int]] = SHAPES,
    steps: int = 300,
    *,
    seed: int = 0,
    zeros: float = 0.05,
) -> list[list[torch.Tensor]]:
    """``steps`` lists of float32 gradients, one per shape, exact in float16 and bfloat16.

    Every value is 0 (with probability ``zeros``) or ``+-k * 2**e`` with an integer
    ``1 <= k < 256`` (8 significant bits, bfloat16's precision) and ``-24 <= e <= -8``, so
    magnitudes spread from 2**-24 (about 6e-8) to just below 1, log-uniformly in ``e``. Such a
    value is a multiple of 2**-24 below 1: float16 holds it exactly (as a subnormal below
    2**-14), and so do bfloat16, float32 and float64. Magnitudes of 1e-4 and less, common in
    real networks, are the ones whose squares underflow in float16 arithmetic.
    """
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        step = []
        for shape in shapes:
            size = tuple(shape)
            k = torch.randint(1, 2**_BITS, size, generator=generator)
            e = torch.randint(_MIN_EXPONENT, _MAX_EXPONENT + 1, size, generator=generator)
            sign = torch.randint(0, 2, size, generator=generator) * 2 - 1
            keep = torch.rand(size, generator=generator) >= zeros
            g = (sign * k).to(torch.float64) * torch.pow(2.0, e.to(torch.float64))
            step.append((g * keep).to(torch.float32))
        out.append(step)
    return out


def initial_weights(
    shapes: Sequence[Sequence[int]] = SHAPES, *, latent: bool = False, seed: int = 0
) -> list[torch.Tensor]:
    """Float32 starting weights exact in every dtype: +-1, or for latent-weight optimizers
    ``k / 256`` with ``|k| < 256`` (8 significant bits, in (-1, 1))."""
    generator = torch.Generator().manual_seed(seed)
    if latent:
        return [
            torch.randint(1 - 2**_BITS, 2**_BITS, tuple(s), generator=generator).float() / 2**_BITS
            for s in shapes
        ]
    return [(torch.randint(0, 2, tuple(s), generator=generator) * 2 - 1).float() for s in shapes]


#: The training-set size of :func:`run_context` (what e.g. BayesBiNN scales its gradient by).
CONTEXT_TRAIN_SIZE = 1000


def run_context(seed: int = 0, steps: int = 1) -> RunContext:
    """The run context the test runs give every optimizer: ``CONTEXT_TRAIN_SIZE`` training
    examples, one epoch of ``steps`` steps, one rank on the CPU, run seed ``seed``."""
    return RunContext(
        train_size=CONTEXT_TRAIN_SIZE,
        steps_per_epoch=max(steps, 1),
        total_steps=max(steps, 1),
        world_size=1,
        device=torch.device("cpu"),
        seed=seed,
    )


def gradient_step(
    optimizer: Any,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    *,
    closure_loss: Callable[[], torch.Tensor] | None = None,
) -> None:
    """One ``optimizer.step`` with ``params[i].grad = grads[i]`` (cast to the parameter's dtype).

    An optimizer that declares ``needs_closure`` is given a closure that sets those gradients
    at every call (whatever weights it has written in) and returns ``closure_loss()`` (default:
    a zero loss); any other optimizer gets the gradients set once and ``step()``.
    """

    def closure() -> torch.Tensor:
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype).clone()
        return closure_loss() if closure_loss is not None else torch.zeros(())

    if getattr(optimizer, "needs_closure", False):
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()


def _spec(optimizer: str | OptimizerSpec) -> OptimizerSpec:
    return get_optimizer(optimizer) if isinstance(optimizer, str) else optimizer


def run_in_dtype(
    optimizer: str | OptimizerSpec,
    dtype: torch.dtype,
    grads: Sequence[Sequence[torch.Tensor]],
    *,
    init: Sequence[torch.Tensor] | None = None,
    hparams: Mapping[str, Any] | None = None,
    implementation: str = "reference",
    seed: int = 0,
) -> DtypeRun:
    """Step ``optimizer`` on binary weights stored in ``dtype``; record flips, weights, state.

    ``grads[t][i]`` is the gradient of tensor ``i`` at step ``t`` (cast to ``dtype``, which is
    exact for :func:`exact_gradients`); ``init`` the starting weights (default
    :func:`initial_weights` of the gradients' shapes). The optimizer is built from ``hparams``
    (its defaults otherwise) with ``implementation``, under ``torch.manual_seed(seed)`` in a
    forked RNG, with :func:`run_context` (seed ``seed``), so that an optimizer drawing its own
    seed from torch's global RNG or the run's seed draws the same one for every dtype and the
    caller's RNG is left alone. A closure optimizer is stepped through :func:`gradient_step`.
    """
    spec = _spec(optimizer)
    shapes = [tuple(g.shape) for g in grads[0]]
    init = init if init is not None else initial_weights(shapes, latent=spec.forward != "sign")
    params = [torch.nn.Parameter(t.detach().clone().to(dtype)) for t in init]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = spec.build(params, [], context=run_context(seed, len(grads)), **dict(hparams or {}))
    opt.implementation = implementation
    run = DtypeRun(dtype)
    for step_grads in grads:
        gradient_step(opt, params, step_grads)
        run.flips.append(int(opt.flip_count))
        run.weights.append(torch.cat([p.detach().reshape(-1).double() for p in params]))
    run.implementation = (
        "reference" if getattr(opt, "_compile_failed", False) else opt.implementation
    )
    run.state = {
        name: [opt.state[p][name].detach().clone() for p in params] for name in opt.state_buffers
    }
    return run


def _first_difference(a: DtypeRun, b: DtypeRun) -> str | None:
    for t, (fa, fb, wa, wb) in enumerate(zip(a.flips, b.flips, a.weights, b.weights)):
        if fa != fb or not torch.equal(wa, wb):
            return (
                f"step {t + 1}: {fb} flips in {_name(b.dtype)} against {fa} in float32, "
                f"{int((wa != wb).sum())} weights differ"
            )
    return None


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _state_problems(run: DtypeRun) -> list[str]:
    problems = []
    for name, tensors in run.state.items():
        dtypes = sorted({_name(t.dtype) for t in tensors})
        if dtypes != [_name(BINARY_STATE_DTYPE)]:
            problems.append(
                f"{_name(run.dtype)} weights: state buffer {name!r} is {', '.join(dtypes)}, "
                f"not {_name(BINARY_STATE_DTYPE)}"
            )
        elif not all(bool(torch.isfinite(t).all()) for t in tensors):
            problems.append(f"{_name(run.dtype)} weights: state buffer {name!r} is not finite")
    return problems


def dtype_problems(
    optimizer: str | OptimizerSpec,
    *,
    dtypes: Sequence[torch.dtype] = DTYPES,
    steps: int = 300,
    shapes: Sequence[Sequence[int]] = SHAPES,
    hparams: Mapping[str, Any] | None = None,
    implementation: str = "reference",
    seed: int = 0,
) -> list[str]:
    """Everything that differs between float32 weights and weights stored in ``dtypes``.

    Runs ``optimizer`` for ``steps`` steps on :func:`exact_gradients` and
    :func:`initial_weights`, once with float32 weights and once per dtype, and requires:

    * state buffers of binary weights in float32 and finite, for every dtype;
    * for flip-based optimizers (``forward="sign"``): weights that stay +-1 and, at every
      step, the same flip count and the same weights as the float32 run;
    * for optimizers of real-valued weights (``forward="latent"`` or ``"identity"``): the same
      for float64 (a float32 result is stored in float64 exactly); float16 and bfloat16
      real-valued weights are rounded after every step, so their trajectory legitimately
      departs from float32's and only their state is checked;
    * at least one flip in the float32 run, without which the comparison proves nothing (pass
      ``hparams`` that make the optimizer flip).

    Returns one sentence per problem; an empty list means the optimizer conforms.
    """
    spec = _spec(optimizer)
    grads = exact_gradients(shapes, steps, seed=seed)
    init = initial_weights(shapes, latent=spec.forward != "sign", seed=seed)

    def run(dtype: torch.dtype) -> DtypeRun:
        return run_in_dtype(
            spec,
            dtype,
            grads,
            init=init,
            hparams=hparams,
            implementation=implementation,
            seed=seed,
        )

    reference = run(torch.float32)
    problems = _state_problems(reference)
    if sum(reference.flips) == 0:
        problems.append(
            f"no weight flipped in {steps} float32 steps, so the comparison proves nothing; "
            "pass hyperparameters that make the optimizer flip"
        )
    for dtype in dtypes:
        result = run(dtype)
        problems += _state_problems(result)
        if spec.forward == "sign":
            final = result.weights[-1]
            if not bool(((final == 1) | (final == -1)).all()):
                problems.append(f"{_name(dtype)} weights are not all +-1 after {steps} steps")
        exact = spec.forward == "sign" or torch.finfo(dtype).bits > 32
        difference = _first_difference(reference, result) if exact else None
        if difference:
            problems.append(f"{_name(dtype)} weights flip differently from float32: {difference}")
    return problems
