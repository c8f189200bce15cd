"""Momentum flip: a minimal third-party optimizer plugin for benchbnn.

A heavy-ball variant of Bop: the momentum ``m <- beta * m + g`` sums gradients instead of
averaging them, and a flipped weight forgets its momentum so that it has to earn its next flip.
It is an example of a plugin's shape, not a recommendation.
"""

from __future__ import annotations

import torch

import benchbnn
from benchbnn.optim import BinaryOptimizer, adam_hparams, flip_

HPARAMS = (
    benchbnn.HParam(
        "threshold",
        0.0,
        low=0.0,
        high=1e3,
        search=(1e-8, 1e-2),
        log=True,
        help="a weight flips once its momentum exceeds this, in its own direction",
    ),
    benchbnn.HParam(
        "beta",
        0.9,
        low=0.0,
        high=0.9999,
        search=(0.5, 0.999),
        help="how much of the previous momentum is kept each step",
    ),
    *adam_hparams(),  # the real-valued parameters follow Adam, as in every built-in optimizer
)


class MomentumFlip(BinaryOptimizer):
    """Flip ``w`` where ``w * m > threshold``; reset ``m`` where a weight flipped."""

    hparams = HPARAMS
    state_buffers = ("m",)  # one float per binary weight
    rule_keys = ("beta", "threshold")

    def __init__(
        self,
        binary_params,
        real_params=(),
        *,
        threshold=0.0,
        beta=0.9,
        lr=0.01,
        beta1=0.9,
        beta2=0.999,
        eps=1e-7,
        implementation=None,
    ):
        super().__init__(
            binary_params,
            real_params,
            binary={"threshold": threshold, "beta": beta},
            real={"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps},
            implementation=implementation,
        )

    @staticmethod
    def update(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, *, beta, threshold):
        m.mul_(beta).add_(g)
        flipped = w * m > threshold
        m.masked_fill_(flipped, 0.0)
        return flip_(w, flipped)


@benchbnn.hookimpl
def benchbnn_optimizers():
    return [
        benchbnn.OptimizerSpec(
            name="momentum-flip",
            factory=MomentumFlip,
            hparams=HPARAMS,
            description="heavy-ball momentum flips with a reset after each flip (an example plugin)",
        )
    ]
