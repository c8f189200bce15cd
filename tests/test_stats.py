"""Leaderboard statistics checked against values computed by hand (t quantiles from a printed
table)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchbnn.bench.stats import paired_difference, summarize, t_critical, time_to_target

# Two-sided 95% Student t quantiles as printed in any statistics table.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045}


@pytest.mark.parametrize("df, expected", sorted(T_TABLE.items()))
def test_t_critical_matches_the_printed_table(df, expected):
    assert t_critical(df) == pytest.approx(expected, abs=1e-3)


def test_summary_is_mean_and_sample_std():
    s = summarize([90.0, 91.0, 93.0])
    assert s.n == 3
    assert s.mean == pytest.approx(274.0 / 3)
    # deviations -1.333, -0.333, 1.667: squares sum 4.6667, / (n-1) = 2.3333
    assert s.std == pytest.approx(math.sqrt(7.0 / 3.0))


def test_summary_of_one_value_has_zero_spread_and_of_none_is_none():
    assert summarize([88.5]).std == 0.0 and summarize([88.5]).n == 1
    assert summarize([]) is None
    assert summarize([float("nan")]) is None


def test_paired_difference_interval_including_zero():
    # differences 1, 2, 3: mean 2, sd 1, half-width 4.303 / sqrt(3) = 2.4843
    d = paired_difference({0: 91.0, 1: 92.0, 2: 93.5}, {0: 90.0, 1: 90.0, 2: 90.5})
    assert d.n == 3 and d.seeds == (0, 1, 2)
    assert d.mean == pytest.approx(2.0)
    assert d.low == pytest.approx(2.0 - 2.4843, abs=1e-3)
    assert d.high == pytest.approx(2.0 + 2.4843, abs=1e-3)
    assert not d.excludes_zero


def test_paired_difference_interval_excluding_zero():
    # differences 1.0, 1.2, 0.8, 1.0: mean 1.0, sd sqrt(0.08 / 3) = 0.16330,
    # half-width 3.182 * 0.16330 / 2 = 0.25982
    d = paired_difference(
        {0: 80.0, 1: 81.2, 2: 79.8, 3: 82.0}, {0: 79.0, 1: 80.0, 2: 79.0, 3: 81.0}
    )
    assert d.mean == pytest.approx(1.0)
    assert d.low == pytest.approx(0.7402, abs=1e-3)
    assert d.high == pytest.approx(1.2598, abs=1e-3)
    assert d.excludes_zero


def test_a_worse_entry_excludes_zero_from_below():
    d = paired_difference({0: 70.0, 1: 71.0, 2: 69.0}, {0: 80.0, 1: 80.5, 2: 79.5})
    assert d.high < 0 and d.excludes_zero


def test_only_seeds_on_both_sides_are_paired():
    d = paired_difference(
        {0: 5.0, 1: 7.0, 5: 100.0, 2: float("nan")}, {0: 4.0, 1: 5.0, 2: 1.0, 9: 0.0}
    )
    assert d.seeds == (0, 1)
    assert d.mean == pytest.approx(1.5)
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_one_pair_gives_a_difference_without_interval():
    d = paired_difference({3: 60.0}, {3: 58.5})
    assert d.mean == pytest.approx(1.5) and d.n == 1
    assert d.low is None and d.high is None and not d.excludes_zero


def test_time_to_target_counts_epochs_and_sums_their_seconds():
    history = [
        {"epoch": 1, "test_top1": 40.0, "epoch_time_s": 2.0},
        {"epoch": 2, "test_top1": 79.9, "epoch_time_s": 2.5},
        {"epoch": 3, "test_top1": 80.0, "epoch_time_s": 3.0},
        {"epoch": 4, "test_top1": 95.0, "epoch_time_s": 3.0},
    ]
    reached = time_to_target(history, "test_top1", 80.0)
    assert reached.epoch == 3 and reached.seconds == pytest.approx(7.5)
    assert time_to_target(history, "test_top1", 96.0) is None
    assert time_to_target(list(reversed(history)), "test_top1", 80.0).epoch == 3


values = st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=8)


@settings(max_examples=60, deadline=None)
@given(values, values, st.floats(-50, 50))
def test_paired_difference_properties(a, b, shift):
    n = min(len(a), len(b))
    x = dict(enumerate(a[:n]))
    y = dict(enumerate(b[:n]))
    d = paired_difference(x, y)
    back = paired_difference(y, x)
    assert back.mean == pytest.approx(-d.mean, abs=1e-9)
    assert back.low == pytest.approx(-d.high, abs=1e-9)
    assert d.low <= d.mean + 1e-9 <= d.high + 2e-9
    shifted = paired_difference({k: v + shift for k, v in x.items()}, y)
    assert shifted.mean == pytest.approx(d.mean + shift, abs=1e-6)
    assert shifted.high - shifted.low == pytest.approx(d.high - d.low, abs=1e-6)
