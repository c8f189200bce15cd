"""PBop, probabilistic Bop (Suarez-Ramirez 2020, thesis), as a benchbnn plugin."""

from __future__ import annotations

from typing import Any

import torch

import benchbnn
from benchbnn.optim import (
    BinaryOptimizer,
    counter_uniform,
    ema_,
    ema_foreach_,
    flip_,
    sum_counts,
)
from benchbnn.optim.base import sqrt_rn, sqrt_rn_foreach

# PBop keeps Bop2ndOrder's moments, so it shares their rates and epsilon.
from benchbnn_plugins.optimizers.bop2ndorder import EPSILON, GAMMA, SIGMA

#: The rule's hyperparameters (the real-valued parameters follow Adam with the papers' defaults).
RULE_HPARAMS = (
    benchbnn.HParam(
        "threshold",
        1e-6,
        low=0.0,
        high=1e3,
        search=(1e-9, 1e-2),
        log=True,
        help="signals at or below this never flip a weight",
    ),
    GAMMA,
    SIGMA,
    benchbnn.HParam(
        "scaler",
        1e3,
        low=0.0,
        high=1e30,
        search=(1.0, 1e6),
        log=True,
        help="flip probability per unit of signal above the threshold",
    ),
)
#: Read once, when the optimizer is built (kept in ``options``, out of the param groups).
SEED = benchbnn.HParam(
    "seed",
    -1,
    low=-1,
    high=2**63 - 1,
    help="seed of the flip generator; -1 draws it from torch's global RNG when built",
)


class PBop(BinaryOptimizer):
    """Probabilistic Bop: every binary weight is a loaded coin.

    PBop keeps Bop2ndOrder's two moving averages and its biased signal, but where Bop2ndOrder
    flips every weight above the threshold, PBop flips each weight independently with a
    probability that grows with how far its signal exceeds the threshold:

        m <- (1 - gamma) m + gamma g          computed as  m + gamma * (g - m)
        v <- (1 - sigma) v + sigma g^2        computed as  v + sigma * (g*g - v)
        s  = w * m / (sqrt(v) + 1e-10)
        p  = clip(scaler * (s - threshold), 0, 1)
        w <- -w   with probability p

    As ``scaler`` grows, PBop becomes Bop2ndOrder (biased) exactly; a signal at or below the
    threshold never flips. The averages use Bop2ndOrder's arithmetic (the Bop2ndOrder authors'
    order, :func:`benchbnn.optim.ema_`, float32 whatever the weights' dtype).

    The coins are reproducible: the optimizer owns a ``torch.Generator`` seeded when it is
    built (from ``seed``, or else from torch's global RNG, so a run's seed determines it and
    every data-parallel rank draws the same). Each step draws one key per tensor from it and
    hashes the key with each weight's position (:func:`benchbnn.optim.counter_uniform`: the 24
    high bits of ``mix((i * 0x61C88647 mod 2**32) xor mix(key))``, one mix per weight), so the
    fused update makes its random numbers in the same pass; the generator's state is saved in
    ``state_dict()``. Since 0 <= u < 1, ``u < p`` equals ``u < scaler * (s - threshold)`` for
    every value (NaN included), which is what the step compares, without the clip.

    The coins changed on 2026-11-30 (issue 19): the hash was ``mix(mix(i) xor key)``, which with
    its position vector made the compiled step 2.3x its memory-bandwidth floor on one CPU core;
    it now costs about what Bop2ndOrder's does (its CPU time within 3-11% of Bop2ndOrder's in
    the same process, against 50-66% before). Runs recorded before that date draw other coins.

    Args:
        threshold: signal level below which a weight never flips.
        gamma: adaptivity rate of ``m`` (as in Bop2ndOrder; behaves like a learning rate).
        sigma: rate of ``v`` (as in Bop2ndOrder; mostly sets how many weights flip).
        scaler: how steeply the flip probability rises above the threshold; a weight flips
            for sure once its signal exceeds the threshold by ``1 / scaler``. The default 1e3
            puts that margin at 1e-3, small next to the scale of the signal (about 1 for a
            gradient that keeps its sign) but large next to where signals start: with the
            default rates a steady gradient gives ``s`` near ``sqrt(t) * gamma / sqrt(sigma)``
            after ``t`` steps, so its weight flips with probability about 1% per step at first
            and about 10% after a hundred steps, while noise barely above the threshold rarely
            flips anything. Much larger values make PBop deterministic (Bop2ndOrder); much
            smaller ones make flips rare and noisy. The thesis leaves the scaler's effect
            open: tune it.
        seed: seed of the flip generator (-1: draw one from torch's global RNG at build time).
        lr, beta1, beta2, eps: Adam for the real-valued parameters.
        implementation: "reference", "foreach", "compiled" or None for the fastest available.

    Reference: C. D. Suarez-Ramirez. "A work on optimizers for binarized neural networks: a
    second order approach", master's thesis, Tecnologico de Monterrey, 2020.
    https://hdl.handle.net/11285/643391 (only the abstract is public; this is benchbnn's
    specification of the loaded-coin idea).
    """

    name = "pbop"
    description = "PBop: Bop2ndOrder whose flips are coin tosses weighted by the signal"
    reference = "Suarez-Ramirez, master's thesis, Tec de Monterrey 2020, hdl:11285/643391"
    rule_hparams = RULE_HPARAMS
    option_hparams = (SEED,)
    state_buffers = ("m", "v")
    #: ``key``, one random key per tensor and step, comes from :meth:`tensor_kwargs`.
    tensor_keys = ("key",)
    #: 2: the counter-based stream of 2026-11-30 (one multiply and one mix per position)
    rule_version = 2
    forward = "sign"
    divergence_advice = (
        "lower lr (Adam on the real-valued parameters, where a NaN loss starts: flips keep the "
        "binary weights at +-1), gamma or scaler, or raise threshold so that fewer weights flip "
        "at once"
    )

    def setup(self) -> None:
        seed = self.options["seed"]
        if seed < 0:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
        self.seed = seed
        self.generator = torch.Generator(device=self._device)
        self.generator.manual_seed(seed)

    def tensor_kwargs(self, group) -> list[dict[str, Any]]:
        # One key per tensor, drawn whether or not the tensor has a gradient this step, so
        # that the stream of keys depends only on the number of steps taken.
        return [
            {
                "key": torch.randint(
                    0,
                    2**31,
                    (),
                    generator=self.generator,
                    device=self.generator.device,
                    dtype=torch.int64,
                )
            }
            for _ in group["params"]
        ]

    def extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_extra_state(self, state) -> None:
        if "generator" in state:
            self.seed = int(state["seed"])
            self.generator.set_state(state["generator"].cpu())

    @staticmethod
    def update(w, g, m, v, *, key, gamma, sigma, threshold, scaler):
        ema_(m, g, gamma)
        ema_(v, g * g, sigma)
        s = w * (m / (sqrt_rn(v) + EPSILON))
        # u < clip(x, 0, 1) is u < x: u lies in [0, 1) (see the class docstring)
        return flip_(w, counter_uniform(w, key) < scaler * (s - threshold))

    @staticmethod
    def update_foreach(
        ws, gs, ms, vs, *, key, gamma: float, sigma: float, threshold: float, scaler: float
    ):
        ema_foreach_(ms, gs, gamma)
        ema_foreach_(vs, torch._foreach_mul(gs, gs), sigma)
        roots = sqrt_rn_foreach(vs)
        torch._foreach_add_(roots, EPSILON)
        signals = torch._foreach_mul(ws, torch._foreach_div(ms, roots))
        torch._foreach_sub_(signals, threshold)
        torch._foreach_mul_(signals, scaler)
        counts = [flip_(w, counter_uniform(w, k) < x) for w, x, k in zip(ws, signals, key)]
        return sum_counts(counts, ws[0].device)


#: Every hyperparameter PBop accepts (the rule's, the seed, then Adam's), derived from the class.
HPARAMS = PBop.hparams


@benchbnn.hookimpl
def benchbnn_optimizers() -> list[benchbnn.OptimizerSpec]:
    return [benchbnn.optimizer_spec(PBop)]
