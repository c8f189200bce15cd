"""Bop, the binary optimizer of Helwegen et al. (2019), as a benchbnn plugin.

The shape of this file is the shape of any optimizer plugin: a hyperparameter table, a small
``BinaryOptimizer`` subclass whose ``update`` is the rule for one tensor, and a hook that returns
the ``OptimizerSpec``.
"""

from __future__ import annotations

import torch

import benchbnn
from benchbnn.optim import (
    BinaryOptimizer,
    adam_hparams,
    ema_,
    ema_foreach_,
    flip_,
    flip_above_foreach_,
)

HPARAMS = (
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
    *adam_hparams(),
)


class Bop(BinaryOptimizer):
    """Binary optimizer (Bop): flip a weight when a running average of its gradients says so.

    Bop keeps no latent weights. For every binary weight ``w`` it keeps an exponential moving
    average ``m`` of the gradient and flips ``w`` when that average is large and points the
    same way as ``w`` (following it would decrease the loss by changing the sign):

        m <- (1 - gamma) m + gamma g
        w <- -w   where  w * m > threshold   (strictly; a tie keeps the weight)

    There is no bias correction and ``m`` is not reset after a flip. Real-valued parameters
    follow Adam (``lr``, ``beta1``, ``beta2``, ``eps``).

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

    hparams = HPARAMS
    state_buffers = ("m",)
    rule_keys = ("gamma", "threshold")

    def __init__(
        self,
        binary_params,
        real_params=(),
        *,
        threshold: float = 1e-8,
        gamma: float = 1e-4,
        lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-7,
        implementation: str | None = None,
    ) -> None:
        super().__init__(
            binary_params,
            real_params,
            binary={"threshold": threshold, "gamma": gamma},
            real={"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps},
            implementation=implementation,
        )

    @staticmethod
    def update(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, *, gamma, threshold):
        ema_(m, g, gamma)
        return flip_(w, w * m > threshold)

    @staticmethod
    def update_foreach(ws, gs, ms, *, gamma: float, threshold: float):
        ema_foreach_(ms, gs, gamma)
        return flip_above_foreach_(ws, torch._foreach_mul(ws, ms), threshold)


@benchbnn.hookimpl
def benchbnn_optimizers() -> list[benchbnn.OptimizerSpec]:
    return [
        benchbnn.OptimizerSpec(
            name="bop",
            factory=Bop,
            hparams=HPARAMS,
            description="Bop: flip a binary weight when its gradient momentum exceeds a threshold",
            reference="Helwegen et al., Latent Weights Do Not Exist, NeurIPS 2019, "
            "arXiv:1906.02107",
        )
    ]
