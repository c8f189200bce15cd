"""MD-tanh: steps against an independent float64 computation of the documented rule, the beta
schedule and its cap, the stable form's float32 closed form against float64 ``tanh(atanh(x) -
a)`` and the authors' exp form (which overflows to NaN), the compiled step bit for bit against
the reference, evaluation on the signs, resume, and training through the engine.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from compile_support import needs_compile
from engine_support import fresh_store, tiny_config
from numerics_support import ulps

import benchbnn
from benchbnn.core.binary import binary_layers
from benchbnn.optim.base import _COMPILE_OPTIONS
from benchbnn.train.engine import train
from benchbnn_plugins.optimizers.md_tanh import tanh_step

W0 = [0.5, -0.2, 0.0, 1.5, -0.05]
GRADS = [
    [0.5, -1.0, 0.25, 0.1, 2.0],
    [0.5, 0.5, -0.25, 0.1, -1.0],
    [-0.125, 1.0, 0.25, 0.1, 0.5],
    [0.25, -0.5, 0.0, -0.1, 0.75],
]
RULE = {"step_size": 0.1, "direction_beta1": 0.8, "direction_beta2": 0.99, "direction_eps": 1e-3}


def build(w0=W0, **hparams):
    x = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    opt = benchbnn.get_optimizer("md-tanh").build([x], **{**RULE, **hparams})
    opt.implementation = "reference"
    return opt, x


def step(opt, x, g):
    x.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()


def reference(grads, beta_scale, beta_interval, stable=True):
    """The documented rule in float64: (x after every step, beta used by every step)."""
    b1, b2, eps, lr = (
        RULE[k] for k in ("direction_beta1", "direction_beta2", "direction_eps", "step_size")
    )
    x = np.tanh(np.array(W0, dtype=np.float32).astype(np.float64))
    m, v, beta = np.zeros(len(W0)), np.zeros(len(W0)), 1.0
    xs, betas = [], []
    for t, g in enumerate(grads, start=1):
        g = np.array(g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        d = m / (np.sqrt(v) + eps)
        rate = lr * math.sqrt(1 - b2**t) / (1 - b1**t) * beta
        if stable:
            x = np.tanh(np.arctanh(x) - rate * d)
        else:
            e = (1 + x) / (1 - x + 1e-20) * np.exp(-2 * rate * d)
            x = (e - 1) / (e + 1 + 1e-20)
        xs.append(x.copy())
        betas.append(beta)
        if (t - 1) % beta_interval == 0:  # after iterations 0, interval, 2 interval, ...
            beta = min(beta * beta_scale, 1e35)
    return xs, betas


def test_the_stable_form_matches_float64_tanh_of_atanh_minus_a():
    # x uniform and crowded near 0 and +-1, |a| log-uniform in [1e-9, 100], both signs
    generator = torch.Generator().manual_seed(6)
    n = 100_000
    near_one = 1 - torch.rand(n, generator=generator) ** 8
    x = torch.cat(
        [2 * torch.rand(n, generator=generator) - 1, near_one, -near_one, torch.randn(n) * 1e-4]
    ).clamp(-1, 1)
    magnitude = torch.exp(
        torch.empty(x.numel()).uniform_(math.log(1e-9), math.log(100.0), generator=generator)
    )
    a = torch.where(torch.rand(x.numel(), generator=generator) < 0.5, -magnitude, magnitude)
    got = tanh_step(x, a)
    with np.errstate(divide="ignore"):
        exact = np.tanh(np.arctanh(x.double().numpy()) - a.double().numpy())
    error = np.abs(got.double().numpy() - exact)
    assert error.max() <= 2e-7  # measured on 7 million pairs: 1.5e-7
    large = np.abs(exact) >= 0.5
    assert ulps(got, exact)[large].max() <= 3  # measured: 2.5
    assert np.array_equal(got.numpy() >= 0, exact >= 0)  # no sign differs (none of 7 million)
    assert bool((got.abs() <= 1).all())


def test_the_stable_form_keeps_plus_or_minus_one_and_saturates_without_nan():
    x = torch.tensor([1.0, -1.0, 0.0, 1 - 2**-24, -1 + 2**-24, 0.5])
    for a, moved in [(50.0, -1.0), (-50.0, 1.0), (math.inf, -1.0), (-math.inf, 1.0)]:
        got = tanh_step(x, torch.full_like(x, a)).tolist()
        assert got == [1.0, -1.0] + [moved] * 4
    assert tanh_step(x, torch.zeros_like(x)).tolist() == x.tolist()


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize("stable", [True, False])
def test_the_compiled_step_is_bit_identical_to_the_reference_for_150_steps(stable):
    # beta doubles every 10 steps (up to 2^15): the stable form drives weights to +-1
    generator = torch.Generator().manual_seed(7)
    w0 = torch.randn(1000, generator=generator).tolist()
    grads = [torch.randn(1000, generator=generator) for _ in range(150)]
    runs = []
    for implementation in ("reference", "compiled"):
        opt, x = build(w0, beta_scale=2.0, beta_interval=10, stable=stable)
        opt.implementation = implementation
        trajectory = []
        for g in grads:
            x.grad = g.clone()
            opt.step()
            trajectory.append((x.detach().clone(), int(opt.flip_count)))
        assert not opt._compile_failed
        runs.append(trajectory)
    for (a, flips_a), (b, flips_b) in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # exp form: NaN
        assert flips_a == flips_b
    if stable:
        assert float((runs[0][-1][0].abs() == 1).float().mean()) > 0.5  # saturated weights


@needs_compile
def test_the_stable_form_compiles_to_the_same_bits():
    generator = torch.Generator().manual_seed(8)
    x = 2 * torch.rand(4099, generator=generator) - 1
    powers = torch.randint(-8, 2, (4099,), generator=generator).float()
    a = torch.randn(4099, generator=generator) * 10.0**powers
    compiled = torch.compile(tanh_step, dynamic=True, fullgraph=True, options=_COMPILE_OPTIONS)
    assert torch.equal(compiled(x, a), tanh_step(x, a))


def test_the_weights_start_at_tanh_of_the_initial_weights_in_float32():
    _, x = build()
    assert torch.equal(x.detach(), torch.tanh(torch.tensor(W0)))
    x64 = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    benchbnn.get_optimizer("md-tanh").build([x64])
    assert torch.equal(x64.detach(), torch.tanh(torch.tensor(W0)).double())


@pytest.mark.parametrize("stable", [True, False])
def test_four_steps_with_a_growing_beta_follow_the_documented_rule(stable):
    # beta 1 at iteration 0, x3 after it; x3 again after iteration 2: betas 1, 3, 3, 9
    opt, x = build(beta_scale=3.0, beta_interval=2, stable=stable)
    xs, betas = reference(GRADS, 3.0, 2, stable)
    assert betas == [1.0, 3.0, 3.0, 9.0]
    for t, g in enumerate(GRADS):
        assert opt.beta == betas[t]  # the beta this step uses
        before = x.detach().clone()
        step(opt, x, g)
        np.testing.assert_allclose(x.detach().double().numpy(), xs[t], rtol=1e-5, atol=1e-7)
        assert int(opt.flip_count) == int(((before >= 0) != (x >= 0)).sum())
    # 4 steps are iterations 0..3: beta grew after iterations 0 and 2 only
    assert (opt.beta, opt.param_groups[0]["step"]) == (9.0, 4)


def test_beta_is_capped_at_1e35():
    opt, x = build(beta_scale=1000.0, beta_interval=1)
    expected = 1.0
    for t in range(14):
        step(opt, x, GRADS[t % 4])
        expected = min(expected * 1000.0, 1e35)
        assert opt.beta == expected
    assert opt.beta == 1e35  # 1000^12 = 1e36 was cut to the cap at step 12 and stays there


def test_the_exp_form_overflows_to_nan_where_the_stable_form_reaches_plus_or_minus_one():
    # beta x1000 every step: after a dozen steps -2 * rate * d far exceeds 88.7, where float32
    # exp overflows. The authors' form then computes inf / inf = NaN for every weight pushed
    # upwards (d < 0, here g < 0); downwards, exp underflows to 0 and x becomes -1 cleanly.
    grads = [-1.0, 1.0, -0.5, 0.5, -2.0]
    w0 = [0.1, 0.1, -0.3, 0.3, 0.0]
    growth = {"beta_scale": 1000.0, "beta_interval": 1, "step_size": 1e-4}
    stable, xs = build(w0, **growth)
    published, xp = build(w0, **growth, stable=False)
    first_nan = None
    for t in range(16):
        step(stable, xs, grads)
        step(published, xp, grads)
        assert bool(torch.isfinite(xs).all())
        nan = torch.isnan(xp)
        if bool(nan.any()) and first_nan is None:
            first_nan = t + 1
        if first_nan is None:  # the same map while nothing overflows
            torch.testing.assert_close(xp.detach(), xs.detach(), rtol=1e-5, atol=1e-6)
    # the largest -2 * rate * d is 0.0002, 0.199, 199.4 at steps 1, 2, 3 (beta 1, 1e3, 1e6;
    # computed in float64): step 3 is the first past log(float32 max) = 88.72
    assert first_nan == 3
    assert xs.tolist() == [1.0, -1.0, 1.0, -1.0, 1.0]
    assert torch.isnan(xp).tolist() == [True, False, True, False, True]
    assert xp[1] == -1.0 and xp[3] == -1.0


def test_plus_or_minus_one_is_a_fixed_point_of_the_stable_form():
    opt, x = build([0.0, 0.0])
    x.data.copy_(torch.tensor([1.0, -1.0]))
    step(opt, x, [1.0, -1.0])  # both pushed inwards, towards 0
    assert x.tolist() == [1.0, -1.0]


def test_evaluation_uses_the_signs_with_plus_one_at_zero_and_restores_x():
    opt, x = build()
    x.data.copy_(torch.tensor([0.3, -0.2, 0.0, -0.0, 0.9]))
    with opt.evaluation_weights() as samples:
        assert samples is None
        assert x.tolist() == [1.0, -1.0, 1.0, 1.0, 1.0]
    assert x.tolist() == pytest.approx([0.3, -0.2, 0.0, 0.0, 0.9])


def test_a_resumed_optimizer_continues_the_beta_schedule_exactly():
    a, xa = build(beta_scale=2.0, beta_interval=3)
    for g in GRADS[:3]:
        step(a, xa, g)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b, xb = build(beta_scale=2.0, beta_interval=3)
    xb.data.copy_(xa.detach())
    b.load_state_dict(torch.load(buffer, weights_only=False))
    assert (b.beta, b.param_groups[0]["step"]) == (a.beta, 3) == (2.0, 3)
    for g in GRADS[3:] + GRADS:
        step(a, xa, g)
        step(b, xb, g)
        assert torch.equal(xa.detach(), xb.detach()) and a.beta == b.beta
    assert a.beta == 8.0  # growths after iterations 0, 3 and 6


def test_the_divergence_advice_names_md_tanhs_own_hyperparameters():
    hint = benchbnn.get_optimizer("md-tanh").divergence_hint()
    for name in ("step_size", "beta_scale", "beta_interval", "stable"):
        assert name in hint


def test_training_uses_continuous_weights_and_evaluates_their_signs(tmp_path):
    seen = {"trained_on_real_values": False, "evaluated": 0}

    class Probe:
        @benchbnn.hookimpl
        def benchbnn_run_start(self, run):
            for _, layer in binary_layers(run.model):
                layer.register_forward_pre_hook(self.check)

        def check(self, layer, inputs):
            weight, _ = layer.binarized_weight()
            binary = bool((weight.detach().abs() == 1).all())
            if layer.training:
                seen["trained_on_real_values"] |= not binary
            else:
                assert binary
                seen["evaluated"] += 1

    config = tiny_config(
        optimizer="md-tanh",
        hparams={"step_size": 1e-2, "beta_scale": 1.5, "beta_interval": 5},
        epochs=2,
    )
    result = train(
        config,
        quiet=True,
        tracking_uri=fresh_store(tmp_path / "store"),
        checkpoint_dir=tmp_path / "ck",
        plugins=[Probe()],
    )
    assert result.status == "FINISHED", result.error
    assert seen["trained_on_real_values"] and seen["evaluated"] > 0
    assert result.history[-1]["test_top1"] > 50.0
