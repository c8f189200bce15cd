"""Adam on latent weights, the usual way to train a BNN, as a benchbnn plugin (the baseline)."""

from __future__ import annotations

import torch

import benchbnn
from benchbnn.optim import (
    ADAM_BUFFERS,
    BinaryOptimizer,
    adam_,
    adam_foreach_,
    adam_hparams,
    adam_kwargs,
    sum_counts,
)

#: The clamp of the latent weights, also the binary layers' straight-through window.
CLIP = benchbnn.HParam(
    "clip",
    1.0,
    low=1e-3,
    high=1e3,
    search=(0.5, 2.0),
    help="latent weights are clipped to [-clip, clip]; gradients pass where |w| <= clip",
)


class AdamLatent(BinaryOptimizer):
    """Adam on real-valued latent weights whose signs are the binary weights.

    The classic recipe (BinaryConnect, BinaryNet, XNOR-Net): the network keeps a real-valued
    "latent" weight behind every binary one; the forward pass uses ``sgn0(w)`` and the backward
    pass lets the gradient straight through where ``|w| <= clip``. Every parameter, latent or
    not, follows Adam, and latent weights are clipped after each step:

        w <- Adam(w, g)
        w <- clip(w, -clip, clip)

    The flip count of a step is the number of latent weights whose sign (``sgn0``) changed, so
    it is comparable with the flips of Bop-style optimizers. Models must run their binary layers
    in latent mode (``benchbnn.core.binary.set_latent_mode(model, True, clip)``); the engine does
    this for optimizers that declare ``forward = "latent"``, and because the class declares
    ``ste_window = "clip"`` it keeps every layer's window equal to ``clip`` at every step, so a
    scheduled ``clip`` moves the clamp and the straight-through window together.

    Args:
        lr: Adam learning rate of all parameters. larq's BinaryNet CIFAR-10 baseline uses 5e-3
            (batch 256, 100 epochs); the latent-weight view of the Bop paper reads
            ``lr * |w|`` as how readily a weight flips.
        beta1, beta2, eps: Adam's decay rates and epsilon (Keras's placement).
        clip: bound of the latent weights and of the straight-through estimator. Clipping keeps
            latent weights near zero so that they can still flip; Bethge et al. find 1.25-1.5
            work better than 1.
        implementation: "reference", "foreach", "compiled" or None for the fastest available.

    References: M. Courbariaux, I. Hubara, D. Soudry, R. El-Yaniv, Y. Bengio. "Binarized
    Neural Networks", NeurIPS 2016, https://arxiv.org/abs/1602.02830; D. P. Kingma, J. Ba.
    "Adam: A Method for Stochastic Optimization", ICLR 2015, https://arxiv.org/abs/1412.6980.
    """

    name = "adam-latent"
    description = "Adam on latent weights (sign in the forward, straight-through backward)"
    reference = (
        "Courbariaux et al., Binarized Neural Networks, NeurIPS 2016, arXiv:1602.02830; larq "
        "BinaryNet baseline"
    )
    rule_hparams = (CLIP,)
    real_hparams = adam_hparams(lr=5e-3)
    #: The latent weights follow the same Adam as the real-valued parameters: one lr, one pair
    #: of decay rates, one epsilon for both groups (scheduled together).
    shared_hparams = ("lr", "beta1", "beta2", "eps")
    #: Adam's bias-corrected step size, computed from the group by rule_kwargs().
    derived_keys = ("step_size",)
    state_buffers = ADAM_BUFFERS
    forward = "latent"
    # `clip` is also the binary layers' straight-through window: the engine keeps the layers'
    # window equal to it at every step, scheduled or not
    ste_window = "clip"
    divergence_advice = "lower lr (Adam's step size, on latent and real-valued weights alike)"

    def rule_kwargs(self, group):
        return {**adam_kwargs(group), "clip": group["clip"]}

    @staticmethod
    def update(w, g, exp_avg, exp_avg_sq, *, beta1, beta2, eps, step_size, clip):
        was_positive = w >= 0
        adam_(w, g, exp_avg, exp_avg_sq, beta1=beta1, beta2=beta2, eps=eps, step_size=step_size)
        w.clamp_(-clip, clip)
        return (was_positive != (w >= 0)).sum()

    @staticmethod
    def update_foreach(
        ws, gs, ms, vs, *, beta1: float, beta2: float, eps: float, step_size: float, clip: float
    ):
        was_positive = [w >= 0 for w in ws]
        adam_foreach_(ws, gs, ms, vs, beta1=beta1, beta2=beta2, eps=eps, step_size=step_size)
        torch._foreach_clamp_min_(ws, -clip)
        torch._foreach_clamp_max_(ws, clip)
        changed = [(before != (w >= 0)).sum() for before, w in zip(was_positive, ws)]
        return sum_counts(changed, ws[0].device)


#: Every hyperparameter AdamLatent accepts (Adam's, then clip), derived from the class.
HPARAMS = AdamLatent.hparams


@benchbnn.hookimpl
def benchbnn_optimizers() -> list[benchbnn.OptimizerSpec]:
    return [benchbnn.optimizer_spec(AdamLatent)]
