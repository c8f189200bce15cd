"""The compiled step is one pass over memory per tensor, and PBop's coins cost no 64-bit lanes.

A step over binary weights is memory-bound only if the fused kernel reads every weight, gradient
and state buffer once and writes each back once. Inductor used to split CEMA, SGDAT and
adam-latent into two loops (the flip count, a reduction, read the weights that the second loop
overwrote), so those steps streamed the weights and a buffer twice; ``benchbnn bench`` measured
them at twice the memory-bandwidth floor. These tests count the parallel loops of the generated
C++ kernel of every built-in rule, and check that the int32 form of ``counter_uniform``'s hash
produces exactly the bits of its int64 definition and of a plain-Python copy of its documented
hash, that its uniforms pass simple statistical checks, and that the compiled PBop kernel builds
no index vector lane by lane (which cost PBop more than its hash).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from compile_support import needs_compile

import benchbnn
from benchbnn.optim.base import (
    _counter_uniform_int64,
    _mix32,
    _mix32_int32,
    counter_uniform,
)

BUILT_IN = ["bop", "bop2ndorder", "pbop", "adam-latent", "cema", "sgdat", "md-tanh"]


def _kernel_loops(name: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Parallel loops in the C++ code Inductor generates for one compiled step of ``name``
    (a rule with a C++ kernel of its own, ``update_native``, is made to decline it: the kernel
    Inductor generates is what runs where that one is not built, and on CUDA)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()  # generate the code again even if an earlier test compiled the rule
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1000))
    p.grad = torch.randn(1000)
    optimizer = benchbnn.get_optimizer(name).build([p], [])
    if type(optimizer).update_native is not None:
        monkeypatch.setattr(type(optimizer), "update_native", None)
    optimizer.implementation = "compiled"
    with torch._inductor.config.patch(force_disable_caches=True):
        _, codes = run_and_get_code(optimizer.step)
    assert codes, f"{name}: nothing was compiled"
    assert not optimizer._compile_failed
    return sum(code.count("#pragma omp for") for code in codes)


@pytest.mark.slow
@needs_compile
@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_rule_compiles_to_one_loop(name, monkeypatch):
    assert _kernel_loops(name, monkeypatch) == 1


def test_int32_mix_equals_the_int64_definition_on_every_bit_pattern_class():
    # Every pattern of the top and bottom 12 bits, with random middles: signs, wrap-arounds
    # of the products and the shifted-in bits of arithmetic shifts all occur.
    generator = torch.Generator().manual_seed(3)
    edges = torch.arange(2**12, dtype=torch.int64)
    middle = torch.randint(0, 2**8, (2**12,), generator=generator, dtype=torch.int64)
    patterns = torch.cat([(edges << 20) | (middle << 12) | edges, torch.tensor([0, 2**32 - 1])])
    as_int32 = torch.where(patterns >= 2**31, patterns - 2**32, patterns).to(torch.int32)
    mixed = _mix32_int32(as_int32).to(torch.int64) & 0xFFFFFFFF
    assert torch.equal(mixed, _mix32(patterns))


@pytest.mark.parametrize("numel", [1, 17, 4096, 100_003])
@pytest.mark.parametrize("key", [0, 1, 123_456_789, 2**31 - 1])
def test_counter_uniform_keeps_its_bits(numel, key):
    like = torch.empty(numel)
    key_tensor = torch.tensor(key)
    assert torch.equal(counter_uniform(like, key_tensor), _counter_uniform_int64(like, key_tensor))


MASK32 = 0xFFFFFFFF


def python_mix(x: int) -> int:
    """``benchbnn.optim.base._mix32`` on a Python int (logical shifts, products mod 2**32)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x5BD1E995) & MASK32
    return x ^ (x >> 16)


def python_uniform(position: int, key: int) -> float:
    """The documented value of ``counter_uniform`` at ``position`` under ``key``, in plain
    Python: the 24 high bits of ``mix((position * 0x61C88647 mod 2**32) xor mix(key))``."""
    scrambled = (position * 0x61C88647) & MASK32
    return (python_mix(scrambled ^ python_mix(key)) >> 8) / 2**24


@pytest.mark.parametrize("key", [0, 1, 7, 2**31 - 1])
def test_counter_uniform_is_its_documented_hash(key):
    positions = [0, 1, 2, 63, 64, 65, 4095, 99_999, 100_002]
    u = counter_uniform(torch.empty(100_003), torch.tensor(key))
    assert [u[i].item() for i in positions] == [python_uniform(i, key) for i in positions]


def test_counter_uniform_values_are_pinned():
    # The first values for key 7 in units of 2**-24: a change of these numbers changes every
    # PBop and BayesBiNN run (the stream changed once, on 2026-11-30; docs/optimizers.md).
    u = counter_uniform(torch.empty(3), torch.tensor(7))
    assert u.dtype == torch.float32
    assert (u * 2**24).tolist() == [4258248.0, 12100812.0, 14990047.0]


def uniformity_failures(uniform, n: int = 2**20, keys: range = range(8)) -> list[str]:
    """Checks of ``uniform(like, key)`` on ``n`` consecutive positions under consecutive keys;
    every bound is five standard deviations of the statistic under true uniforms.

    Per key: the mean (exactly ``1/2 - 2**-25`` for multiples of 2**-24), a chi-square of the
    12 high bits (4096 bins, 4095 degrees of freedom), the correlation of values ``lag``
    positions apart (standard deviation ``1/sqrt(n)``) and a chi-square of neighbouring pairs
    (16 x 16 cells). Between consecutive keys: the correlation at equal positions and how often
    both coins of probability 1/2 come up (``1/4``).
    """
    failures = []
    us = [uniform(torch.empty(n), torch.tensor(k)).double() for k in keys]
    for k, u in zip(keys, us):
        mean = u.mean().item()
        if abs(mean - (0.5 - 2**-25)) > 5 * math.sqrt(1 / 12 / n):
            failures.append(f"key {k}: mean {mean}")
        counts = torch.bincount((u * 4096).long(), minlength=4096).double()
        chi2 = ((counts - n / 4096) ** 2 / (n / 4096)).sum().item()
        if abs(chi2 - 4095) > 5 * math.sqrt(2 * 4095):
            failures.append(f"key {k}: chi-square {chi2:.0f} on 4095 degrees of freedom")
        centred = u - u.mean()
        for lag in (1, 2, 3, 7, 16, 64, 1024, 4096):
            r = ((centred[:-lag] * centred[lag:]).mean() / centred.var()).item()
            if abs(r) > 5 / math.sqrt(n):
                failures.append(f"key {k}: correlation {r:.5f} at lag {lag}")
        cells = (u[:-1] * 16).long() * 16 + (u[1:] * 16).long()
        pairs = torch.bincount(cells, minlength=256).double()
        expected = (n - 1) / 256
        chi2 = ((pairs - expected) ** 2 / expected).sum().item()
        if abs(chi2 - 255) > 5 * math.sqrt(2 * 255):
            failures.append(f"key {k}: pairs chi-square {chi2:.0f} on 255 degrees of freedom")
    for k, (a, b) in zip(keys, itertools.pairwise(us)):
        r = ((a - a.mean()) * (b - b.mean())).mean().item() / (a.std() * b.std()).item()
        if abs(r) > 5 / math.sqrt(n):
            failures.append(f"keys {k}, {k + 1}: correlation {r:.5f}")
        both = ((a < 0.5) & (b < 0.5)).double().mean().item()
        if abs(both - 0.25) > 5 * math.sqrt(0.25 * 0.75 / n):
            failures.append(f"keys {k}, {k + 1}: both coins {both:.5f}")
    return failures


def test_counter_uniform_looks_uniform_and_independent():
    assert uniformity_failures(counter_uniform) == []


def test_the_uniformity_checks_reject_a_weak_generator():
    # One golden-ratio multiply without mixing: a Weyl sequence, far from independent.
    def weyl(like, key):
        index = torch.arange(like.numel(), dtype=torch.int64)
        bits = ((index * 0x61C88647) ^ key) & MASK32
        return (bits >> 8).to(torch.float32) * 2.0**-24

    failures = uniformity_failures(weyl)
    assert any("lag 1" in f for f in failures)
    assert any("chi-square" in f for f in failures)


@pytest.mark.slow
@needs_compile
def test_compiled_counter_uniform_matches_eager():
    compiled = torch.compile(counter_uniform, dynamic=True, fullgraph=True)
    # sizes below, at and across the 64-position blocks of the compiled index, odd tails
    for numel, key in ((1000, 5), (4099, 2**31 - 1), (64, 3), (64 * 5 + 3, 9), (100_003, 0)):
        like, k = torch.empty(numel), torch.tensor(key)
        assert torch.equal(compiled(like, k), _counter_uniform_int64(like, k))


@pytest.mark.slow
@needs_compile
@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_compiled_pbop_builds_no_index_vector_lane_by_lane():
    # An arange in the kernel becomes Vectorized<int32_t>::arange, a vector assembled from 16
    # scalars (about 40 instructions with GCC, more than the hash): counter_uniform loads the
    # lane part of the index instead (benchbnn.optim.base._scrambled_index).
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    p = torch.nn.Parameter(torch.randn(1000))
    p.grad = torch.randn(1000)
    optimizer = benchbnn.get_optimizer("pbop").build([p], [], seed=1)
    optimizer.implementation = "compiled"
    with torch._inductor.config.patch(force_disable_caches=True):
        _, codes = run_and_get_code(optimizer.step)
    kernels = [c for c in codes if "#pragma omp for" in c]
    assert kernels and not any("::arange(" in c for c in kernels)
