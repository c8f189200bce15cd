"""Binary weights stored in float16, bfloat16 or float64 flip exactly where float32 weights flip.

The base class keeps the state of binary weights in float32 and runs every rule in float32
(``benchbnn.optim.base.state_dtype``), so the checks iterate the registry: whatever plugin is
installed, built in or third party, is held to them. The comparison is fair only if every run
sees the same gradient values; a model in bfloat16 hands its optimizer bfloat16 gradients, so
the gradients are chosen exactly representable in float16 and bfloat16
(``benchbnn.optim.testing.exact_gradients``) and every run receives identical numbers. Any
difference in flips then comes from the optimizer's arithmetic, not from rounding its input.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from compile_support import needs_compile

import benchbnn
import benchbnn.optim.base
from benchbnn.optim.base import state_dtype
from benchbnn.optim.testing import (
    DTYPES,
    dtype_problems,
    exact_gradients,
    gradient_step,
    initial_weights,
    run_context,
    run_in_dtype,
)

REGISTERED = benchbnn.list_optimizers()
LOW_PRECISION = [torch.float16, torch.bfloat16]


def _build(name, binary, real=(), implementation="reference", **hparams):
    optimizer = benchbnn.get_optimizer(name).build(binary, real, context=run_context(), **hparams)
    optimizer.implementation = implementation
    return optimizer


def _constant_run(name, dtype, gradient, steps, implementation, **hparams):
    """Four weights of +1 and the same gradient every step: flips per step and the state."""
    w = torch.nn.Parameter(torch.ones(4, dtype=dtype))
    opt = _build(name, [w], implementation=implementation, **hparams)
    flips = []
    for _ in range(steps):
        w.grad = torch.full((4,), gradient, dtype=dtype)
        opt.step()
        flips.append(int(opt.flip_count))
    return flips, opt.state[w], w.detach()


# --- the registry, every dtype ---------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["reference", "foreach"])
@pytest.mark.parametrize("name", REGISTERED)
def test_every_optimizer_flips_alike_in_every_dtype(name, implementation):
    """300 steps on exact gradients: the same flips at every step in float16, bfloat16 and
    float64 as in float32, float32 state throughout (for latent weights: float64 only, see
    ``dtype_problems``)."""
    assert dtype_problems(name, implementation=implementation, steps=300) == []


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize("name", REGISTERED)
def test_every_optimizer_flips_alike_in_every_dtype_compiled(name, monkeypatch):
    monkeypatch.setattr(benchbnn.optim.base, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would hide the kernel
        assert dtype_problems(name, implementation="compiled", steps=100) == []


@pytest.mark.usefixtures("clean_registry")
def test_a_third_party_optimizer_gets_float32_state_without_asking():
    # The example plugin of the README knows nothing about dtypes; the base class does.
    path = Path(__file__).resolve().parents[1] / "examples" / "benchbnn-example-optimizer"
    spec = importlib.util.spec_from_file_location(
        "benchbnn_example_optimizer", path / "benchbnn_example_optimizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    benchbnn.register_plugin(module, "benchbnn-example-optimizer")
    for implementation in ("reference", "foreach"):
        assert dtype_problems("momentum-flip", implementation=implementation) == []


def test_the_check_catches_state_kept_in_the_weights_dtype(monkeypatch):
    # The arithmetic benchbnn had before: buffers and rule in the weights' own dtype.
    monkeypatch.setattr(benchbnn.optim.base, "state_dtype", lambda dtype, kind="binary": dtype)
    problems = dtype_problems("bop", steps=50)
    assert any("state buffer 'm' is bfloat16, not float32" in p for p in problems)
    assert any("bfloat16 weights flip differently from float32" in p for p in problems)


def test_exact_gradients_are_exact_in_every_dtype():
    for step in exact_gradients(steps=20):
        for g in step:
            for dtype in (*DTYPES, torch.float32):
                assert torch.equal(g.to(dtype).to(torch.float32), g)
            assert float(g.abs().max()) < 1.0
            assert float(g[g != 0].abs().min()) >= 2.0**-24


@pytest.mark.parametrize("name", REGISTERED)
def test_run_in_dtype_returns_flip_counts_per_step(name):
    grads = exact_gradients(steps=5)
    run = run_in_dtype(name, torch.bfloat16, grads)
    assert len(run.flips) == len(run.weights) == 5
    assert all(isinstance(f, int) and f >= 0 for f in run.flips)
    buffers = benchbnn.get_optimizer(name).factory.state_buffers
    assert set(run.state) == set(buffers)
    assert all(t.dtype == torch.float32 for ts in run.state.values() for t in ts)


# --- the two cases of the issue --------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["reference", "foreach"])
def test_bfloat16_bop_flips_all_four_weights_like_float32(implementation):
    # gamma 1e-3, threshold 0.9, gradient 1: m reaches 0.9 after 2302 steps. A bfloat16 m
    # stopped at 0.5, where gamma * (1 - m) is below half its ulp, and never flipped.
    hparams = {"gamma": 1e-3, "threshold": 0.9, "implementation": implementation}
    f32_flips, f32_state, _ = _constant_run("bop", torch.float32, 1.0, 3000, **hparams)
    flips, state, w = _constant_run("bop", torch.bfloat16, 1.0, 3000, **hparams)
    assert sum(flips) == 4 and flips.index(4) == 2301
    assert flips == f32_flips
    assert w.dtype == torch.bfloat16 and w.tolist() == [-1.0] * 4
    assert state["m"].dtype == torch.float32 and torch.equal(state["m"], f32_state["m"])


@pytest.mark.parametrize("implementation", ["reference", "foreach"])
@pytest.mark.parametrize(
    ("hparams", "expected"),
    [
        # Defaults: the step-1 signal gamma / sqrt(sigma) = 1e-5 exceeds 1e-6 and all four flip;
        # in float16 m = 1e-10 and v = 1e-10 were 0, the signal 0/0, and nothing flipped.
        ({}, [4] + [0] * 49),
        # The signal peaks near 2.1 < 3: nothing flips; in float16 v was 0, the epsilon 0 and
        # the signal infinite, and all four flipped on step 1.
        ({"gamma": 0.1, "threshold": 3.0}, [0] * 50),
    ],
)
def test_float16_bop2ndorder_with_small_gradients_flips_as_float32(
    implementation, hparams, expected
):
    g = float(torch.tensor(1e-4, dtype=torch.float16))  # the same value for both runs
    runs = {
        dtype: _constant_run("bop2ndorder", dtype, g, 50, implementation, **hparams)
        for dtype in (torch.float32, torch.float16)
    }
    (f32_flips, f32_state, _), (flips, state, _) = runs[torch.float32], runs[torch.float16]
    assert flips == f32_flips == expected
    for key in ("m", "v"):
        assert state[key].dtype == torch.float32
        assert torch.equal(state[key], f32_state[key])
    assert bool((state["v"] > 0).all())


# --- state: dtypes, checkpoints, the real-valued side ------------------------------------------


@pytest.mark.parametrize("name", REGISTERED)
def test_state_buffers_are_float32_for_every_binary_dtype(name):
    params = [torch.nn.Parameter(torch.ones(3, dtype=d)) for d in (*DTYPES, torch.float32)]
    opt = _build(name, params)
    for p in params:
        for key in opt.state_buffers:
            assert opt.state[p][key].dtype == torch.float32
    assert opt.state_bytes_per_binary_weight() == 4.0 * len(opt.state_buffers)


@pytest.mark.parametrize("implementation", ["reference", "foreach"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REGISTERED)
def test_state_dict_round_trip_keeps_float32_state(name, dtype, implementation):
    spec = benchbnn.get_optimizer(name)
    shapes = [(30, 4), (3, 2, 3, 3)]
    init = initial_weights(shapes, latent=spec.latent_weights) + [torch.linspace(-1, 1, 7)]
    grads = [g + [torch.full((7,), 2.0**-10)] for g in exact_gradients(shapes, 6)]

    def fresh():
        params = [torch.nn.Parameter(t.clone().to(dtype)) for t in init]
        torch.manual_seed(11)  # optimizers that draw a seed draw the same one
        return params, _build(name, params[:2], params[2:], implementation)

    def run(opt, params, steps):
        for step in steps:
            gradient_step(opt, params, step)

    params, opt = fresh()
    run(opt, params, grads[:3])
    saved = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in params]
    run(opt, params, grads[3:])
    params2, opt2 = fresh()
    with torch.no_grad():
        for p, s in zip(params2, saved_params):
            p.copy_(s)
    opt2.load_state_dict(saved)
    for i, p in enumerate(params2):
        for value in opt2.state[p].values():
            assert value.dtype == state_dtype(p.dtype, "binary" if i < 2 else "real")
    run(opt2, params2, grads[3:])
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
        for key, value in opt.state[a].items():
            assert torch.equal(value, opt2.state[b][key])
    assert torch.equal(opt.flip_count, opt2.flip_count)


def test_loading_a_checkpoint_with_low_precision_buffers_upcasts_them():
    # Checkpoints written before the state was float32 hold bfloat16 buffers.
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    opt = _build("bop2ndorder", [w])
    saved = opt.state_dict()
    saved["state"][0] = {k: torch.full((3,), 0.5, dtype=torch.bfloat16) for k in ("m", "v")}
    opt.load_state_dict(saved)
    assert all(opt.state[w][k].dtype == torch.float32 for k in ("m", "v"))
    assert opt.state[w]["m"].tolist() == [0.5] * 3


@pytest.mark.parametrize("implementation", ["reference", "foreach"])
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_adam_keeps_float32_moments_for_low_precision_real_parameters(dtype, implementation):
    # g = 2**-14: g^2 = 2**-28 underflows in float16, so float16 moments gave v = 0 and a step
    # of lr * m / eps instead of about lr * sign(g) (eps = 1e-7 is itself a float16 subnormal).
    g, lr, eps = 2.0**-14, 0.01, 1e-7
    r = torch.nn.Parameter(torch.zeros(3, dtype=dtype))
    opt = _build("bop", [], [r], implementation=implementation, lr=lr, eps=eps)
    r.grad = torch.full((3,), g, dtype=dtype)
    opt.step()
    m, v = opt.state[r]["exp_avg"], opt.state[r]["exp_avg_sq"]
    assert m.dtype == v.dtype == torch.float32
    assert bool((v > 0).all())
    assert r.dtype == dtype
    keras = -lr * (0.001**0.5 / 0.1) * (0.1 * g) / ((0.001 * g * g) ** 0.5 + eps)
    assert keras == pytest.approx(-0.0095, abs=1e-4)
    resolution = float(torch.finfo(dtype).eps)  # one rounding into the parameter's dtype
    assert r.detach().double().tolist() == pytest.approx([keras] * 3, rel=resolution)


def test_adam_keeps_float64_moments_for_float64_real_parameters():
    r = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = _build("bop", [], [r])
    r.grad = torch.full((3,), 1e-3, dtype=torch.float64)
    opt.step()
    assert opt.state[r]["exp_avg"].dtype == torch.float64
    assert state_dtype(torch.float64, "real") == torch.float64
    assert state_dtype(torch.float64, "binary") == torch.float32
