"""The four built-in optimizers: exact update rules (hand-computed), the optimizer contract
(param groups, flip statistics, state_dict), and the errors a user can cause."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

import benchbnn
from benchbnn.core.errors import BenchbnnError, HyperparameterError, UnknownNameError
from benchbnn.optim.base import BinaryOptimizer, adam_step_size, counter_uniform

FLIP_OPTIMIZERS = ["bop", "bop2ndorder", "pbop"]
ALL_OPTIMIZERS = [*FLIP_OPTIMIZERS, "adam-latent"]
IMPLEMENTATIONS = ["reference", "foreach"]  # the compiled path: tests/test_optim_compiled.py
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def build(name, binary, real=(), implementation="reference", **hparams):
    optimizer = benchbnn.get_optimizer(name).build(binary, real, **hparams)
    optimizer.implementation = implementation
    return optimizer


def param(values, device="cpu"):
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float32, device=device))


def step(optimizer, params, *grads):
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g, dtype=p.dtype, device=p.device)
    optimizer.step()


def values(t):
    return t.detach().cpu().tolist()


# --- exact rules, computed by hand -------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bop_three_steps_by_hand(implementation):
    w = param([1.0, 1.0, -1.0, -1.0, 1.0])
    opt = build("bop", [w], implementation=implementation, gamma=0.5, threshold=0.25)
    # m = 0.5 g; w*m = [.5, .25, .5, -.5, .125]: index 1 ties the threshold (kept), index 3 has
    # |m| > threshold but points against w (kept).
    step(opt, [w], [1.0, 0.5, -1.0, 1.0, 0.25])
    assert values(opt.state[w]["m"]) == [0.5, 0.25, -0.5, 0.5, 0.125]
    assert values(w) == [-1.0, 1.0, 1.0, -1.0, 1.0]
    assert int(opt.flip_count) == 2
    # m is not reset after a flip: m = .5 m + .5 g = [.75, .375, -.25, .25, .3125].
    step(opt, [w], [1.0, 0.5, 0.0, 0.0, 0.5])
    assert values(opt.state[w]["m"]) == [0.75, 0.375, -0.25, 0.25, 0.3125]
    assert values(w) == [-1.0, -1.0, 1.0, -1.0, -1.0]
    assert int(opt.flip_count) == 2
    step(opt, [w], [-2.0, 0.0, 0.0, 0.0, 0.0])
    assert values(opt.state[w]["m"]) == [-0.625, 0.1875, -0.125, 0.125, 0.15625]
    assert values(w) == [1.0, -1.0, 1.0, -1.0, -1.0]
    assert int(opt.flip_count) == 1


@pytest.mark.parametrize("name", ["bop", "bop2ndorder", "pbop"])
def test_a_signal_equal_to_the_threshold_keeps_the_weight(name):
    # After one step with gamma = 0.5: Bop's signal is m = 0.5 g, Bop2ndOrder's (biased, with
    # sigma = 0.25) is m / sqrt(v) = 1 for every nonzero g. Set the threshold exactly there.
    threshold = 0.25 if name == "bop" else 1.0
    extra = {} if name == "bop" else {"sigma": 0.25}
    if name == "pbop":
        extra["scaler"] = 1e30
    w = param([1.0, -1.0, 1.0])
    opt = build(name, [w], gamma=0.5, threshold=threshold, **extra)
    step(opt, [w], [0.5, -0.5, 0.5])
    assert values(w) == [1.0, -1.0, 1.0]
    assert int(opt.flip_count) == 0
    # The smallest float32 step above the tie flips (only for Bop, whose signal scales with g).
    if name == "bop":
        w2 = param([1.0])
        opt2 = build(name, [w2], gamma=0.5, threshold=threshold)
        step(opt2, [w2], [torch.nextafter(torch.tensor(0.5), torch.tensor(1.0)).item()])
        assert values(w2) == [-1.0]


W0 = [1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0]
G1 = [2.0, 2.0, 0.0, 8.0, 8.0, -2.0, 1.0]
G2 = [1.0, -1.0, -2.0, 1.0, -1.0, 1.0, -1.375]
# With sigma = 0.25 both steps keep sqrt(v) exact: v1 = g1^2 / 4, v2 = 0.75 v1 + 0.25 g2^2.
V1 = [1.0, 1.0, 0.0, 16.0, 16.0, 1.0, 0.25]
V2 = [1.0, 1.0, 1.0, 12.25, 12.25, 1.0, 0.66015625]  # sqrt: 1, 1, 1, 3.5, 3.5, 1, 0.8125


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bop2ndorder_biased_two_steps_by_hand(implementation):
    w = param(W0)
    opt = build(
        "bop2ndorder", [w], implementation=implementation, gamma=0.5, sigma=0.25, threshold=0.5
    )
    # Step 1: s = m / sqrt(v) = (0.5 g) / (0.5 |g|) = sign(g); index 2 has g = 0 so s = 0/1e-10.
    # w*s = [1, 1, 0, 1, 1, 1, -1]: index 6 points against its gradient and must not flip.
    step(opt, [w], G1)
    assert values(opt.state[w]["m"]) == [1.0, 1.0, 0.0, 4.0, 4.0, -1.0, 0.5]
    assert values(opt.state[w]["v"]) == V1
    assert values(w) == [-1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -1.0]
    assert int(opt.flip_count) == 5
    # Step 2: m = [1, 0, -1, 2.5, 1.5, 0, -0.4375], s = [1, 0, -1, .714, .429, 0, -.538];
    # w*s = [-1, 0, 1, -.714, -.429, 0, .538]: indices 2 and 6 flip.
    step(opt, [w], G2)
    assert values(opt.state[w]["m"]) == [1.0, 0.0, -1.0, 2.5, 1.5, 0.0, -0.4375]
    assert values(opt.state[w]["v"]) == V2
    assert values(w) == [-1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0]
    assert int(opt.flip_count) == 2


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bop2ndorder_unbiased_two_steps_by_hand(implementation):
    w = param(W0)
    opt = build(
        "bop2ndorder",
        [w],
        implementation=implementation,
        gamma=0.25,
        sigma=0.25,
        threshold=0.5,
        unbiased=True,
    )
    # Step 1: s = (m/gamma) / sqrt(v/sigma) = g / |g| = sign(g), whatever gamma and sigma are.
    step(opt, [w], G1)
    assert values(opt.state[w]["m"]) == [0.5, 0.5, 0.0, 2.0, 2.0, -0.5, 0.25]
    assert values(w) == [-1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -1.0]
    assert int(opt.flip_count) == 5
    # Step 2: m/gamma = 0.75 g1 + g2, sqrt(v/sigma) = sqrt(0.75 g1^2 + g2^2):
    # s = [1.25, .25, -1, 1, .714, -.25, -.385]; w*s = [-1.25, -.25, 1, -1, -.714, -.25, .385].
    step(opt, [w], G2)
    assert values(opt.state[w]["m"]) == [0.625, 0.125, -0.5, 1.75, 1.25, -0.125, -0.15625]
    assert values(opt.state[w]["v"]) == V2
    assert values(w) == [-1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0]
    assert int(opt.flip_count) == 1


def test_biased_rule_with_the_same_moments_flips_nothing_where_unbiased_flips():
    # gamma = sigma = 0.25: the biased step-1 signal is gamma/sqrt(sigma) = 0.5 < 0.75 while the
    # unbiased one is 1 > 0.75.
    flips = {}
    for unbiased in (False, True):
        w = param(W0)
        opt = build("bop2ndorder", [w], gamma=0.25, sigma=0.25, threshold=0.75, unbiased=unbiased)
        step(opt, [w], G1)
        flips[unbiased] = int(opt.flip_count)
    assert flips == {False: 0, True: 5}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_pbop_step_one_with_probabilities_zero_and_one_by_hand(implementation):
    # gamma = 0.5, sigma = 0.25: s = w * sign(g) on step 1; p = clip(4 (s - 0.5), 0, 1) is 1 for
    # weights that agree with their gradient and 0 otherwise, so the coins are certain.
    w = param(W0)
    opt = build(
        "pbop",
        [w],
        implementation=implementation,
        gamma=0.5,
        sigma=0.25,
        threshold=0.5,
        scaler=4.0,
        seed=3,
    )
    step(opt, [w], G1)
    assert values(w) == [-1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -1.0]
    assert int(opt.flip_count) == 5


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_pbop_flips_exactly_where_its_seeded_coin_says(implementation):
    # s = 1 for every weight (gradient agrees with sign), threshold 0.5, scaler 1: p = 0.5.
    n = 20_000
    w = torch.nn.Parameter(torch.ones(n))
    opt = build(
        "pbop",
        [w],
        implementation=implementation,
        gamma=0.5,
        sigma=0.25,
        threshold=0.5,
        scaler=1.0,
        seed=1234,
    )
    w.grad = torch.ones(n)
    opt.step()
    # The specification of the coins: the optimizer's generator, seeded with `seed`, draws one
    # key per binary tensor per step; weight i flips where counter_uniform(key)[i] < p.
    generator = torch.Generator().manual_seed(1234)
    key = torch.randint(0, 2**31, (), generator=generator, dtype=torch.int64)
    expected = torch.where(counter_uniform(w, key) < 0.5, -1.0, 1.0)
    assert torch.equal(w.detach(), expected)
    flipped = int(opt.flip_count)
    assert flipped == int((expected < 0).sum())
    assert abs(flipped / n - 0.5) < 5 * (0.25 / n) ** 0.5  # a fair coin, five sigma


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_adam_latent_two_steps(implementation):
    lr, eps = 0.5, 1e-7
    w = param([0.4, -0.2, 0.9, -0.9, 0.0, 0.3, 0.6])
    opt = build("adam-latent", [w], implementation=implementation, lr=lr, clip=1.0)
    # Bias-corrected, the first step moves each weight by lr * sign(g) (up to eps), then clips.
    g1 = [1.0, -1.0, -1.0, 1.0, 1.0, 0.0, 1.0]
    step(opt, [w], g1)
    w1 = [0.4 - lr, -0.2 + lr, 1.0, -1.0, -lr, 0.3, 0.6 - lr]
    assert values(w) == pytest.approx(w1, abs=1e-5)
    assert int(opt.flip_count) == 3  # 0.4 -> -0.1, -0.2 -> 0.3, 0.0 (sgn0 +1) -> -0.5
    # Second step: momentum m = 0.9 m + 0.1 g. Where g reverses, m is small (-0.01) and the
    # weight barely moves; where it repeats, the weight moves by lr again (0.1 -> -0.4).
    g2 = [-1.0, -1.0, 1.0, -1.0, 1.0, 0.0, 1.0]
    m = [0.9 * 0.1 * a + 0.1 * b for a, b in zip(g1, g2)]
    v = [0.999 * 0.001 * a * a + 0.001 * b * b for a, b in zip(g1, g2)]
    size = adam_step_size(lr, 0.9, 0.999, 2)
    w2 = [min(max(a - size * mi / (vi**0.5 + eps), -1.0), 1.0) for a, mi, vi in zip(w1, m, v)]
    step(opt, [w], g2)
    assert values(w) == pytest.approx(w2, abs=1e-5)
    assert w2[0] == pytest.approx(-0.1 + lr * 0.01 / 0.19, abs=1e-5)
    assert int(opt.flip_count) == 1  # only the last weight, 0.1 -> -0.4


def test_adam_latent_keeps_latent_weights_and_clips_to_clip():
    w = param([0.25, -3.0, 2.0])
    opt = build("adam-latent", [w], lr=1e-3, clip=1.5)
    assert values(w) == [0.25, -3.0, 2.0]  # latent weights are not binarized when built
    step(opt, [w], [0.0, 0.0, 0.0])
    assert values(w) == [0.25, -1.5, 1.5]


def test_real_parameters_follow_adam_with_keras_epsilon_placement():
    # Tiny gradients make the placement visible: Keras adds eps to the uncorrected sqrt(v).
    lr, eps, g = 0.01, 1e-7, 1e-4
    r = param([0.0])
    opt = build("bop2ndorder", [], [r], lr=lr, eps=eps)
    step(opt, [r], [g])
    m, v = 0.1 * g, 0.001 * g * g
    keras = lr * (0.001**0.5 / 0.1) * m / (v**0.5 + eps)
    pytorch = lr * (m / 0.1) / ((v / 0.001) ** 0.5 + eps)
    assert abs(pytorch - keras) > 1e-4  # the two placements differ at this scale ...
    assert values(r)[0] == pytest.approx(-keras, rel=1e-5)  # ... and benchbnn is Keras's


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_real_adam_matches_torch_adam_when_epsilon_is_zero(implementation):
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(50))
    theirs = torch.nn.Parameter(ours.detach().clone())
    opt = build("bop", [], [ours], implementation=implementation, lr=0.01, eps=0.0)
    reference = torch.optim.Adam([theirs], lr=0.01, betas=(0.9, 0.999), eps=0.0)
    for _ in range(5):
        grad = torch.randn(50)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        reference.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)


# --- the optimizer contract --------------------------------------------------------------------


@pytest.mark.parametrize("name", FLIP_OPTIMIZERS)
def test_binary_weights_become_sgn0_when_built(name):
    w = param([0.3, -0.2, 0.0, -0.0, 5.0])
    build(name, [w])
    assert values(w) == [1.0, -1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_param_groups_carry_kind_and_hyperparameters(name):
    spec = benchbnn.get_optimizer(name)
    opt = spec.build([param([1.0, -1.0])], [param([0.5])])
    assert isinstance(opt, torch.optim.Optimizer)
    kinds = [g["kind"] for g in opt.param_groups]
    assert kinds == ["binary", "real"]
    adam = {"lr", "beta1", "beta2", "eps"}
    binary, real = opt.param_groups
    assert adam <= set(real)
    rule = set(spec.defaults) - adam - {"seed"}
    assert rule <= set(binary)
    assert "lr" in binary  # torch.optim.lr_scheduler needs it in every group
    for key in rule | adam:
        group = binary if key in binary else real
        assert group[key] == spec.defaults[key]


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_empty_binary_or_real_lists_work(name):
    w, r = param([1.0, -1.0]), param([0.5])
    only_real = build(name, [], [r])
    step(only_real, [r], [1.0])
    assert only_real.num_binary_weights == 0
    assert int(only_real.flip_count) == 0 and float(only_real.flip_ratio) == 0.0
    only_binary = build(name, [w], [])
    step(only_binary, [w], [1.0, 1.0])
    assert only_binary.num_binary_weights == 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_flip_statistics_are_device_tensors(name, device):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(40, 5, device=device))
    opt = build(name, [w], implementation="foreach")
    w.grad = torch.randn_like(w)
    opt.step()
    assert opt.flip_count.dtype == torch.int64 and opt.flip_count.shape == ()
    assert opt.flip_count.device == w.device
    assert opt.flip_ratio.is_floating_point() and opt.flip_ratio.shape == ()
    assert float(opt.flip_ratio) == pytest.approx(int(opt.flip_count) / 200)
    assert opt.num_binary_weights == 200


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bop", 4.0),
        ("bop2ndorder", 8.0),
        ("pbop", 8.0),
        ("adam-latent", 8.0),
    ],
)
def test_state_bytes_per_binary_weight(name, expected):
    opt = build(name, [param([1.0] * 6), param([[1.0, 1.0]])], [param([0.0] * 100)])
    assert opt.state_bytes_per_binary_weight() == expected


def test_parameters_without_gradients_are_left_alone():
    w1, w2 = param([1.0, 1.0]), param([1.0, 1.0])
    opt = build("bop", [w1, w2], gamma=1.0, threshold=0.0)
    w1.grad = torch.tensor([1.0, 1.0])
    opt.step()
    assert values(w1) == [-1.0, -1.0] and values(w2) == [1.0, 1.0]
    assert values(opt.state[w2]["m"]) == [0.0, 0.0]
    assert int(opt.flip_count) == 2


def test_step_returns_the_closure_loss():
    w = param([1.0])
    opt = build("bop", [w])

    def closure():
        w.grad = torch.ones(1)
        return torch.tensor(3.0)

    assert float(opt.step(closure)) == 3.0


def test_a_schedule_in_param_groups_changes_the_rule():
    w = param([1.0, 1.0])
    opt = build("bop", [w], gamma=1.0, threshold=10.0)
    step(opt, [w], [1.0, 1.0])
    assert int(opt.flip_count) == 0
    opt.param_groups[0]["threshold"] = 0.5  # what apply_schedules and lr schedulers do
    step(opt, [w], [1.0, 1.0])
    assert int(opt.flip_count) == 2


@pytest.mark.parametrize("name", ["bop", "adam-latent"])
def test_torch_lr_scheduler_drives_the_adam_learning_rate(name):
    opt = build(name, [param([1.0, -1.0])], [param([0.0])])
    base = opt.param_groups[1]["lr"]
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for p in (p for g in opt.param_groups for p in g["params"]):
        p.grad = torch.zeros_like(p)
    opt.step()
    scheduler.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(base / 2)


def _run(opt, params, grads):
    for grad_list in grads:
        for p, g in zip(params, grad_list):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(name, implementation):
    torch.manual_seed(0)
    shapes = [(30, 4), (3, 2, 3, 3)]
    init = [torch.randn(s) for s in shapes] + [torch.randn(7)]
    grads = [[torch.randn_like(t) for t in init] for _ in range(6)]
    hparams = {"scaler": 2.0, "gamma": 0.1, "sigma": 0.1} if name == "pbop" else {}

    def fresh(seed):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        extra = {"seed": seed} if name == "pbop" else {}
        return params, build(
            name, params[:2], params[2:], implementation=implementation, **hparams, **extra
        )

    params, opt = fresh(seed=11)
    _run(opt, params, grads[:3])
    saved_state = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in params]
    _run(opt, params, grads[3:])
    # A new optimizer (with a different seed) restored from the checkpoint continues the same.
    params2, opt2 = fresh(seed=99)
    with torch.no_grad():
        for p, s in zip(params2, saved_params):
            p.copy_(s)
    opt2.load_state_dict(saved_state)
    _run(opt2, params2, grads[3:])
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
    for a, b in zip(params, params2):
        for key, value in opt.state[a].items():
            assert torch.equal(value, opt2.state[b][key])
    assert torch.equal(opt.flip_count, opt2.flip_count)
    assert [g["step"] for g in opt.param_groups] == [g["step"] for g in opt2.param_groups]


def test_pbop_without_a_seed_draws_it_from_torchs_global_rng():
    seeds = []
    for global_seed in (5, 5, 6):
        torch.manual_seed(global_seed)
        seeds.append(build("pbop", [param([1.0])]).seed)
    assert seeds[0] == seeds[1] != seeds[2]


def test_no_host_sync_inside_step(monkeypatch):
    """Reading a tensor's value on the host (item, bool, float, tolist) never happens in step."""
    torch.manual_seed(0)
    built = []
    for name in ALL_OPTIMIZERS:
        for implementation in IMPLEMENTATIONS:
            params = [torch.nn.Parameter(torch.randn(6, 3)), torch.nn.Parameter(torch.randn(4))]
            opt = build(name, params[:1], params[1:], implementation=implementation)
            for p in params:
                p.grad = torch.randn_like(p)
            built.append(opt)

    def refuse(*args, **kwargs):
        raise AssertionError("host sync inside optimizer.step()")

    for method in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    for opt in built:
        opt.step()


# --- declared hyperparameters -------------------------------------------------------------------


EXPECTED_DEFAULTS = {
    "bop": {"threshold": 1e-8, "gamma": 1e-4},
    "bop2ndorder": {"threshold": 1e-6, "gamma": 1e-6, "sigma": 1e-2, "unbiased": False},
    "pbop": {"threshold": 1e-6, "gamma": 1e-6, "sigma": 1e-2, "scaler": 1e3, "seed": -1},
    "adam-latent": {"lr": 5e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "clip": 1.0},
}
ADAM_DEFAULTS = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7}


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_declared_defaults(name):
    spec = benchbnn.get_optimizer(name)
    expected = dict(EXPECTED_DEFAULTS[name])
    if name != "adam-latent":
        expected.update(ADAM_DEFAULTS)
    assert spec.defaults == expected
    assert spec.latent_weights is (name == "adam-latent")
    assert spec.description and spec.reference


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_factory_signature_defaults_agree_with_the_spec(name):
    spec = benchbnn.get_optimizer(name)
    signature = inspect.signature(spec.factory).parameters
    assert {n: signature[n].default for n in spec.defaults} == spec.defaults


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_search_spaces_are_log_uniform_for_rates_and_thresholds(name):
    spec = benchbnn.get_optimizer(name)
    space = spec.search_space
    for key in ("gamma", "sigma", "threshold", "scaler", "lr"):
        if key in spec.defaults:
            assert key in space and space[key].log, key
            low, high = space[key].search
            assert 0 < low < high
    assert "seed" not in space


@pytest.mark.parametrize("name", ALL_OPTIMIZERS)
def test_optimizers_are_base_optimizer_subclasses(name):
    opt = benchbnn.get_optimizer(name).build([param([1.0])])
    assert isinstance(opt, BinaryOptimizer)
    assert opt.latent_weights is benchbnn.get_optimizer(name).latent_weights


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_optimizer_suggests_close_matches():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'bop2ndorder'"):
        benchbnn.get_optimizer("bop2ndordr")


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("bop", {"gama": 1e-4}, r"no hyperparameter 'gama'\. Did you mean 'gamma'"),
        ("bop2ndorder", {"sigm": 1e-3}, r"Did you mean 'sigma'"),
        ("bop", {"sigma": 1e-3}, r"Valid names: beta1, beta2, eps, gamma, lr, threshold"),
        ("bop", {"gamma": 2.0}, r"'gamma'.* = 2\.0 is outside its valid range"),
        ("bop2ndorder", {"threshold": -1e-6}, r"'threshold'.*outside its valid range"),
        ("bop2ndorder", {"sigma": 0.0}, r"'sigma'.*outside its valid range"),
        ("pbop", {"scaler": -1.0}, r"'scaler'.*outside its valid range"),
        ("adam-latent", {"beta1": 1.0}, r"'beta1'.*outside its valid range"),
        ("adam-latent", {"lr": float("nan")}, r"'lr'.*must be finite"),
        ("bop", {"gamma": "fast"}, r"'gamma'.*must be a number, got 'fast'"),
        ("bop2ndorder", {"unbiased": "maybe"}, r"'unbiased'.*must be true or false"),
        ("pbop", {"seed": 1.5}, r"'seed'.*must be a whole number"),
        ("bop", {"threshold": True}, r"'threshold'.*must be a number"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(name, hparams, message):
    with pytest.raises(HyperparameterError, match=message):
        benchbnn.get_optimizer(name).build([param([1.0])], [], **hparams)


def test_string_values_from_the_command_line_are_converted():
    opt = benchbnn.get_optimizer("bop2ndorder").build([param([1.0])], gamma="1e-7", unbiased="true")
    assert opt.param_groups[0]["gamma"] == 1e-7 and opt.param_groups[0]["unbiased"] is True


def test_direct_construction_validates_too():
    cls = benchbnn.get_optimizer("bop").factory
    with pytest.raises(HyperparameterError, match="outside its valid range"):
        cls([param([1.0])], gamma=-1.0)


def test_bad_parameters_and_implementation_raise_clear_errors():
    spec = benchbnn.get_optimizer("bop")
    w = param([1.0])
    with pytest.raises(BenchbnnError, match="passed twice"):
        spec.build([w], [w])
    with pytest.raises(BenchbnnError, match="must be tensors"):
        spec.build([1.0])
    with pytest.raises(BenchbnnError, match="not floating point"):
        spec.build([torch.tensor([1, 2])])
    with pytest.raises(BenchbnnError, match="unknown optimizer implementation 'fast'"):
        spec.factory([w], implementation="fast")
    opt = spec.build([w])
    with pytest.raises(BenchbnnError, match="choose one of reference, foreach, compiled"):
        opt.implementation = "fast"


# --- a third-party optimizer built on the public base class ---------------------------------


class _MyBop(BinaryOptimizer):
    """The example of BinaryOptimizer's docstring, as a plugin author would write it."""

    hparams = (
        benchbnn.HParam("threshold", 1e-8, low=0.0, high=1.0),
        *benchbnn.optim.base.adam_hparams(),
    )
    state_buffers = ("m",)
    rule_keys = ("threshold",)

    def __init__(
        self,
        binary_params,
        real_params=(),
        *,
        threshold=1e-8,
        lr=0.01,
        beta1=0.9,
        beta2=0.999,
        eps=1e-7,
        implementation=None,
    ):
        super().__init__(
            binary_params,
            real_params,
            binary={"threshold": threshold},
            real={"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps},
            implementation=implementation,
        )

    @staticmethod
    def update(w, g, m, *, threshold):
        benchbnn.optim.base.ema_(m, g, 1e-4)
        return benchbnn.optim.base.flip_(w, w * m > threshold)


@pytest.mark.usefixtures("clean_registry")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_third_party_optimizer_gets_the_whole_contract(implementation):
    import types

    module = types.ModuleType("my_bop_plugin")

    @benchbnn.hookimpl
    def benchbnn_optimizers():
        return [benchbnn.OptimizerSpec(name="my-bop", factory=_MyBop, hparams=_MyBop.hparams)]

    module.benchbnn_optimizers = benchbnn_optimizers
    benchbnn.register_plugin(module, "my-bop-plugin")
    w, r = param([0.2, -0.7, 1.0]), param([0.0])
    opt = build("my-bop", [w], [r], implementation=implementation, threshold=1e-5)
    assert values(w) == [1.0, -1.0, 1.0]
    step(opt, [w, r], [1.0, -1.0, -1.0], [1.0])
    # m = 1e-4 g, w*m = 1e-4 > 1e-5 for the first two weights; the last one disagrees.
    assert values(w) == [-1.0, 1.0, 1.0]
    assert int(opt.flip_count) == 2
    assert values(r)[0] == pytest.approx(-0.01, rel=1e-4)  # Adam's first step: lr * sign(g)
    assert opt.state_bytes_per_binary_weight() == 4.0
    with pytest.raises(HyperparameterError, match="outside its valid range"):
        build("my-bop", [w], threshold=2.0)
