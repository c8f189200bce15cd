"""The compiled fast path: agreement with the reference, one compilation for every tensor size,
and clean fallbacks where torch.compile cannot help."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from compile_support import needs_compile
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_support import build, gradient, rule_hparams, run_side_by_side

import benchbnn
import benchbnn.optim.base
from benchbnn.core.names import TAG_OPTIMIZER_IMPLEMENTATION
from benchbnn.optim.base import BinaryOptimizer, compile_unavailable_reason, flip_
from benchbnn.train.engine import _tag_optimizer

RULES = [
    ("bop", {"gamma": 0.1, "threshold": 1e-3}),
    ("bop2ndorder", {"gamma": 0.1, "sigma": 0.1, "threshold": 0.2}),
    ("bop2ndorder", {"gamma": 0.1, "sigma": 0.1, "threshold": 0.5, "unbiased": True}),
    ("pbop", {"gamma": 0.1, "sigma": 0.1, "threshold": 0.1, "scaler": 5.0, "seed": 7}),
    ("adam-latent", {"lr": 0.05, "clip": 1.0}),
]


def _initial(name):
    torch.manual_seed(1)
    tensors = [
        torch.randn(16, 3, 3, 3),
        torch.randn(100, 37),
        torch.randn(513),
        torch.randn(9, 5).t(),
    ]  # the last one is not contiguous
    if name != "adam-latent":
        tensors = [torch.where(t >= 0, 1.0, -1.0) for t in tensors]
    return tensors


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize(("name", "hparams"), RULES, ids=lambda x: x if isinstance(x, str) else "")
def test_compiled_agrees_with_reference(name, hparams):
    init = _initial(name)
    torch.manual_seed(2)
    grads = [
        [
            torch.randn(t.shape).t().contiguous().t()
            if not t.is_contiguous()
            else torch.randn(t.shape)
            for t in init
        ]
        for _ in range(4)
    ]
    run_side_by_side(name, hparams, [t.shape for t in init], grads, ("reference", "compiled"), init)
    # The comparison is only meaningful if weights flipped.
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = build(name, params, [], "compiled", **hparams)
    for p, g in zip(params, grads[0]):
        p.grad = g
    opt.step()
    assert opt.implementation == "compiled"
    assert int(opt.flip_count) > 0


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize("name", ["bop", "bop2ndorder", "pbop", "adam-latent"])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_compiled_agrees_with_reference_property(name, data):
    sizes = data.draw(st.lists(st.integers(2, 40), min_size=1, max_size=3))
    grads = [
        [torch.tensor(data.draw(st.lists(gradient, min_size=n, max_size=n))) for n in sizes]
        for _ in range(data.draw(st.integers(1, 3)))
    ]
    values = st.sampled_from([-1.0, 1.0]) if name != "adam-latent" else st.floats(-2.0, 2.0)
    init = [torch.tensor(data.draw(st.lists(values, min_size=n, max_size=n))) for n in sizes]
    run_side_by_side(
        name,
        data.draw(rule_hparams(name)),
        [t.shape for t in init],
        grads,
        ("reference", "compiled"),
        init,
    )


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
@needs_compile
def test_one_compilation_serves_every_tensor_size_and_hyperparameter_value():
    def train(shapes, gammas):
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        opt = build("bop2ndorder", params, [], "compiled")
        for gamma in gammas:
            opt.param_groups[0]["gamma"] = gamma  # as a schedule would
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()

    # one compiled call steps all tensors of a group: one graph per number of tensors
    before = _graphs()
    train([(8, 3, 3, 3), (40, 30), (77,)], [1e-3, 1e-4])
    assert _graphs() - before <= 1  # zero if an earlier test compiled this rule already
    before = _graphs()
    train([(5, 2, 5, 5), (300, 11), (1000,)], [1e-2, 1e-5, 1e-6])
    train([(2, 2, 2, 2, 2), (7,), (9, 9)], [1e-3])
    assert _graphs() == before


class _HostReading(BinaryOptimizer):
    """A third-party rule torch.compile cannot capture: it reads a value on the host."""

    hparams = (benchbnn.HParam("threshold", 0.0, low=0.0, high=1.0),)
    state_buffers = ("m",)
    rule_keys = ("threshold",)

    def __init__(self, binary_params, real_params=(), *, threshold=0.0, implementation=None):
        super().__init__(
            binary_params,
            real_params,
            binary={"threshold": threshold},
            real={},
            implementation=implementation,
        )

    @staticmethod
    def update(w, g, m, *, threshold):
        m.copy_(g * 2.0 if float(g.sum()) > 0 else g)
        return flip_(w, w * m > threshold)


@pytest.mark.slow
@needs_compile
def test_a_rule_that_cannot_compile_falls_back_to_the_reference(monkeypatch):
    monkeypatch.setattr(benchbnn.optim.base, "_warned", set())
    results = {}
    for implementation in ("reference", "compiled"):
        w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0, -1.0]))
        opt = _HostReading([w], implementation=implementation)
        w.grad = torch.tensor([1.0, -1.0, -1.0, 1.0])
        if implementation == "compiled":
            with pytest.warns(RuntimeWarning, match="torch.compile failed.*falling back"):
                opt.step()
        else:
            opt.step()
        results[implementation] = (w.detach().clone(), int(opt.flip_count))
    assert torch.equal(results["reference"][0], results["compiled"][0])
    assert results["reference"][1] == results["compiled"][1] == 2
    # the run's tag says how the step really ran
    run = SimpleNamespace(optimizer=opt, tags={})
    _tag_optimizer(run)
    assert run.tags[TAG_OPTIMIZER_IMPLEMENTATION].startswith("reference (compile failed: ")


def test_compile_disabled_falls_back_to_foreach_with_one_warning(monkeypatch):
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    monkeypatch.setattr(benchbnn.optim.base, "_warned", set())
    assert "TORCHDYNAMO_DISABLE" in compile_unavailable_reason("cpu")
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.warns(RuntimeWarning, match="torch.compile unavailable"):
        opt = build("bop", [w], [], "compiled")
    assert opt.implementation == "foreach"
    w.grad = torch.ones(3)
    opt.step()


def test_unbuildable_devices_are_reported():
    assert "not built for meta devices" in compile_unavailable_reason("meta")


def test_default_implementation_depends_on_size_and_environment(monkeypatch):
    monkeypatch.delenv(benchbnn.optim.base.IMPLEMENTATION_ENV, raising=False)
    spec = benchbnn.get_optimizer("bop")
    small = spec.build([torch.nn.Parameter(torch.ones(10))])
    assert small.implementation == "foreach"
    big = spec.build([torch.nn.Parameter(torch.ones(benchbnn.optim.base.COMPILE_MIN_WEIGHTS))])
    expected = "compiled" if compile_unavailable_reason("cpu") is None else "foreach"
    assert big.implementation == expected
    monkeypatch.setenv(benchbnn.optim.base.IMPLEMENTATION_ENV, "reference")
    assert spec.build([torch.nn.Parameter(torch.ones(10))]).implementation == "reference"
    monkeypatch.setenv(benchbnn.optim.base.IMPLEMENTATION_ENV, "turbo")
    with pytest.raises(benchbnn.BenchbnnError, match="unknown optimizer implementation 'turbo'"):
        spec.build([torch.nn.Parameter(torch.ones(10))])


def test_long_runs_compile_below_a_million_weights(monkeypatch):
    """With the engine's context, the default compiles from COMPILE_MIN_WEIGHT_STEPS binary
    weights times optimizer steps on, whatever the number of weights."""
    monkeypatch.delenv(benchbnn.optim.base.IMPLEMENTATION_ENV, raising=False)
    spec = benchbnn.get_optimizer("bop")
    weights = 1000
    enough = benchbnn.optim.base.COMPILE_MIN_WEIGHT_STEPS // weights

    def built(steps):
        context = benchbnn.RunContext(
            train_size=50 * steps,
            steps_per_epoch=steps,
            total_steps=steps,
            world_size=1,
            device=torch.device("cpu"),
            seed=0,
        )
        return spec.build([torch.nn.Parameter(torch.ones(weights))], context=context)

    expected = "compiled" if compile_unavailable_reason("cpu") is None else "foreach"
    assert built(enough - 1).implementation == "foreach"
    assert built(enough).implementation == expected
    assert built(enough).pays_to_compile() and not built(enough - 1).pays_to_compile()


def _decay(x, g, rate):
    """An in-place elementwise update for :meth:`BinaryOptimizer.kernel`."""
    x.mul_(1.0 - rate).add_(g, alpha=-1.0)


def _host_reading(x, g, rate):
    x.mul_(2.0 if float(g.sum()) > 0 else 1.0)  # reads a value on the host: cannot compile


@pytest.mark.slow
@needs_compile
def test_an_optimizers_own_kernel_runs_compiled_eagerly_and_falls_back(monkeypatch):
    """``BinaryOptimizer.kernel``: the same bits compiled and eager (contiguous or not), and a
    kernel torch.compile cannot capture warns once and runs eagerly."""
    monkeypatch.setattr(benchbnn.optim.base, "_warned", set())
    torch.manual_seed(0)
    x0, g = torch.randn(37, 11), torch.randn(37, 11)
    out = {}
    for implementation in ("reference", "compiled"):
        opt = build("bop", [torch.nn.Parameter(torch.ones(3))], [], implementation)
        x, xt = x0.clone(), x0.t().clone().t()  # the second is not contiguous
        for _ in range(3):
            opt.kernel(_decay)(x, g, 0.125)
            opt.kernel(_decay)(xt, g, 0.125)
        out[implementation] = (x, xt)
    assert torch.equal(out["reference"][0], out["compiled"][0])
    assert torch.equal(out["compiled"][0], out["compiled"][1])
    opt = build("bop", [torch.nn.Parameter(torch.ones(3))], [], "compiled")
    x = torch.ones(4)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*falling back"):
        opt.kernel(_host_reading)(x, torch.ones(4), 0.5)
    assert torch.equal(x, torch.full((4,), 2.0)) and opt.kernel(_host_reading) is _host_reading
