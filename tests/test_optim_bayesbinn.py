"""BayesBiNN: its step against an independent float64 computation of the documented rule, the
two conventions for mu, the mean-only step (S = 0), evaluation weights, errors, and training
through the engine with one closure call per sample.

The float64 reference below replays the optimizer's documented draws (per tensor, in parameter
order: ``randint`` coins and ``randn`` noise when built, then one ``randint`` key per sample and
tensor at every step, turned into uniforms by ``benchbnn.optim.counter_uniform``, the generator
the optimizer documents, whatever its bits) from a generator seeded like the optimizer's, and
applies the formulas of the class docstring in plain numpy. The optimizer computes in float32,
hence the tolerances.
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from compile_support import needs_compile
from engine_support import fresh_store, tiny_config

import benchbnn
from benchbnn.core.binary import binary_layers
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.specs import RunContext
from benchbnn.optim import counter_uniform, tanh32
from benchbnn.optim.base import EvaluationSamples
from benchbnn.train.engine import train

SEED = 1234
#: Two binary tensors (a matrix and a vector) and their loss coefficients: the loss is
#: sum(a * w + b * w^2 / 2), so the gradient g = a + b * w depends on the sampled weights.
SHAPES = ((2, 3), (4,))
A = (
    np.array([[0.3, -0.2, 0.1], [-0.4, 0.25, 0.05]]),
    np.array([0.1, -0.1, 0.2, -0.3]),
)
B = (0.5, -0.25)
RULE = {"step_size": 0.05, "beta": 0.5, "temperature": 0.7, "reweight": 0.5}
INIT = {"lambda_init": 0.8, "lambda_std": 0.09}
N = 8


@dataclass
class Expected:
    lam: list[np.ndarray]
    mu: list[np.ndarray]
    momentum: list[np.ndarray]
    seen: list[list[np.ndarray]]  # the weights of every closure call of the step


def draw_uniform(shape: tuple[int, ...], generator: torch.Generator) -> np.ndarray:
    """The documented u: the generator's next key, counter_uniform's value v, then
    (2 floor(v 2^23) + 1) 2^-24, in float64."""
    key = torch.randint(0, 2**31, (), generator=generator, dtype=torch.int64)
    v = counter_uniform(torch.empty(shape), key).double().numpy()
    return (2 * np.floor(v * 2**23) + 1) * 2.0**-24


def logistic(u: np.ndarray) -> np.ndarray:
    return np.log(u / (1 - u))


def reference(samples: int, lagged: bool, steps: int) -> list[Expected]:
    """The documented rule in float64, on the optimizer's draws."""
    generator = torch.Generator().manual_seed(SEED)
    lam = []
    for shape in SHAPES:
        coin = torch.randint(0, 2, shape, generator=generator).numpy()
        noise = torch.randn(shape, generator=generator).double().numpy()
        init = np.where(coin == 1, INIT["lambda_init"], -INIT["lambda_init"])
        lam.append(init + math.sqrt(INIT["lambda_std"]) * noise)
    mu = [np.tanh(x) for x in lam]
    momentum = [np.zeros(s) for s in SHAPES]
    step_size, beta, T, reweight = (
        RULE[k] for k in ("step_size", "beta", "temperature", "reweight")
    )
    out = []
    for t in range(1, steps + 1):
        g_hat = [np.zeros(s) for s in SHAPES]
        seen = []
        for _ in range(max(samples, 1)):
            ws = []
            for x in lam:
                if samples == 0:
                    ws.append(np.tanh(x))
                else:
                    ws.append(np.tanh((logistic(draw_uniform(x.shape, generator)) / 2 + x) / T))
            seen.append(ws)
            for i, w in enumerate(ws):
                g = A[i] + B[i] * w
                if samples == 0:
                    g_hat[i] += g
                else:
                    g_hat[i] += g * (1 - w * w + 1e-10) / T / (1 - mu[i] * mu[i] + 1e-10)
        factor = N if samples == 0 else N / samples
        new_lam, new_mu = [], []
        for i in range(len(SHAPES)):
            natural = g_hat[i] * factor
            momentum[i] = beta * momentum[i] + (1 - beta) * (natural + reweight * lam[i])
            updated = lam[i] - step_size * momentum[i] / (1 - beta**t)
            new_mu.append(np.tanh(lam[i]) if lagged else np.tanh(updated))
            new_lam.append(updated)
        lam, mu = new_lam, new_mu
        out.append(Expected([*lam], [*mu], [m.copy() for m in momentum], seen))
    return out


def build(samples: int, lagged: bool, context: RunContext | None = None, **extra):
    params = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    real = [torch.nn.Parameter(torch.zeros(1))]
    sizes = {} if context is not None else {"train_size": N}
    hparams = {"seed": SEED, "train_samples": samples, "lagged_mu": lagged, **RULE, **INIT}
    opt = benchbnn.get_optimizer("bayesbinn").build(
        params, real, context=context, **{**hparams, **sizes, **extra}
    )
    opt.implementation = "reference"
    return opt, params, real


def closure_for(params, real, seen):
    """Loss sum(a w + b w^2 / 2) over the binary tensors, plus r * sum(w of tensor 0): the
    real-valued gradient is the sample's sum of the first tensor."""

    def closure():
        for p in (*params, *real):
            p.grad = None
        loss = sum(
            (torch.tensor(a, dtype=torch.float32) * p + b / 2 * p * p).sum()
            for p, a, b in zip(params, A, B)
        )
        loss = loss + (real[0] * params[0].detach().sum()).sum()
        loss.backward()
        seen.append([p.detach().clone() for p in params])
        return loss.detach()

    return closure


def close(got: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(got.detach().double().numpy(), expected, rtol=2e-5, atol=2e-6)


CASES = [(1, True), (3, True), (3, False), (0, True), (0, False)]


@pytest.mark.parametrize(("samples", "lagged"), CASES)
def test_three_steps_follow_the_documented_rule(samples, lagged):
    opt, params, real = build(samples, lagged)
    expected = reference(samples, lagged, steps=3)
    for want in expected:
        seen = []
        before = [p.detach().clone() for p in params]
        opt.step(closure_for(params, real, seen))
        assert len(seen) == max(samples, 1)  # one closure call per sample (one for S = 0)
        for got_ws, want_ws in zip(seen, want.seen):
            for got, w in zip(got_ws, want_ws):
                close(got, w)  # the closure saw the relaxed samples (or tanh(lam))
        for i, p in enumerate(params):
            state = opt.state[p]
            close(state["lam"], want.lam[i])
            close(state["mu"], want.mu[i])
            close(state["momentum"], want.momentum[i])
            assert torch.equal(p.detach(), state["mu"])  # between steps the weights hold mu
        changed = sum(int(((b >= 0) != (p >= 0)).sum()) for b, p in zip(before, params))
        assert int(opt.flip_count) == changed
        # the real-valued gradient is the mean over the samples of sum(w_s of tensor 0)
        mean = np.mean([ws[0].sum() for ws in want.seen])
        np.testing.assert_allclose(float(real[0].grad), mean, rtol=1e-5, atol=1e-6)


def test_the_lagged_mu_is_one_step_behind_lam():
    lagged, params, real = build(1, True)
    initial = [lagged.state[p]["mu"].clone() for p in params]
    lagged.step(closure_for(params, real, []))
    lam_after_1 = [lagged.state[p]["lam"].clone() for p in params]
    # step 1: mu is still tanh of the initial lam (the authors' code)
    assert all(torch.equal(lagged.state[p]["mu"], m) for p, m in zip(params, initial))
    lagged.step(closure_for(params, real, []))
    assert all(torch.equal(lagged.state[p]["mu"], tanh32(x)) for p, x in zip(params, lam_after_1))
    paper, params, real = build(1, False)
    paper.step(closure_for(params, real, []))
    assert all(torch.equal(paper.state[p]["mu"], tanh32(paper.state[p]["lam"])) for p in params)


def test_n_comes_from_the_run_context_whatever_the_world_size():
    # the engine averages gradients over ranks and counts train_size over all ranks, so N is
    # train_size on every rank: the same trajectory as train_size=N on one process
    context = RunContext(
        train_size=N, steps_per_epoch=1, total_steps=3, world_size=2, device="cpu", seed=0
    )
    opt, params, real = build(0, True, context=context)
    assert opt.train_size == N
    want = reference(0, True, steps=1)[0]
    opt.step(closure_for(params, real, []))
    for i, p in enumerate(params):
        close(opt.state[p]["lam"], want.lam[i])


def test_the_initial_lam_is_a_coin_times_lambda_init_plus_noise():
    opt, params, _ = build(1, True, lambda_std=0.0)
    generator = torch.Generator().manual_seed(SEED)
    for p, shape in zip(params, SHAPES):
        coin = torch.randint(0, 2, shape, generator=generator)
        torch.randn(shape, generator=generator)
        expected = torch.where(coin == 1, 0.8, -0.8).float()
        assert torch.equal(opt.state[p]["lam"], expected)
        assert torch.equal(p.detach(), tanh32(expected))
        assert opt.state[p]["momentum"].abs().sum() == 0
        assert opt.state[p]["prior_lam"].abs().sum() == 0


def test_the_evaluated_mode_is_plus_one_where_mu_is_positive_and_minus_one_elsewhere():
    opt, params, _ = build(1, True)
    p = params[1]
    opt.state[p]["mu"].copy_(torch.tensor([0.3, 0.0, -0.0, -1e-30]))
    p.data.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    with opt.evaluation_weights() as samples:
        assert samples is None
        assert p.tolist() == [1.0, -1.0, -1.0, -1.0]  # mu = 0 gives -1 (upstream), not sgn0's +1
    assert torch.equal(p.detach(), torch.tensor([0.1, 0.2, 0.3, 0.4]))  # restored


def test_sampled_evaluation_networks_are_binary_repeatable_and_follow_lam():
    opt, params, _ = build(1, True, eval_samples=4)
    p = params[1]
    # P(+1) = sigmoid(2 lam): 1 and 0 in float32 for lam = +-1000 (lam, not the lagged mu)
    opt.state[p]["lam"].copy_(torch.tensor([1000.0, -1000.0, 0.0, 0.5]))
    opt.state[p]["mu"].copy_(torch.tensor([-1.0, 1.0, 0.0, 0.5]))
    with opt.evaluation_weights() as samples:
        assert isinstance(samples, EvaluationSamples) and samples.count == 4
        drawn = []
        for i in range(4):
            samples.draw(i)
            drawn.append(p.detach().clone())
            assert bool(((p == 1) | (p == -1)).all())
            assert p[0] == 1 and p[1] == -1
        samples.draw(2)
        assert torch.equal(p.detach(), drawn[2])  # the same network for the same index
    # 4 networks x 2 undecided weights: the draws are not all alike
    assert len({tuple(d[2:].tolist()) for d in drawn}) > 1


def test_a_step_without_n_is_refused_with_the_fix():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = benchbnn.get_optimizer("bayesbinn").build([w])  # no train_size, no run context
    assert opt.train_size is None
    with pytest.raises(BenchbnnError, match=r"needs N.*pass train_size=N, or build it with"):
        opt.step(lambda: (w * 1.0).sum().backward())


def test_a_step_without_a_closure_is_refused():
    opt, _, _ = build(1, True)
    with pytest.raises(BenchbnnError, match="needs a closure"):
        opt.step()


def test_the_declaration():
    spec = benchbnn.get_optimizer("bayesbinn")
    assert (spec.forward, spec.needs_closure) == ("identity", True)
    defaults = {h.name: h.default for h in spec.hparams}
    assert defaults["lagged_mu"] is True  # the authors' code is the default
    assert "step_size" in spec.divergence_hint()


class _Probe:
    """Counts training forwards per step; checks inside every binary layer that evaluated
    weights are exactly +-1."""

    def __init__(self) -> None:
        self.forwards = 0
        self.per_step: list[int] = []
        self.evaluated = 0

    @benchbnn.hookimpl
    def benchbnn_run_start(self, run):
        run.model.register_forward_pre_hook(self.count)
        for _, layer in binary_layers(run.model):
            layer.register_forward_pre_hook(self.check)

    def count(self, module, inputs):
        if module.training:
            self.forwards += 1

    def check(self, layer, inputs):
        if not layer.training:
            weight, _ = layer.binarized_weight()
            assert bool((weight.detach().abs() == 1).all())
            self.evaluated += 1

    @benchbnn.hookimpl
    def benchbnn_step_end(self, run, step, logs):
        self.per_step.append(self.forwards)
        self.forwards = 0


@pytest.mark.parametrize("eval_samples", [0, 2])
def test_training_calls_the_closure_once_per_sample_and_evaluates_binary_weights(
    tmp_path, eval_samples
):
    probe = _Probe()
    config = tiny_config(
        optimizer="bayesbinn",
        hparams={"train_samples": 2, "eval_samples": eval_samples},
        epochs=1,
    )
    result = train(
        config,
        quiet=True,
        tracking_uri=fresh_store(tmp_path / "store"),
        checkpoint_dir=tmp_path / "ck",
        plugins=[probe],
    )
    assert result.status == "FINISHED", result.error
    assert len(probe.per_step) == 22 and set(probe.per_step) == {2}
    assert probe.evaluated > 0
    assert result.history[-1]["test_top1"] > 50.0


def test_the_uniforms_get_their_lowest_bit_set_so_the_noise_is_finite_and_symmetric(
    monkeypatch,
):
    # inject the extreme values counter_uniform can return: 0, 2^-24, 1/2 and 1 - 2^-24
    module = sys.modules[type(build(1, True)[0]).__module__]
    values = torch.tensor([0.0, 2.0**-24, 0.5, 1 - 2.0**-24])
    monkeypatch.setattr(module, "counter_uniform", lambda like, key: values)
    got = module.relaxed_sample(torch.zeros(4), torch.tensor(0), 1.0)
    u = np.array([1, 1, 2**23 + 1, 2**24 - 1]) * 2.0**-24  # (2 floor(v 2^23) + 1) 2^-24
    np.testing.assert_allclose(got.double().numpy(), np.tanh(logistic(u) / 2), rtol=1e-6)
    assert bool(torch.isfinite(got).all()) and got[0] == -got[3]  # symmetric about u = 1/2


def test_a_tensor_without_a_gradient_gets_mu_back_and_keeps_its_state():
    opt, params, real = build(1, True)
    untouched = {k: v.clone() for k, v in opt.state[params[1]].items()}

    def closure():
        for p in (*params, *real):
            p.grad = None
        (params[0] * torch.tensor(A[0], dtype=torch.float32)).sum().backward()
        return torch.zeros(())

    opt.step(closure)
    assert torch.equal(params[1].detach(), untouched["mu"])  # the sample was replaced by mu
    assert all(torch.equal(opt.state[params[1]][k], v) for k, v in untouched.items())
    assert torch.equal(params[0].detach(), opt.state[params[0]]["mu"])


@pytest.mark.parametrize("samples", [1, 3])
def test_a_resumed_optimizer_draws_the_same_samples(samples):
    a, pa, ra = build(samples, True)
    for _ in range(2):
        a.step(closure_for(pa, ra, []))
    saved = io.BytesIO()
    torch.save(a.state_dict(), saved)
    saved.seek(0)
    b, pb, rb = build(samples, True, seed=99)  # another seed: the state brings the stream
    for x, y in zip(pb, pa):
        x.data.copy_(y.detach())
    b.load_state_dict(torch.load(saved, weights_only=False))
    for _ in range(3):
        seen_a, seen_b = [], []
        a.step(closure_for(pa, ra, seen_a))
        b.step(closure_for(pb, rb, seen_b))
        for x, y in zip(seen_a, seen_b):
            assert all(torch.equal(u, v) for u, v in zip(x, y))
        for x, y in zip(pa, pb):
            assert torch.equal(x.detach(), y.detach())
            assert torch.equal(a.state[x]["lam"], b.state[y]["lam"])


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize(("samples", "lagged"), CASES)
def test_the_compiled_step_follows_the_same_rule(samples, lagged):
    opt, params, real = build(samples, lagged)
    opt.implementation = "compiled"
    for want in reference(samples, lagged, steps=3):
        seen = []
        opt.step(closure_for(params, real, seen))
        assert not opt._compile_failed
        for got_ws, want_ws in zip(seen, want.seen):
            for got, w in zip(got_ws, want_ws):
                close(got, w)
        for i, p in enumerate(params):
            close(opt.state[p]["lam"], want.lam[i])
            assert torch.equal(p.detach(), opt.state[p]["mu"])
