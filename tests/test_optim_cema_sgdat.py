"""CEMA and SGDAT: exact update rules computed by hand, the authors' arithmetic, the agreement of
the three implementations, and SGDAT's restart at every epoch (by hand and through the engine).

Every hand-computed case uses gradients and rates that are short binary fractions, so each
float32 operation is exact and the expected numbers are the arithmetic written in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch
from compile_support import needs_compile
from engine_support import fresh_store, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_support import gradient

import benchbnn
from benchbnn.core.errors import HyperparameterError
from benchbnn.optim.schedules import apply_schedules, parse_schedule
from benchbnn.train.engine import train

IMPLEMENTATIONS = ["reference", "foreach"]  # the compiled path: the slow tests at the end


def build(name, binary, real=(), implementation="reference", **hparams):
    optimizer = benchbnn.get_optimizer(name).build(binary, real, **hparams)
    optimizer.implementation = implementation
    return optimizer


def param(values):
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))


def step(optimizer, params, *grads):
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g, dtype=p.dtype)
    optimizer.step()


def values(t):
    return t.detach().tolist()


# --- CEMA, by hand ---------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cema_four_steps_by_hand_with_a_scheduled_alpha(implementation):
    # gamma = 0.5 and alpha follows polynomial:0.5:0.125 over 4 steps: 0.5, 0.375, 0.25, 0.125.
    # m <- 0.5 m + 0.5 g;  i <- (1 - alpha) i + alpha m;  w <- -w where i * w > 0.
    w = param([1.0, 1.0, -1.0, -1.0, 1.0])
    opt = build("cema", [w], implementation=implementation, alpha=0.5, gamma=0.5)
    schedule = {"alpha": parse_schedule("polynomial:0.5:0.125")}

    def scheduled_step(t, g):
        assert apply_schedules(opt, schedule, t, 1, 4) == {"alpha": [0.5, 0.375, 0.25, 0.125][t]}
        step(opt, [w], g)

    # Step 1, alpha 0.5: m = [.5, -.5, .5, -1, 0], i = .5 m = [.25, -.25, .25, -.5, 0];
    # i*w = [.25, -.25, -.25, .5, 0]: indices 0 and 3 flip; index 4 has i = 0 exactly and keeps.
    scheduled_step(0, [1.0, -1.0, 1.0, -2.0, 0.0])
    assert values(opt.state[w]["m"]) == [0.5, -0.5, 0.5, -1.0, 0.0]
    assert values(opt.state[w]["i"]) == [0.25, -0.25, 0.25, -0.5, 0.0]
    assert values(w) == [-1.0, 1.0, -1.0, 1.0, 1.0]
    assert int(opt.flip_count) == 2
    # Step 2, alpha 0.375: m = .5 m + .5 [1, 2, -2, 1, 1] = [.75, .75, -.75, 0, .5];
    # i = .625 i + .375 m = [.15625 + .28125, -.15625 + .28125, .15625 - .28125, -.3125, .1875]
    #   = [.4375, .125, -.125, -.3125, .1875]; i*w = [-.4375, .125, .125, -.3125, .1875].
    # Index 0 flipped on step 1 and its inertia is still positive: nothing was reset, it stays.
    scheduled_step(1, [1.0, 2.0, -2.0, 1.0, 1.0])
    assert values(opt.state[w]["m"]) == [0.75, 0.75, -0.75, 0.0, 0.5]
    assert values(opt.state[w]["i"]) == [0.4375, 0.125, -0.125, -0.3125, 0.1875]
    assert values(w) == [-1.0, -1.0, 1.0, 1.0, -1.0]
    assert int(opt.flip_count) == 3
    # Step 3, alpha 0.25: m = .5 m + .5 [-2, 1, 0, 1.875, 0] = [-.625, .875, -.375, .9375, .25];
    # i = .75 i + .25 m = [.328125 - .15625, .09375 + .21875, -.09375 - .09375,
    #   -.234375 + .234375, .140625 + .0625] = [.171875, .3125, -.1875, 0, .203125].
    # i*w = [-.171875, -.3125, -.1875, 0, -.203125]: nothing flips; index 3 ties at exactly 0.
    scheduled_step(2, [-2.0, 1.0, 0.0, 1.875, 0.0])
    assert values(opt.state[w]["m"]) == [-0.625, 0.875, -0.375, 0.9375, 0.25]
    assert values(opt.state[w]["i"]) == [0.171875, 0.3125, -0.1875, 0.0, 0.203125]
    assert values(w) == [-1.0, -1.0, 1.0, 1.0, -1.0]
    assert int(opt.flip_count) == 0
    # Step 4, alpha 0.125: m = .5 m + .5 [-4, 0, 0, 0, -2] = [-2.3125, .4375, -.1875, .46875,
    # -.875]; i = .875 i + .125 m = [.150390625 - .2890625, .2734375 + .0546875,
    # -.1640625 - .0234375, .05859375, .177734375 - .109375]
    #   = [-.138671875, .328125, -.1875, .05859375, .068359375];
    # i*w = [.138671875, -.328125, -.1875, .05859375, -.068359375]: indices 0 and 3 flip.
    scheduled_step(3, [-4.0, 0.0, 0.0, 0.0, -2.0])
    assert values(opt.state[w]["m"]) == [-2.3125, 0.4375, -0.1875, 0.46875, -0.875]
    assert values(opt.state[w]["i"]) == [-0.138671875, 0.328125, -0.1875, 0.05859375, 0.068359375]
    assert values(w) == [1.0, -1.0, 1.0, -1.0, -1.0]
    assert int(opt.flip_count) == 2


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cema_with_alpha_zero_freezes_the_inertia(implementation):
    # The end of polynomial:A:0: i keeps its value, m still follows the gradient, and weights
    # already agree with -sign(i), so nothing flips whatever the gradient.
    w = param([1.0, -1.0])
    opt = build("cema", [w], implementation=implementation, alpha=0.5, gamma=0.5)
    step(opt, [w], [1.0, -1.0])  # m = [.5, -.5], i = [.25, -.25]: both flip
    assert values(w) == [-1.0, 1.0]
    opt.param_groups[0]["alpha"] = 0.0
    step(opt, [w], [-8.0, 8.0])
    assert values(opt.state[w]["i"]) == [0.25, -0.25]
    assert values(opt.state[w]["m"]) == [-3.75, 3.75]
    assert values(w) == [-1.0, 1.0]
    assert int(opt.flip_count) == 0


def _authors_cema_step(w, g, m, i, alpha, gamma):
    """The CEMA authors' step (``cascaded_ema`` of jorisquist/Understanding-WM-HP-in-BNNs):
    PyTorch's ``mul_(1 - rate).add_(x, alpha=rate)``, whose add is a fused multiply-add on CPU."""
    m.mul_(1 - gamma).add_(g, alpha=gamma)
    i.mul_(1 - alpha).add_(m, alpha=alpha)
    w[i * w > 0] *= -1


def test_cema_follows_the_authors_code_up_to_their_fused_multiply_add():
    torch.manual_seed(0)
    n, alpha, gamma = 4096, 0.02, 0.3
    w0 = torch.where(torch.randn(n) >= 0, 1.0, -1.0)
    w = torch.nn.Parameter(w0.clone())
    opt = build("cema", [w], implementation="foreach", alpha=alpha, gamma=gamma)
    ours_flips, theirs_flips = 0, 0
    w_a, m_a, i_a = w0.clone(), torch.zeros(n), torch.zeros(n)
    for _ in range(60):
        g = torch.randn(n) + 0.3 * w_a  # a drift towards flipping, plus noise
        w.grad = g.clone()
        opt.step()
        before = w_a.clone()
        _authors_cema_step(w_a, g, m_a, i_a, alpha, gamma)
        ours_flips += int(opt.flip_count)
        theirs_flips += int((before != w_a).sum())
        m, i = opt.state[w]["m"], opt.state[w]["i"]
        torch.testing.assert_close(m, m_a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(i, i_a, rtol=1e-5, atol=1e-6)
        # Decisions agree wherever the inertia is not within rounding of 0; continue both from
        # the same weights.
        clear = i_a.abs() > 1e-5
        assert torch.equal(w.detach()[clear], w_a[clear])
        w_a.copy_(w.detach())
    assert ours_flips > 0
    assert abs(ours_flips - theirs_flips) <= 5


def test_the_suites_alpha_schedule_matches_the_authors_staircase_in_total():
    # The authors' rate in epoch e (from 0) of E is A * (1 - e / E), constant over the epoch's
    # S steps; benchbnn's polynomial:A:A/E runs a straight line from A to A/E. Same first and
    # last values, same total A * S * (E + 1) / 2, and never more than one stair (A / E) apart.
    a, epochs, steps_per_epoch = 1e-3, 20, 23
    total = epochs * steps_per_epoch
    line = parse_schedule(f"polynomial:{a}:{a / epochs}")
    ours = [line.value(t, steps_per_epoch, total) for t in range(total)]
    theirs = [a * (1 - (t // steps_per_epoch) / epochs) for t in range(total)]
    assert ours[0] == theirs[0] and math.isclose(ours[-1], theirs[-1])
    assert math.isclose(sum(ours), a * steps_per_epoch * (epochs + 1) / 2, rel_tol=1e-12)
    assert math.isclose(sum(ours), sum(theirs), rel_tol=1e-12)
    assert max(abs(x - y) for x, y in zip(ours, theirs)) <= a / epochs * (1 + 1e-9)


def test_cema_rejects_a_gamma_of_zero():
    with pytest.raises(HyperparameterError, match="gamma"):
        build("cema", [param([1.0])], gamma=0.0)


# --- SGDAT, by hand --------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sgdat_step_one_sets_every_weight_with_a_gradient_to_minus_its_sign(implementation):
    # k = 0, so the threshold is 0: h = -0.5 g = [-.5, 1, -2, .5, 0, 0] and every weight with
    # g != 0 becomes sgn0(h) = -sign(g), whatever it was; g = 0 leaves h = 0 and the weight.
    w = param([1.0, 1.0, -1.0, -1.0, 1.0, -1.0])
    opt = build("sgdat", [w], implementation=implementation, step_size=0.5, threshold=0.25)
    step(opt, [w], [1.0, -2.0, 4.0, -1.0, 0.0, 0.0])
    assert values(opt.state[w]["h"]) == [-0.5, 1.0, -2.0, 0.5, 0.0, 0.0]
    assert values(w) == [-1.0, 1.0, -1.0, 1.0, 1.0, -1.0]
    assert values(opt.state[w]["k"]) == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # signs that changed
    assert int(opt.flip_count) == 2
    assert opt.state[w]["k"].dtype == torch.float32
    assert values(opt.state[w]["b"]) == [0.0] * 6  # no momentum: the buffer is never touched


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sgdat_a_weight_that_flipped_often_needs_more_evidence(implementation):
    # step_size 1, threshold 1: a weight flips where |h| > k (its past flips), strictly.
    w = param([1.0, -1.0])
    opt = build("sgdat", [w], implementation=implementation, step_size=1.0, threshold=1.0)
    expected = [
        # g,               h after,          w after,      k after,    flips
        ([1.0, 0.0], [-1.0, 0.0], [-1.0, -1.0], [1.0, 0.0], 1),  # k = 0: any evidence flips
        ([-2.0, 0.0], [1.0, 0.0], [-1.0, -1.0], [1.0, 0.0], 0),  # |h| = 1 ties k = 1: kept
        ([-1.0, -0.0625], [2.0, 0.0625], [1.0, 1.0], [2.0, 1.0], 2),  # 2 > 1; fresh 1/16 > 0
        ([3.0, 0.0625], [-1.0, 0.0], [1.0, 1.0], [2.0, 1.0], 0),  # 1 < 2; h = 0 never flips
        ([2.0, 1.0625], [-3.0, -1.0625], [-1.0, -1.0], [3.0, 2.0], 2),  # 3 > 2; 1.0625 > 1
        ([-5.0, -2.0], [2.0, 0.9375], [-1.0, -1.0], [3.0, 2.0], 0),  # 2 < 3; .9375 < 2
        ([-2.0, 0.0], [4.0, 0.9375], [1.0, -1.0], [4.0, 2.0], 1),  # 4 > 3
    ]
    for g, h, w_after, k, flips in expected:
        step(opt, [w], g)
        assert values(opt.state[w]["h"]) == h
        assert values(w) == w_after
        assert values(opt.state[w]["k"]) == k
        assert int(opt.flip_count) == flips


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sgdat_momentum_without_nesterov_drops_weight_decay(implementation):
    # momentum 0.5: b <- .5 b + g, d = b (the raw gradient: weight decay never enters, and
    # without Nesterov d = b drops it), h <- h - d; threshold 10 holds every weight that flipped.
    runs = {}
    for weight_decay in (0.0, 0.25):
        w = param([1.0, -1.0])
        opt = build(
            "sgdat",
            [w],
            implementation=implementation,
            step_size=1.0,
            threshold=10.0,
            momentum=0.5,
            weight_decay=weight_decay,
        )
        trace = []
        for g in ([1.0, 2.0], [2.0, -4.0], [0.0, 0.0]):
            step(opt, [w], g)
            state = opt.state[w]
            trace.append((values(state["b"]), values(state["h"]), values(w), values(state["k"])))
        runs[weight_decay] = trace
    assert runs[0.0] == runs[0.25]
    assert runs[0.0] == [
        # b = [1, 2], h = [-1, -2]: k = 0, both take -sign(g); only index 0 changed.
        ([1.0, 2.0], [-1.0, -2.0], [-1.0, -1.0], [1.0, 0.0]),
        # b = .5 [1, 2] + [2, -4] = [2.5, -3], h = [-3.5, 1]: 3.5 < 10 * 1; 1 > 10 * 0 flips.
        ([2.5, -3.0], [-3.5, 1.0], [-1.0, 1.0], [1.0, 1.0]),
        # no gradient: the momentum alone moves h, b = [1.25, -1.5], h = [-4.75, 2.5].
        ([1.25, -1.5], [-4.75, 2.5], [-1.0, 1.0], [1.0, 1.0]),
    ]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sgdat_nesterov_with_dampening_and_weight_decay(implementation):
    # momentum .5, dampening .5, weight decay .25, Nesterov: d = g + .25 w;
    # b <- .5 b + .5 g (raw gradient); d <- d + .5 b; h <- h - d.
    w = param([1.0, -1.0])
    opt = build(
        "sgdat",
        [w],
        implementation=implementation,
        step_size=1.0,
        threshold=10.0,
        momentum=0.5,
        dampening=0.5,
        nesterov=True,
        weight_decay=0.25,
    )
    # Step 1, w = [1, -1], g = [1, 2]: d = [1.25, 1.75], b = [.5, 1], d = [1.5, 2.25],
    # h = [-1.5, -2.25]; k = 0: both become -1, index 0 changed.
    step(opt, [w], [1.0, 2.0])
    assert values(opt.state[w]["b"]) == [0.5, 1.0]
    assert values(opt.state[w]["h"]) == [-1.5, -2.25]
    assert values(w) == [-1.0, -1.0]
    assert int(opt.flip_count) == 1
    # Step 2, w = [-1, -1], g = [0, -4]: d = [-.25, -4.25], b = [.25, -1.5],
    # d = [-.125, -5], h = [-1.375, 2.75]: 1.375 < 10 * 1; 2.75 > 10 * 0, index 1 flips.
    step(opt, [w], [0.0, -4.0])
    assert values(opt.state[w]["b"]) == [0.25, -1.5]
    assert values(opt.state[w]["h"]) == [-1.375, 2.75]
    assert values(w) == [-1.0, 1.0]
    assert values(opt.state[w]["k"]) == [1.0, 1.0]
    assert int(opt.flip_count) == 1


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sgdat_weight_decay_without_momentum(implementation):
    # d = g + .5 w, h <- h - d, threshold 0 (a weight takes sgn0(h) wherever h != 0).
    w = param([1.0, -1.0, 1.0])
    opt = build(
        "sgdat", [w], implementation=implementation, step_size=1.0, threshold=0.0, weight_decay=0.5
    )
    # g = [0, 0, -1]: d = [.5, -.5, -.5], h = [-.5, .5, .5]: the decay alone flips the first
    # two weights; the third keeps +1 = sgn0(.5).
    step(opt, [w], [0.0, 0.0, -1.0])
    assert values(opt.state[w]["h"]) == [-0.5, 0.5, 0.5]
    assert values(w) == [-1.0, 1.0, 1.0]
    assert int(opt.flip_count) == 2
    # g = 0: d = .5 w = [-.5, .5, .5] brings h back to exactly 0, and |0| > 0 is false.
    step(opt, [w], [0.0, 0.0, 0.0])
    assert values(opt.state[w]["h"]) == [0.0, 0.0, 0.0]
    assert values(w) == [-1.0, 1.0, 1.0]
    assert int(opt.flip_count) == 0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_sgdat_reset_each_epoch_restarts_k_and_b_and_keeps_h(implementation):
    def run(reset):
        w = param([1.0, -1.0, -1.0])
        opt = build(
            "sgdat",
            [w],
            implementation=implementation,
            step_size=1.0,
            threshold=1.0,
            momentum=0.5,
            reset_each_epoch=reset,
        )
        # b = g = [1, 1, -1], h = [-1, -1, 1]: k = 0, so all take sgn0(h); indices 0 and 2
        # change.
        step(opt, [w], [1.0, 1.0, -1.0])
        # b = .5 b + g = [.5 - 2, .5, -.5 + 3] = [-1.5, .5, 2.5], h = [.5, -1.5, -1.5]:
        # index 0: .5 < 1 * 1 keeps -1; index 1: 1.5 > 0, already -1; index 2: 1.5 > 1 * 1
        # takes -1, its second flip.
        step(opt, [w], [-2.0, 0.0, 3.0])
        assert values(opt.state[w]["h"]) == [0.5, -1.5, -1.5]
        assert values(opt.state[w]["k"]) == [1.0, 0.0, 2.0]
        assert values(opt.state[w]["b"]) == [-1.5, 0.5, 2.5]
        assert values(w) == [-1.0, -1.0, -1.0]
        opt.start_epoch()
        return w, opt

    w, opt = run(reset=True)
    assert values(opt.state[w]["k"]) == [0.0, 0.0, 0.0]
    assert values(opt.state[w]["b"]) == [0.0, 0.0, 0.0]
    assert values(opt.state[w]["h"]) == [0.5, -1.5, -1.5]  # h persists
    # Next step, g = 0: b = 0 so h stays; with k = 0 any h != 0 decides: index 0 takes
    # sgn0(.5) = +1, the others already agree with sgn0(h).
    step(opt, [w], [0.0, 0.0, 0.0])
    assert values(opt.state[w]["h"]) == [0.5, -1.5, -1.5]
    assert values(w) == [1.0, -1.0, -1.0]
    assert values(opt.state[w]["k"]) == [1.0, 0.0, 0.0]
    assert int(opt.flip_count) == 1

    w, opt = run(reset=False)  # start_epoch() does nothing
    assert values(opt.state[w]["k"]) == [1.0, 0.0, 2.0]
    assert values(opt.state[w]["b"]) == [-1.5, 0.5, 2.5]
    # g = 0: b = .5 b = [-.75, .25, 1.25], h = [1.25, -1.75, -2.75]; thresholds [1, 0, 2]:
    # index 0 flips (1.25 > 1), index 2 already agrees.
    step(opt, [w], [0.0, 0.0, 0.0])
    assert values(opt.state[w]["h"]) == [1.25, -1.75, -2.75]
    assert values(w) == [1.0, -1.0, -1.0]
    assert values(opt.state[w]["k"]) == [2.0, 0.0, 2.0]


def _authors_sgdat_step(w, g, h, k, b, lr, threshold, momentum, dampening, nesterov, wd):
    """``SGDAT.step`` of gushan/SGDAT for one binary tensor: ``p.pre_binary_data`` is ``w``
    before the step, ``p.m`` is ``h``, ``flip_num`` is ``k``, ``exp_avg`` is ``b``."""
    d = g
    if wd != 0:
        d = d.add(w, alpha=wd)
    if momentum != 0:
        b.mul_(momentum).add_(g, alpha=1 - dampening)
        d = d.add(b, alpha=momentum) if nesterov else b
    h.add_(d, alpha=-lr)
    new = torch.sign(torch.sign(torch.where(h.abs() > threshold * k, h, w)).add(0.1))
    k.add_(torch.ne(torch.sign(new), w))
    w.copy_(new)


@pytest.mark.parametrize(
    "hparams",
    [
        {"step_size": 1e-2, "threshold": 1e-3},
        {"step_size": 1e-2, "threshold": 1e-3, "momentum": 0.9},
        {
            "step_size": 1e-2,
            "threshold": 1e-3,
            "momentum": 0.9,
            "dampening": 0.1,
            "nesterov": True,
            "weight_decay": 1e-2,
        },
    ],
    ids=["plain", "momentum", "nesterov"],
)
def test_sgdat_follows_the_authors_code_up_to_their_fused_multiply_adds(hparams):
    torch.manual_seed(0)
    n = 4096
    w0 = torch.where(torch.randn(n) >= 0, 1.0, -1.0)
    w = torch.nn.Parameter(w0.clone())
    opt = build("sgdat", [w], implementation="foreach", **hparams)
    w_a, h_a, k_a, b_a = w0.clone(), torch.zeros(n), torch.zeros(n), torch.zeros(n)
    args = (
        hparams["step_size"],
        hparams["threshold"],
        hparams.get("momentum", 0.0),
        hparams.get("dampening", 0.0),
        hparams.get("nesterov", False),
        hparams.get("weight_decay", 0.0),
    )
    total = 0
    for _ in range(60):
        g = torch.randn(n) * 0.1
        w.grad = g.clone()
        opt.step()
        _authors_sgdat_step(w_a, g, h_a, k_a, b_a, *args)
        total += int(opt.flip_count)
        state = opt.state[w]
        torch.testing.assert_close(state["h"], h_a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(state["b"], b_a, rtol=1e-5, atol=1e-7)
        # Decisions agree except where |h| lies within rounding of threshold * k; continue
        # both from the same weights and counts.
        margin = (h_a.abs() - args[1] * k_a).abs()
        clear = margin > 1e-5 * (h_a.abs() + 1e-12)
        assert torch.equal(w.detach()[clear], w_a[clear])
        w_a.copy_(w.detach())
        k_a.copy_(state["k"])
    assert total > n  # weights kept flipping after the first step


def test_sgdat_step_size_is_not_adams_lr():
    spec = benchbnn.get_optimizer("sgdat")
    assert spec.defaults["step_size"] == 1e-4 and spec.defaults["threshold"] == 1e-6
    w, real = param([1.0, -1.0]), torch.nn.Parameter(torch.ones(2))
    opt = build("sgdat", [w], [real], step_size=0.5, lr=0.25)
    assert opt.param_groups[0]["step_size"] == 0.5
    assert opt.param_groups[1]["lr"] == 0.25
    assert opt.options == {"reset_each_epoch": False}


# --- SGDAT's restart through the engine ------------------------------------------------------


class _FirstStepOfEpochTwo:
    """Captures SGDAT's state after the first step of epoch 2 (gradients are still there)."""

    @benchbnn.hookimpl
    def benchbnn_step_end(self, run, step, logs):
        if logs["epoch"] == 2 and logs["batch"] == 1:
            opt = run.optimizer
            self.flips = int(opt.flip_count)
            self.k = sum(float(opt.state[p]["k"].sum()) for p in run.binary_params)
            self.b_equals_grad = all(
                torch.equal(opt.state[p]["b"], p.grad) for p in run.binary_params
            )


@pytest.mark.parametrize("reset", [True, False])
def test_the_engine_restarts_sgdat_at_every_epoch_when_asked(tmp_path, reset):
    probe = _FirstStepOfEpochTwo()
    config = tiny_config(
        optimizer="sgdat",
        hparams={"momentum": 0.5, "reset_each_epoch": reset},
        epochs=2,
    )
    result = train(
        config,
        quiet=True,
        tracking_uri=fresh_store(tmp_path / "store"),
        checkpoint_dir=tmp_path / "ck",
        plugins=[probe],
    )
    assert result.status == "FINISHED"
    # After a restart, one step has been counted: k holds exactly that step's flips, and
    # b = .5 * 0 + g. Without it, k carries epoch 1's flips and b its gradients.
    assert (probe.k == probe.flips) is reset
    assert probe.b_equals_grad is reset
    if not reset:
        assert probe.k > probe.flips


# --- the three implementations agree -------------------------------------------------------

RULES = [
    ("cema", {"alpha": 0.05, "gamma": 0.3}),
    ("cema", {"alpha": 1e-3, "gamma": 1e-2}),
    ("sgdat", {"step_size": 0.1, "threshold": 1e-2}),
    ("sgdat", {"step_size": 0.1, "threshold": 1e-2, "momentum": 0.9}),
    (
        "sgdat",
        {
            "step_size": 0.1,
            "threshold": 1e-2,
            "momentum": 0.9,
            "dampening": 0.25,
            "nesterov": True,
            "weight_decay": 0.05,
        },
    ),
]


def _initial():
    torch.manual_seed(1)
    tensors = [
        torch.randn(16, 3, 3, 3),
        torch.randn(100, 37),
        torch.randn(513),
        torch.randn(9, 5).t(),  # not contiguous
    ]
    return [torch.where(t >= 0, 1.0, -1.0) for t in tensors]


def _gradients(init, steps, seed=2):
    torch.manual_seed(seed)
    return [[torch.randn(t.shape) * 0.3 for t in init] for _ in range(steps)]


def assert_implementations_agree(name, hparams, init, grads, implementations, schedule=None):
    """Step one copy per implementation with the same gradients; on CPU every weight, buffer
    and flip count must be bit-identical after every step. Returns the total flips."""
    copies = []
    for implementation in implementations:
        params = [torch.nn.Parameter(t.clone()) for t in init]
        copies.append((params, build(name, params, [], implementation, **hparams)))
    total = 0
    for t, step_grads in enumerate(grads):
        for params, opt in copies:
            if schedule:
                apply_schedules(opt, schedule, t, 1, len(grads))
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        (pa, oa), *others = copies
        for pb, ob in others:
            assert int(oa.flip_count) == int(ob.flip_count), (oa.implementation, ob.implementation)
            for a, b in zip(pa, pb):
                assert torch.equal(a.detach(), b.detach()), (oa.implementation, ob.implementation)
                for key in oa.state_buffers:
                    assert torch.equal(oa.state[a][key], ob.state[b][key]), key
        total += int(oa.flip_count)
    return total


@pytest.mark.parametrize(("name", "hparams"), RULES)
def test_reference_and_foreach_agree_bit_for_bit(name, hparams):
    init = _initial()
    assert assert_implementations_agree(
        name, hparams, init, _gradients(init, 6), ("reference", "foreach")
    )


@pytest.mark.parametrize("name", ["cema", "sgdat"])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_reference_and_foreach_agree_property(name, data):
    sizes = data.draw(st.lists(st.integers(1, 30), min_size=1, max_size=3))
    grads = [
        [torch.tensor(data.draw(st.lists(gradient, min_size=n, max_size=n))) for n in sizes]
        for _ in range(data.draw(st.integers(1, 4)))
    ]
    init = [
        torch.tensor(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n)))
        for n in sizes
    ]
    rate = st.floats(-4.0, 0.0).map(lambda e: 10.0**e)
    if name == "cema":
        hparams = {"alpha": data.draw(rate), "gamma": data.draw(rate)}
    else:
        hparams = {
            "step_size": data.draw(rate),
            "threshold": data.draw(st.one_of(st.just(0.0), rate)),
            "momentum": data.draw(st.sampled_from([0.0, 0.5, 0.9])),
            "dampening": data.draw(st.sampled_from([0.0, 0.5])),
            "nesterov": data.draw(st.booleans()),
            "weight_decay": data.draw(st.sampled_from([0.0, 1e-2])),
        }
    assert_implementations_agree(name, hparams, init, grads, ("reference", "foreach"))


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize(("name", "hparams"), RULES)
def test_compiled_agrees_with_reference_and_foreach(name, hparams):
    init = _initial()
    flips = assert_implementations_agree(
        name, hparams, init, _gradients(init, 5), ("reference", "foreach", "compiled")
    )
    assert flips > 0
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = build(name, params, [], "compiled", **hparams)
    for p, g in zip(params, _gradients(init, 1)[0]):
        p.grad = g
    opt.step()
    assert opt.implementation == "compiled" and not opt._compile_failed


@pytest.mark.slow
@needs_compile
def test_compiled_cema_follows_a_schedule_without_recompiling():
    from torch._dynamo.utils import counters

    init = _initial()
    schedule = {"alpha": parse_schedule("polynomial:0.1:0.0")}
    assert_implementations_agree(
        "cema",
        {"alpha": 0.1, "gamma": 0.3},
        init,
        _gradients(init, 6),
        ("reference", "compiled"),
        schedule,
    )
    before = counters["stats"]["unique_graphs"]
    assert_implementations_agree(
        "cema",
        {"alpha": 0.2, "gamma": 0.5},
        init,
        _gradients(init, 4, seed=3),
        ("reference", "compiled"),
        schedule,
    )
    assert counters["stats"]["unique_graphs"] == before
