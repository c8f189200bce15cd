"""Performance profiles, their integral and seed intervals against hand-computed examples."""

from __future__ import annotations

import math

import pytest

from benchbnn.bench.benchmarks import (
    Benchmark,
    WorkloadSpec,
    build_scoreboard,
    parse_benchmark,
    render_csv,
    render_markdown,
    to_data,
)
from benchbnn.bench.profiles import (
    Workload,
    integral,
    median_time,
    profile,
    ratios,
    resample_scores,
    scores,
    taus,
)
from benchbnn.core.errors import BenchbnnError

INF = math.inf

#: 3 optimizers x 4 workloads, one seed each; B never reaches the target on w3.
#:   w1: A 10, B 20, C 40 -> ratios 1, 2, 4
#:   w2: A 30, B 15, C 15 -> 2, 1, 1
#:   w3: A 5,  B inf, C 25 -> 1, inf, 5
#:   w4: A 12, B 12, C 6  -> 2, 2, 1
TIMES = {
    "w1": {"A": 10.0, "B": 20.0, "C": 40.0},
    "w2": {"A": 30.0, "B": 15.0, "C": 15.0},
    "w3": {"A": 5.0, "B": INF, "C": 25.0},
    "w4": {"A": 12.0, "B": 12.0, "C": 6.0},
}
LABELS = ("A", "B", "C")


def workloads(times=TIMES, seeds=1):
    return [
        Workload(name, {k: [v] * seeds for k, v in row.items()}, {k: [90.0] for k in row})
        for name, row in times.items()
    ]


def test_ratios_by_hand():
    assert ratios(workloads(), LABELS) == {
        "A": [1.0, 2.0, 1.0, 2.0],
        "B": [2.0, 1.0, INF, 2.0],
        "C": [4.0, 1.0, 5.0, 1.0],
    }


def test_profiles_by_hand():
    r = ratios(workloads(), LABELS)
    at = [1.0, 1.5, 2.0, 3.9, 4.0]
    assert profile(r["A"], at) == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert profile(r["B"], at) == [0.25, 0.25, 0.75, 0.75, 0.75]
    # C's ratio 4 counts at tau = 4 exactly, its ratio 5 never
    assert profile(r["C"], at) == [0.5, 0.5, 0.5, 0.5, 0.75]


def test_integral_by_hand():
    # each workload with ratio r <= 4 adds (4 - r) / 3 / 4
    got = scores(workloads(), LABELS)
    assert got["A"] == pytest.approx((3 + 2 + 3 + 2) / 12)  # 0.8333
    assert got["B"] == pytest.approx((2 + 3 + 0 + 2) / 12)  # never reached on w3: adds 0
    assert got["C"] == pytest.approx((0 + 3 + 0 + 3) / 12)  # ratio 4 adds (4 - 4) / 3 = 0


def test_integral_is_the_area_under_the_profile():
    r = ratios(workloads(), LABELS)["B"]
    grid = taus(30001)
    step = grid[1] - grid[0]
    area = sum(profile(r, grid[:-1])) * step / 3.0  # left Riemann sum of a right-continuous step
    assert area == pytest.approx(integral(r), abs=1e-3)


def test_a_workload_nobody_reached_helps_no_one():
    times = {"w1": {"A": 1.0, "B": 2.0}, "w2": {"A": INF, "B": INF}}
    got = scores(workloads(times), ("A", "B"))
    assert got == {"A": pytest.approx(0.5), "B": pytest.approx((4 - 2) / 3 / 2)}


def test_median_over_seeds_counts_not_reached_as_slowest():
    assert median_time([10.0, INF, 12.0]) == 12.0
    assert median_time([INF, INF, 12.0]) == INF
    assert median_time([]) == INF


def test_one_seed_gives_no_interval_and_resolves_by_the_point_scores():
    res = resample_scores(workloads(), LABELS, resamples=20)
    assert [s.label for s in res.scores] == ["A", "B", "C"]
    assert all(s.low is None and s.high is None for s in res.scores)
    assert res.resolved[("A", "B")] and res.resolved[("B", "C")]


def test_identical_seeds_give_a_point_interval():
    res = resample_scores(workloads(seeds=3), LABELS, resamples=50)
    a = res.scores[0]
    assert (a.low, a.high) == (pytest.approx(a.score), pytest.approx(a.score))


def test_noisy_seeds_leave_close_scores_unresolved():
    # A and B swap places seed by seed on both workloads: their scores cannot be told apart
    w = [
        Workload("w1", {"A": [10.0, 20.0, 10.0, 20.0], "B": [20.0, 10.0, 20.0, 10.0]}, {}),
        Workload("w2", {"A": [20.0, 10.0, 20.0, 10.0], "B": [10.0, 20.0, 10.0, 20.0]}, {}),
    ]
    res = resample_scores(w, ("A", "B"), resamples=200)
    assert not res.resolved[("A", "B")]
    assert all(s.low is not None and s.low < s.score <= s.high for s in res.scores)
    again = resample_scores(w, ("A", "B"), resamples=200)
    assert again == res  # a fixed generator seed: the same intervals every time


def test_scoreboard_tables():
    bench = Benchmark("demo", "", "fixed", "seconds", (WorkloadSpec("w1"),))
    board = build_scoreboard(bench, workloads(), resamples=20)
    md = render_markdown(board)
    assert "| 1 | A | 0.833 | - | yes |" in md
    assert "| B | 20.0 (2.00x) | 15.0 (1.00x) | not reached | 12.0 (2.00x) |" in md
    assert "| C | 0.50 | 0.50 | 0.50 | 0.50 | 0.75 |" in md
    assert render_csv(board).splitlines()[1].startswith("demo,fixed,A,1,0.833333,")
    data = to_data(board)
    assert data["scores"][1]["ratios"] == [2.0, 1.0, None, 2.0]  # infinite as null


def test_benchmark_files_are_checked():
    text = 'name = "b"\nruleset = "external"\n[[workloads]]\nsuite = "quick"\n'
    with pytest.raises(BenchbnnError, match="needs trials = N"):
        parse_benchmark(text)
    with pytest.raises(BenchbnnError, match="unknown key 'rulset'"):
        parse_benchmark('rulset = "fixed"\n')
    with pytest.raises(BenchbnnError, match="at least one"):
        parse_benchmark('name = "b"\n')
    ok = parse_benchmark(text.replace('"external"', '"fixed"'))
    assert ok.workloads == (WorkloadSpec("quick"),)


def test_seconds_timed_under_load_are_flagged():
    bench = Benchmark("demo", "", "fixed", "seconds", (WorkloadSpec("w1"),))
    board = build_scoreboard(bench, workloads(), resamples=5, loaded=[("w1", 9.98, 2)])
    md = render_markdown(board)
    assert "- Timed under load (1-minute load average above the usable cores): " in md
    assert "w1 (load 10.0 on 2 cores)" in md
    assert to_data(board)["timed_under_load"] == [
        {"workload": "w1", "load_average": 9.98, "cores": 2}
    ]
