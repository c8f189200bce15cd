"""Every value a hyperparameter takes during a run lies in its declared range, checked before
anything starts; a hyperparameter that is also the binary layers' straight-through window moves
that window with its schedule, at every step.

The examples go through the real command line (``benchbnn.cli.main`` returns the exit status);
the property tests check the range computation against every step evaluated one by one.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from engine_support import fresh_store, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from tuning_support import write_suite

import benchbnn
from benchbnn.bench.suite_file import load_suite
from benchbnn.cli import main as cli_main
from benchbnn.core.binary import binary_layers
from benchbnn.core.errors import HyperparameterError
from benchbnn.core.specs import HParam, OptimizerSpec, ValueRange
from benchbnn.optim import BinaryOptimizer, adam_hparams
from benchbnn.optim.schedules import (
    Constant,
    Cosine,
    Exponential,
    Polynomial,
    Step,
    check_schedule_range,
    validate_schedules,
)
from benchbnn.train.engine import train
from benchbnn.tune.search_space import search_space

RUN = [
    *("run", "--dataset", "digits", "--arch", "bnn-mlp", "--arch-option", "hidden=32"),
    *("--batch-size", "64"),
]
#: digits' training split in full batches of 64 (no validation split)
STEPS_PER_EPOCH = 22


def _cli(capsys, args):
    """``(exit status, stderr)`` of ``benchbnn ARGS``."""
    code = cli_main(list(args))
    return code, capsys.readouterr().err


def _error(message: str) -> str:
    return f"benchbnn: error: {message}\n"


# --- item 1: every scheduled value, checked before anything starts -----------------------------


def test_a_step_schedule_leaving_the_range_is_refused_naming_epoch_and_value(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    args = [*RUN, "--optimizer", "bop", "--schedule", "gamma=step:0.5:10:1", "--epochs", "3"]
    code, err = _cli(capsys, args)
    assert code == 2
    assert err == _error(
        "schedule step:0.5:10:1 for 'gamma' of optimizer 'bop' is outside its valid range "
        "[0.0, 1.0] at the start of epoch 2 of 3: gamma = 5.0"
    )
    assert list(tmp_path.iterdir()) == []  # no tracking store, no checkpoint: nothing started


def test_the_same_step_schedule_within_the_range_for_its_epochs_is_accepted():
    spec = benchbnn.get_optimizer("bop")
    parsed = validate_schedules(spec, {"gamma": "step:0.5:10:1"}, epochs=1)
    assert parsed["gamma"] == Step(0.5, 10.0, 1.0)
    assert validate_schedules(spec, {"gamma": "step:0.5:10:1"}, epochs=1, steps_per_epoch=22)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--set", "gamma=50"], "'gamma' of optimizer 'bop' = 50.0 is outside its valid range"),
        (
            ["--schedule", "gamma=polynomial:0.5:50"],
            "schedule polynomial:0.5:50 for 'gamma' of optimizer 'bop' is outside its valid "
            "range [0.0, 1.0] at its end: gamma = 50.0",
        ),
    ],
)
def test_values_and_schedule_ends_outside_the_range_are_still_refused(
    option, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, [*RUN, "--optimizer", "bop", *option, "--epochs", "3"])
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_departure_inside_an_epoch_is_refused_at_its_exact_step_before_training(tmp_path, capsys):
    """exponential:0.5:10:1 passes 1 at 0.30103 epochs: with 22 steps an epoch, step 7 (index
    6, 6/22 = 0.27 epochs) is still inside and step 8 (7/22 = 0.318 epochs) is the first out.
    Only the steps per epoch tell, so the engine checks it once the data are loaded."""
    store = fresh_store(tmp_path / "store")
    args = [
        *RUN,
        "--optimizer",
        "bop",
        "--schedule",
        "gamma=exponential:0.5:10:1",
        "--epochs",
        "1",
        "--tracking-uri",
        store,
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--quiet",
    ]
    code, err = _cli(capsys, args)
    value = Exponential(0.5, 10.0, 1.0).value(7, 22, 22)
    assert value == 0.5 * 10 ** (7 / 22) and value > 1.0
    assert Exponential(0.5, 10.0, 1.0).value(6, 22, 22) <= 1.0
    assert code == 2
    assert err == _error(
        "schedule exponential:0.5:10:1 for 'gamma' of optimizer 'bop' is outside its valid "
        f"range [0.0, 1.0] from step 8 of 22 (epoch 1 of 1, batch 8 of 22): gamma = {value!r}"
    )
    from mlflow import MlflowClient

    client = MlflowClient(store)
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())
    assert list((tmp_path / "ck").iterdir()) == []  # checked writable, nothing saved


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--set", "gamma=0"],
            "'gamma' of optimizer 'bop2ndorder' = 0.0 is outside its valid range (0.0, 1.0]",
        ),
        (
            ["--set", "sigma=0"],
            "'sigma' of optimizer 'bop2ndorder' = 0.0 is outside its valid range (0.0, 1.0]",
        ),
        (
            ["--schedule", "gamma=polynomial:1e-3:0"],
            "schedule polynomial:0.001:0 for 'gamma' of optimizer 'bop2ndorder' is outside its "
            "valid range (0.0, 1.0] at its end: gamma = 0.0",
        ),
        (  # 1e-2 x (1e-300)^(1 / 0.01) underflows to exactly 0 at the start of epoch 2
            ["--schedule", "sigma=exponential:1e-2:1e-300:0.01"],
            "schedule exponential:0.01:1e-300:0.01 for 'sigma' of optimizer 'bop2ndorder' is "
            "outside its valid range (0.0, 1.0] at the start of epoch 2 of 3: sigma = 0.0",
        ),
    ],
)
def test_unbiased_bop2ndorder_refuses_a_rate_of_zero(
    option, message, tmp_path, monkeypatch, capsys
):
    """The unbiased rule divides by gamma and sigma: their ranges are (0, 1], 0 excluded."""
    monkeypatch.chdir(tmp_path)
    args = [*RUN, "--optimizer", "bop2ndorder", "--set", "unbiased=true", *option, "--epochs", "3"]
    code, err = _cli(capsys, args)
    assert code == 2 and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    assert benchbnn.get_optimizer("bop2ndorder").hparam("gamma").valid_range == ValueRange(
        0.0, 1.0, low_open=True
    )


def test_a_suite_is_checked_at_load_for_its_own_epochs(tmp_path, capsys):
    path = write_suite(tmp_path, epochs=5)
    text = path.read_text() + '[entries.schedules]\ngamma = "step:1e-3:10:1"\n'
    path.write_text(text)
    line = text.splitlines().index('gamma = "step:1e-3:10:1"') + 1
    value = Step(1e-3, 10.0, 1.0).value(4, 1, 5)
    assert value == 1e-3 * 10.0**4
    code, err = _cli(capsys, ["compare", str(path)])
    assert code == 2
    assert err == _error(
        f"suite {path}, line {line}, key entries[2].schedules.gamma: schedule step:0.001:10:1 "
        f"for 'gamma' of optimizer 'bop' is outside its valid range [0.0, 1.0] at the start of "
        f"epoch 5 of 5: gamma = {value!r}"
    )
    path.write_text(text.replace("epochs = 5", "epochs = 4"))  # 1e-3 ... 1: inside
    assert load_suite(path).entries[1].schedules["gamma"]["start"] == 1e-3


# --- tune and ablate: search ranges and the schedules their runs keep --------------------------


OUT_OF_RANGE_TUNE = """\
gamma = [0.0, 1e-4]
threshold = 1e-6
lr = false
"""


def test_tune_refuses_a_search_range_reaching_outside_the_valid_range(
    tmp_path, monkeypatch, capsys
):
    path = write_suite(tmp_path, tune=OUT_OF_RANGE_TUNE)
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, ["tune", str(path), "--optimizer", "bop2ndorder", "--trials", "1"])
    assert code == 2 and err.startswith(
        "benchbnn: error: hyperparameter 'gamma' of suite 'tiny', table [tune.bop2ndorder], "
        "'gamma' = 0.0 is outside its valid range (0.0, 1.0]"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]  # no study, no store


def test_a_grid_point_rounded_outside_the_valid_range_is_refused():
    """Linear grids are rounded to 6 significant digits: 0.12345678 becomes 0.123457."""
    x = HParam("x", 0.11, low=0.0, high=0.12345678)
    spec = OptimizerSpec("toy", lambda *args, **kwargs: None, (x,))
    with pytest.raises(HyperparameterError) as info:
        search_space(spec, {"x": [0.1, 0.12345678]}, source="table [tune.toy]")
    assert str(info.value) == (
        "table [tune.toy], 'x': the grid reaches 0.123457, outside its valid range "
        "[0.0, 0.12345678]"
    )
    assert search_space(spec, {"x": [0.1, 0.123456]}).grid()["x"][-1] == 0.123456


def test_ablate_refuses_a_search_range_reaching_outside_the_valid_range(
    tmp_path, monkeypatch, capsys
):
    path = write_suite(tmp_path, tune=OUT_OF_RANGE_TUNE)
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, ["ablate", str(path), "--optimizers", "bop2ndorder"])
    assert code == 2 and "'gamma' = 0.0 is outside its valid range (0.0, 1.0]" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def _suite_with_a_kept_schedule(tmp_path):
    """bop's gamma steps up by 10x per epoch from 1e-3: inside [0, 1] for 4 epochs, not 5."""
    path = write_suite(tmp_path, epochs=2)
    path.write_text(path.read_text() + '[entries.schedules]\ngamma = "step:1e-3:10:1"\n')
    return path


def test_ablate_refuses_a_sweep_whose_runs_leave_the_range_before_anything_trains(
    tmp_path, monkeypatch, capsys
):
    path = _suite_with_a_kept_schedule(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["ablate", str(path), "--optimizers", "bop", "--hparams", "threshold", "--epochs", "5"]
    code, err = _cli(capsys, args)
    value = Step(1e-3, 10.0, 1.0).value(4, 1, 5)
    assert code == 2
    assert err == _error(
        "entry 'bop' on bnn-mlp: schedule step:0.001:10:1 for 'gamma' of optimizer 'bop' is "
        f"outside its valid range [0.0, 1.0] at the start of epoch 5 of 5: gamma = {value!r}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_tune_refuses_a_kept_schedule_leaving_the_range_over_its_epochs(
    tmp_path, monkeypatch, capsys
):
    path = write_suite(tmp_path, epochs=2, tune="threshold = [1e-8, 1e-6]\nlr = false\n")
    monkeypatch.chdir(tmp_path)
    args = ["tune", str(path), "--optimizer", "bop", "--trials", "1", "--epochs", "5"]
    path.write_text(path.read_text().replace("[tune.bop2ndorder]", "[tune.bop]"))
    path.write_text(path.read_text() + '[entries.schedules]\ngamma = "step:1e-3:10:1"\n')
    code, err = _cli(capsys, args)
    value = Step(1e-3, 10.0, 1.0).value(4, 1, 5)
    assert code == 2
    assert err == _error(
        "schedule step:0.001:10:1 for 'gamma' of optimizer 'bop' is outside its valid range "
        f"[0.0, 1.0] at the start of epoch 5 of 5: gamma = {value!r}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


# --- item 2: the straight-through window follows its hyperparameter's schedule ------------------


class WindowRecorder:
    """Lifecycle plugin: the binary layers' windows and the optimizer's value, after every step
    and at every epoch end (plus the largest latent weight, which the clamp bounds)."""

    def __init__(self, name: str):
        self.name = name
        self.steps: list[tuple[int, list[float], float]] = []
        self.epochs: list[tuple[int, list[float], float, float]] = []
        self.at_start: list[float] = []

    def _windows(self, run) -> list[float]:
        return [layer.clip for _, layer in binary_layers(run.model)]

    @benchbnn.hookimpl
    def benchbnn_run_start(self, run):
        self.at_start = self._windows(run)

    @benchbnn.hookimpl
    def benchbnn_step_end(self, run, step, logs):
        self.steps.append((step, self._windows(run), run.optimizer.param_groups[0][self.name]))

    @benchbnn.hookimpl
    def benchbnn_epoch_end(self, run, epoch, metrics):
        largest = max(float(p.detach().abs().max()) for p in run.binary_params)
        windows = self._windows(run)
        self.epochs.append((epoch, windows, run.optimizer.param_groups[0][self.name], largest))


def _check_every_step(recorder: WindowRecorder, schedule, total: int) -> None:
    for step, windows, value in recorder.steps:
        expected = schedule.value(step - 1, STEPS_PER_EPOCH, total)
        assert value == expected and windows == [expected] * len(windows), step


def test_a_scheduled_clip_moves_every_binary_layer_window_with_the_clamp(
    tmp_path, capsys, clean_registry
):
    recorder = WindowRecorder("clip")
    benchbnn.register_plugin(recorder, name="window-recorder")
    args = [
        *RUN,
        "--optimizer",
        "adam-latent",
        "--schedule",
        "clip=polynomial:1.0:0.05",
        "--epochs",
        "3",
        "--tracking-uri",
        fresh_store(tmp_path / "store"),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--quiet",
    ]
    assert cli_main(args) == 0
    schedule, total = Polynomial(1.0, 0.05), 3 * STEPS_PER_EPOCH
    ends = [schedule.value(e * STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH, total) for e in (1, 2, 3)]
    assert ends == [0.6930769230769231, 0.37153846153846154, 0.05]  # 0.05 + 0.95 (1 - t)
    assert [e[0] for e in recorder.epochs] == [1, 2, 3]
    assert [e[1] for e in recorder.epochs] == [[v, v] for v in ends]  # both binary layers
    assert [e[2] for e in recorder.epochs] == ends  # the optimizer's clamp
    for _, _, clamp, largest in recorder.epochs:  # the clamp is applied in float32
        assert largest <= torch.tensor(clamp, dtype=torch.float32).item()
    assert recorder.at_start == [1.0, 1.0]  # step 0's value, before the first step
    assert len(recorder.steps) == total
    _check_every_step(recorder, schedule, total)


def test_an_unscheduled_clip_sets_the_window_to_its_value(tmp_path):
    recorder = WindowRecorder("clip")
    config = tiny_config(optimizer="adam-latent", hparams={"clip": 1.25}, epochs=1)
    result = train(
        config,
        tracking_uri=fresh_store(tmp_path / "store"),
        checkpoint_dir=tmp_path / "ck",
        plugins=[recorder],
        quiet=True,
    )
    assert result.status == "FINISHED"
    assert recorder.at_start == [1.25, 1.25]
    assert [e[1:3] for e in recorder.epochs] == [([1.25, 1.25], 1.25)]
    spec = benchbnn.get_optimizer("adam-latent")
    assert spec.ste_window == "clip" and spec.latent_weights


class _Stop(Exception):
    """Raised by a plugin to end a run after its first checkpoint."""


class StopAtEpochTwo:
    @benchbnn.hookimpl
    def benchbnn_epoch_start(self, run, epoch):
        if epoch == 2:
            raise _Stop


def test_the_window_follows_the_schedule_on_resume(tmp_path):
    store, checkpoints = fresh_store(tmp_path / "store"), tmp_path / "ck"
    config = tiny_config(optimizer="adam-latent", schedules={"clip": "cosine:1.5:0.25"}, epochs=3)
    with pytest.raises(_Stop):
        train(
            config,
            tracking_uri=store,
            checkpoint_dir=checkpoints,
            quiet=True,
            plugins=[StopAtEpochTwo()],
        )
    recorder = WindowRecorder("clip")
    result = train(
        config,
        tracking_uri=store,
        checkpoint_dir=checkpoints,
        resume=True,
        quiet=True,
        plugins=[recorder],
    )
    assert result.status == "FINISHED"
    schedule, total = Cosine(1.5, 0.25), 3 * STEPS_PER_EPOCH
    last_step_taken = schedule.value(STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH, total)
    assert recorder.at_start == [last_step_taken, last_step_taken]  # restored with the state
    assert [e[0] for e in recorder.epochs] == [2, 3]
    ends = [schedule.value(e * STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH, total) for e in (2, 3)]
    assert ends[1] == 0.25
    assert [e[1] for e in recorder.epochs] == [[v, v] for v in ends]
    assert recorder.steps[0][0] == STEPS_PER_EPOCH + 1
    _check_every_step(recorder, schedule, total)


class ClampedSGD(BinaryOptimizer):
    """A plugin's latent-weight rule whose window hyperparameter has its own name:
    ``w <- clamp(w - lr * g, -window, window)``."""

    hparams = (
        *adam_hparams(lr=0.05),
        HParam("window", 0.5, low=0.0, low_open=True, high=10.0, help="clamp and STE window"),
    )
    rule_keys = ("lr", "window")
    latent_weights = True

    def __init__(
        self,
        binary_params,
        real_params=(),
        *,
        lr: float = 0.05,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-7,
        window: float = 0.5,
        implementation: str | None = "reference",
    ) -> None:
        adam = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps}
        super().__init__(
            binary_params,
            real_params,
            binary={"lr": lr, "window": window},
            real=adam,
            implementation=implementation,
        )

    @staticmethod
    def update(w, g, *, lr, window):
        was_positive = w >= 0
        w.sub_(g * lr)
        w.clamp_(-window, window)
        return (was_positive != (w >= 0)).sum()


def _window_plugin(**changes) -> types.SimpleNamespace:
    fields = {
        "name": "clamped-sgd",
        "factory": ClampedSGD,
        "hparams": ClampedSGD.hparams,
        "latent_weights": True,
        "ste_window": "window",
    }
    spec = OptimizerSpec(**{**fields, **changes})
    return types.SimpleNamespace(benchbnn_optimizers=benchbnn.hookimpl(lambda: [spec]))


def test_a_plugin_declares_its_window_the_same_way(tmp_path, capsys, clean_registry):
    benchbnn.register_plugin(_window_plugin(), name="clamped-sgd-plugin")
    recorder = WindowRecorder("window")
    benchbnn.register_plugin(recorder, name="window-recorder")
    args = [
        *RUN,
        "--optimizer",
        "clamped-sgd",
        "--schedule",
        "window=step:2:0.5:1",
        "--epochs",
        "2",
        "--tracking-uri",
        fresh_store(tmp_path / "store"),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--quiet",
    ]
    assert cli_main(args) == 0, capsys.readouterr().err
    assert [e[1] for e in recorder.epochs] == [[2.0, 2.0], [1.0, 1.0]]
    assert [e[2] for e in recorder.epochs] == [2.0, 1.0]
    assert all(largest <= window for _, _, window, largest in recorder.epochs)
    _check_every_step(recorder, Step(2.0, 0.5, 1.0), 2 * STEPS_PER_EPOCH)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ste_window": "lr2"}, "ste_window 'lr2' is not one of its real-valued hyperparameters"),
        ({"latent_weights": False}, "ste_window needs latent_weights=True"),
        (
            {
                "hparams": (
                    *adam_hparams(lr=0.05),
                    HParam("window", 0.5, low=0.0, high=10.0),
                )
            },
            "the straight-through window 'window' must be positive; declare its range with "
            "low > 0 (or low=0.0, low_open=True), not [0.0, 10.0]",
        ),
        (
            {"hparams": (*adam_hparams(lr=0.05), HParam("window", 0.5, high=10.0, low_open=True))},
            "'window' has an open end without a bound",
        ),
    ],
)
def test_a_malformed_window_declaration_is_reported_with_the_plugin(
    changes, reason, clean_registry
):
    benchbnn.register_plugin(_window_plugin(**changes), name="broken-window-plugin")
    failures = [f for f in benchbnn.get_registry().failures if f.plugin == "broken-window-plugin"]
    assert len(failures) == 1 and reason in failures[0].reason


def test_a_static_hyperparameter_cannot_be_scheduled():
    window = HParam("window", 0.5, low=0.0, low_open=True, high=10.0, static=True)
    spec = types.SimpleNamespace(name="toy", hparams=(window,))
    assert not window.schedulable
    with pytest.raises(HyperparameterError) as info:
        validate_schedules(spec, {"window": "constant:0.5"})
    assert str(info.value) == (
        "cannot schedule 'window' of optimizer 'toy': it is declared static. Schedulable: none."
    )


# --- ranges --------------------------------------------------------------------------------------


def test_value_ranges_include_closed_ends_and_exclude_open_ends_and_non_finite_values():
    closed, half_open = ValueRange(0.0, 1.0), ValueRange(0.0, 1.0, low_open=True)
    assert 0.0 in closed and 1.0 in closed and 0.0 not in half_open and 1.0 in half_open
    assert 5e-324 in half_open and -5e-324 not in closed and 1.0000000000000002 not in closed
    assert math.inf not in ValueRange() and math.nan not in ValueRange() and 3 in ValueRange()
    assert [str(r) for r in (closed, half_open, ValueRange(high=2.0, high_open=True))] == [
        "[0.0, 1.0]",
        "(0.0, 1.0]",
        "(-inf, 2.0)",
    ]


def test_the_first_step_outside_is_found_without_visiting_every_step():
    """10^12 steps: a binary search evaluates about 40 of them."""
    spe = epochs = 10**6
    assert Step(0.5, 10.0, 1.0).first_outside(ValueRange(0.0, 1.0), spe, spe * epochs) == spe
    schedule, valid = Exponential(1e-6, 10.0, 100_000.0), ValueRange(0.0, 1.0)
    step = schedule.first_outside(valid, spe, spe * epochs)
    assert step is not None and 0 < step < spe * epochs
    assert schedule.value(step, spe, spe * epochs) not in valid
    assert schedule.value(step - 1, spe, spe * epochs) in valid


def test_a_schedule_overflowing_the_float_range_is_outside_instead_of_raising():
    schedule = Step(0.5, 10.0, 0.001)  # 10^1000 after one epoch
    assert schedule.value(10, 10, 20) == math.inf
    assert schedule.first_outside(ValueRange(0.0, 1.0e30), 10, 20) == 1


# --- properties: refused iff some step's value leaves the range ---------------------------------

FINITE = {"allow_nan": False, "allow_infinity": False}
VALUES = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 1e-3, 2.0]), st.floats(-0.5, 2.5, **FINITE))
#: starts mostly inside the ranges below, so that most departures happen after step 0
STARTS = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 1e-3]), st.floats(0.0, 1.0), VALUES)
FACTORS = st.one_of(st.sampled_from([0.1, 0.5, 2.0, 10.0]), st.floats(0.01, 20.0, **FINITE))
EVERY = st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
SCHEDULES = st.one_of(
    st.builds(Constant, VALUES),
    st.builds(Step, STARTS, FACTORS, EVERY),
    st.builds(Exponential, STARTS, FACTORS, EVERY),
    st.builds(Polynomial, STARTS, VALUES, st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0])),
    st.builds(Cosine, STARTS, VALUES),
)
RANGES = st.builds(
    ValueRange,
    low=st.sampled_from([None, 0.0, 0.5]),
    high=st.sampled_from([None, 1.0, 2.0]),
    low_open=st.booleans(),
    high_open=st.booleans(),
)


def _every_step_outside(schedule, valid, steps_per_epoch, total) -> list[int]:
    return [s for s in range(total) if schedule.value(s, steps_per_epoch, total) not in valid]


def _hparam(valid: ValueRange) -> HParam:
    return HParam(
        "x", 0.5, valid.low, valid.high, low_open=valid.low_open, high_open=valid.high_open
    )


#: schedules that start inside [0, 1] and cross a bound during the run (or come close)
INSIDE = st.floats(0.01, 0.99)
CROSSING = st.one_of(
    st.builds(Step, INSIDE, st.floats(1.2, 30.0), EVERY),
    st.builds(Step, INSIDE, st.floats(1e-3, 0.8), EVERY),
    st.builds(Exponential, INSIDE, st.floats(1.2, 30.0), EVERY),
    st.builds(Polynomial, INSIDE, st.floats(-1.0, 2.0), st.floats(0.2, 4.0)),
    st.builds(Cosine, INSIDE, st.floats(-1.0, 2.0)),
)
UNIT_RANGES = st.builds(ValueRange, st.just(0.0), st.just(1.0), st.booleans(), st.booleans())


@settings(max_examples=400, deadline=None)
@given(SCHEDULES, RANGES, st.integers(1, 6), st.integers(1, 7))
def test_a_run_is_refused_iff_one_of_its_steps_leaves_the_range(
    schedule, valid, epochs, steps_per_epoch
):
    _refused_iff_a_step_leaves(schedule, valid, epochs, steps_per_epoch)


@settings(max_examples=400, deadline=None)
@given(CROSSING, UNIT_RANGES, st.integers(1, 8), st.integers(1, 9))
def test_a_crossing_is_refused_at_its_first_step_outside(schedule, valid, epochs, steps_per_epoch):
    _refused_iff_a_step_leaves(schedule, valid, epochs, steps_per_epoch)


def _refused_iff_a_step_leaves(schedule, valid, epochs, steps_per_epoch) -> None:
    """The exact check agrees with evaluating every step, and names the first one outside."""
    total = epochs * steps_per_epoch
    outside = _every_step_outside(schedule, valid, steps_per_epoch, total)
    first = schedule.first_outside(valid, steps_per_epoch, total)
    assert first == (outside[0] if outside else None)
    hparam = _hparam(valid)
    if not outside:
        check_schedule_range(schedule, hparam, "toy", epochs, steps_per_epoch)
        return
    with pytest.raises(HyperparameterError) as info:
        check_schedule_range(schedule, hparam, "toy", epochs, steps_per_epoch)
    value = schedule.value(first, steps_per_epoch, total)
    epoch, batch = divmod(first, steps_per_epoch)
    assert str(info.value).endswith(
        f"from step {first + 1} of {total} (epoch {epoch + 1} of {epochs}, batch {batch + 1} of "
        f"{steps_per_epoch}): x = {value!r}"
    )


@settings(max_examples=300, deadline=None)
@given(SCHEDULES, RANGES, st.integers(1, 6))
def test_what_is_refused_before_the_data_load_is_refused_for_every_batch_count(
    schedule, valid, epochs
):
    """Knowing only the epochs, a refusal holds for any steps per epoch (runs of two steps or
    more: a one-step run never reaches a polynomial's or cosine's END)."""
    hparam = _hparam(valid)
    try:
        check_schedule_range(schedule, hparam, "toy", epochs)
    except HyperparameterError as exc:
        for steps_per_epoch in range(1, 6):
            total = epochs * steps_per_epoch
            if total >= 2 or schedule.by_epoch:
                assert _every_step_outside(schedule, valid, steps_per_epoch, total), str(exc)
        if "at the start of epoch" in str(exc):  # a value every run takes at that epoch
            epoch = int(str(exc).split("at the start of epoch ")[1].split()[0])
            for steps_per_epoch in range(1, 6):
                total = epochs * steps_per_epoch
                value = schedule.value((epoch - 1) * steps_per_epoch, steps_per_epoch, total)
                assert str(exc).endswith(f"x = {value!r}")
