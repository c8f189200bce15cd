"""The compiled step is one pass over memory per tensor, and PBop's coins cost no 64-bit lanes.

A step over binary weights is memory-bound only if the fused kernel reads every weight, gradient
and state buffer once and writes each back once. Inductor used to split CEMA, SGDAT and
adam-latent into two loops (the flip count, a reduction, read the weights that the second loop
overwrote), so those steps streamed the weights and a buffer twice; ``benchbnn bench`` measured
them at twice the memory-bandwidth floor. These tests count the parallel loops of the generated
C++ kernel of every built-in rule, and check that the int32 form of ``counter_uniform``'s hash
produces exactly the bits of its int64 definition.
"""

from __future__ import annotations

import pytest
import torch

import benchbnn
from benchbnn.optim.base import (
    _counter_uniform_int64,
    _mix32,
    _mix32_int32,
    compile_unavailable_reason,
    counter_uniform,
)

needs_compile = pytest.mark.skipif(
    compile_unavailable_reason("cpu") is not None,
    reason=f"torch.compile unavailable: {compile_unavailable_reason('cpu')}",
)

BUILT_IN = ["bop", "bop2ndorder", "pbop", "adam-latent", "cema", "sgdat"]


def _kernel_loops(name: str) -> int:
    """Parallel loops in the C++ code Inductor generates for one compiled step of ``name``."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()  # generate the code again even if an earlier test compiled the rule
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1000))
    p.grad = torch.randn(1000)
    optimizer = benchbnn.get_optimizer(name).build([p], [])
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
def test_every_built_in_rule_compiles_to_one_loop(name):
    assert _kernel_loops(name) == 1


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


def test_counter_uniform_values_are_pinned():
    # The first values for key 7 in units of 2**-24, as PBop drew them before the int32 form:
    # a change of these numbers changes every PBop run.
    u = counter_uniform(torch.empty(3), torch.tensor(7))
    assert u.dtype == torch.float32
    assert (u * 2**24).tolist() == [4938332.0, 15662534.0, 4393579.0]


@pytest.mark.slow
@needs_compile
def test_compiled_counter_uniform_matches_eager():
    compiled = torch.compile(counter_uniform, dynamic=True, fullgraph=True)
    for numel, key in ((1000, 5), (4099, 2**31 - 1)):
        like, k = torch.empty(numel), torch.tensor(key)
        assert torch.equal(compiled(like, k), _counter_uniform_int64(like, k))
