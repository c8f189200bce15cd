"""CEMA, the cascaded moving averages of Quist et al. (2022, 2023), as a benchbnn plugin.

The gradient of every binary weight is filtered twice: a moving average ``m`` of the gradient
(the role of momentum), then a moving average ``i`` of ``m`` (the inertia, the role a latent
weight plays); the weight takes the sign that ``i`` asks for. Quist et al. derive it from latent
weights trained with weight decay and momentum, whose magnitudes carry no meaning for a binary
network: what is left are two rates.
"""

from __future__ import annotations

import torch

import benchbnn
from benchbnn.optim import BinaryOptimizer, adam_hparams, flip_, flip_above_foreach_
from benchbnn.optim.base import ema_convex_, ema_convex_foreach_

#: The rule's hyperparameters (the real-valued parameters follow Adam, lr 1e-3 as the authors').
RULE_HPARAMS = (
    benchbnn.HParam(
        "alpha",
        1e-3,
        low=0.0,
        high=1.0,
        search=(1e-5, 1e-1),
        log=True,
        help="rate of the inertia (the moving average of m); the authors decay it by "
        "1 - epoch/epochs: schedule it, e.g. polynomial:A:A/epochs",
    ),
    benchbnn.HParam(
        "gamma",
        1e-1,
        low=0.0,
        low_open=True,
        high=1.0,
        search=(1e-3, 1.0),
        log=True,
        help="rate of the gradient average m, in (0, 1] (1 - momentum in the latent-weight view)",
    ),
)


class CEMA(BinaryOptimizer):
    """Cascaded exponential moving averages: flip a weight where its inertia points its way.

    For every binary weight ``w`` CEMA keeps a gradient average ``m`` and an inertia ``i``,
    both starting at 0 and neither reset after a flip. Each step, in this order:

        m <- (1 - gamma) m + gamma g
        i <- (1 - alpha) i + alpha m
        w <- -w   where  i * w > 0      (strictly; i = 0 keeps the weight)

    ``i`` averages gradients, so a weight that agrees in sign with its inertia is one whose
    filtered gradient says the loss falls if it changes sign: after every step each weight is
    ``-sign(i)`` wherever ``i`` is nonzero. There is no threshold; ``alpha`` sets how long the
    inertia remembers.

    Both averages are computed in the CEMA authors' order, ``avg.mul_(1 - rate).add_(x,
    alpha=rate)`` in their PyTorch code, with :func:`benchbnn.optim.ema_convex_` (``(1 - rate)
    * avg`` then ``+ rate * x``). One difference in the last bit remains: PyTorch's eager CPU
    and CUDA kernels compute ``add_(x, alpha=rate)`` as one fused multiply-add, while benchbnn
    rounds the product and the sum separately on every implementation (so that the reference,
    ``foreach`` and compiled steps agree bit for bit). ``m`` and ``i`` are float32 and the rule
    runs in float32 whatever the weights' dtype.

    **The decay of alpha.** The authors' rate at step t is ``alpha * d_t`` with ``d_t`` the
    learning-rate factor of their scheduler, ``1 - epoch / epochs`` (epoch counted from 0),
    changed once per epoch: the same factor decays the real-valued Adam's learning rate, and
    alpha never quite reaches 0 (its last value is ``alpha / epochs``). In benchbnn the value
    of ``alpha`` *is* the rate of the step, so the decay is a schedule of ``alpha`` (and one of
    ``lr`` for the authors' Adam); the suites use

        alpha = "polynomial:A:A/E"    lr = "polynomial:LR:LR/E"      (E the run's epochs)

    which is the straight line through the authors' first and last values, evaluated every
    step. benchbnn has no per-epoch linear staircase, so this is as close as its schedule kinds
    come: it starts at ``A`` and ends at ``A / E`` like the authors', its sum over the run (the
    total rate applied) equals theirs exactly, and within every epoch it slides across the
    authors' constant value for that epoch instead of holding it, differing from it by at most
    one stair, ``A / E``. ``polynomial:A:0`` is the plain linear decay to zero per step.
    Without a schedule alpha stays constant.

    Args:
        alpha: rate of the inertia. High values follow the gradient average closely (many
            flips, little memory); low values need evidence that persists for about
            ``1 / alpha`` steps before a weight flips. It plays the role of learning rate
            times weight decay for latent weights. Valid in [0, 1]: a schedule may end at 0.
        gamma: rate of the gradient average, in (0, 1]; ``1 - gamma`` plays the role of the
            momentum of a latent-weight optimizer (gamma 1 filters nothing).
        lr, beta1, beta2, eps: Adam for the real-valued parameters. The default 1e-3 is the
            authors' (``--learning_rate`` of their training script).
        implementation: "reference", "foreach", "compiled" or None for the fastest available.

    State: two floats per binary weight. Defaults: the authors' code requires alpha and gamma
    and has none, and these are not the paper's experimental values. gamma 0.1 is ``1 -
    momentum`` for the usual momentum 0.9 (also the beta1 of the Adam their latent-weight
    baseline uses); alpha 1e-3 was chosen on benchbnn's quick suite (digits), where it trains
    well with or without the decay (see ``plugins/suites/quick.toml``).

    Reference: J. Quist, Y. Li, J. van Gemert. "Understanding weight-magnitude hyperparameters
    in training binary networks", ICLR 2023 (https://openreview.net/forum?id=uBKBoix9NXa,
    arXiv:2303.02452); J. Quist, master's thesis, TU Delft, 2022. Code:
    https://github.com/jorisquist/Understanding-WM-HP-in-BNNs, ``optimizers/cema_optimizer.py``
    (``CEMA_Optimizer``, ``cascaded_ema``) and ``imagenet/step2/train.py`` (the decay).
    """

    name = "cema"
    description = (
        "CEMA: flip a binary weight to the sign of a moving average of its gradient average "
        "(cascaded EMAs, no threshold)"
    )
    reference = (
        "Quist, Li, van Gemert, Understanding weight-magnitude hyperparameters in training "
        "binary networks, ICLR 2023, arXiv:2303.02452"
    )
    rule_hparams = RULE_HPARAMS
    real_hparams = adam_hparams(lr=1e-3)
    state_buffers = ("m", "i")
    forward = "sign"

    @staticmethod
    def update(w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, i: torch.Tensor, *, alpha, gamma):
        ema_convex_(m, g, gamma)
        ema_convex_(i, m, alpha)
        return flip_(w, i * w > 0)

    @staticmethod
    def update_foreach(ws, gs, ms, inertias, *, alpha: float, gamma: float):
        ema_convex_foreach_(ms, gs, gamma)
        ema_convex_foreach_(inertias, ms, alpha)
        return flip_above_foreach_(ws, torch._foreach_mul(inertias, ws), 0.0)


#: Every hyperparameter CEMA accepts (the rule's, then Adam's), derived from the class.
HPARAMS = CEMA.hparams


@benchbnn.hookimpl
def benchbnn_optimizers() -> list[benchbnn.OptimizerSpec]:
    return [benchbnn.optimizer_spec(CEMA)]
