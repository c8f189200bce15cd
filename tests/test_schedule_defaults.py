"""Schedules for annealing methods (MD-tanh, BayesBiNN): periods counted in optimizer steps,
bounds, default schedules an optimizer class declares (part of every run's identity), search
ranges computed from the run, and what tuning does with a tuned hyperparameter's schedule.

Exact numbers throughout; the study at the end trains real tiny trials on digits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from typing import ClassVar

import pytest
from engine_support import fresh_store, tiny_config
from tuning_support import fresh_tracking_uri, write_suite

import benchbnn
from benchbnn.cli import main as cli_main
from benchbnn.core.errors import HyperparameterError, PluginError
from benchbnn.core.specs import HParam, RunContext, ValueRange, validate_hparams
from benchbnn.optim import BinaryOptimizer, adam_hparams, ema_, flip_
from benchbnn.optim.schedules import (
    Exponential,
    ScheduleError,
    Step,
    check_schedule_range,
    parse_schedule,
    validate_schedules,
)
from benchbnn.train.engine import canonical_config, train
from benchbnn.tune import tuning
from benchbnn.tune.search_space import search_space
from benchbnn.tune.tuned import apply_tuned

# --- periods counted in optimizer steps ---------------------------------------------------------


@pytest.mark.parametrize("steps_per_epoch", [1, 7, 391])
def test_a_step_schedule_of_30000_iterations_steps_exactly_at_step_30000(steps_per_epoch):
    schedule = parse_schedule("step:1e-3:0.3:30000it")
    assert schedule == Step(1e-3, 0.3, 30000.0, "steps")
    total = 100_000
    assert schedule.value(29_999, steps_per_epoch, total) == 1e-3
    assert schedule.value(30_000, steps_per_epoch, total) == 1e-3 * 0.3
    assert schedule.value(59_999, steps_per_epoch, total) == 1e-3 * 0.3
    assert schedule.value(60_000, steps_per_epoch, total) == 1e-3 * 0.3**2
    assert not schedule.by_epoch  # its epoch starts depend on the batch count


def test_units_in_both_forms_and_the_unitless_form_still_counts_epochs():
    steps = parse_schedule({"schedule": "exponential", "start": 2, "factor": 0.5, "every": 100,
                            "unit": "steps"})  # fmt: skip
    assert steps == parse_schedule("exponential:2:0.5:100it") == Exponential(2, 0.5, 100, "steps")
    assert steps.to_dict() == {"schedule": "exponential", "start": 2, "factor": 0.5,
                               "every_steps": 100}  # fmt: skip
    assert parse_schedule(steps.to_dict()) == steps
    assert steps.describe() == "exponential:2:0.5:100it"
    epochs = parse_schedule("step:1:0.1:10")
    assert epochs == parse_schedule("step:1:0.1:10ep") == Step(1, 0.1, 10, "epochs")
    # the data of an epoch schedule is what it was before units (same configuration hashes)
    assert epochs.to_dict() == {"schedule": "step", "start": 1, "factor": 0.1, "every_epochs": 10}
    assert epochs.describe() == "step:1:0.1:10"
    assert epochs.value(29, 3, 100) == 1.0 and epochs.value(30, 3, 100) == 0.1


# --- bounds -----------------------------------------------------------------------------------


def test_md_tanh_like_growth_is_capped_exactly_at_max():
    """beta x1.01 every 100 iterations, capped at 1e35 (Ajanthan et al., AISTATS 2021)."""
    beta = parse_schedule("exponential:1:1.01:100it:max=1e35")
    assert beta.upper == 1e35 and beta.describe() == "exponential:1:1.01:100it:max=1e+35"
    assert beta.to_dict()["max"] == 1e35
    assert beta.value(0, 50, 10**9) == 1.0
    assert beta.value(100, 50, 10**9) == 1.01
    uncapped = 1.01 ** (900_000 / 100)  # past 1e35
    assert uncapped > 1e35
    assert beta.value(900_000, 50, 10**9) == 1e35
    assert beta.value(10**8 - 1, 50, 10**9) == 1e35  # 1.01 ** 999999 overflows: still capped


def test_a_decay_is_floored_exactly_at_min_and_declared_values_are_clamped():
    decay = parse_schedule({"schedule": "step", "start": 1.0, "factor": 0.1, "every_epochs": 1,
                            "min": 1e-3})  # fmt: skip
    values = [decay.value(e, 1, 10) for e in range(6)]
    assert values == [1.0, 0.1, 0.1**2, 0.1**3, 1e-3, 1e-3]  # 0.1**3 is just above 1e-3
    assert parse_schedule("cosine:5:0:min=1:max=4").values() == (4.0, 1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("step:1:0.1:10x", r"unknown unit 'x' in EVERY '10x'.*\(10 or 10ep\).*\(30000it\)"),
        ("exponential:1:2:5steps", r"unknown unit 'steps'"),
        ("cosine:1:0:min=2:max=1", r"min 2\.0 is above max 1\.0; swap them"),
        ("cosine:1:0:cap=3", r"unknown option 'cap'; a schedule takes min=V and max=V"),
        ("cosine:1:0:max=x", r"max 'x' is not a number"),
        ("step:1:0.1:max=3:10", r"should look like step:START:FACTOR:EVERY\[ep\|it\]"),
    ],
)
def test_bad_units_and_bounds_get_one_clear_error(text, message):
    with pytest.raises(ScheduleError, match=message) as info:
        parse_schedule(text)
    assert "\n" not in str(info.value)


def test_bad_units_and_bounds_in_data_get_one_clear_error():
    with pytest.raises(ScheduleError, match=r"unknown unit 'weeks'.*\"epochs\" or \"steps\""):
        parse_schedule({"schedule": "step", "start": 1, "factor": 2, "every": 3, "unit": "weeks"})
    with pytest.raises(ScheduleError, match="every_steps contradicts unit = 'epochs'"):
        parse_schedule({"schedule": "step", "start": 1, "factor": 2, "every_steps": 3,
                        "unit": "epochs"})  # fmt: skip
    with pytest.raises(ScheduleError, match="min 3 is above max 1"):
        parse_schedule({"schedule": "constant", "value": 2, "min": 3, "max": 1})


def _first_outside_by_brute_force(schedule, valid, steps_per_epoch, total):
    return next(
        (s for s in range(total) if schedule.value(s, steps_per_epoch, total) not in valid), None
    )


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("exponential:1:2:100it", ValueRange(0.0, 10.0, low_open=True)),  # 2^(s/100) > 10
        ("step:1:0.1:100it:min=1e-3", ValueRange(1e-2, 1.0)),  # falls below 1e-2 at step 300
        ("exponential:1:2:100it:max=10", ValueRange(0.0, 10.0, low_open=True)),  # capped: never
        ("step:1:3:2:max=20", ValueRange(0.0, 10.0)),  # epochs: 1, 3, 9, 20 (capped 27)
    ],
)
def test_bisection_finds_the_first_step_outside_with_units_and_bounds(text, valid):
    schedule = parse_schedule(text)
    steps_per_epoch, epochs = 50, 20
    total = steps_per_epoch * epochs
    expected = _first_outside_by_brute_force(schedule, valid, steps_per_epoch, total)
    assert schedule.first_outside(valid, steps_per_epoch, total) == expected
    hparam = HParam("x", 1.0, low=valid.low, high=valid.high, low_open=valid.low_open)
    if expected is None:
        check_schedule_range(schedule, hparam, "toy", epochs, steps_per_epoch)
        return
    with pytest.raises(HyperparameterError) as info:
        check_schedule_range(schedule, hparam, "toy", epochs, steps_per_epoch)
    epoch, batch = divmod(expected, steps_per_epoch)
    value = schedule.value(expected, steps_per_epoch, total)
    assert str(info.value).endswith(
        f"from step {expected + 1} of {total} (epoch {epoch + 1} of {epochs}, batch {batch + 1} "
        f"of {steps_per_epoch}): x = {value!r}"
    )


def test_the_exact_first_steps_outside():
    open_ten = ValueRange(0.0, 10.0, low_open=True)
    assert parse_schedule("exponential:1:2:100it").first_outside(open_ten, 50, 1000) == 333
    assert (
        parse_schedule("step:1:0.1:100it:min=1e-3").first_outside(ValueRange(1e-2, 1.0), 50, 1000)
        == 300
    )


def test_scaling_keeps_the_shape_of_every_kind():
    assert parse_schedule("cosine:1e-3:1e-5").starting_at(1e-2).to_dict() == {
        "schedule": "cosine", "start": 1e-2, "end": 1e-5 * (1e-2 / 1e-3),
    }  # fmt: skip
    moved = parse_schedule("exponential:1:1.01:100it:max=1e35").starting_at(2.0)
    assert moved == Exponential(2.0, 1.01, 100, "steps", upper=2e35)
    assert parse_schedule("constant:3").starting_at(5).to_dict() == {
        "schedule": "constant", "value": 5.0,
    }  # fmt: skip
    with pytest.raises(ScheduleError, match=r"starts at 0\.0, and only a positive ratio"):
        parse_schedule("polynomial:0:1").starting_at(0.5)


# --- default schedules ------------------------------------------------------------------------


class Annealed(BinaryOptimizer):
    """A flip rule whose Adam lr follows a default cosine schedule (a test plugin)."""

    name = "annealed-flip"
    rule_hparams = (HParam("threshold", 1e-6, low=0.0, high=1.0, search=(1e-8, 1e-3), log=True),)
    real_hparams = adam_hparams(lr=0.002)
    default_schedules: ClassVar[dict[str, str]] = {"lr": "cosine:1e-3:1e-5"}
    state_buffers = ("m",)

    @staticmethod
    def update(w, g, m, *, threshold):
        ema_(m, g, 0.5)
        return flip_(w, w * m > threshold)


def _register(*specs):
    module = types.ModuleType("schedule-defaults-plugin")
    module.benchbnn_optimizers = benchbnn.hookimpl(lambda: list(specs))
    benchbnn.register_plugin(module)


@pytest.fixture
def annealed(clean_registry):
    _register(benchbnn.optimizer_spec(Annealed))
    return benchbnn.get_optimizer("annealed-flip")


COSINE = {"schedule": "cosine", "start": 1e-3, "end": 1e-5}


def test_a_class_declares_default_schedules_that_runs_follow(annealed):
    assert dict(annealed.default_schedules) == {"lr": "cosine:1e-3:1e-5"}
    assert annealed.default_schedule_data() == {"lr": COSINE}
    assert validate_schedules(annealed, {}) == {"lr": parse_schedule(COSINE)}
    given = validate_schedules(annealed, {"lr": "constant:1e-3", "threshold": "constant:1e-5"})
    assert {k: s.describe() for k, s in given.items()} == {
        "lr": "constant:0.001",  # a schedule given replaces the default
        "threshold": "constant:1e-05",
    }
    assert validate_schedules(annealed, {}, defaults=False) == {}


def test_a_default_schedule_is_in_the_identity_as_if_written_out(annealed):
    implicit = tiny_config(optimizer="annealed-flip")
    assert implicit.identity()["schedules"] == {"lr": COSINE}
    written = dataclasses.replace(implicit, schedules={"lr": dict(COSINE)})
    assert written.config_hash() == implicit.config_hash()
    assert canonical_config(implicit).schedules == {"lr": COSINE}
    assert canonical_config(implicit).config_hash() == implicit.config_hash()
    other = dataclasses.replace(implicit, schedules={"lr": "constant:1e-3"})
    assert other.identity()["schedules"] == {"lr": "constant:1e-3"}
    assert other.config_hash() != implicit.config_hash()


def test_a_value_a_default_schedule_would_overwrite_is_refused_with_the_fix(annealed):
    config = tiny_config(optimizer="annealed-flip", hparams={"lr": 1e-3})
    fix = r"--schedule lr=constant:0\.001"
    with pytest.raises(HyperparameterError, match=rf"follows its default schedule.*{fix}"):
        config.config_hash()
    with pytest.raises(HyperparameterError, match=fix):
        validate_schedules(annealed, {}, hparams={"lr": 1e-3})
    held = dataclasses.replace(config, schedules={"lr": {"schedule": "constant", "value": 1e-3}})
    assert held.identity()["schedules"] == {"lr": {"schedule": "constant", "value": 1e-3}}


def test_a_run_follows_its_default_schedule(annealed, tmp_path):
    result = train(
        tiny_config(optimizer="annealed-flip", epochs=1),
        quiet=True,
        tracking_uri=fresh_store(tmp_path / "store"),
        checkpoint_dir=tmp_path / "ck",
    )
    assert result.status == "FINISHED"
    # 1 epoch of 22 steps: the last step is END of the cosine
    assert result.metrics["lr"] == pytest.approx(1e-5, rel=1e-12)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"lr": "cosine:1e-3:20"}, r"default schedule of 'lr'.*outside its valid range"),
        ({"lr": "cosine:1e-3"}, r"default schedule of 'lr'.*should look like cosine:START:END"),
        ({"nope": "constant:1"}, r"default_schedules names 'nope', which is not a schedulable"),
        ({"lr": "exponential:1:2:3weeks"}, r"unknown unit 'weeks'"),
    ],
)
def test_bad_default_schedules_are_refused_when_the_plugin_loads(clean_registry, declared, message):
    spec = dataclasses.replace(benchbnn.optimizer_spec(Annealed), default_schedules=declared)
    with pytest.raises(PluginError, match=message):
        spec.validate()
    _register(spec)
    failures = benchbnn.get_registry().failures
    assert any("annealed-flip" in f.reason for f in failures)


def test_plugins_json_shows_default_schedules(annealed, capsys):
    assert cli_main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    optimizers = [
        o for d in data["distributions"] for p in d["plugins"] for o in p.get("optimizers", [])
    ]
    by_name = {o["name"]: o for o in optimizers}
    assert by_name["annealed-flip"]["default_schedules"] == {"lr": "cosine:0.001:1e-05"}
    assert by_name["bop"]["default_schedules"] == {}
    assert cli_main(["plugins"]) == 0
    assert "default schedules: lr=" in capsys.readouterr().out


# --- configurations made before: unchanged hashes ---------------------------------------------

#: Hashes computed by the code before default schedules, units and bounds existed.
BEFORE = [
    (
        dict(optimizer="cema", hparams={"gamma": 0.1}, arch_options={"hidden": [256, 256]},
             schedules={k: {"schedule": "polynomial", "start": 1e-3, "end": 5e-5, "power": 1.0}
                        for k in ("alpha", "lr")}, epochs=20, batch_size=64),
        "f88fa5e061095059",
    ),
    (
        dict(optimizer="bop2ndorder", hparams={"gamma": 1e-3}, epochs=20, batch_size=64, seed=1,
             schedules={"threshold": {"schedule": "step", "start": 1e-5, "factor": 0.1,
                                      "every_epochs": 10.0}}),
        "926db202a44f6d4f",
    ),
    (dict(optimizer="bop"), "b37794ffd5150f72"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "expected"), BEFORE)
def test_configurations_without_default_schedules_keep_their_hashes(fields, expected):
    config = benchbnn.RunConfig(dataset="digits", arch="bnn-mlp", **fields)
    assert config.config_hash() == expected
    assert canonical_config(config).config_hash() == expected


# --- search ranges computed from the run ------------------------------------------------------

CONTEXT = RunContext(
    train_size=1000, steps_per_epoch=20, total_steps=200, world_size=1, device="cpu", seed=0
)


def _per_image(context):
    """A prior's precision in units of the training set: [1, 100] / N (as BayesBiNN's)."""
    return (1.0 / context.train_size, 100.0 / context.train_size)


def test_a_search_range_is_computed_from_the_run():
    h = HParam("rate", 1e-3, low=0.0, high=1.0, search=_per_image, log=True)
    validate_hparams("optimizer 'toy'", [h])  # a callable passes the load-time checks
    assert h.search_depends_on_run and h.as_dict()["search"] == "depends on the run"
    assert h.resolved_search(CONTEXT) == (1e-3, 0.1)
    with pytest.raises(HyperparameterError, match="depends on the run"):
        h.resolved_search(None)
    empty = HParam("rate", 1e-3, low=0.0, high=1.0, search=lambda c: (0.1, 0.1))
    with pytest.raises(HyperparameterError, match=r"computed as \(0\.1, 0\.1\), is empty"):
        empty.resolved_search(CONTEXT)
    outside = HParam("rate", 1e-3, low=0.0, high=1.0, search=lambda c: (0.5, c.total_steps))
    with pytest.raises(HyperparameterError, match=r"leaves its valid range \[0\.0, 1\.0\]"):
        outside.resolved_search(CONTEXT)
    with pytest.raises(PluginError, match="leaves its valid range"):  # tuples: still at load
        validate_hparams("optimizer 'toy'", [HParam("rate", 0.5, low=0.0, high=1.0,
                                                    search=(0.1, 2.0))])  # fmt: skip


def test_the_search_space_resolves_run_dependent_ranges_from_a_context(clean_registry):
    class PerImage(Annealed):
        """The same rule with a run-dependent threshold range."""

        name = "per-image-flip"
        rule_hparams = (HParam("threshold", 1e-3, low=0.0, high=1.0, search=_per_image, log=True),)
        default_schedules: ClassVar[dict[str, str]] = {}

    _register(benchbnn.optimizer_spec(PerImage))
    spec = benchbnn.get_optimizer("per-image-flip")
    unresolved = search_space(spec).params["threshold"]
    assert unresolved.depends_on_run and unresolved.low is None
    resolved = search_space(spec, context=CONTEXT).params["threshold"]
    assert (resolved.low, resolved.high, resolved.log) == (1e-3, 0.1, True)
    narrowed = search_space(spec, {"threshold": [1e-4, 1e-2]}).params["threshold"]
    assert (narrowed.low, narrowed.high, narrowed.depends_on_run) == (1e-4, 1e-2, False)


def test_the_tuner_builds_the_run_context_from_the_base_configuration():
    config = tiny_config(val_fraction=0.1)  # digits: 1437 training images, 144 held out
    context = tuning.run_context(config, None)
    assert (context.train_size, context.steps_per_epoch) == (1293, 1293 // 64)
    assert (context.total_steps, context.world_size) == (2 * (1293 // 64), 1)


# --- tuning keeps a tuned hyperparameter's schedule -------------------------------------------

KEEP_TUNE = """\
gamma = [1e-6, 1e-4]
sigma = [1e-3, 1e-2]
threshold = 1e-6
lr = false
"""


@pytest.mark.slow
def test_tune_keeps_a_tuned_schedule_and_best_json_shows_it(tmp_path):
    suite = write_suite(tmp_path, epochs=1, tune=KEEP_TUNE)
    text = suite.read_text().replace(
        "lr = 0.01\n",
        'lr = 0.01\n[entries.schedules]\ngamma = "cosine:1e-5:1e-6"\n'
        'sigma = "polynomial:1e-3:0.5"\n',
    )
    suite.write_text(text)
    lines: list[str] = []
    result = tuning.tune(
        str(suite),
        "bop2ndorder",
        trials=2,
        sampler="random",
        pruner="none",
        out=tmp_path / "out",
        tracking_uri=fresh_tracking_uri(tmp_path),
        log=lines.append,
    )
    kept = [line for line in lines if line.startswith("gamma: trials tune the START")]
    held = [line for line in lines if line.startswith("sigma: trials hold it constant")]
    assert len(kept) == 1 and "cosine:1e-05:1e-06" in kept[0]
    # at sigma = 1e-2 (the top of its range) END would be 5, outside (0, 1]
    assert len(held) == 1 and "polynomial:0.001:0.5" in held[0] and "sigma = 5.0" in held[0]
    best = result.best
    data = json.loads((tmp_path / "out" / "tiny-bop2ndorder" / "best.json").read_text())
    gamma = best.params["gamma"]
    assert data["schedules"]["gamma"] == {
        "schedule": "cosine", "start": gamma, "end": 1e-6 * (gamma / 1e-5),
    }  # fmt: skip
    assert "sigma" not in data["schedules"]  # held constant at the tuned value
    assert data["schedules_tuned"] == {"gamma": {"schedule": "cosine", "start": 1e-5, "end": 1e-6}}
    assert set(data["schedules_held_constant"]) == {"sigma"}
    # compare --tuned runs the entry with the schedule the best trial followed
    tuned, _ = apply_tuned(
        benchbnn.bench.suite_file.load_suite(str(suite)).select(["bop2ndorder"]),
        storage=str(tmp_path / "out" / "optuna.journal"),
    )
    entry = tuned.entries[0]
    assert entry.schedules == {"gamma": data["schedules"]["gamma"]}
    assert math.isclose(entry.hparams["sigma"], best.params["sigma"])


def test_a_trial_moves_a_kept_schedule_and_holds_a_defaulted_one_constant():
    cosine = {"schedule": "cosine", "start": 1e-5, "end": 1e-6}
    base = tiny_config(schedules={"gamma": cosine})
    protocol = tuning.Protocol("s", None, base, (0,), {"gamma": cosine}, {}, ("lr",))
    config = protocol.config({"gamma": 1e-4, "lr": 0.05, "sigma": 1e-3}, seed=3)
    assert config.seed == 3 and config.hparams == {"gamma": 1e-4, "lr": 0.05, "sigma": 1e-3}
    assert config.schedules == {
        "gamma": {"schedule": "cosine", "start": 1e-4, "end": 1e-6 * (1e-4 / 1e-5)},
        "lr": {"schedule": "constant", "value": 0.05},  # its default schedule would overwrite it
    }
    assert protocol.identity()["tuned_schedules"] == {"gamma": cosine}
    plain = tuning.Protocol("s", None, tiny_config(), (0,))
    assert "tuned_schedules" not in plain.identity()  # studies made before still match


def test_a_default_schedule_is_kept_when_its_hyperparameter_is_tuned(annealed):
    base = tiny_config(optimizer="annealed-flip")
    kept, held = tuning.kept_schedules(annealed, base, search_space(annealed))
    assert annealed.hparam("lr").search == (1e-4, 1e-1)
    assert (kept, held) == ({"lr": COSINE}, {})
    # a schedule given replaces the default; scaled to lr = 9 its END would leave [0, 10]
    rising = dataclasses.replace(base, schedules={"lr": "polynomial:1e-3:0.5"})
    wide = search_space(annealed, {"lr": [1e-4, 9.0]})
    kept, held = tuning.kept_schedules(annealed, rising, wide)
    assert kept == {} and list(held) == ["lr"]
    assert "schedule polynomial:0.001:0.5 cannot follow its search range" in held["lr"]
    assert "outside its valid range [0.0, 10.0] at its end" in held["lr"]


def test_the_ablation_holds_a_swept_default_scheduled_value_constant(annealed):
    from benchbnn.tune.ablation import _held_constant

    held = _held_constant(annealed, {"lr": 0.01, "threshold": 1e-6})
    assert held == {"lr": {"schedule": "constant", "value": 0.01}}  # threshold has no default
    config = tiny_config(optimizer="annealed-flip", hparams={"lr": 0.01}, schedules=held)
    assert config.identity()["schedules"] == held  # accepted: the value is not overwritten


def test_tune_resolves_a_run_dependent_range_from_the_suite_protocol(clean_registry, tmp_path):
    class PerImage(Annealed):
        """The same rule with a run-dependent threshold range."""

        name = "per-image-flip"
        rule_hparams = (HParam("threshold", 1e-3, low=0.0, high=1.0, search=_per_image, log=True),)
        default_schedules: ClassVar[dict[str, str]] = {}

    _register(benchbnn.optimizer_spec(PerImage))
    suite = write_suite(tmp_path)  # digits, batch 64, 10% held out for validation: 1293 images
    _, _, space, protocol = tuning._inputs(
        str(suite), "per-image-flip", "random", "none", None, None, None, 1, None, None
    )
    threshold = space.params["threshold"]
    assert (threshold.low, threshold.high) == (1 / 1293, 100 / 1293)
    assert protocol.base.val_fraction == 0.1
