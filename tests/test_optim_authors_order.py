"""Bop, Bop2ndOrder and PBop compute their moving averages in the authors' order, bit for bit.

The reference below is the arithmetic of the Bop authors' and larq's TensorFlow ``Bop`` and of
the Bop2ndOrder authors' ``Bop2ndOrder``: float32 tensors and float32 hyperparameters, one
rounding per operation, written one operation per line::

    m.assign_add(gamma * (grad - m))
    v.assign_add(sigma * (tf.math.square(grad) - v))
    var * (m_t / (tf.math.sqrt(v_t) + 1e-10)) - threshold     (its sign decides the flip)

The tests step an optimizer beside it and require ``m``, ``v``, the weights and the flip count
to be identical at every step. To make that requirement bite, some weights ("probes") get a
gradient tuned, each step, so that the reference's ``w * s`` lands within an ulp or two of the
threshold: a near-tie, where rounding one operation differently flips a different set of
weights. Each test asserts that near-ties were hit and that the other order,
``(1 - gamma) * m + gamma * g``, would have decided some of them differently, so it cannot
pass without exercising the rounding it is about.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from compile_support import needs_compile

import benchbnn
from benchbnn.optim.base import (
    counter_uniform,
    ema_,
    ema_convex_,
    ema_convex_foreach_,
    ema_foreach_,
    sqrt_rn,
    sqrt_rn_foreach,
)

F32 = torch.float32
EPSILON = 1e-10  # Bop2ndOrder's, added to sqrt(v)
STEPS = 300
RANDOM, PROBES = 448, 64  # weights with random gradients, weights with tuned ones
NEAR_ULPS = 4  # a near-tie: |w * s - threshold| within this many ulps of the threshold


def f32(x: float) -> torch.Tensor:
    """A hyperparameter as TensorFlow holds it: a float32 scalar."""
    return torch.tensor(x, dtype=F32)


# --- the float32 reference, one rounding per line -----------------------------------------------


def sqrt_nearest(x: torch.Tensor) -> torch.Tensor:
    """The float32 square root rounded once to nearest (IEEE 754): taken in float64, whose
    53 bits exceed 2 * 24 + 2, then rounded to float32. PyTorch's eager float32 ``sqrt`` on
    CPU (MKL) is within an ulp but not always the nearest float, so it cannot serve here."""
    return torch.sqrt(x.double()).to(F32)


def average(avg: torch.Tensor, x: torch.Tensor, rate: float, order: str) -> torch.Tensor:
    """One moving-average step: the authors' ``avg + rate * (x - avg)`` or the other order."""
    if order == "authors":
        d = x - avg
        d = f32(rate) * d
        return avg + d
    keep = f32(1 - rate)  # 1 - rate in double, rounded once to float32
    a = keep * avg
    b = f32(rate) * x
    return a + b


def bop_signal(w, g, m, v, *, gamma, threshold, order="authors"):
    """Bop: ``w * m`` after the average (``v`` is unused)."""
    m = average(m, g, gamma, order)
    ws = w * m
    return ws, m, v


def bop2ndorder_signal(w, g, m, v, *, gamma, sigma, threshold, unbiased, order="authors"):
    """Bop2ndOrder, biased or unbiased: ``w * s`` after both averages."""
    m = average(m, g, gamma, order)
    sq = g * g
    v = average(v, sq, sigma, order)
    if unbiased:
        num = m / f32(gamma)
        vh = v / f32(sigma)
        root = sqrt_nearest(vh)
    else:
        num = m
        root = sqrt_nearest(v)
    root = root + f32(EPSILON)
    s = num / root
    ws = w * s
    return ws, m, v


def threshold_flips(ws: torch.Tensor, threshold: float) -> torch.Tensor:
    """The authors' decision ``sign(w * s - threshold)``, strict at a tie (benchbnn's rule)."""
    excess = ws - f32(threshold)
    return excess > 0


# --- near-ties on purpose -----------------------------------------------------------------------


def tuned_gradients(signal, w, m, v, above, threshold, hparams, width=257, rounds=4, ulps=512):
    """For each weight, a float32 gradient whose reference step puts ``w * s`` next to the
    threshold: just above it where ``above`` is true (the weight flips), at or just below it
    elsewhere (it stays). A logarithmic grid of gradients, zoomed a few times between the best
    point's neighbours, then the ``ulps`` adjacent floats on either side of the best one."""
    magnitudes = torch.logspace(-8, 2, width // 2, dtype=torch.float64)
    grid = torch.cat([-magnitudes.flip(0), torch.zeros(1, dtype=torch.float64), magnitudes])
    candidates = grid.expand(len(w), width)
    target = float(f32(threshold))
    for _ in range(rounds):
        g = candidates.to(F32)
        ws, _, _ = signal(w[:, None], g, m[:, None], v[:, None], **hparams)
        best = (ws.double() - target).abs().argmin(dim=1, keepdim=True)
        low = candidates.gather(1, (best - 1).clamp(min=0))
        high = candidates.gather(1, (best + 1).clamp(max=width - 1))
        candidates = low + (high - low) * torch.linspace(0, 1, width, dtype=torch.float64)
    nearest = g.gather(1, best)
    bits = nearest.view(torch.int32) + torch.arange(-ulps, ulps + 1, dtype=torch.int32)
    g = bits.view(F32)  # adjacent floats (NaN where the bits cross the sign; never chosen)
    ws, _, _ = signal(w[:, None], g, m[:, None], v[:, None], **hparams)
    excess = ws.double() - target
    on_side = torch.where(above[:, None], excess > 0, excess <= 0)
    best = torch.where(on_side, excess.abs(), torch.inf).argmin(dim=1, keepdim=True)
    return torch.where(on_side.any(dim=1), g.gather(1, best).squeeze(1), nearest.squeeze(1))


def ulp(x: float) -> float:
    x32 = f32(x)
    return float(torch.nextafter(x32, f32(float("inf"))) - x32)


# --- the comparison -----------------------------------------------------------------------------

CASES = {
    "bop": ("bop", bop_signal, {"gamma": 1e-2, "threshold": 1e-4}),
    "bop2ndorder-biased": (
        "bop2ndorder",
        bop2ndorder_signal,
        {"gamma": 1e-6, "sigma": 1e-2, "threshold": 1e-6, "unbiased": False},  # the defaults
    ),
    "bop2ndorder-unbiased": (
        "bop2ndorder",
        bop2ndorder_signal,
        {"gamma": 1e-3, "sigma": 1e-2, "threshold": 0.5, "unbiased": True},
    ),
}


def _build(name, params, implementation, **hparams):
    optimizer = benchbnn.get_optimizer(name).build(params, [], **hparams)
    optimizer.implementation = implementation
    return optimizer


def compare_with_authors(case: str, implementation: str) -> tuple[int, int]:
    """Step the optimizer beside the reference; assert identical ``m``, ``v``, weights and flip
    counts at every step. Returns the near-ties hit and the decisions that the other order,
    applied to the same state and gradients, would have taken differently."""
    name, signal, hparams = CASES[case]
    threshold = hparams["threshold"]
    generator = torch.Generator().manual_seed(0)
    n = RANDOM + PROBES
    w = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(F32)
    m, v = torch.zeros(n), torch.zeros(n)
    param = torch.nn.Parameter(w.clone())
    opt = _build(name, [param], implementation, **hparams)
    near_ties = order_sensitive = 0
    for step in range(1, STEPS + 1):
        g = torch.randn(n, generator=generator) * 1e-2
        probes = slice(RANDOM, n)
        above = torch.rand(PROBES, generator=generator) < 0.5
        g[probes] = tuned_gradients(
            signal, w[probes], m[probes], v[probes], above, threshold, hparams
        )
        ws, m_next, v_next = signal(w, g, m, v, **hparams)
        flips = threshold_flips(ws, threshold)
        other, _, _ = signal(w, g, m, v, **hparams, order="convex")
        order_sensitive += int((threshold_flips(other, threshold) != flips).sum())
        near_ties += int(((ws - f32(threshold)).abs() <= NEAR_ULPS * ulp(threshold)).sum())
        w, m, v = torch.where(flips, -w, w), m_next, v_next

        param.grad = g.clone()
        opt.step()
        assert torch.equal(opt.state[param]["m"], m), f"m differs at step {step}"
        if "v" in opt.state[param]:
            assert torch.equal(opt.state[param]["v"], v), f"v differs at step {step}"
        assert int(opt.flip_count) == int(flips.sum()), f"flip count differs at step {step}"
        assert torch.equal(param.detach(), w), f"weights differ at step {step}"
    return near_ties, order_sensitive


@pytest.mark.parametrize("implementation", ["reference", "foreach"])
@pytest.mark.parametrize("case", CASES)
def test_flips_match_the_authors_float32_arithmetic_through_near_ties(case, implementation):
    near_ties, order_sensitive = compare_with_authors(case, implementation)
    assert near_ties >= 1, "no near-tie was hit: the comparison would prove nothing"
    assert order_sensitive >= 1, "the other order decides the same: the test is not sensitive"


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize("case", CASES)
def test_compiled_flips_match_the_authors_float32_arithmetic_on_cpu(case):
    # Inductor's C++ kernels round once per operation because benchbnn pins
    # ``cpp.enable_floating_point_contract_flag`` to "off"; Triton kernels (CUDA) fuse
    # multiply-adds and are held to the tolerance of test_optim_compiled.py instead.
    near_ties, _ = compare_with_authors(case, "compiled")
    assert near_ties >= 1


# --- PBop: the same averages, coins instead of a threshold ----------------------------------------


def pbop_flips(w, g, m, v, key, *, gamma, sigma, threshold, scaler, order="authors"):
    """PBop's step: Bop2ndOrder's biased signal, then a coin with probability
    ``clip(scaler * (w * s - threshold), 0, 1)`` from ``counter_uniform``."""
    ws, m, v = bop2ndorder_signal(
        w, g, m, v, gamma=gamma, sigma=sigma, threshold=threshold, unbiased=False, order=order
    )
    x = ws - f32(threshold)
    x = f32(scaler) * x
    p = torch.clamp(x, 0.0, 1.0)
    u = counter_uniform(w, key)
    return u < p, m, v


@pytest.mark.parametrize(
    "implementation",
    ["reference", "foreach", pytest.param("compiled", marks=[pytest.mark.slow, needs_compile])],
)
def test_pbop_averages_and_coins_match_the_authors_float32_arithmetic(implementation):
    hparams = {"gamma": 1e-2, "sigma": 1e-2, "threshold": 1e-3, "scaler": 1e2}
    seed, n = 5, 512
    generator = torch.Generator().manual_seed(0)
    keys = torch.Generator().manual_seed(seed)  # PBop draws one key per tensor per step
    w = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(F32)
    m, v = torch.zeros(n), torch.zeros(n)
    param = torch.nn.Parameter(w.clone())
    opt = _build("pbop", [param], implementation, seed=seed, **hparams)
    total = differs = 0
    for step in range(1, STEPS + 1):
        g = torch.randn(n, generator=generator) * 1e-2
        key = torch.randint(0, 2**31, (), generator=keys, dtype=torch.int64)
        _, m_other, _ = pbop_flips(w, g, m, v, key, **hparams, order="convex")
        flips, m, v = pbop_flips(w, g, m, v, key, **hparams)
        differs += int((m_other != m).sum())
        w = torch.where(flips, -w, w)
        param.grad = g.clone()
        opt.step()
        assert torch.equal(opt.state[param]["m"], m), f"m differs at step {step}"
        assert torch.equal(opt.state[param]["v"], v), f"v differs at step {step}"
        assert int(opt.flip_count) == int(flips.sum()), f"flip count differs at step {step}"
        assert torch.equal(param.detach(), w), f"weights differ at step {step}"
        total += int(flips.sum())
    assert total > 0 and differs > 0


# --- the building blocks ----------------------------------------------------------------------


def test_ema_orders_and_their_foreach_versions_round_as_documented():
    generator = torch.Generator().manual_seed(1)
    avg, x = (torch.randn(10_000, generator=generator) for _ in range(2))
    rate = 1e-3
    authors, convex = avg.clone(), avg.clone()
    ema_(authors, x, rate)
    ema_convex_(convex, x, rate)
    assert torch.equal(authors, average(avg, x, rate, "authors"))
    assert torch.equal(convex, average(avg, x, rate, "convex"))
    assert not torch.equal(authors, convex)  # the two orders do round differently
    lists = [[avg[:3000].clone(), avg[3000:].clone()] for _ in range(2)]
    ema_foreach_(lists[0], [x[:3000], x[3000:]], rate)
    ema_convex_foreach_(lists[1], [x[:3000], x[3000:]], rate)
    assert torch.equal(torch.cat(lists[0]), authors)
    assert torch.equal(torch.cat(lists[1]), convex)


def test_sqrt_rn_is_the_nearest_float():
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(2000, generator=generator) * torch.pow(10.0, torch.randint(-40, 30, (2000,)))
    x = torch.cat([x, torch.tensor([0.0, 1e-45, 2.0, 4.0, float(torch.finfo(F32).max)])])
    roots = sqrt_rn(x)
    assert roots.dtype == F32
    pieces = sqrt_rn_foreach([x[:7], x[7:]])
    assert torch.equal(torch.cat(pieces), roots)
    for value, root in zip(x.tolist(), roots.tolist()):
        r = Fraction(root)
        half_ulp = (Fraction(float(torch.nextafter(f32(root), f32(float("inf"))))) - r) / 2
        below = Fraction(float(torch.nextafter(f32(root), f32(0.0))))
        # Nearest: x lies between the squares of the midpoints around the root.
        assert (r - (r - below) / 2) ** 2 <= Fraction(value) <= (r + half_ulp) ** 2, value
