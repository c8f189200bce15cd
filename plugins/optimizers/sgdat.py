"""SGDAT, SGD with an adaptive threshold (Gu et al. 2023), as a benchbnn plugin.

Every binary weight accumulates its (momentum) gradient steps in ``h`` and takes the sign of
``h`` once ``|h|`` exceeds a threshold that grows with the number of times the weight has
flipped: a weight that keeps flipping must show more evidence each time.

The authors' training script builds a new optimizer every epoch, so the flip counts and the
momentum restart each epoch while ``h`` persists. ``reset_each_epoch`` reproduces that; the
optimizer learns where epochs begin from this module's ``benchbnn_epoch_start`` hook (the
engine calls it before the first step of every epoch), or from a call to
:meth:`SGDAT.start_epoch` in a hand-written training loop.
"""

from __future__ import annotations

from typing import Any

import torch

import benchbnn
from benchbnn.optim import BinaryOptimizer, adam_hparams, sum_counts

#: The rule's hyperparameters (the real-valued parameters follow Adam, lr 1e-3 as the authors').
RULE_HPARAMS = (
    benchbnn.HParam(
        "step_size",
        1e-4,
        low=0.0,
        high=1e3,
        help="step of the accumulator h <- h - step_size * d (the authors' lr; not Adam's lr); "
        "unless scheduled only threshold / step_size matters, so it is not tuned",
    ),
    benchbnn.HParam(
        "threshold",
        1e-6,
        low=0.0,
        high=1e3,
        search=(1e-9, 1e-4),
        log=True,
        help="threshold per past flip: a weight takes sgn0(h) where |h| > threshold * flips "
        "(tuned relative to the default step_size: 1e-5 to 1 times it)",
    ),
    benchbnn.HParam(
        "momentum",
        0.0,
        low=0.0,
        high=1.0,
        help="momentum of the gradient buffer b (0: no buffer, d = g)",
    ),
    benchbnn.HParam(
        "dampening",
        0.0,
        low=0.0,
        high=1.0,
        help="b <- momentum * b + (1 - dampening) * g",
    ),
    benchbnn.HParam(
        "nesterov",
        False,
        help="with momentum: d = g (+ weight decay) + momentum * b instead of d = b",
    ),
    benchbnn.HParam(
        "weight_decay",
        0.0,
        low=0.0,
        high=1.0,
        help="adds weight_decay * w to d; dropped by momentum without nesterov, as upstream",
    ),
)
#: Read by :meth:`SGDAT.start_epoch`, not by the rule (kept in ``options``, out of the groups).
RESET_EACH_EPOCH = benchbnn.HParam(
    "reset_each_epoch",
    False,
    help="restart flip counts and momentum at every epoch (the authors' script rebuilds "
    "the optimizer each epoch); h persists",
)


class SGDAT(BinaryOptimizer):
    """SGD with an adaptive threshold: accumulate gradient steps, flip on enough evidence.

    For every binary weight ``w`` SGDAT keeps an accumulator ``h`` (starts at 0, never reset),
    a flip count ``k`` (starts at 0, a float32 buffer) and a momentum buffer ``b`` (starts at
    0). Each step, in this order:

        d  = g + weight_decay * w                  (only if weight_decay != 0)
        if momentum != 0:
            b <- momentum * b + (1 - dampening) * g     (the raw gradient: no weight decay)
            d  = d + momentum * b   if nesterov
            d  = b                  otherwise           (weight decay is then dropped)
        h <- h - step_size * d
        w <- sgn0(h)   where |h| > threshold * k        (strictly; elsewhere w is kept)
        k <- k + 1     where w changed

    On the first step (``k = 0``) every weight with a nonzero gradient becomes ``-sign(g)``,
    whatever it was; afterwards a weight that has flipped ``k`` times needs ``|h| >
    threshold * k`` to change again. The flip count of a step is the number of weights whose
    sign changed.

    Without Nesterov a nonzero ``weight_decay`` has no effect once ``momentum`` is nonzero:
    the upstream code computes ``d = b`` from the raw gradient, and benchbnn keeps that. While
    ``momentum`` is 0 the buffer ``b`` is not touched (it stays 0), also as upstream. The
    momentum and weight-decay branches depend only on hyperparameter values, so they are
    Python branches on constants (a scheduled ``momentum`` that leaves or reaches 0 recompiles
    the compiled step once); the rule has no branch on tensor values.

    ``h`` is ``step_size`` times a sum that does not depend on ``step_size``, so while both are
    constant only the ratio ``threshold / step_size`` decides the flips (up to float32
    rounding): scaling both by one factor trains the same network. ``benchbnn tune`` therefore
    searches ``threshold`` and leaves ``step_size`` alone.

    Arithmetic: float32 state and rule whatever the weights' dtype. Upstream writes
    ``h.add_(d, alpha=-lr)`` and ``b.mul_(momentum).add_(g, alpha=1 - dampening)``, which
    PyTorch's eager CPU and CUDA kernels compute as fused multiply-adds; benchbnn rounds each
    product and sum separately on every implementation (so that the reference, ``foreach`` and
    compiled steps agree bit for bit), which can differ from upstream in the last bit of ``h``
    and ``b``. The comparison ``|h| > threshold * k`` rounds ``threshold * k`` to float32 as
    upstream does.

    **Restart per epoch.** ``gushan/SGDAT``'s ``main_binary.py`` builds a new SGDAT (and a new
    Adam for the real-valued parameters) at the start of every epoch, so ``k`` and ``b``
    restart at 0 each epoch while ``h``, stored on the parameter, persists; the published
    numbers come from that. With ``reset_each_epoch`` (off by default here, on in the suites
    that reproduce the authors' setting) :meth:`start_epoch` zeroes ``k`` and ``b`` of every
    binary weight. benchbnn's engine calls it at the start of every epoch through this module's
    ``benchbnn_epoch_start`` hook (at epoch 1 the state is already zero; after ``--resume`` the
    epoch being continued starts with it, as without the interruption); a hand-written loop
    calls ``optimizer.start_epoch()`` itself. The real-valued Adam is not restarted: its
    moments and bias correction carry over epochs, unlike upstream's.

    Args:
        step_size: step of the accumulator (upstream's ``lr``; benchbnn's ``lr`` is Adam's).
        threshold: evidence needed per past flip. 0 makes SGDAT sign-of-accumulated-gradient
            (a weight takes ``sgn0(h)`` whenever ``h != 0``).
        momentum, dampening, nesterov, weight_decay: as in ``torch.optim.SGD`` (with the
            weight-decay caveat above).
        reset_each_epoch: restart ``k`` and ``b`` at every epoch (see above).
        lr, beta1, beta2, eps: Adam for the real-valued parameters; the default 1e-3 is the
            authors' (their ``--fp_regime`` default).
        implementation: "reference", "foreach", "compiled" or None for the fastest available.

    State: three floats per binary weight (``h``, ``k``, ``b``). Defaults are the upstream
    class's (``lr=1e-4, threshold=1e-6``, no momentum, dampening, Nesterov or weight decay);
    the README's commands run ``threshold`` 1e-7. Upstream also accepts an ``eps`` it never
    uses. From May 2022 to April 2023 it compared ``|h| > threshold * k + eps`` instead, and
    since the script builds SGDAT from the param groups of an Adam, ``eps`` was Adam's 1e-8
    there, not the class's 0: a weight with ``k = 0`` then needed ``|h| > 1e-8`` to flip.

    Reference: S. Gu, G. Zhang, C. Jia, Y. Wu. "SGDAT: An optimization method for binary
    neural networks", Neurocomputing 555, 2023. Code: https://github.com/gushan/SGDAT,
    ``optimizers/SGDAT.py`` (class ``SGDAT``) and ``main_binary.py`` (the training script).
    """

    name = "sgdat"
    description = (
        "SGDAT: a binary weight takes the sign of its accumulated gradient steps once they "
        "exceed a threshold that grows with its past flips"
    )
    reference = (
        "Gu, Zhang, Jia, Wu, SGDAT: An optimization method for binary neural networks, "
        "Neurocomputing 555, 2023"
    )
    rule_hparams = RULE_HPARAMS
    option_hparams = (RESET_EACH_EPOCH,)
    real_hparams = adam_hparams(lr=1e-3)
    state_buffers = ("h", "k", "b")
    #: Which branches of the rule run, computed from the group by :meth:`rule_kwargs`.
    derived_keys = ("use_momentum", "use_weight_decay")
    forward = "sign"

    def rule_kwargs(self, group) -> dict[str, Any]:
        # Which branches run is decided on the host from the hyperparameter values and passed
        # as Python booleans (constants to the compiled rule), so that the rule never branches
        # on a tensor; the values themselves stay scalars that schedules can change.
        kwargs = super().rule_kwargs(group)
        kwargs["use_momentum"] = kwargs["momentum"] != 0
        kwargs["use_weight_decay"] = kwargs["weight_decay"] != 0
        kwargs["nesterov"] = bool(kwargs["nesterov"])
        return kwargs

    @torch.no_grad()
    def start_epoch(self) -> None:
        """Mark the start of an epoch: with ``reset_each_epoch``, zero ``k`` and ``b``.

        ``h`` is kept. The engine calls this before the first step of every epoch; call it
        yourself in a hand-written training loop. Without ``reset_each_epoch`` it does nothing.
        """
        if not self.options["reset_each_epoch"]:
            return
        for group in self.param_groups:
            if group["kind"] != "binary":
                continue
            for p in group["params"]:
                self.state[p]["k"].zero_()
                self.state[p]["b"].zero_()

    @staticmethod
    def update(
        w,
        g,
        h,
        k,
        b,
        *,
        step_size,
        threshold,
        momentum,
        dampening,
        weight_decay,
        nesterov: bool,
        use_momentum: bool,
        use_weight_decay: bool,
    ):
        d = g + weight_decay * w if use_weight_decay else g
        if use_momentum:
            b.mul_(momentum).add_((1 - dampening) * g)
            d = d + momentum * b if nesterov else b
        h.sub_(step_size * d)
        new = torch.where(h.abs() > threshold * k, _sgn0(h), w)
        changed = new != w
        k.add_(changed.to(k.dtype))
        w.copy_(new)
        return changed.sum()

    @staticmethod
    def update_foreach(
        ws,
        gs,
        hs,
        ks,
        bs,
        *,
        step_size: float,
        threshold: float,
        momentum: float,
        dampening: float,
        weight_decay: float,
        nesterov: bool,
        use_momentum: bool,
        use_weight_decay: bool,
    ):
        ds = (
            torch._foreach_add(gs, torch._foreach_mul(ws, weight_decay)) if use_weight_decay else gs
        )
        if use_momentum:
            torch._foreach_mul_(bs, momentum)
            torch._foreach_add_(bs, torch._foreach_mul(gs, 1 - dampening))
            ds = torch._foreach_add(ds, torch._foreach_mul(bs, momentum)) if nesterov else bs
        torch._foreach_sub_(hs, torch._foreach_mul(ds, step_size))
        bounds = torch._foreach_mul(ks, threshold)
        counts = []
        for w, h, k, bound in zip(ws, hs, ks, bounds):  # no multi-tensor comparisons
            new = torch.where(h.abs() > bound, _sgn0(h), w)
            changed = new != w
            k.add_(changed.to(k.dtype))
            w.copy_(new)
            counts.append(changed.sum())
        return sum_counts(counts, ws[0].device)


def _sgn0(x: torch.Tensor) -> torch.Tensor:
    """Sign with 0 mapped to +1 (upstream: ``sign(sign(x) + 0.1)``). Where it is used
    ``|h| > threshold * k >= 0``, so ``h`` is never 0 there and this is ``sign(h)``."""
    one = x.new_ones(())
    return torch.where(x >= 0, one, -one)


#: Every hyperparameter SGDAT accepts (the rule's, reset_each_epoch, then Adam's), derived
#: from the class.
HPARAMS = SGDAT.hparams


@benchbnn.hookimpl
def benchbnn_optimizers() -> list[benchbnn.OptimizerSpec]:
    return [benchbnn.optimizer_spec(SGDAT)]


@benchbnn.hookimpl
def benchbnn_epoch_start(run: Any, epoch: int) -> None:
    """Tell an SGDAT optimizer that an epoch begins (it restarts ``k`` and ``b`` if asked).

    The engine calls this for every run; other optimizers are left alone.
    """
    optimizer = getattr(run, "optimizer", None)
    if isinstance(optimizer, SGDAT):
        optimizer.start_epoch()
