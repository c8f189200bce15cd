"""Properties of the update rules, stated as hypothesis tests."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from optim_support import build, gradient, rate, rule_hparams, run_side_by_side

FLIP_OPTIMIZERS = ["bop", "bop2ndorder", "pbop"]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def gradient_steps(draw, n_min=1, n_max=40, steps_max=4, grad=gradient):
    n = draw(st.integers(n_min, n_max))
    steps = draw(st.integers(1, steps_max))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n))
    grads = [
        torch.tensor(draw(st.lists(grad, min_size=n, max_size=n)), dtype=torch.float32)
        for _ in range(steps)
    ]
    return torch.tensor(signs), grads


@pytest.mark.parametrize("name", FLIP_OPTIMIZERS)
@SETTINGS
@given(data=st.data())
def test_binary_weights_stay_plus_minus_one_and_flips_are_sign_changes(name, data):
    signs, grads = data.draw(gradient_steps())
    w = torch.nn.Parameter(signs.clone())
    opt = build(
        name,
        [w],
        implementation=data.draw(st.sampled_from(["reference", "foreach"])),
        **data.draw(rule_hparams(name)),
    )
    for g in grads:
        before = w.detach().clone()
        w.grad = g
        opt.step()
        assert bool(((w == 1) | (w == -1)).all())
        assert int(opt.flip_count) == int((w.detach() != before).sum())
        assert float(opt.flip_ratio) == pytest.approx(int(opt.flip_count) / w.numel())


@SETTINGS
@given(data=st.data())
def test_adam_latent_flips_are_sign_changes_and_weights_stay_clipped(data):
    signs, grads = data.draw(gradient_steps())
    hparams = data.draw(rule_hparams("adam-latent"))
    w = torch.nn.Parameter(signs * data.draw(st.floats(0.0, 3.0)))
    opt = build("adam-latent", [w], **hparams)
    for g in grads:
        before = w.detach().clone()
        w.grad = g
        opt.step()
        assert float(w.detach().abs().max()) <= hparams["clip"] * (1 + 1e-7)
        changed = (before >= 0) != (w.detach() >= 0)
        assert int(opt.flip_count) == int(changed.sum())


@SETTINGS
@given(data=st.data(), gamma=rate, sigma=rate, tau=st.floats(-8.0, 0.0).map(lambda e: 10.0**e))
def test_unbiased_equals_biased_with_threshold_scaled_by_gamma_over_sqrt_sigma(
    data, gamma, sigma, tau
):
    # With gradients well above 1e-10 the epsilon is negligible and
    # (m/gamma)/sqrt(v/sigma) > tau  <=>  m/sqrt(v) > tau * gamma / sqrt(sigma).
    signs, grads = data.draw(
        gradient_steps(grad=st.floats(1e-2, 100.0).flatmap(lambda x: st.sampled_from([x, -x])))
    )
    scaled = tau * gamma / sigma**0.5
    wu, wb = torch.nn.Parameter(signs.clone()), torch.nn.Parameter(signs.clone())
    unbiased = build("bop2ndorder", [wu], gamma=gamma, sigma=sigma, threshold=tau, unbiased=True)
    biased = build("bop2ndorder", [wb], gamma=gamma, sigma=sigma, threshold=scaled)
    for g in grads:
        before = wb.detach().clone()
        wu.grad, wb.grad = g.clone(), g.clone()
        unbiased.step()
        biased.step()
        m, v = (biased.state[wb][k].double() for k in ("m", "v"))
        signal = before.double() * m / v.sqrt()
        near = (signal - scaled).abs() <= 1e-5 * (scaled + signal.abs())
        assert bool(((wu == wb) | near).all())
        with torch.no_grad():
            wu.copy_(wb)


@SETTINGS
@given(data=st.data(), gamma=rate, sigma=rate, tau=st.floats(0.0, 0.99))
def test_unbiased_step_one_flips_exactly_the_weights_agreeing_with_their_gradient(
    data, gamma, sigma, tau
):
    signs, _ = data.draw(gradient_steps(steps_max=1))
    magnitude = st.floats(1e-5, 1e3)
    g = torch.tensor(
        [
            data.draw(st.one_of(st.just(0.0), magnitude, magnitude.map(lambda x: -x)))
            for _ in range(len(signs))
        ],
        dtype=torch.float32,
    )
    w = torch.nn.Parameter(signs.clone())
    opt = build("bop2ndorder", [w], gamma=gamma, sigma=sigma, threshold=tau, unbiased=True)
    w.grad = g
    opt.step()
    agreeing = torch.sign(g) == signs
    assert torch.equal(w.detach(), torch.where(agreeing, -signs, signs))


@SETTINGS
@given(data=st.data(), gamma=rate, sigma=rate, tau=st.floats(-8.0, 0.0).map(lambda e: 10.0**e))
def test_pbop_with_a_huge_scaler_is_bop2ndorder(data, gamma, sigma, tau):
    signs, grads = data.draw(gradient_steps())
    wp, wb = torch.nn.Parameter(signs.clone()), torch.nn.Parameter(signs.clone())
    pbop = build(
        "pbop",
        [wp],
        gamma=gamma,
        sigma=sigma,
        threshold=tau,
        scaler=1e30,
        seed=data.draw(st.integers(0, 1000)),
    )
    bop2 = build("bop2ndorder", [wb], gamma=gamma, sigma=sigma, threshold=tau)
    for g in grads:
        wp.grad, wb.grad = g.clone(), g.clone()
        pbop.step()
        bop2.step()
        assert torch.equal(wp, wb)
        assert torch.equal(pbop.flip_count, bop2.flip_count)


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**62))
def test_pbop_is_reproducible_from_its_seed_and_from_the_global_rng(data, seed):
    signs, grads = data.draw(gradient_steps(n_min=20))
    hparams = {"gamma": 0.5, "sigma": 0.5, "threshold": 0.0, "scaler": 1.0}
    runs = []
    for explicit in (True, True, False, False):
        torch.manual_seed(seed % 2**32)
        w = torch.nn.Parameter(signs.clone())
        opt = build("pbop", [w], **hparams, **({"seed": seed} if explicit else {}))
        trace = []
        for g in grads:
            w.grad = g.clone()
            opt.step()
            trace.append(w.detach().clone())
        runs.append(torch.stack(trace))
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[2], runs[3])


def test_pbop_different_seeds_toss_different_coins():
    flipped = []
    for seed in (1, 2):
        w = torch.nn.Parameter(torch.ones(4000))
        opt = build("pbop", [w], gamma=0.5, sigma=0.25, threshold=0.5, scaler=1.0, seed=seed)
        w.grad = torch.ones(4000)
        opt.step()
        flipped.append(w.detach().clone())
    assert not torch.equal(*flipped)


@pytest.mark.parametrize("name", ["bop", "bop2ndorder", "pbop", "adam-latent"])
@SETTINGS
@given(data=st.data())
def test_foreach_agrees_with_reference(name, data):
    sizes = data.draw(st.lists(st.integers(1, 30), min_size=1, max_size=4))
    steps = data.draw(st.integers(1, 4))
    grads = [
        [torch.tensor(data.draw(st.lists(gradient, min_size=n, max_size=n))) for n in sizes]
        for _ in range(steps)
    ]
    hparams = data.draw(rule_hparams(name))
    init = [
        torch.tensor(
            data.draw(
                st.lists(
                    st.sampled_from([-1.0, 1.0]) if name != "adam-latent" else st.floats(-2.0, 2.0),
                    min_size=n,
                    max_size=n,
                )
            )
        )
        for n in sizes
    ]
    assume(all(t.numel() for t in init))
    run_side_by_side(name, hparams, [t.shape for t in init], grads, ("reference", "foreach"), init)
