"""MD-tanh, mirror descent with the tanh mirror map (Ajanthan et al. 2021), as a plugin.

The binary weights are continuous values ``x`` in (-1, 1), used as they are while training and
replaced by their signs for evaluation. Each step takes an Adam direction from the gradient
with respect to ``x`` and moves ``atanh(x)`` (the dual, "mirror" variable) against it, scaled by
a sharpness ``beta`` that grows geometrically during training and pushes ``x`` towards +-1.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

import benchbnn
from benchbnn.core.binary import sgn0
from benchbnn.optim import BinaryOptimizer, NativeKernels, adam_hparams, exp_nonpositive
from benchbnn.optim.base import EvaluationSamples, restoring, sqrt_rn

#: The rule's hyperparameters (group values: schedulable).
RULE_HPARAMS = (
    benchbnn.HParam(
        "step_size",
        1e-3,
        low=0.0,
        high=10.0,
        search=(1e-5, 1e-1),
        log=True,
        help="mirror-descent step (upstream's lr; not Adam's lr), bias-corrected like Adam's",
    ),
    benchbnn.HParam(
        "direction_beta1",
        0.9,
        low=0.0,
        high=0.9999,
        help="decay rate of the direction's gradient average (upstream's betas[0])",
    ),
    benchbnn.HParam(
        "direction_beta2",
        0.999,
        low=0.0,
        high=0.999999,
        help="decay rate of the direction's squared-gradient average (upstream's betas[1])",
    ),
    benchbnn.HParam(
        "direction_eps",
        1e-8,
        low=0.0,
        low_open=True,
        high=1.0,
        help="epsilon of the direction, added to the uncorrected sqrt(v) (upstream's eps)",
    ),
)

#: Options: the beta schedule and the form of the update (kept out of the groups).
OPTION_HPARAMS = (
    benchbnn.HParam(
        "beta_scale",
        1.2,
        low=1.0,
        high=1e3,
        static=True,
        search=(1.001, 1.5),
        log=True,
        help="beta (the tanh map's sharpness) is multiplied by this after iterations 0, "
        "beta_interval, 2 beta_interval, ... (capped at 1e35)",
    ),
    benchbnn.HParam(
        "beta_interval",
        500,
        low=1,
        high=10**9,
        help="optimizer steps between two growths of beta",
    ),
    benchbnn.HParam(
        "stable",
        True,
        help="true: x <- tanh(atanh(x) - rate * d) in a float32 closed form, never NaN; false: "
        "the authors' exp form, bit-faithful, NaN once the exponential overflows",
    ),
)

#: The cap of beta (the authors' BETAMAX).
BETA_MAX = 1e35
#: The stable form's cap of the rate: the largest finite float32.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: The authors' guard against division by zero in the exp form.
EXP_FORM_EPS = 1e-20
# The stable form takes exp(-2 |a|) at max(-2 |a|, -80) (benchbnn.optim.elementary.EXP_FLOOR).
# Where -2 |a| < -80 every float32 x in (-1, 1) maps to -+1 either way (|atanh(x)| <= 8.7, so
# |tanh(atanh(x) - a)| is within 2 e^-62 of 1), and q >= e^-80, a normal float32, keeps the
# quotient away from 0/0 at x = +-1.

#: Where ``|x| < SMALL_X`` and ``|a| < SMALL_A`` the stable form's numerator is
#: ``2 x +- (q - 1) (1 +- x)``, elsewhere ``q (1 +- x) - (1 -+ x)`` (see :func:`tanh_step`).
SMALL_X, SMALL_A = 0.25, 0.125


def tanh_step(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``tanh(atanh(x) - a)`` in float32 without ``atanh``, ``tanh`` or overflow.

    With ``q = exp(-2 |a|)`` in (0, 1] (:func:`exp_nonpositive`), ``P = 1 + x`` and
    ``M = 1 - x`` (so that ``e^{2 atanh(x)} = P / M``)::

        a >= 0:  x' = (q P - M) / (q P + M)
        a <  0:  x' = (P - q M) / (P + q M)

    (``tanh(y) = (e^{2y} - 1) / (e^{2y} + 1)`` at ``y = atanh(x) - a``, numerator and
    denominator multiplied by ``M``, resp. by ``P e^{2a}`` for ``a < 0``). Writing the quotient
    ``(T - B) / (T + B)`` (``T``, ``B`` its two positive terms), it is evaluated as
    ``1 - 2 B / (T + B)`` where ``T >= B`` and ``2 T / (T + B) - 1`` elsewhere: near +-1 the
    small ratio carries the distance to +-1 with its full relative precision (``(T - B)`` would
    round it away: ``x = 1 - 2^-24`` with ``a = 0`` would become 1). No intermediate exceeds 4,
    near ``x -> +-1`` the small one of ``P``, ``M`` is exact, and ``x = +-1`` is a fixed point
    (``q >= e^-80 > 0``, so never 0/0). Where ``|x| < 0.25`` and ``|a| < 0.125`` the result is
    ``(2 x + (q - 1) P) / (T + B)``, resp. ``(2 x - (q - 1) M) / (T + B)`` (the same value):
    near ``x' = 0`` both forms above subtract terms near 1, leaving an absolute error of about
    ``1e-7`` whatever ``x``, while these terms are of the size of ``x`` and ``a``, so a small
    weight moved by a small step keeps the sign of its exact update. One exponential and one
    division per weight.

    Accuracy against ``tanh(atanh(x) - a)`` in float64 (the same float32 ``a``), measured on 7
    million pairs (x uniform, and crowded near 0 and +-1; ``|a|`` log-uniform in [1e-9, 100]):
    see the "Arithmetic" paragraph of MD-tanh in docs/optimizers.md.

    Args:
        x: float32 weights in [-1, 1].
        a: float32 steps in the dual, ``x``'s shape; any value but NaN.

    Returns:
        float32 tensor: the new weights, in [-1, 1].
    """
    q, q_minus_1 = exp_nonpositive(-2.0 * a.abs())
    up = a >= 0
    plus, minus = 1.0 + x, 1.0 - x
    top = torch.where(up, q * plus, plus)
    bottom = torch.where(up, minus, q * minus)
    small = 2.0 * x + torch.where(up, q_minus_1 * plus, -(q_minus_1 * minus))
    near_zero = (x.abs() < SMALL_X) & (a.abs() < SMALL_A)
    ratio = torch.where(near_zero, small, 2.0 * torch.minimum(top, bottom)) / (top + bottom)
    far = torch.where(top >= bottom, 1.0 - ratio, ratio - 1.0)
    return torch.where(near_zero, ratio, far)


#: The stable step as one C++ loop for float32 CPU tensors (``md_tanh.cpp`` beside this file):
#: the reference's exact bits, about 1.4x faster than Inductor's kernel for it (docs/speed.md).
KERNELS = NativeKernels(
    Path(__file__).with_name("md_tanh.cpp"),
    "md_tanh",
    purpose="md-tanh's C++ step",
    fallback="md-tanh's compiled implementation uses torch.compile's kernel (the same results)",
)


class MDTanh(BinaryOptimizer):
    """Mirror descent with the tanh map: Adam steps on ``atanh(x)``, evaluation on ``sign(x)``.

    Each binary weight is a continuous ``x`` in (-1, 1) that binary layers use as it is while
    training (``forward = "identity"``); it starts at ``tanh(w0)``, ``w0`` the architecture's
    initial weight (computed in float32). Per weight the optimizer keeps the direction's
    moving averages ``m`` and ``v`` (float32, starting at 0). Step ``t`` (from 1)::

        m    <- beta1 * m + (1 - beta1) * g
        v    <- beta2 * v + (1 - beta2) * g * g
        d     = m / (sqrt(v) + eps)                  eps on the uncorrected root
        rate  = step_size * sqrt(1 - beta2^t) / (1 - beta1^t) * beta     (one Python float)
        x    <- tanh(atanh(x) - rate * d)   (float32 closed form)   stable = true
        x    <- (e - 1) / (e + 1 + 1e-20),
                e = (1 + x) / (1 - x + 1e-20) * exp(-2 * rate * d)        stable = false

    with ``beta1, beta2, eps`` the ``direction_*`` hyperparameters (PyTorch's classic Adam
    arithmetic, the authors' ``MDAadam``; benchbnn rounds each product and sum of ``m`` and
    ``v`` separately, where PyTorch's eager ``add_(..., alpha=)`` fuses them, so they can differ
    from the authors' in the last bit). The two forms are the same map. The stable form
    evaluates it in float32 as :func:`tanh_step`: with ``a = rate * d`` (a float32 product) and
    ``q = exp(-2 |a|)``, ``x' = (q (1 + x) - (1 - x)) / (q (1 + x) + (1 - x))`` for ``a >= 0``
    and ``((1 + x) - q (1 - x)) / ((1 + x) + q (1 - x))`` for ``a < 0``, one exponential and
    one division per weight in one fused loop, never overflowing. The exponential is built
    from additions, multiplications and exponent bits (:func:`exp_nonpositive`), which eager
    and compiled code round alike: PyTorch's float32 ``exp``, ``tanh`` and ``atanh`` kernels
    differ in the last bit between eager and compiled code, and a mirror step feeds its own
    rounding into every later step. For the same reason the square root is rounded to nearest
    (:func:`benchbnn.optim.base.sqrt_rn`) and the exp form's exponential is taken in float64
    and rounded to float32 (which overflows to inf exactly where a float32 ``exp`` does).
    Tested: 150 steps of the reference and the compiled step are bit-identical in both forms.

    Until issue 19 the stable form took ``atanh``, the step and ``tanh`` in float64 and rounded
    once (correctly rounded, but 11x the memory-bandwidth floor compiled, against 1.3x for
    the other rules). The float32 form is within 1.4e-7 of that map everywhere (float64
    ``tanh(atanh(x) - a)`` at the same float32 ``a``), within 1.8 ulps where ``|x'| >= 0.5``,
    and gave the same sign on 7 million test pairs; it changes md-tanh's trajectories in the
    last bits (and ``a`` is now rounded to float32 before the step, where the float64 form
    took ``rate * d`` in float64).

    The exp form is the authors' expression, operation for operation: once ``-2 * rate * d``
    exceeds about 88.7 the float32 exponential overflows and ``x`` becomes ``inf / inf = NaN``,
    which a growing ``beta`` reaches. The stable form never produces NaN from finite gradients:
    ``x = +-1`` is a fixed point, ``rate`` is capped at the largest float32 (so that ``rate * d``
    is never ``inf * 0``), and an overflowing ``rate * d`` sends ``x`` to the limit +-1. An
    ``x`` that rounds to +-1 stays there (the exp form can leave +1).

    **beta.** ``beta`` starts at 1 and, after the step with iteration number ``i = t - 1``,
    becomes ``min(beta * beta_scale, 1e35)`` whenever ``i % beta_interval == 0`` (the authors'
    training loop: after iterations 0, ``beta_interval``, ...). The iteration count is the
    binary group's ``step`` and ``beta`` is saved with the optimizer's state, so a resumed run
    continues the schedule exactly. The authors grow ``beta`` outside the optimizer, in
    ``methods/mda_tanh.py``; here the optimizer does it.

    **Evaluation** (:meth:`evaluation_weights`): the weights become ``sgn0(x)`` (``+1`` at
    ``x = 0``; the authors' ``sign`` would give 0 there, which is not a binary weight) and the
    continuous values are restored afterwards. :attr:`flip_count` counts the weights whose
    ``sgn0(x)`` changed in a step.

    Args:
        step_size: mirror-descent step (upstream's ``lr``); the authors multiply it by 0.3
            every 30,000 iterations (schedule it).
        direction_beta1, direction_beta2, direction_eps: the direction's Adam constants.
        beta_scale, beta_interval: the growth of ``beta`` (see above).
        stable: the ``tanh(atanh)`` form (default) or the authors' exp form.
        lr, beta1, beta2, eps: Adam for the real-valued parameters (Keras arithmetic; the
            default lr 1e-3 is the authors' learning rate).
        implementation: "reference", "foreach" (runs the reference loop) or "compiled"
            (the stable form on float32 CPU weights: the C++ loop of ``md_tanh.cpp``,
            :meth:`update_native`, with the reference's bits; elsewhere torch.compile's).

    Deviations from upstream: real-valued parameters follow benchbnn's Adam instead of mirror
    descent; no weight decay (the authors' runs use 0); ``sign(0)`` is +1 at evaluation.

    Reference: T. Ajanthan, K. Gupta, P. H. S. Torr, R. Hartley, P. K. Dokania. "Mirror Descent
    View for Neural Network Quantization", AISTATS 2021, arXiv:1910.08237. Code:
    https://github.com/kartikgupta-at-anu/md-bnn, ``optimizers/MDAadam.py`` and
    ``methods/mda_tanh.py``.
    """

    name = "md-tanh"
    description = (
        "MD-tanh: mirror descent with the tanh map on continuous weights in (-1, 1), "
        "evaluated on their signs"
    )
    reference = (
        "Ajanthan, Gupta, Torr, Hartley, Dokania, Mirror Descent View for Neural Network "
        "Quantization, AISTATS 2021, arXiv:1910.08237"
    )
    rule_hparams = RULE_HPARAMS
    option_hparams = OPTION_HPARAMS
    real_hparams = adam_hparams(lr=1e-3)
    state_buffers = ("m", "v")
    derived_keys = ("rate", "stable")
    native_kernels = KERNELS
    #: 2: the stable form in float32 closed form (2026-11-30) instead of float64 atanh/tanh
    rule_version = 2
    forward = "identity"
    divergence_advice = (
        "lower step_size (md-tanh's mirror step), beta_scale (or raise beta_interval) so that "
        "beta grows more slowly, or lr (Adam on the real-valued parameters); with stable=false "
        "switch to stable=true (the exp form gives NaN once exp overflows)"
    )

    def setup(self) -> None:
        #: The current sharpness of the tanh map (saved with the state).
        self.beta = 1.0

    def init_weight(self, param: torch.Tensor) -> torch.Tensor:
        """``tanh(w0)`` computed in float32 (so that every storage dtype starts alike)."""
        return torch.tanh(param.detach().to(torch.float32)).to(param.dtype)

    def rule_kwargs(self, group: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = super().rule_kwargs(group)
        t = group["step"]
        beta1, beta2 = group["direction_beta1"], group["direction_beta2"]
        corrected = group["step_size"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        rate = corrected * self.beta
        if self.options["stable"]:  # an infinite float32 rate times d = 0 would give NaN
            rate = min(rate, FLOAT32_MAX)
        kwargs["rate"] = rate
        kwargs["stable"] = bool(self.options["stable"])
        return kwargs

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step, then the growth of ``beta`` after iterations 0, beta_interval, ..."""
        loss = super().step(closure)
        iteration = self.param_groups[0]["step"] - 1
        if iteration % int(self.options["beta_interval"]) == 0:
            self.beta = min(self.beta * float(self.options["beta_scale"]), BETA_MAX)
        return loss

    def extra_state(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if "beta" in state:
            self.beta = float(state["beta"])

    @staticmethod
    def update(
        w,
        g,
        m,
        v,
        *,
        direction_beta1,
        direction_beta2,
        direction_eps,
        rate,
        stable: bool,
    ):
        before = w >= 0
        m.mul_(direction_beta1).add_(g * (1 - direction_beta1))
        v.mul_(direction_beta2).add_(g * g * (1 - direction_beta2))
        d = m / (sqrt_rn(v) + direction_eps)
        if stable:
            w.copy_(tanh_step(w, rate * d))
        else:
            growth = torch.exp((-2.0 * rate * d).double()).to(w.dtype)  # inf past ~88.7
            e = (1.0 + w) / (1.0 - w + EXP_FORM_EPS) * growth
            w.copy_((e - 1.0) / (e + 1.0 + EXP_FORM_EPS))
        return (before != (w >= 0)).sum()

    @staticmethod
    def update_native(
        w,
        g,
        m,
        v,
        *,
        direction_beta1,
        direction_beta2,
        direction_eps,
        rate,
        stable: bool,
    ) -> int | None:
        """:meth:`update` with ``stable=True`` in one C++ loop (``md_tanh.cpp``), bit for bit;
        None for the exp form or where the kernel is not built here."""
        kernels = KERNELS.module()
        if kernels is None or not stable:
            return None
        flips: int = kernels.md_tanh_stable(
            w, g, m, v, direction_beta1, direction_beta2, direction_eps, rate
        )
        return flips

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[EvaluationSamples | None]:
        """``sgn0(x)`` in place of every binary weight; the continuous ``x`` restored on exit."""
        params = self.binary_params
        with restoring(params), torch.no_grad():
            for p in params:
                p.copy_(sgn0(p))
            yield None


#: Every hyperparameter MD-tanh accepts (the rule's, the options, then Adam's).
HPARAMS = MDTanh.hparams


@benchbnn.hookimpl
def benchbnn_optimizers() -> list[benchbnn.OptimizerSpec]:
    return [benchbnn.optimizer_spec(MDTanh)]
