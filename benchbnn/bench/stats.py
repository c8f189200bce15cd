"""Statistics for leaderboards: seed summaries, paired differences, time to a target accuracy.

The papers compare optimizers by single runs whose gaps (0.1 to 1 point) are inside the
seed-to-seed noise. A leaderboard therefore reports every cell as mean +- std over seeds and, for
each entry, the difference to the baseline paired by seed: both runs of a pair share the
initialization and data order, so most of the noise cancels. The interval is a Student t
interval on the per-seed differences; it is marked when it excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

#: Confidence level of every interval a leaderboard shows.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof 1; 0.0 when n == 1) of n values."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-seed differences (entry - baseline) with a t interval.

    ``low``/``high`` are None when only one pair exists (no spread to estimate).
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    seeds: tuple[int, ...]

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or entirely below zero."""
        if self.low is None or self.high is None:
            return False
        return self.low > 0 or self.high < 0


def summarize(values: Iterable[float | None]) -> Summary | None:
    """Mean +- sample std of the finite values; None when there are none."""
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not data:
        return None
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return Summary(mean, 0.0, 1)
    variance = math.fsum((x - mean) ** 2 for x in data) / (n - 1)
    return Summary(mean, math.sqrt(variance), n)


def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student t quantile: the half-width multiplier of a ``confidence`` interval."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def paired_difference(
    values: Mapping[int, float | None],
    baseline: Mapping[int, float | None],
    confidence: float = CONFIDENCE,
) -> PairedDifference | None:
    """Difference ``values - baseline`` paired by seed, with a t interval on the mean.

    Only seeds present (and finite) on both sides form pairs; None when no pair exists.
    """
    ours = {s: v for s, v in values.items() if _finite(v)}
    theirs = {s: v for s, v in baseline.items() if _finite(v)}
    seeds = tuple(sorted(s for s in ours if s in theirs))
    if not seeds:
        return None
    diffs = [float(ours[s]) - float(theirs[s]) for s in seeds]
    summary = summarize(diffs)
    assert summary is not None
    if summary.n == 1:
        return PairedDifference(summary.mean, None, None, 1, seeds)
    half = t_critical(summary.n - 1, confidence) * summary.std / math.sqrt(summary.n)
    return PairedDifference(
        summary.mean, summary.mean - half, summary.mean + half, summary.n, seeds
    )


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(float(value))


@dataclass(frozen=True)
class TargetReached:
    """When one run first reached the target: epoch (counted from 1), training seconds summed
    over the epochs up to and including it, and optimizer steps (None when the run's steps per
    epoch are unknown)."""

    epoch: int
    seconds: float | None
    steps: int | None = None


def time_to_target(
    history: Sequence[Mapping[str, float]],
    metric: str,
    target: float,
    time_metric: str = "epoch_time_s",
    steps_per_epoch: int | None = None,
) -> TargetReached | None:
    """The first epoch whose ``metric`` is >= ``target``, with the summed epoch times so far.

    ``history`` is the list of per-epoch metric dicts (key ``epoch`` counts from 1); None when the
    run never reached the target. Seconds are None (not measured) when an epoch up to the one
    that reached the target did not log ``time_metric``: a partial sum is never shown as the
    time. Steps are ``epoch x steps_per_epoch`` (every epoch runs the same number of steps).
    """
    seconds: float | None = 0.0
    for row in sorted(history, key=lambda r: r.get("epoch", 0)):
        elapsed = row.get(time_metric)
        if elapsed is not None and math.isfinite(elapsed) and seconds is not None:
            seconds += float(elapsed)
        else:
            seconds = None
        value = row.get(metric)
        if value is not None and math.isfinite(value) and value >= target:
            epoch = int(row["epoch"])
            steps = epoch * steps_per_epoch if steps_per_epoch else None
            return TargetReached(epoch, seconds, steps)
    return None


def epoch_sums(history: Sequence[Mapping[str, float]], metric: str) -> float | None:
    """The sum of ``metric`` over the epochs of one run, or None (not measured) unless every
    epoch logged a finite value: runs tracked before the metric existed never count as 0."""
    values = [row.get(metric) for row in history]
    if not values or any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    return math.fsum(float(v) for v in values if v is not None)


def epoch_max(history: Sequence[Mapping[str, float]], metric: str) -> float | None:
    """The largest finite value of ``metric`` over the epochs of one run (None: never logged)."""
    values = [float(v) for row in history if (v := row.get(metric)) is not None]
    values = [v for v in values if math.isfinite(v)]
    return max(values) if values else None


def resolved_ranks(
    values: Mapping[str, Mapping[int, float | None]], confidence: float = CONFIDENCE
) -> dict[str, int] | None:
    """Rank groups that the seeds resolve, or None when they resolve none.

    ``values`` maps each entry to its per-seed result (higher is better, e.g. top-1 in %).
    The rule (docs/protocols.md, "Reading a leaderboard"): entry A beats B when the
    ``confidence`` Student t interval of A - B, paired by seed (:func:`paired_difference`, at
    least 2 common seeds), lies entirely above zero. Entries with a result are ordered by their
    mean; a boundary between two consecutive ones in that order separates groups only when every
    entry above it beats every entry below it. Each group's rank is 1 + the number of entries in
    the groups above it (``{"a": 1, "b": 2, "c": 2}``: a beats b and c, b vs c is not
    resolved). So a rank never claims an order that an interval does not show. Entries without
    any result get no rank (left out of the mapping). None when no boundary separates groups:
    then nothing may be printed as a ranking.
    """
    means = {
        label: sum(finite) / len(finite)
        for label, seeds in values.items()
        if (finite := [float(v) for v in seeds.values() if _finite(v)])
    }
    order = sorted(means, key=lambda label: -means[label])  # stable: ties keep input order

    def beats(a: str, b: str) -> bool:
        d = paired_difference(values[a], values[b], confidence)
        return d is not None and d.low is not None and d.low > 0

    ranks: dict[str, int] = {}
    group_start = 0
    for cut in range(1, len(order) + 1):
        if cut < len(order) and not all(beats(a, b) for a in order[:cut] for b in order[cut:]):
            continue
        for label in order[group_start:cut]:
            ranks[label] = group_start + 1
        group_start = cut
    return ranks if len(set(ranks.values())) > 1 else None
