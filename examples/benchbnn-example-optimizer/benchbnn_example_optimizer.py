"""Momentum flip: a minimal third-party optimizer plugin for benchbnn.

A heavy-ball variant of Bop: the momentum ``m <- beta * m + g`` sums gradients instead of
averaging them, and a flipped weight forgets its momentum so that it has to earn its next flip.
It is an example of a plugin's shape, not a recommendation. The rule needs no dtype handling:
the base class keeps ``m`` in float32 and hands ``update`` float32 weights and gradients
whatever dtype the model stores them in (``benchbnn.optim.testing.dtype_problems`` checks it).
"""

from __future__ import annotations

import torch

import benchbnn
from benchbnn.optim import BinaryOptimizer, flip_


class MomentumFlip(BinaryOptimizer):
    """Flip ``w`` where ``w * m > threshold``; reset ``m`` where a weight flipped."""

    name = "momentum-flip"
    description = "heavy-ball momentum flips with a reset after each flip (an example plugin)"
    reference = "an example for plugin authors (a heavy-ball variant of Bop)"
    # The rule's hyperparameters, declared once; the real-valued parameters follow Adam
    # (``real_hparams`` defaults to ``adam_hparams()``: lr, beta1, beta2, eps).
    rule_hparams = (
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
    )
    state_buffers = ("m",)  # one float per binary weight, zero at the start
    divergence_advice = "lower lr (Adam on the real-valued parameters) or raise threshold"

    @staticmethod
    def update(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, *, beta, threshold):
        m.mul_(beta).add_(g)
        flipped = w * m > threshold
        m.masked_fill_(flipped, 0.0)
        return flip_(w, flipped)


#: The whole hyperparameter table (rule, then Adam), as ``benchbnn plugins`` lists it.
HPARAMS = MomentumFlip.hparams


@benchbnn.hookimpl
def benchbnn_optimizers():
    return [benchbnn.optimizer_spec(MomentumFlip)]
