"""The optimizer conformance kit (``benchbnn check``, benchbnn.testing): it passes on every
registered optimizer and catches purpose-built broken ones, each on exactly its property."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch

import benchbnn
from benchbnn.cli import main
from benchbnn.core.binary import sgn0
from benchbnn.optim.base import (
    BinaryOptimizer,
    EvaluationSamples,
    ema_,
    ema_foreach_,
    flip_,
    restoring,
    sum_counts,
)
from benchbnn.optim.conformance import PROPERTIES, check_optimizer, check_property
from benchbnn.testing import conformance_tests


class _Toy(BinaryOptimizer):
    """A Bop-like rule: m <- m + gamma (g - m); flip where w * m > threshold."""

    rule_hparams = (
        benchbnn.HParam("gamma", 0.01, low=0.0, high=1.0),
        benchbnn.HParam("threshold", 0.0, low=0.0, high=1.0),
    )
    state_buffers = ("m",)

    @staticmethod
    def update(w, g, m, *, gamma, threshold):
        ema_(m, g, gamma)
        return flip_(w, w * m > threshold)


class WeightsOutside(_Toy):
    """Writes 1.5 (sign kept) into every weight after step 3, and +-1 again after step 4: only
    a check after every step sees it."""

    name = "broken-weights"
    derived_keys = ("scale",)

    def rule_kwargs(self, group):
        return {**super().rule_kwargs(group), "scale": 1.5 if group["step"] == 3 else 1.0}

    @staticmethod
    def update(w, g, m, *, gamma, threshold, scale):
        ema_(m, g, gamma)
        count = flip_(w, w * m > threshold)
        w.copy_(sgn0(w) * scale)
        return count


class DropsBuffer(_Toy):
    """Its state_dict leaves out the buffer m."""

    name = "broken-state-dict"

    def state_dict(self):
        state = super().state_dict()
        for entry in state["state"].values():
            entry.pop("m", None)
        return state


class ForeachDiffers(_Toy):
    """Its update_foreach flips where w * m >= threshold instead of > threshold."""

    name = "broken-foreach"

    @staticmethod
    def update_foreach(ws, gs, ms, *, gamma, threshold):
        ema_foreach_(ms, gs, gamma)
        return sum_counts([flip_(w, w * m >= threshold) for w, m in zip(ws, ms)], ws[0].device)


class _Continuous(BinaryOptimizer):
    """Continuous weights in (-1, 1) used as they are (forward="identity"), evaluated on their
    signs; each step calls the closure twice and scales the step by the run's training-set size
    (so it can only be built with a run context, as the kit builds it)."""

    rule_hparams = (benchbnn.HParam("step_size", 1e-3, low=0.0, high=1.0),)
    derived_keys = ("scale",)
    forward = "identity"
    needs_closure = True

    def rule_kwargs(self, group):
        return {"scale": group["step_size"] * self.context.train_size / 1000}

    def run_closure(self, closure):
        first = closure()
        closure()  # the kit's closure sets the prescribed gradients at every call
        return first

    @staticmethod
    def update(w, g, *, scale):
        before = w >= 0
        w.sub_(scale * g).clamp_(-0.999, 0.999)
        return (before != (w >= 0)).sum()

    @contextlib.contextmanager
    def evaluation_weights(self):
        with restoring(self.binary_params):
            for p in self.binary_params:
                p.copy_(sgn0(p))
            yield None


class KeepsSigns(_Continuous):
    """Evaluates the signs but never puts the continuous weights back."""

    name = "broken-restore"

    @contextlib.contextmanager
    def evaluation_weights(self):
        for p in self.binary_params:
            p.copy_(sgn0(p))
        yield None


class HalfSampled(_Continuous):
    """Its second sampled evaluation network has weights of 0.5."""

    name = "broken-samples"

    @contextlib.contextmanager
    def evaluation_weights(self):
        params = self.binary_params
        with restoring(params):

            def draw(i):
                for p in params:
                    p.copy_(sgn0(p) if i == 0 else torch.full_like(p, 0.5))

            yield EvaluationSamples(2, draw)


#: The properties that run in this process (data-parallel starts two more; tested apart).
IN_PROCESS = [p for p in PROPERTIES if p != "data-parallel"]


def _failing(optimizer) -> list[str]:
    return [r.prop for r in check_optimizer(optimizer, IN_PROCESS) if r.status == "failed"]


def _plugin(*classes, name="conformance-test-plugin"):
    module = types.ModuleType(name)

    @benchbnn.hookimpl
    def benchbnn_optimizers():
        return [benchbnn.optimizer_spec(c) for c in classes]

    module.benchbnn_optimizers = benchbnn_optimizers
    return module


# --- the kit passes on every registered optimizer ------------------------------------------


@pytest.mark.parametrize(
    "prop",
    [p if p in IN_PROCESS else pytest.param(p, marks=pytest.mark.slow) for p in PROPERTIES],
)
@pytest.mark.parametrize("name", benchbnn.list_optimizers())
def test_every_registered_optimizer_conforms(name, prop):
    result = check_property(name, prop)
    assert result.status != "failed", result.report()


def test_the_correct_toy_rule_conforms():
    assert _failing(type("ToyOk", (_Toy,), {"name": "toy-ok"})) == []


def test_a_correct_closure_optimizer_of_continuous_weights_conforms():
    assert _failing(type("ContinuousOk", (_Continuous,), {"name": "continuous-ok"})) == []


# --- and fails on broken ones, each on exactly its property -------------------------------


@pytest.mark.parametrize(
    ("broken", "prop"),
    [
        (WeightsOutside, "binary-weights"),
        (DropsBuffer, "state-dict"),
        (ForeachDiffers, "foreach"),
        (KeepsSigns, "binary-weights"),
        (HalfSampled, "binary-weights"),
    ],
    ids=["weights-outside", "drops-buffer", "foreach-differs", "keeps-signs", "half-sampled"],
)
def test_broken_optimizers_fail_exactly_their_property(broken, prop):
    results = check_optimizer(broken, IN_PROCESS)
    failing = [r for r in results if r.status == "failed"]
    assert [r.prop for r in failing] == [prop], "\n".join(r.report() for r in results)
    report = failing[0].report()
    assert "reproduce with:" in report and "check_property(" in report
    assert "seed: 0" in report and "shapes:" in report


def test_a_failure_names_the_step_and_the_values():
    result = check_property(WeightsOutside, "binary-weights")
    assert result.details["step"] == 3
    assert set(map(abs, result.details["values"])) == {1.5}


# --- the pytest helper ----------------------------------------------------------------------

test_toy_through_the_helper = conformance_tests(
    type("ToyHelper", (_Toy,), {"name": "toy-helper"}), properties=["flip-count", "state-dict"]
)


def test_the_helper_is_parametrized_by_property():
    test = conformance_tests("bop")
    marks = [m for m in test.pytestmark if m.name == "parametrize"]
    assert marks and list(marks[0].args[1]) == list(PROPERTIES)
    with pytest.raises(ValueError, match="unknown properties"):
        conformance_tests("bop", properties=["nope"])


# --- the command ----------------------------------------------------------------------------


def test_check_bop_passes(capsys):
    assert main(["check", "bop"]) == 0
    out = capsys.readouterr().out
    assert "bop: state-dict: passed" in out
    assert "bop: data-parallel: passed" in out
    assert "0 failed" in out


def test_data_parallel_skips_an_optimizer_the_ranks_cannot_load():
    result = check_property(type("ToyLocal", (_Toy,), {"name": "toy-local"}), "data-parallel")
    assert result.status == "skipped" and "BENCHBNN_PLUGINS" in result.reason


@pytest.mark.usefixtures("clean_registry")
def test_check_reports_a_broken_plugin(capsys):
    benchbnn.register_plugin(_plugin(DropsBuffer))
    assert main(["check", "broken-state-dict"]) == 1
    out = capsys.readouterr().out
    assert "broken-state-dict: state-dict: failed" in out
    assert "failed: broken-state-dict: state-dict" in out


def test_check_refuses_an_unknown_name(capsys):
    assert main(["check", "no-such-optimizer"]) == 2
    assert "no-such-optimizer" in capsys.readouterr().err


def test_check_refuses_bad_steps(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "bop", "--steps", "0"])
    assert exc.value.code == 2
