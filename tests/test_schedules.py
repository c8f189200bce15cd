"""Hyperparameter schedules: values per step, the two written forms, validation, application."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import benchbnn
from benchbnn.core.errors import BenchbnnError, HyperparameterError
from benchbnn.optim.schedules import (
    Constant,
    Cosine,
    Exponential,
    Polynomial,
    Schedule,
    Step,
    apply_schedules,
    parse_schedule,
    validate_schedules,
)

# The paper's CIFAR-10 run: 500 epochs of 1000 steps (batch 50), linear schedules.
SPE, TOTAL = 1000, 500_000


def test_polynomial_is_linear_from_start_to_end_over_the_run():
    gamma = parse_schedule({"schedule": "polynomial", "start": 1e-2, "end": 1e-5})
    assert gamma.value(0, SPE, TOTAL) == 1e-2
    assert gamma.value(TOTAL - 1, SPE, TOTAL) == 1e-5
    assert gamma.value((TOTAL - 1) // 2, SPE, TOTAL) == pytest.approx(
        1e-5 + (1e-2 - 1e-5) * (1 - ((TOTAL - 1) // 2) / (TOTAL - 1)), rel=1e-12
    )
    assert gamma.value(TOTAL + 10, SPE, TOTAL) == 1e-5  # past the end it stays at the end


def test_polynomial_may_increase_and_bend_with_its_power():
    tau = parse_schedule("polynomial:1e-7:1e-2")
    assert tau.value(0, 10, 101) == 1e-7 and tau.value(100, 10, 101) == 1e-2
    assert tau.value(50, 10, 101) == pytest.approx((1e-7 + 1e-2) / 2)
    squared = parse_schedule("polynomial:1.0:0.0:2")
    # end + (start - end) * (1 - t)^2 at t = 1/2
    assert squared.value(50, 10, 101) == pytest.approx(0.25)


def test_step_schedule_is_a_staircase_by_whole_epochs():
    gamma = parse_schedule("step:1e-4:0.1:100")  # the Bop paper: x0.1 every 100 epochs
    assert gamma.value(0, SPE, TOTAL) == 1e-4
    assert gamma.value(100 * SPE - 1, SPE, TOTAL) == 1e-4
    assert gamma.value(100 * SPE, SPE, TOTAL) == pytest.approx(1e-5)
    assert gamma.value(250 * SPE, SPE, TOTAL) == pytest.approx(1e-6)


def test_exponential_schedule_decays_continuously_at_the_same_rate():
    sigma = parse_schedule("exponential:1e-3:10:100")  # x10 every 100 epochs (paper Fig. 4)
    assert sigma.value(0, SPE, TOTAL) == 1e-3
    assert sigma.value(50 * SPE, SPE, TOTAL) == pytest.approx(1e-3 * 10**0.5)
    assert sigma.value(100 * SPE, SPE, TOTAL) == pytest.approx(1e-2)
    assert sigma.value(1, SPE, TOTAL) > sigma.value(0, SPE, TOTAL)


def test_cosine_goes_from_start_to_end_through_the_midpoint():
    lr = parse_schedule("cosine:0.01:0.001")
    assert lr.value(0, 10, 101) == 0.01 and lr.value(100, 10, 101) == 0.001
    assert lr.value(50, 10, 101) == pytest.approx(0.0055)


def test_constant_and_plain_numbers():
    assert parse_schedule("constant:0.5").value(123, 10, 1000) == 0.5
    assert parse_schedule(0.25) == Constant(0.25)
    assert parse_schedule({"schedule": "constant", "value": "1e-3"}).value(0, 1, 1) == 1e-3


def test_a_single_step_run_stays_at_the_start():
    assert parse_schedule("polynomial:1:2").value(0, 1, 1) == 1.0


def test_data_and_string_forms_are_the_same_schedule():
    data = {"schedule": "polynomial", "start": 1e-5, "end": 1e-8, "power": 1.0}
    schedule = parse_schedule(data)
    assert schedule == parse_schedule("polynomial:1e-5:1e-8") == Polynomial(1e-5, 1e-8)
    assert schedule.to_dict() == data
    assert schedule.describe() == "polynomial:1e-05:1e-08" == str(schedule)
    assert parse_schedule("step:1e-4:0.1:100").to_dict() == {
        "schedule": "step",
        "start": 1e-4,
        "factor": 0.1,
        "every_epochs": 100.0,
    }
    assert parse_schedule(" Cosine : 1 : 2 ") == Cosine(1.0, 2.0)
    assert parse_schedule(schedule) is schedule


finite = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: x != 0.0)
positive = st.floats(1e-9, 1e3)
schedules = st.one_of(
    st.builds(Constant, finite),
    st.builds(Step, finite, positive, positive),
    st.builds(Exponential, finite, positive, positive),
    st.builds(Polynomial, finite, finite, positive),
    st.builds(Cosine, finite, finite),
)


@settings(max_examples=60, deadline=None)
@given(schedules)
def test_every_schedule_round_trips_through_both_forms(schedule: Schedule):
    assert parse_schedule(schedule.describe()) == schedule
    assert parse_schedule(schedule.to_dict()) == schedule


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["polynomial", "cosine"]),
    start=finite,
    end=finite,
    power=st.floats(0.1, 5.0),
    total=st.integers(2, 10_000),
    data=st.data(),
)
def test_polynomial_and_cosine_move_monotonically_between_start_and_end(
    kind, start, end, power, total, data
):
    schedule = Polynomial(start, end, power) if kind == "polynomial" else Cosine(start, end)
    a, b = sorted(data.draw(st.lists(st.integers(0, total - 1), min_size=2, max_size=2)))
    va, vb = schedule.value(a, 7, total), schedule.value(b, 7, total)
    low, high = min(start, end), max(start, end)
    slack = 1e-12 * (abs(start) + abs(end))
    assert low - slack <= va <= high + slack
    assert (vb - va) * (end - start) >= -slack * abs(end - start)
    assert schedule.value(0, 7, total) == start and schedule.value(total - 1, 7, total) == end


@pytest.mark.parametrize(
    "bad",
    [
        "poly:1:2",
        "polynomial:1",
        "polynomial:a:b",
        "cosine:1:2:3",
        "step:1:0.1",
        "step:1:0:5",
        "step:1:0.1:0",
        "exponential:1:-2:5",
        "polynomial:1:2:0",
        "constant:inf",
        "",
        ":",
        {"start": 1.0},
        {"schedule": "linear", "start": 1.0, "end": 2.0},
        {"schedule": "cosine", "start": 1.0},
        {"schedule": "polynomial", "start": 1, "end": 2, "powr": 1},
        {"schedule": "constant", "value": "x"},
        {"schedule": "cosine", "start": True, "end": 1.0},
        [1.0, 2.0],
        None,
    ],
)
def test_malformed_schedules_say_what_is_accepted(bad):
    with pytest.raises(BenchbnnError) as info:
        parse_schedule(bad)
    message = str(info.value)
    assert "\n" not in message
    assert "polynomial" in message or "must be" in message or "needs" in message


def test_unknown_kind_suggests_the_close_one():
    with pytest.raises(BenchbnnError, match=r"Did you mean 'cosine'"):
        parse_schedule("cosin:1:2")


def test_evaluation_position_is_checked():
    with pytest.raises(BenchbnnError, match="steps_per_epoch >= 1"):
        parse_schedule("step:1:0.1:1").value(0, 0, 10)


# --- optimizers --------------------------------------------------------------------------------


def test_validate_schedules_parses_names_of_the_optimizer():
    spec = benchbnn.get_optimizer("bop2ndorder")
    parsed = validate_schedules(
        spec,
        {
            "gamma": "polynomial:1e-2:1e-5",
            "sigma": {"schedule": "polynomial", "start": 1e-7, "end": 1e-2},
            "threshold": "polynomial:1e-7:1e-2",
            "lr": "polynomial:1e-2:1e-3",
        },
    )
    assert parsed["sigma"] == Polynomial(1e-7, 1e-2)
    assert set(parsed) == {"gamma", "sigma", "threshold", "lr"}


@pytest.mark.parametrize(
    ("name", "schedules", "message"),
    [
        ("bop2ndorder", {"gama": "constant:1e-3"}, r"no such hyperparameter.*Did you mean 'gamma'"),
        (
            "bop",
            {"sigma": "constant:1e-3"},
            r"'bop' has no such hyperparameter.*Schedulable: beta1",
        ),
        (
            "bop2ndorder",
            {"unbiased": "constant:1"},
            r"cannot schedule 'unbiased'.*not a real number",
        ),
        ("pbop", {"seed": "constant:1"}, r"cannot schedule 'seed'"),
        (
            "bop",
            {"gamma": "polynomial:1e-4:2.0"},
            r"polynomial:0.0001:2 for 'gamma'.*outside its valid range",
        ),
        ("adam-latent", {"lr": "cosine:-1:0"}, r"'lr'.*outside its valid range"),
        ("bop", {"gamma": "polynomial:1e-4"}, r"should look like polynomial:START:END\[:POWER\]"),
    ],
)
def test_validate_schedules_errors(name, schedules, message):
    with pytest.raises(BenchbnnError, match=message):
        validate_schedules(benchbnn.get_optimizer(name), schedules)


def test_apply_schedules_writes_every_group_that_has_the_name():
    spec = benchbnn.get_optimizer("bop")
    w, r = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2))
    opt = spec.build([w], [r])
    schedules = validate_schedules(spec, {"gamma": "polynomial:1e-3:1e-5", "lr": "step:0.01:0.5:1"})
    values = apply_schedules(opt, schedules, step=10, steps_per_epoch=10, total_steps=11)
    assert values == {"gamma": 1e-5, "lr": 0.005}
    binary, real = opt.param_groups
    assert binary["gamma"] == 1e-5 and "gamma" not in real
    assert binary["lr"] == real["lr"] == 0.005


def test_a_scheduled_threshold_changes_what_flips():
    spec = benchbnn.get_optimizer("bop")
    w = torch.nn.Parameter(torch.ones(4))
    opt = spec.build([w], gamma=1.0)
    schedules = validate_schedules(spec, {"threshold": "polynomial:10:0"})
    flips = []
    for step in range(3):
        apply_schedules(opt, schedules, step, steps_per_epoch=1, total_steps=3)
        w.grad = torch.full((4,), 2.0) * w.detach()  # always agrees with the weight: |m| = 2
        opt.step()
        flips.append(int(opt.flip_count))
    assert flips == [0, 0, 4]  # thresholds 10 and 5 are above |m| = 2; the last step's is 0


def test_apply_schedules_refuses_a_name_no_group_has():
    opt = benchbnn.get_optimizer("bop").build([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(HyperparameterError, match="no param group"):
        apply_schedules(opt, {"sigma": Constant(1e-3)}, 0, 1, 1)


def test_exponential_and_step_agree_at_period_boundaries():
    for periods in range(4):
        s = periods * 3 * 7
        assert Exponential(2.0, 0.5, 3).value(s, 7, 100) == pytest.approx(
            Step(2.0, 0.5, 3).value(s, 7, 100)
        )
    assert math.isclose(Step(1.0, 10.0, 0.5).value(7, 2, 100), 1e7)


# --- periods in optimizer steps and bounds (annealing methods) ---------------------------------

units = st.sampled_from(["epochs", "steps"])
bounded = st.one_of(
    st.builds(Step, finite, positive, positive, units),
    st.builds(Exponential, finite, positive, positive, units),
    st.builds(Polynomial, finite, finite, positive),
    st.builds(Cosine, finite, finite),
).flatmap(lambda s: st.builds(_with_bounds, st.just(s), st.floats(-1e6, 1e6), st.floats(0, 1e6)))


def _with_bounds(schedule: Schedule, low: float, width: float) -> Schedule:
    return dataclasses.replace(schedule, lower=low, upper=low + width)


@settings(max_examples=80, deadline=None)
@given(bounded)
def test_units_and_bounds_round_trip_through_both_forms(schedule: Schedule):
    assert parse_schedule(schedule.describe()) == schedule
    assert parse_schedule(schedule.to_dict()) == schedule


@settings(max_examples=80, deadline=None)
@given(bounded, st.integers(0, 10_000), st.integers(1, 50))
def test_every_value_lies_within_the_bounds(schedule: Schedule, step: int, steps_per_epoch: int):
    value = schedule.value(step, steps_per_epoch, 10_000)
    assert schedule.lower is not None and schedule.upper is not None
    assert schedule.lower <= value <= schedule.upper


def test_a_step_count_ignores_the_batch_count_and_an_epoch_count_follows_it():
    in_steps, in_epochs = Step(1.0, 0.5, 10, "steps"), Step(1.0, 0.5, 10, "epochs")
    assert [in_steps.value(s, spe, 10**6) for s, spe in ((9, 1), (10, 1), (10, 7))] == [
        1.0, 0.5, 0.5,
    ]  # fmt: skip
    assert [in_epochs.value(s, 7, 10**6) for s in (69, 70)] == [1.0, 0.5]
