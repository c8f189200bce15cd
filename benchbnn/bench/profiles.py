"""Performance profiles across workloads, their integral as one score, and seed intervals.

A benchmark runs several suites (the *workloads*) under one ruleset. For each workload ``w`` and
optimizer ``o`` the time to result ``t[o, w]`` is the median over seeds of the time a run took to
first reach the workload's validation target (infinite when it never did, and when ``o`` has no
run on ``w``). Following Dolan & Moré (2002, "Benchmarking optimization software with
performance profiles", Math. Program. 91) as used by AlgoPerf (Dahl et al. 2023, Kasimbeg et
al. 2025):

* the performance ratio ``r[o, w] = t[o, w] / min_o' t[o', w]`` (infinite when nobody reached
  the target on ``w``, so that workload helps no one);
* the profile ``rho_o(tau)``: the fraction of workloads with ``r[o, w] <= tau``, for ``tau``
  from 1 to :data:`TAU_MAX` (4);
* the score: the profile's integral over ``[1, TAU_MAX]`` divided by ``TAU_MAX - 1``, in
  ``[0, 1]``; 1 means fastest on every workload. It is computed exactly: a workload with ratio
  ``r <= TAU_MAX`` adds ``(TAU_MAX - r) / (TAU_MAX - 1) / W``.

Intervals: the seeds of every (optimizer, workload) cell are resampled with replacement
(:data:`RESAMPLES` times, a fixed generator seed so tables are reproducible), the medians,
profiles and scores recomputed; an interval is the 2.5 and 97.5 percentiles. Two optimizers'
scores are *resolved* when the 95% interval of their paired difference (the same resamples)
excludes zero.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The largest performance ratio a profile is drawn to (AlgoPerf's choice).
TAU_MAX = 4.0
#: Seed resamples behind every interval, and the generator seed that makes them reproducible.
RESAMPLES = 1000
RESAMPLE_SEED = 0
#: Two-sided level of the intervals.
LEVEL = 0.95


@dataclass(frozen=True)
class Workload:
    """One workload's results: per optimizer label, every seed's time to result (``inf``: the
    run never reached the target) and final accuracies (percent; for the median column)."""

    name: str
    times: Mapping[str, Sequence[float]]
    accuracies: Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class Score:
    """One optimizer's score with its seed-resampling interval (None: a single resample space,
    i.e. no workload has more than one seed for it)."""

    label: str
    score: float
    low: float | None
    high: float | None


def median_time(times: Sequence[float]) -> float:
    """The median of per-seed times (``inf`` counts as slowest); ``inf`` with no seeds."""
    return statistics.median(times) if times else math.inf


def ratios(workloads: Sequence[Workload], labels: Sequence[str]) -> dict[str, list[float]]:
    """Performance ratios ``r[o, w]`` per label, in workload order (``inf``: never reached, or
    nobody reached the target on that workload)."""
    out: dict[str, list[float]] = {label: [] for label in labels}
    for w in workloads:
        medians = {label: median_time(w.times.get(label, ())) for label in labels}
        best = min(medians.values(), default=math.inf)
        for label in labels:
            out[label].append(_ratio(medians[label], best))
    return out


def _ratio(t: float, best: float) -> float:
    """``t / best``; ``inf`` when ``t`` is; 1 for a time of 0 that is the best."""
    if not math.isfinite(t):
        return math.inf
    if best <= 0:
        return 1.0 if t <= best else math.inf
    return t / best


def profile(ratio_list: Sequence[float], taus: Sequence[float]) -> list[float]:
    """``rho(tau)`` for every tau: the fraction of workloads whose ratio is at most tau."""
    n = len(ratio_list)
    if n == 0:
        raise ValueError("a performance profile needs at least one workload")
    return [sum(r <= tau for r in ratio_list) / n for tau in taus]


def integral(ratio_list: Sequence[float], tau_max: float = TAU_MAX) -> float:
    """The normalised integral of the profile over ``[1, tau_max]``, exactly (see module)."""
    n = len(ratio_list)
    if n == 0:
        raise ValueError("a performance profile needs at least one workload")
    return math.fsum((tau_max - r) / (tau_max - 1.0) for r in ratio_list if r <= tau_max) / n


def scores(workloads: Sequence[Workload], labels: Sequence[str]) -> dict[str, float]:
    """Every label's normalised profile integral."""
    return {label: integral(rs) for label, rs in ratios(workloads, labels).items()}


def _resample(workloads: Sequence[Workload], rng: random.Random) -> list[Workload]:
    def draw(values: Sequence[float]) -> list[float]:
        return [values[rng.randrange(len(values))] for _ in values] if values else []

    return [
        Workload(w.name, {label: draw(t) for label, t in sorted(w.times.items())}, w.accuracies)
        for w in workloads
    ]


def _percentiles(values: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(values)
    tail = (1 - LEVEL) / 2

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return at(tail), at(1 - tail)


@dataclass(frozen=True)
class Resampled:
    """Scores with intervals, and for every pair of labels whether their difference is
    resolved (its 95% interval excludes zero)."""

    scores: tuple[Score, ...]
    resolved: Mapping[tuple[str, str], bool]


def resample_scores(
    workloads: Sequence[Workload],
    labels: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = RESAMPLE_SEED,
) -> Resampled:
    """Scores (sorted best first, ties by label) with seed-resampling intervals and pairwise
    resolution. Raises ValueError without workloads or with fewer than 1 resample."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    point = scores(workloads, labels)
    rng = random.Random(seed)
    draws = [scores(_resample(workloads, rng), labels) for _ in range(resamples)]
    varied = any(len(t) > 1 for w in workloads for t in w.times.values())
    out = []
    for label in labels:
        low, high = _percentiles([d[label] for d in draws]) if varied else (None, None)
        out.append(Score(label, point[label], low, high))
    out.sort(key=lambda s: (-s.score, s.label))
    resolved = {}
    for a in labels:
        for b in labels:
            if a == b:
                continue
            if not varied:
                resolved[(a, b)] = point[a] != point[b]
                continue
            lo, hi = _percentiles([d[a] - d[b] for d in draws])
            resolved[(a, b)] = lo > 0 or hi < 0
    return Resampled(tuple(out), resolved)


def taus(points: int = 61, tau_max: float = TAU_MAX) -> list[float]:
    """Evenly spaced tau values from 1 to ``tau_max`` (for tables and plots)."""
    return [1.0 + (tau_max - 1.0) * i / (points - 1) for i in range(points)]
