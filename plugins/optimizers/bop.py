"""Bop, the binary optimizer of Helwegen et al. (2019), as a benchbnn plugin.

The shape of this file is the shape of any optimizer plugin: a ``BinaryOptimizer`` subclass that
declares its name, its rule's hyperparameters and its state buffers once, an ``update`` that is
the rule for one tensor, and a hook that returns the spec derived from the class.
"""

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

#: The rule's hyperparameters (the real-valued parameters follow Adam with the papers' defaults).
RULE_HPARAMS = (
    benchbnn.HParam(
        "threshold",
        1e-8,
        low=0.0,
        high=1e3,
        search=(1e-10, 1e-5),
        log=True,
        help="a weight flips once its gradient average exceeds this (in its own direction)",
    ),
    benchbnn.HParam(
        "gamma",
        1e-4,
        low=0.0,
        high=1.0,
        search=(1e-6, 1e-2),
        log=True,
        help="adaptivity rate of the gradient average",
    ),
)


class Bop(BinaryOptimizer):
    """Binary optimizer (Bop): flip a weight when a running average of its gradients says so.

    Bop keeps no latent weights. For every binary weight ``w`` it keeps an exponential moving
    average ``m`` of the gradient and flips ``w`` when that average is large and points the
    same way as ``w`` (following it would decrease the loss by changing the sign):

        m <- (1 - gamma) m + gamma g         computed as  m + gamma * (g - m)
        w <- -w   where  w * m > threshold   (strictly; a tie keeps the weight)

    There is no bias correction and ``m`` is not reset after a flip. The average is computed
    in the authors' order (their and larq's ``m.assign_add(gamma * (grad - m))``), one float32
    rounding per operation, with :func:`benchbnn.optim.ema_`; ``m`` is float32 and the rule
    runs in float32 whatever the weights' dtype. Real-valued parameters follow Adam (``lr``,
    ``beta1``, ``beta2``, ``eps``).

    Args:
        threshold: how strong and consistent the gradient signal must be before a weight flips.
            A high threshold flips few weights (stable, slow learning); a low one lets noise
            flip weights. Zero flips every weight whose average points its way.
        gamma: adaptivity rate. A high gamma reacts quickly to recent gradients (more flips,
            noisier); a low gamma averages over a long history (fewer, more deliberate flips).
            The Bop paper decays it by 10x every 100 epochs on CIFAR-10.
        lr, beta1, beta2, eps: Adam for the real-valued parameters (the papers' defaults).
        implementation: "reference", "foreach", "compiled" or None for the fastest available.

    Reference: K. Helwegen, J. Widdicombe, L. Geiger, Z. Liu, K.-T. Cheng, R. Nusselder.
    "Latent Weights Do Not Exist: Rethinking Binarized Neural Network Optimization",
    NeurIPS 2019. https://arxiv.org/abs/1906.02107. Defaults are larq's.
    """

    name = "bop"
    description = "Bop: flip a binary weight when its gradient momentum exceeds a threshold"
    reference = "Helwegen et al., Latent Weights Do Not Exist, NeurIPS 2019, arXiv:1906.02107"
    rule_hparams = RULE_HPARAMS
    state_buffers = ("m",)
    forward = "sign"
    divergence_advice = (
        "lower lr (Adam on the real-valued parameters, where a NaN loss starts: flips keep the "
        "binary weights at +-1) or gamma, or raise threshold so that fewer weights flip at once"
    )

    @staticmethod
    def update(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, *, gamma, threshold):
        ema_(m, g, gamma)
        return flip_(w, w * m > threshold)

    @staticmethod
    def update_foreach(ws, gs, ms, *, gamma: float, threshold: float):
        ema_foreach_(ms, gs, gamma)
        return flip_above_foreach_(ws, torch._foreach_mul(ws, ms), threshold)


#: Every hyperparameter Bop accepts (the rule's, then Adam's), derived from the class.
HPARAMS = Bop.hparams


@benchbnn.hookimpl
def benchbnn_optimizers() -> list[benchbnn.OptimizerSpec]:
    return [benchbnn.optimizer_spec(Bop)]
