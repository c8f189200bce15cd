"""Bop2ndOrder (Suarez-Ramirez et al. 2021) as a benchbnn plugin: Bop normalized like Adam."""

from __future__ import annotations

import torch

import benchbnn
from benchbnn.optim import (
    BinaryOptimizer,
    ema_,
    ema_foreach_,
    flip_,
    flip_above_foreach_,
)
from benchbnn.optim.base import sqrt_rn, sqrt_rn_foreach

#: Added to the root of the second moment, as in the authors' code.
EPSILON = 1e-10

#: The two moving-average rates; PBop keeps the same moments and reuses these declarations.
#: Both lie in (0, 1]: the unbiased signal divides by them, so 0 (set, searched or reached by a
#: schedule) is outside the range.
GAMMA = benchbnn.HParam(
    "gamma",
    1e-6,
    low=0.0,
    low_open=True,
    high=1.0,
    search=(1e-9, 1e-2),
    log=True,
    help="adaptivity rate of the gradient average (first moment), in (0, 1]",
)
SIGMA = benchbnn.HParam(
    "sigma",
    1e-2,
    low=0.0,
    low_open=True,
    high=1.0,
    search=(1e-7, 1e-1),
    log=True,
    help="rate of the squared-gradient average (second moment), in (0, 1]",
)

#: The rule's hyperparameters (the real-valued parameters follow Adam with the papers' defaults).
RULE_HPARAMS = (
    benchbnn.HParam(
        "threshold",
        1e-6,
        low=0.0,
        high=1e3,
        search=(1e-9, 1e-2),
        log=True,
        help="a weight flips once its normalized gradient signal exceeds this",
    ),
    GAMMA,
    SIGMA,
    benchbnn.HParam(
        "unbiased",
        False,
        help="divide the moments by gamma and sigma before comparing (the authors' 'unbiased')",
    ),
)


def signal(m: torch.Tensor, v: torch.Tensor, gamma, sigma, unbiased: bool) -> torch.Tensor:
    """The gradient average normalized by the root of the squared-gradient average.

    Each operation rounds once to nearest, the square root included
    (:func:`benchbnn.optim.base.sqrt_rn`; PyTorch's eager CPU ``sqrt`` is only within an ulp).
    """
    if unbiased:
        return (m / gamma) / (sqrt_rn(v / sigma) + EPSILON)
    return m / (sqrt_rn(v) + EPSILON)


class Bop2ndOrder(BinaryOptimizer):
    """Second-order Bop: flip on the gradient average normalized by its second moment.

    Like Bop, every binary weight ``w`` has a gradient average ``m``; Bop2ndOrder also keeps the
    average ``v`` of squared gradients and compares the Adam-like ratio of the two, so the
    threshold no longer depends on the gradients' scale:

        m <- (1 - gamma) m + gamma g          computed as  m + gamma * (g - m)
        v <- (1 - sigma) v + sigma g^2        computed as  v + sigma * (g*g - v)
        s  = m / (sqrt(v) + 1e-10)                              (biased, the default)
        s  = (m / gamma) / (sqrt(v / sigma) + 1e-10)            (unbiased=True)
        w <- -w   where  w * s > threshold   (strictly; a tie keeps the weight)

    The averages are computed in the authors' order (``m.assign_add(gamma * (grad - m))`` and
    ``v.assign_add(sigma * (tf.math.square(grad) - v))`` in their TensorFlow code), one float32
    rounding per operation, with :func:`benchbnn.optim.ema_`. ``m`` and ``v`` are float32 and
    the rule runs in float32 whatever the weights' dtype (in float16, ``v`` of a gradient of
    1e-4 would underflow and the epsilon would be 0).

    "Unbiased" is the authors' term; it is not Adam's ``1 - beta^t`` correction. It uses the
    current (possibly scheduled) gamma and sigma, and with epsilon negligible it equals the
    biased rule with threshold ``threshold * gamma / sqrt(sigma)``. On the first step it gives
    ``s = sign(g)``, so every weight whose gradient agrees with its sign flips (threshold < 1).

    Args:
        threshold: how strong the normalized signal must be before a weight flips. Raising it
            over training acts as a regularizer (fewer flips, less overfitting). The paper's
            CIFAR-10 run (section 5.2) moves it from 1e-5 to 1e-8 in the authors' code; the
            paper's text prints "tau = 1e-7 -> 1e-2", which is sigma's schedule under a rotated
            label (suite cifar10-binarynet follows the code).
        gamma: adaptivity rate of ``m``, which behaves like a learning rate: lower values
            average longer and learn more cautiously. The paper decays it during training.
        sigma: rate of ``v``. Its effect on accuracy is small; it mostly sets how many weights
            flip, so lowering it late in training stabilizes the network.
        unbiased: compare ``(m / gamma) / sqrt(v / sigma)`` instead (steadier training; the
            biased rule responds more to the threshold and suits fine-tuning).
        lr, beta1, beta2, eps: Adam for the real-valued parameters.
        implementation: "reference", "foreach", "compiled" or None for the fastest available.

    State: two floats per binary weight. Defaults are the authors' class defaults.

    Reference: C. D. Suarez-Ramirez, M. Gonzalez-Mendoza, L. Chang, G. Ochoa-Ruiz,
    M. A. Duran-Vega. "A Bop and Beyond: A Second Order Optimizer for Binarized Neural
    Networks", CVPR Workshops (LXCV) 2021. https://arxiv.org/abs/2104.05124
    """

    name = "bop2ndorder"
    description = "Bop2ndOrder: Bop on the gradient average normalized by its second moment"
    reference = "Suarez-Ramirez et al., A Bop and Beyond, CVPR-W 2021, arXiv:2104.05124"
    rule_hparams = RULE_HPARAMS
    state_buffers = ("m", "v")
    forward = "sign"
    divergence_advice = (
        "lower lr (Adam on the real-valued parameters, where a NaN loss starts: flips keep the "
        "binary weights at +-1) or gamma, or raise threshold so that fewer weights flip at once"
    )

    @staticmethod
    def update(w, g, m, v, *, gamma, sigma, threshold, unbiased: bool):
        ema_(m, g, gamma)
        ema_(v, g * g, sigma)
        return flip_(w, w * signal(m, v, gamma, sigma, unbiased) > threshold)

    @staticmethod
    def update_foreach(
        ws, gs, ms, vs, *, gamma: float, sigma: float, threshold: float, unbiased: bool
    ):
        ema_foreach_(ms, gs, gamma)
        ema_foreach_(vs, torch._foreach_mul(gs, gs), sigma)
        if unbiased:
            numerators = torch._foreach_div(ms, gamma)
            roots = sqrt_rn_foreach(torch._foreach_div(vs, sigma))
        else:
            numerators, roots = ms, sqrt_rn_foreach(vs)
        torch._foreach_add_(roots, EPSILON)
        signals = torch._foreach_div(numerators, roots)
        return flip_above_foreach_(ws, torch._foreach_mul(ws, signals), threshold)


#: Every hyperparameter Bop2ndOrder accepts (the rule's, then Adam's), derived from the class.
HPARAMS = Bop2ndOrder.hparams


@benchbnn.hookimpl
def benchbnn_optimizers() -> list[benchbnn.OptimizerSpec]:
    return [benchbnn.optimizer_spec(Bop2ndOrder)]
