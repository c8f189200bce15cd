"""benchbnn.optim.elementary: float32 exp and tanh against float64, their special values, and
the same bits eager and compiled (the reason they exist)."""

from __future__ import annotations

import math

import numpy as np
import torch
from compile_support import needs_compile
from numerics_support import ulps

from benchbnn.optim import exp_nonpositive, tanh32
from benchbnn.optim.base import _COMPILE_OPTIONS


def tanh_inputs() -> torch.Tensor:
    """About 8 million float32 values: normal with standard deviations from 1e-6 to 10 (both
    signs), a log-uniform sweep of magnitudes from 1e-38 to 100, and subnormals."""
    generator = torch.Generator().manual_seed(11)
    parts = [
        scale * torch.randn(1_000_000, generator=generator)
        for scale in (1e-6, 1e-3, 0.1, 0.5, 1.0, 3.0, 10.0)
    ]
    magnitudes = torch.logspace(-38, 2, 1_000_000, dtype=torch.float64).float()
    parts += [magnitudes, -magnitudes, torch.tensor([1e-45, -1e-40, 2.0**-126, 9.0, 9.1])]
    return torch.cat(parts)


def test_exp_nonpositive_is_within_2_ulps_of_exp_and_expm1():
    generator = torch.Generator().manual_seed(5)
    z = torch.cat(
        [
            -80 * torch.rand(100_000, generator=generator),
            -1e-3 * torch.rand(100_000, generator=generator),
            -torch.logspace(-30, 1.9, 2_000),
            torch.tensor([0.0, -0.0, -80.0, -1e-45]),
        ]
    )
    q, q_minus_1 = exp_nonpositive(z)
    exact = z.double().numpy()
    assert ulps(q, np.exp(exact)).max() <= 2
    assert ulps(q_minus_1, np.expm1(exact)).max() <= 2
    # below -80 the exponent is clamped: never 0, so a quotient with it never divides 0 by 0
    low, low_minus_1 = exp_nonpositive(torch.tensor([-81.0, -1e30, -math.inf]))
    assert low.tolist() == [q[-2].item()] * 3 and low_minus_1.tolist() == [-1.0] * 3


def test_tanh32_is_within_1_5_ulps_of_float64_tanh():
    x = tanh_inputs()
    error = ulps(tanh32(x), np.tanh(x.double().numpy()))
    assert error.max() <= 1.5
    # most values are much closer than the bound
    assert np.median(error) <= 0.5


def test_tanh32_is_odd_monotone_and_exact_at_its_special_values():
    x = tanh_inputs()
    assert torch.equal(tanh32(-x), -tanh32(x))
    ordered = torch.sort(x).values
    assert bool((tanh32(ordered).diff() >= 0).all())
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, 9.1, -20.0, 1e30])
    got = tanh32(special)
    assert got.tolist() == [0.0, -0.0, 1.0, -1.0, 1.0, -1.0, 1.0]
    assert torch.signbit(got).tolist() == [False, True, False, True, False, True, False]
    assert math.isnan(tanh32(torch.tensor([math.nan])).item())


@needs_compile
def test_tanh32_and_exp_nonpositive_compile_to_the_same_bits():
    x = tanh_inputs()[::7].contiguous()
    compiled = torch.compile(tanh32, dynamic=True, fullgraph=True, options=_COMPILE_OPTIONS)
    assert torch.equal(compiled(x), tanh32(x))
    z = -x.abs()
    compiled_exp = torch.compile(
        exp_nonpositive, dynamic=True, fullgraph=True, options=_COMPILE_OPTIONS
    )
    for got, want in zip(compiled_exp(z), exp_nonpositive(z), strict=True):
        assert torch.equal(got, want)
