"""The optimizer plugin API: one declaration per optimizer class, checked when it is defined.

* the spec is derived from the class and the constructor is generic; the built-ins are written
  that way (their numbers are tests/test_optim*.py's, unchanged);
* every declaration mistake is refused with its own error naming the class (and, through the
  plugin host, the plugin) and the fix; strict mode makes the CLI exit with status 2;
* a step that needs a closure gets one from the engine, also under data parallelism;
* evaluation runs on exactly +-1 weights or the run fails with one clear line;
* ``init_state``, ``RunContext`` and the divergence advice reach where they belong.

Real runs on the embedded digits data with a small BNN MLP; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import subprocess
import sys
import textwrap
import types
from typing import ClassVar

import pytest
import torch
from engine_support import computed, fresh_store, tiny_config

import benchbnn
from benchbnn.cli import main as cli_main
from benchbnn.core.binary import binary_layers, sgn0
from benchbnn.core.errors import BenchbnnError, HyperparameterError, PluginError, RunFailed
from benchbnn.core.plugins import PluginWarning, load_registry
from benchbnn.core.specs import HParam, OptimizerSpec, RunContext
from benchbnn.optim import BinaryOptimizer, adam_hparams, ema_, flip_
from benchbnn.optim.base import EvaluationSamples, restoring
from benchbnn.train.engine import train

BUILTINS = ["bop", "bop2ndorder", "pbop", "adam-latent"]
#: a BNN MLP with one hidden layer of 32 units on digits, 64 images a step (22 steps an epoch)
RUN = [
    *("run", "--dataset", "digits", "--arch", "bnn-mlp", "--arch-option", "hidden=32"),
    *("--batch-size", "64", "--epochs", "1", "--quiet"),
]


def param(values):
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))


def _module(name: str, **members) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in members.items():
        setattr(module, key, value)
    return module


def _plugin(*classes, name="api-test-plugin") -> types.ModuleType:
    specs = [benchbnn.optimizer_spec(c) for c in classes]
    return _module(name, benchbnn_optimizers=benchbnn.hookimpl(lambda: list(specs)))


def _train(config, tmp_path, **kwargs):
    return train(
        config,
        quiet=True,
        tracking_uri=fresh_store(tmp_path / "store"),
        checkpoint_dir=tmp_path / "ck",
        **kwargs,
    )


# --- declared once ------------------------------------------------------------------------------


class Flip(BinaryOptimizer):
    """Flip where a gradient average agrees with the weight (a minimal plugin)."""

    name = "api-flip"
    reference = "this test"
    rule_hparams = (
        HParam("threshold", 1e-6, low=0.0, high=1.0, search=(1e-8, 1e-3), log=True),
        HParam("gamma", 0.5, low=0.0, high=1.0, help="rate of the gradient average"),
    )
    option_hparams = (HParam("note", 0, low=0, high=9),)
    real_hparams = adam_hparams(lr=0.002)
    state_buffers = ("m",)

    @staticmethod
    def update(w, g, m, *, gamma, threshold):
        ema_(m, g, gamma)
        return flip_(w, w * m > threshold)


def test_the_spec_is_derived_from_the_class():
    spec = benchbnn.optimizer_spec(Flip)
    assert spec == OptimizerSpec.from_class(Flip)
    assert (spec.name, spec.factory, spec.reference) == ("api-flip", Flip, "this test")
    assert spec.description == Flip.__doc__  # the first line of the docstring
    assert [h.name for h in spec.hparams] == [
        "threshold", "gamma", "note", "lr", "beta1", "beta2", "eps",
    ]  # fmt: skip
    assert spec.defaults["lr"] == 0.002
    assert (spec.forward, spec.latent_weights, spec.needs_closure) == ("sign", False, False)
    assert Flip.rule_keys == ("gamma", "threshold")  # update's keyword-only parameters
    spec.validate()
    signature = inspect.signature(Flip)
    assert {n: signature.parameters[n].default for n in spec.defaults} == spec.defaults
    assert list(signature.parameters)[-2:] == ["implementation", "context"]


def test_the_generic_constructor_sorts_values_by_declaration():
    w, r = param([0.3, -0.2]), param([1.0])
    opt = Flip([w], [r], gamma=0.25, lr=0.1, note=3)
    binary, real = opt.param_groups
    assert {k: v for k, v in binary.items() if k != "params"} == {
        "kind": "binary", "step": 0, "threshold": 1e-6, "gamma": 0.25, "lr": 0.1,
    }  # fmt: skip
    assert {k: real[k] for k in ("lr", "beta1", "beta2", "eps")} == {
        "lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
    }  # fmt: skip
    assert opt.options == {"note": 3} and opt.context is None
    assert w.tolist() == [1.0, -1.0]  # forward="sign": exactly +-1 when built
    with pytest.raises(HyperparameterError, match=r"no hyperparameter 'gama'.*mean 'gamma'"):
        Flip([w], gama=0.1)
    with pytest.raises(HyperparameterError, match=r"'gamma'.*outside its valid range"):
        Flip([w], gamma=2.0)
    with pytest.raises(BenchbnnError, match="both by name"):
        Flip([w], binary={"gamma": 0.1}, real={}, threshold=0.1)


@pytest.mark.parametrize("name", BUILTINS)
def test_each_builtin_declares_its_hyperparameters_once(name):
    spec = benchbnn.get_optimizer(name)
    cls = spec.factory
    assert "__init__" not in vars(cls)  # the generic constructor
    assert "hparams" not in vars(cls) or cls._style == "class"  # derived, not written out
    assert spec == benchbnn.optimizer_spec(cls)
    assert spec.hparams == cls.hparams
    names = [h.name for h in spec.hparams]
    assert len(names) == len(set(names))
    if name == "adam-latent":
        assert cls.shared_hparams == ("lr", "beta1", "beta2", "eps")
        assert (spec.forward, spec.ste_window, cls.latent_weights) == ("latent", "clip", True)
    else:
        assert {h.name for h in cls.rule_hparams}.isdisjoint({h.name for h in cls.real_hparams})
        assert (spec.forward, cls.latent_weights) == ("sign", False)
    assert spec.divergence_advice


def test_the_older_spelling_still_declares_everything():
    class Old(BinaryOptimizer):
        hparams = (HParam("clip", 1.0, low=0.5, high=2.0), *adam_hparams())
        rule_keys = ("clip",)
        latent_weights = True

        def __init__(self, binary_params, real_params=(), *, clip=1.0, lr=0.01, beta1=0.9,
                     beta2=0.999, eps=1e-7, implementation=None):  # fmt: skip
            super().__init__(binary_params, real_params, binary={"clip": clip},
                             real={"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps},
                             implementation=implementation)  # fmt: skip

        @staticmethod
        def update(w, g, *, clip):
            return (w.sub_(g).clamp_(-clip, clip) * 0).sum().long()

    assert (Old.forward, Old.latent_weights) == ("latent", True)
    spec = OptimizerSpec("old", Old, Old.hparams, latent_weights=True)
    spec.validate()
    assert spec.forward == "latent" and spec.latent_weights is True
    w = param([0.3])
    Old([w])  # by name, through the generic sorting
    assert w.tolist() == pytest.approx([0.3])  # latent weights are not set to +-1


# --- mistakes refused when the class is defined ---------------------------------------------------

#: (body of a BinaryOptimizer subclass called Mistake, what the error must say)
MISTAKES = {
    "no-default": (
        """
        rule_hparams = (HParam("gamma", None),)
        state_buffers = ("m",)

        @staticmethod
        def update(w, g, m, *, gamma):
            return flip_(w, w * m > gamma)
        """,
        "hyperparameter 'gamma' has no usable default (None)",
    ),
    "misspelled-keyword": (
        """
        rule_hparams = (HParam("gamma", 1e-3, low=0.0, high=1.0),)
        state_buffers = ("m",)

        @staticmethod
        def update(w, g, m, *, gama):
            return flip_(w, w * m > gama)
        """,
        "takes keyword argument 'gama', which is not a declared hyperparameter of the rule "
        "(Mistake.rule_hparams: gamma). Did you mean 'gamma'?",
    ),
    "unused-hyperparameter": (
        """
        rule_hparams = (HParam("gamma", 1e-3, low=0.0, high=1.0), HParam("rate", 0.1))
        state_buffers = ("m",)

        @staticmethod
        def update(w, g, m, *, gamma):
            return flip_(w, w * m > gamma)
        """,
        "the rule's hyperparameter 'rate' (Mistake.rule_hparams) never reaches the rule",
    ),
    "buffers-not-taken": (
        """
        rule_hparams = (HParam("gamma", 1e-3, low=0.0, high=1.0),)
        state_buffers = ("m", "v")

        @staticmethod
        def update(w, g, m, *, gamma):
            return flip_(w, w * m > gamma)
        """,
        "takes the state buffers (m) after (w, g), but Mistake.state_buffers declares (m, v)",
    ),
    "adam-name": (
        """
        rule_hparams = (HParam("lr", 1e-4, low=0.0, high=1.0),)

        @staticmethod
        def update(w, g, *, lr):
            return flip_(w, w * g > lr)
        """,
        "the rule's hyperparameter 'lr' (Mistake.rule_hparams) has the name of the real-valued "
        "side's Adam 'lr' (BinaryOptimizer.real_hparams (the default: adam_hparams()))",
    ),
    "identity-without-evaluation-weights": (
        """
        rule_hparams = (HParam("step_size", 1e-3, low=0.0, high=1.0),)
        forward = "identity"

        @staticmethod
        def update(w, g, *, step_size):
            return (w.sub_(step_size * g) * 0).sum().long()
        """,
        "forward='identity' trains on the weights as they are, but it provides no evaluation "
        "weights",
    ),
    "window-without-latent-weights": (
        """
        rule_hparams = (HParam("clip", 1.0, low=0.5, high=2.0),)
        ste_window = "clip"

        @staticmethod
        def update(w, g, *, clip):
            return flip_(w, w * g > clip)
        """,
        "ste_window needs latent_weights=True, i.e. forward='latent'",
    ),
    "contradictory-forward": (
        """
        rule_hparams = (HParam("clip", 1.0, low=0.5, high=2.0),)
        latent_weights = False
        forward = "latent"

        @staticmethod
        def update(w, g, *, clip):
            return flip_(w, w * g > clip)
        """,
        "declares latent_weights=False and forward='latent', which contradict each other",
    ),
}


def _mistake_source(body: str, name: str = "mistake") -> str:
    return (
        "import benchbnn\n"
        "from benchbnn import HParam\n"
        "from benchbnn.optim import BinaryOptimizer, flip_\n\n\n"
        "class Mistake(BinaryOptimizer):\n"
        f"    name = {name!r}\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\n\n@benchbnn.hookimpl\ndef benchbnn_optimizers():\n"
        "    return [benchbnn.optimizer_spec(Mistake)]\n"
    )


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_declaration_mistake_is_refused_when_the_class_is_defined(mistake):
    body, message = MISTAKES[mistake]
    with pytest.raises(PluginError) as info:
        exec(_mistake_source(body), {"__name__": "mistake_module"})
    text = str(info.value)
    assert text.startswith("optimizer class mistake_module.Mistake")
    assert message in text


def test_a_colliding_name_names_both_declarations_and_the_fix():
    with pytest.raises(PluginError) as info:

        class BayesLike(BinaryOptimizer):
            rule_hparams = (HParam("lr", 1e-4, low=0.0, high=1.0),)
            real_hparams = adam_hparams(lr=1e-3)

            @staticmethod
            def update(w, g, *, lr):
                return flip_(w, w * g > lr)

    text = str(info.value)
    assert "BayesLike.rule_hparams" in text and "BayesLike.real_hparams" in text
    assert "Rename the rule's, e.g. HParam('step_size', ...) with update(..., *, step_size)" in text
    with pytest.raises(PluginError, match=r"'lr', a hyperparameter of the real-valued side"):

        class ReadsAdam(BinaryOptimizer):
            @staticmethod
            def update(w, g, *, lr):
                return flip_(w, w * g > lr)


@pytest.fixture
def local_module(tmp_path, monkeypatch):
    """Write a plugin module into tmp_path (importable as ``name``); undo ``-p`` afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)
        if name in benchbnn.core.plugins._extra_modules:
            benchbnn.core.plugins._extra_modules.remove(name)
    benchbnn.core.plugins.reset_registry()


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_the_host_names_the_plugin_and_strict_mode_exits_2(
    mistake, local_module, monkeypatch, capsys
):
    body, message = MISTAKES[mistake]
    module = local_module(f"broken_{mistake.replace('-', '_')}", _mistake_source(body))
    registry = load_registry(modules=[module], strict=False)
    (failure,) = [f for f in registry.failures if f.plugin == module]
    assert failure.reason.startswith("failed to import: optimizer class")
    assert message in failure.reason
    benchbnn.core.plugins.add_plugin_modules([module])  # as -p does (the fixture undoes it)
    with pytest.raises(PluginError) as refused:  # found, so no advice on its name or path
        benchbnn.core.plugins.check_plugin_modules([module])
    assert "PYTHONPATH" not in str(refused.value) and message in str(refused.value)
    assert "bop" in registry.names("optimizer")  # the other plugins keep working
    monkeypatch.setenv("BENCHBNN_STRICT_PLUGINS", "1")
    assert cli_main(["-p", module, "plugins"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"benchbnn: error: plugin '{module}' (from local module)")
    assert message in err and len(err.splitlines()) == 1


def test_a_module_that_registers_nothing_is_a_warning_or_in_strict_mode_an_error(
    local_module, monkeypatch, capsys
):
    source = textwrap.dedent(
        """
        import benchbnn
        from benchbnn_plugins.optimizers.bop import Bop


        class Renamed(Bop):
            name = "renamed-bop"


        def benchbnn_optimizers():  # @benchbnn.hookimpl forgotten
            return [benchbnn.optimizer_spec(Renamed)]
        """
    )
    module = local_module("forgot_the_marker", source)
    with pytest.warns(PluginWarning, match="registered nothing"):
        registry = load_registry(modules=[module], strict=False)
    (warning,) = [w for w in registry.warnings if w.plugin == module]
    assert "function benchbnn_optimizers is not marked @benchbnn.hookimpl" in warning.reason
    assert "renamed-bop" not in registry.names("optimizer")
    assert not [f for f in registry.failures if f.plugin == module]
    with pytest.raises(PluginError, match="registered nothing"):
        load_registry(modules=[module], strict=True)
    with pytest.warns(PluginWarning):
        assert cli_main(["-p", module, "plugins"]) == 0  # a warning: the command goes on
    assert "registered nothing" in capsys.readouterr().out
    monkeypatch.setenv("BENCHBNN_STRICT_PLUGINS", "1")
    benchbnn.core.plugins.reset_registry()
    assert cli_main(["-p", module, "plugins"]) == 2
    err = capsys.readouterr().err
    assert "registered nothing" in err and len(err.splitlines()) == 1


def test_a_hook_name_close_to_a_real_one_says_which(local_module, monkeypatch, capsys):
    marked = local_module(
        "marked_typo",
        "import benchbnn\n\n@benchbnn.hookimpl\ndef benchbnn_optimizer():\n    return []\n",
    )
    unmarked = local_module(
        "unmarked_typo",
        "import benchbnn\n\n@benchbnn.hookimpl\ndef benchbnn_suites():\n    return []\n\n\n"
        "def benchbnn_optimisers():\n    return []\n",
    )
    with pytest.warns(PluginWarning):
        registry = load_registry(modules=[marked, unmarked], strict=False)
    (failure,) = [f for f in registry.failures if f.plugin == marked]
    assert "Did you mean 'benchbnn_optimizers'?" in failure.reason
    (warning,) = [w for w in registry.warnings if w.plugin == unmarked]
    assert "function benchbnn_optimisers is not a benchbnn hook" in warning.reason
    assert "did you mean benchbnn_optimizers?" in warning.reason
    monkeypatch.setenv("BENCHBNN_STRICT_PLUGINS", "1")
    assert cli_main(["-p", unmarked, "plugins"]) == 2
    assert "did you mean benchbnn_optimizers?" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_registry")
def test_a_spec_written_out_cannot_contradict_its_class():
    def refused(spec: OptimizerSpec, reason: str) -> None:
        benchbnn.register_plugin(_module("contradiction", benchbnn_optimizers=benchbnn.hookimpl(
            lambda: [spec])), name="contradiction")  # fmt: skip
        failures = [f for f in benchbnn.get_registry().failures if f.plugin == "contradiction"]
        assert len(failures) == 1 and reason in failures[0].reason, failures
        benchbnn.unregister_plugin("contradiction")

    refused(
        OptimizerSpec("x", Flip, Flip.hparams, forward="identity", latent_weights=True),
        "latent_weights=True contradicts forward='identity'",
    )
    refused(
        OptimizerSpec("x", Flip, Flip.hparams, latent_weights=True),
        "the spec says forward='latent' but its class Flip declares forward='sign'",
    )
    refused(OptimizerSpec("x", Flip, Flip.hparams, forward="sgn"), "Did you mean 'sign'?")


# --- closures -------------------------------------------------------------------------------------

#: A closure-driven test optimizer (Bop's rule on the mean gradient of ``samples`` randomly
#: perturbed networks, drawn from a generator seeded by the run) and a probe that counts the
#: model's training forward passes per step and checks that data-parallel ranks agree.
SAMPLED_PLUGIN = """
import os

import torch
import torch.distributed as dist

import benchbnn
from benchbnn.optim import BinaryOptimizer, ema_, flip_
from benchbnn.train.distributed import checksum

SEEN = {"forwards": 0, "per_step": [], "mismatches": [], "contexts": [], "first_calls": []}


class SampledBop(BinaryOptimizer):
    name = "sampled-bop"
    rule_hparams = (
        benchbnn.HParam("threshold", 1e-6, low=0.0, high=1.0),
        benchbnn.HParam("gamma", 1e-2, low=0.0, high=1.0),
    )
    option_hparams = (
        benchbnn.HParam("samples", 3, low=1, high=16),
        benchbnn.HParam("flip_probability", 0.05, low=0.0, high=1.0),
    )
    state_buffers = ("m",)
    needs_closure = True

    def setup(self):
        SEEN["contexts"].append(self.context)
        seed = self.context.seed if self.context is not None else 0
        self.generator = torch.Generator().manual_seed(12345 + seed)

    def run_closure(self, closure):
        params = [p for group in self.param_groups for p in group["params"]]
        binary = self.binary_params
        weights = [p.detach().clone() for p in binary]
        sums, first = {}, None
        chance = self.options["flip_probability"]
        for _ in range(self.options["samples"]):
            for p, w in zip(binary, weights):
                flip = torch.rand(p.shape, generator=self.generator) < chance
                p.copy_(torch.where(flip.to(p.device), -w, w))
            result = closure()
            first = result if first is None else first
            for p in params:
                if p.grad is not None:
                    sums[p] = sums[p] + p.grad if p in sums else p.grad.clone()
        for p, w in zip(binary, weights):
            p.copy_(w)
        for p in params:
            p.grad = sums[p] / self.options["samples"] if p in sums else None
        SEEN["first_calls"].append(first)
        return first

    @staticmethod
    def update(w, g, m, *, gamma, threshold):
        ema_(m, g, gamma)
        return flip_(w, w * m > threshold)


@benchbnn.hookimpl
def benchbnn_optimizers():
    return [benchbnn.optimizer_spec(SampledBop)]


@benchbnn.hookimpl
def benchbnn_run_start(run):
    def count(module, inputs):
        if module.training:
            SEEN["forwards"] += 1

    run.model.register_forward_pre_hook(count)


@benchbnn.hookimpl
def benchbnn_step_end(run, step, logs):
    SEEN["per_step"].append(SEEN["forwards"])
    SEEN["forwards"] = 0
    if run.world.parallel:
        local = checksum(run.binary_params).reshape(1)
        everyone = [torch.empty_like(local) for _ in range(run.world_size)]
        dist.all_gather(everyone, local)
        if not all(torch.equal(x, everyone[0]) for x in everyone):
            SEEN["mismatches"].append(step)
    if SEEN["first_calls"]:
        assert torch.equal(logs["loss"], SEEN["first_calls"][-1].loss)


@benchbnn.hookimpl
def benchbnn_run_end(run, result):
    if "PROBE_OUT" in os.environ:
        torch.save({
            "rank": run.rank, "world_size": run.world_size, "status": result.status,
            "per_step": SEEN["per_step"], "mismatches": SEEN["mismatches"],
            "context": SEEN["contexts"][-1], "history": result.history,
            "state": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        }, os.path.join(os.environ["PROBE_OUT"], f"rank{run.rank}.pt"))
"""


@pytest.mark.usefixtures("clean_registry")
def test_a_closure_optimizer_calls_the_model_once_per_sample(tmp_path):
    module = _module("sampled_plugin")
    exec(SAMPLED_PLUGIN, vars(module))
    benchbnn.register_plugin(module, name="sampled-plugin")
    spec = benchbnn.get_optimizer("sampled-bop")
    assert spec.needs_closure
    result = _train(tiny_config(optimizer="sampled-bop", epochs=1), tmp_path)
    assert result.status == "FINISHED", result.error
    seen = module.SEEN
    assert len(seen["per_step"]) == 22 and set(seen["per_step"]) == {3}  # 3 samples, 3 forwards
    assert result.history[-1]["test_top1"] > 15.0  # it learned something
    # without a closure the optimizer refuses to step
    opt = spec.build([param([1.0])])
    with pytest.raises(BenchbnnError, match="needs a closure"):
        opt.step()


@pytest.mark.slow
@pytest.mark.torchrun
def test_a_closure_optimizer_under_two_data_parallel_ranks(tmp_path):
    store = fresh_store(tmp_path / "store")
    (tmp_path / "sampled_plugin.py").write_text(SAMPLED_PLUGIN)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PROBE_OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        *("-m", "benchbnn", "-p", "sampled_plugin", *RUN[:-3], "--epochs", "2"),
        *("--optimizer", "sampled-bop", "--device", "cpu", "--seed", "3"),
        *("--tracking-uri", store, "--checkpoint-dir", str(tmp_path / "ck"), "--quiet"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["status"] for r in ranks] == ["FINISHED", "FINISHED"]
    for r in ranks:
        assert len(r["per_step"]) == 2 * 22 and set(r["per_step"]) == {3}
        assert r["mismatches"] == []
        assert r["context"] == RunContext(
            train_size=1437, steps_per_epoch=22, total_steps=44, world_size=2,
            device=torch.device("cpu"), seed=3,
        )  # fmt: skip
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert computed(ranks[0]["history"]) == computed(ranks[1]["history"])


# --- evaluation weights ---------------------------------------------------------------------------


class _EvaluationProbe:
    """Checks, inside a forward hook of every binary layer, the weights the layer uses: during
    evaluation they must be exactly +-1; records whether training saw other values."""

    def __init__(self) -> None:
        self.evaluated = 0
        self.trained_on_real_values = False

    @benchbnn.hookimpl
    def benchbnn_run_start(self, run):
        for _, layer in binary_layers(run.model):
            layer.register_forward_pre_hook(self.check)

    def check(self, layer, inputs):
        weight, _ = layer.binarized_weight()
        binary = bool((weight.detach().abs() == 1).all())
        if layer.training:
            self.trained_on_real_values |= not binary
        else:
            assert binary, "a binary layer evaluated weights that are not +-1"
            self.evaluated += 1


class Drift(BinaryOptimizer):
    """forward='sign' but the rule leaves the weights real-valued: a broken plugin."""

    name = "api-drift"
    rule_hparams = (HParam("step_size", 0.05, low=0.0, high=1.0),)

    @staticmethod
    def update(w, g, *, step_size):
        w.sub_(step_size * g)
        return torch.zeros((), dtype=torch.int64, device=w.device)


class Continuous(BinaryOptimizer):
    """Continuous weights in (-1, 1) used as they are while training (mirror-descent style);
    evaluated on their signs."""

    name = "api-continuous"
    rule_hparams = (HParam("step_size", 0.05, low=0.0, high=1.0),)
    forward = "identity"

    def init_weight(self, param):
        return torch.tanh(param)

    @staticmethod
    def update(w, g, *, step_size):
        before = w >= 0
        w.sub_(step_size * g).clamp_(-0.999, 0.999)
        return (before != (w >= 0)).sum()

    @contextlib.contextmanager
    def evaluation_weights(self):
        with restoring(self.binary_params):
            for p in self.binary_params:
                p.copy_(sgn0(p))
            yield None


class SampledNetworks(Continuous):
    """Evaluated on the mean prediction of 3 networks sampled around the signs."""

    name = "api-sampled-networks"
    draws: ClassVar[list[int]] = []

    @contextlib.contextmanager
    def evaluation_weights(self):
        params = self.binary_params
        with restoring(params):
            centre = [p.detach().clone() for p in params]

            def draw(i: int) -> None:
                generator = torch.Generator().manual_seed(i)
                for p, c in zip(params, centre):
                    noise = torch.rand(p.shape, generator=generator) * 2 - 1
                    p.copy_(sgn0(c + 0.5 * noise))
                SampledNetworks.draws.append(i)

            yield EvaluationSamples(3, draw)


@pytest.mark.usefixtures("clean_registry")
def test_a_plugin_that_evaluates_real_valued_weights_fails_with_one_clear_line(tmp_path, capsys):
    benchbnn.register_plugin(_plugin(Drift), name="drift-plugin")
    with pytest.raises(RunFailed) as info:
        _train(tiny_config(optimizer="api-drift", epochs=1), tmp_path)
    assert str(info.value).startswith(
        "evaluated weights of layer blocks.0.fc are not ±1: the optimizer must provide evaluation "
        "weights (optimizer 'api-drift'"
    )
    store = fresh_store(tmp_path / "cli-store")
    args = [*RUN, "--optimizer", "api-drift", "--tracking-uri", store]
    assert cli_main([*args, "--checkpoint-dir", str(tmp_path / "ck2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("benchbnn: failed: evaluated weights of layer blocks.0.fc are not ±1")
    assert len(err.splitlines()) == 1


@pytest.mark.usefixtures("clean_registry")
def test_a_plain_torch_optimizer_of_real_weights_is_not_reported_as_a_bnn(tmp_path):
    def sgd(binary_params, real_params, lr=0.1):
        return torch.optim.SGD([*binary_params, *real_params], lr=lr)

    spec = OptimizerSpec("api-sgd", sgd, (HParam("lr", 0.1, low=0.0, high=1.0),))
    benchbnn.register_plugin(_module("sgd", benchbnn_optimizers=benchbnn.hookimpl(
        lambda: [spec])), name="sgd-plugin")  # fmt: skip
    with pytest.raises(RunFailed, match=r"are not ±1: the optimizer must provide evaluation"):
        _train(tiny_config(optimizer="api-sgd", epochs=1), tmp_path)


@pytest.mark.usefixtures("clean_registry")
def test_provided_evaluation_weights_are_exactly_binary_and_training_resumes_on_its_own(
    tmp_path,
):
    benchbnn.register_plugin(_plugin(Continuous), name="continuous-plugin")
    probe = _EvaluationProbe()
    result = _train(tiny_config(optimizer="api-continuous", epochs=2), tmp_path, plugins=[probe])
    assert result.status == "FINISHED", result.error
    assert probe.evaluated > 0  # every evaluation forward asserted +-1 weights
    assert probe.trained_on_real_values  # forward="identity": the continuous weights
    assert result.history[-1]["test_top1"] > 15.0


@pytest.mark.usefixtures("clean_registry")
def test_the_mean_of_sampled_networks_is_evaluated_on_binary_networks(tmp_path):
    benchbnn.register_plugin(_plugin(SampledNetworks), name="sampled-networks-plugin")
    probe = _EvaluationProbe()
    SampledNetworks.draws.clear()
    result = _train(
        tiny_config(optimizer="api-sampled-networks", epochs=1), tmp_path, plugins=[probe]
    )
    assert result.status == "FINISHED", result.error
    test_batches = 2  # 360 test images in evaluation batches of 256
    assert SampledNetworks.draws == [0, 1, 2] * test_batches
    assert probe.evaluated == 3 * test_batches * len(list(binary_layers_of_bnn_mlp()))
    assert 0.0 < result.history[-1]["test_loss"] < 10.0


def binary_layers_of_bnn_mlp():
    model = benchbnn.get_architecture("bnn-mlp").build(
        num_classes=10, in_channels=1, image_size=8, hidden=[32]
    )
    return binary_layers(model)


# --- state initialisation, run context, divergence ------------------------------------------------


class NaturalParameters(BinaryOptimizer):
    """BayesBiNN-like state: lam = +-10 plus seeded noise; records what it was built with."""

    name = "api-natural"
    rule_hparams = (HParam("step_size", 1e-3, low=0.0, high=1.0),)
    option_hparams = (HParam("lambda_init", 10.0, low=0.0, high=100.0),)
    state_buffers = ("lam",)
    forward = "identity"
    built: ClassVar[list[NaturalParameters]] = []

    def setup(self):
        seed = self.context.seed if self.context is not None else 0
        self.generator = torch.Generator().manual_seed(seed)
        NaturalParameters.built.append(self)

    def init_state(self, name, param):
        coin = torch.randint(0, 2, param.shape, generator=self.generator) * 2 - 1
        noise = 0.01 * torch.randn(param.shape, generator=self.generator)
        return self.options["lambda_init"] * coin + noise

    def init_weight(self, param):
        return torch.zeros_like(param)

    @staticmethod
    def update(w, g, lam, *, step_size):
        before = w >= 0
        lam.sub_(step_size * g)
        w.copy_(torch.tanh(lam))
        return (before != (w >= 0)).sum()

    @contextlib.contextmanager
    def evaluation_weights(self):
        with restoring(self.binary_params):
            for p in self.binary_params:
                p.copy_(sgn0(self.state[p]["lam"]))
            yield None


@pytest.mark.usefixtures("clean_registry")
def test_init_state_and_the_run_context_reach_the_optimizer(tmp_path):
    benchbnn.register_plugin(_plugin(NaturalParameters), name="natural-plugin")
    NaturalParameters.built.clear()
    initial = {}

    class Snapshot:
        @benchbnn.hookimpl
        def benchbnn_run_start(self, run):
            p = run.binary_params[0]
            initial["lam"] = run.optimizer.state[p]["lam"].clone()
            initial["w"] = p.detach().clone()

    result = _train(tiny_config(optimizer="api-natural", epochs=1, seed=7), tmp_path,
                    plugins=[Snapshot()])  # fmt: skip
    assert result.status == "FINISHED", result.error
    (opt,) = NaturalParameters.built
    assert opt.context == RunContext(
        train_size=1437, steps_per_epoch=22, total_steps=22, world_size=1,
        device=torch.device("cpu"), seed=7,
    )  # fmt: skip
    lam = initial["lam"]
    assert lam.dtype == torch.float32
    assert ((lam.abs() - 10.0).abs() < 0.1).all()  # +-10 plus noise
    assert (lam > 0).any() and (lam < 0).any()
    assert (initial["w"] == 0).all()  # init_weight
    # seeded from the run's seed: the same seed, the same initial state
    again = NaturalParameters([torch.nn.Parameter(torch.zeros(lam.shape))], context=opt.context)
    assert torch.equal(next(iter(again.state.values()))["lam"], lam)
    # built outside the engine: no context, default zeros for an ordinary optimizer
    plain = Flip([param([0.5, -0.5])])
    assert plain.context is None
    assert next(iter(plain.state.values()))["m"].tolist() == [0.0, 0.0]


def test_a_wrong_initial_state_is_refused():
    class Wrong(Flip):
        def init_state(self, name, param):
            return torch.zeros(3)

    with pytest.raises(BenchbnnError, match=r"init_state\('m'\) must return a tensor of the "):
        Wrong([param([1.0, 1.0])])


class Explodes(BinaryOptimizer):
    name = "api-explodes"
    rule_hparams = (HParam("blowup", 1.0, low=0.0, high=1e30),)
    divergence_advice = "lower blowup below 1e3"

    @staticmethod
    def update(w, g, *, blowup):
        return flip_(w, w * g * blowup > 0.0)

    def run_closure(self, closure):  # poison the real-valued parameters
        result = closure()
        for p in self.param_groups[1]["params"]:
            p.data.fill_(float("nan"))
        return result

    needs_closure = True


@pytest.mark.usefixtures("clean_registry")
def test_the_divergence_message_gives_the_optimizers_own_advice(tmp_path):
    benchbnn.register_plugin(_plugin(Explodes), name="explodes-plugin")
    result = _train(tiny_config(optimizer="api-explodes", epochs=1), tmp_path)
    assert result.status == "FAILED"
    assert result.error.startswith("training diverged: the loss is nan")
    assert result.error.endswith("; lower blowup below 1e3")
    generic = benchbnn.optimizer_spec(Flip).divergence_hint()
    assert generic == (
        "lower the step sizes or rates of optimizer 'api-flip' (its hyperparameters: threshold, "
        "gamma, lr, beta1, beta2, eps), or schedule them down"
    )
    assert "lower lr" in benchbnn.get_optimizer("bop").divergence_hint()


@pytest.mark.usefixtures("clean_registry")
def test_the_engine_puts_the_layers_in_the_declared_forward_mode(tmp_path):
    modes = {}

    class Modes:
        @benchbnn.hookimpl
        def benchbnn_run_start(self, run):
            modes[run.config.optimizer] = {layer.latent for _, layer in binary_layers(run.model)}

    benchbnn.register_plugin(_plugin(Continuous), name="continuous-plugin")
    for name in ("api-continuous", "adam-latent", "bop"):
        result = _train(tiny_config(optimizer=name, epochs=1), tmp_path / name, plugins=[Modes()])
        assert result.status == "FINISHED", result.error
    assert modes == {"api-continuous": {False}, "adam-latent": {True}, "bop": {False}}
