"""The paper's claims, tested claim by claim on a leaderboard's runs (benchbnn issue 14).

A suite declares claims (``[[claims]]``, :class:`benchbnn.bench.suites.Claim`): entry A is
better than entry B in one of three ways. Each is measured as A's *advantage*, oriented so that
a positive value is what the paper claims, with a 95% Student t interval paired by seed
(:func:`benchbnn.bench.stats.paired_difference`; both runs of a pair share the initialization
and the data order):

- ``accuracy``: A's final top-1 on the evaluation split minus B's, in points. Source: the
  Bop2ndOrder paper's Tables 1 and 2 (Suarez-Ramirez et al. 2021, sections 5.2-5.3).
- ``convergence``: B's time to the suite's target accuracy minus A's (epochs, or wall
  seconds), measured on the split the suite times on (validation when it holds one out). Only
  seeds on which both runs reached the target form pairs. Source: the paper's abstract
  ("proved to converge faster") and conclusions.
- ``robustness``: over the suite's ``[ablation]`` sweep (the paper's Fig. 3 protocol, one
  hyperparameter moved by powers of ten at a time), the mean absolute change of final top-1
  from the entry's own base point, over the sweep points A and B share (same hyperparameter,
  same factor); B's minus A's, in points. Per seed, each point's run is compared with the base
  run of the same seed; the seeds are the replicates and the sweep points a fixed design (the
  paper's factors), so the interval is paired over seeds like the others. A seed counts only
  when every shared point and both base points finished for A and for B. Source: the
  abstract ("robust to changes of the hyperparameters") and section 6.1.

The verdict (:data:`VERDICTS`): ``supported`` when the interval lies above zero,
``contradicted`` when it lies below, ``not resolved at this budget`` when it contains zero, and
``not measured`` when fewer than two seeds give a pair (no interval: an entry or its sweep was
not run, or the target was not reached). Support is never claimed without an interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from benchbnn.bench.results import Leaderboard, Row
from benchbnn.bench.stats import PairedDifference, paired_difference, time_to_target
from benchbnn.bench.suites import Claim, Suite
from benchbnn.train.runs import RunRecord

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOT_RESOLVED = "not resolved at this budget"
NOT_MEASURED = "not measured"
#: Every verdict, in the order a reader weighs them.
VERDICTS = (SUPPORTED, CONTRADICTED, NOT_RESOLVED, NOT_MEASURED)

#: What each kind's advantage is measured in (convergence: by its measure).
UNITS = {"accuracy": "points", "robustness": "points", "epochs": "epochs", "seconds": "s"}


@dataclass(frozen=True)
class ClaimResult:
    """One claim on one architecture: A's advantage over B with its interval, and the verdict.

    ``difference`` is None when no seed gave a pair; ``reason`` says why the claim is not
    measured (empty otherwise).
    """

    claim: Claim
    arch: str
    difference: PairedDifference | None
    verdict: str
    unit: str
    reason: str = ""

    @property
    def statement(self) -> str:
        """The claim in words: ``bop2ndorder-biased: higher final test top-1 than bop``."""
        return describe(self.claim)


def describe(claim: Claim) -> str:
    """What the claim asserts, in benchbnn's terms."""
    what = {
        "accuracy": "higher final test top-1 than",
        "convergence": f"reaches the target accuracy in fewer {claim.measure} than",
        "robustness": "smaller accuracy change over the ablation sweep than",
    }[claim.kind]
    return f"{claim.a}: {what} {claim.b}"


def verdict(difference: PairedDifference | None) -> str:
    """The verdict of an advantage's interval (see the module docstring)."""
    if difference is None or difference.low is None or difference.high is None:
        return NOT_MEASURED
    if difference.low > 0:
        return SUPPORTED
    if difference.high < 0:
        return CONTRADICTED
    return NOT_RESOLVED


def evaluate(lb: Leaderboard) -> tuple[ClaimResult, ...]:
    """Every claim of the leaderboard's suite on every architecture, in suite order."""
    return tuple(
        evaluate_claim(lb, claim, arch) for claim in lb.suite.claims for arch in lb.suite.archs
    )


def evaluate_claim(lb: Leaderboard, claim: Claim, arch: str) -> ClaimResult:
    """One claim on ``arch`` from the leaderboard's runs."""
    unit = UNITS[claim.measure if claim.kind == "convergence" else claim.kind]
    rows = {row.entry.label: row for row in lb.rows if row.arch == arch}
    absent = [label for label in (claim.a, claim.b) if label not in rows]
    if absent:
        reason = f"entry {absent[0]} is not in this leaderboard"
        return ClaimResult(claim, arch, None, NOT_MEASURED, unit, reason)
    if claim.kind == "convergence" and lb.suite.target_accuracy is None:
        reason = "the suite sets no target_accuracy"
        return ClaimResult(claim, arch, None, NOT_MEASURED, unit, reason)
    plus, minus = _sides(lb.suite, claim, rows)
    difference = paired_difference(plus, minus)
    result = verdict(difference)
    reason = _why_not_measured(claim, difference) if result == NOT_MEASURED else ""
    return ClaimResult(claim, arch, difference, result, unit, reason)


def _sides(
    suite: Suite, claim: Claim, rows: Mapping[str, Row]
) -> tuple[dict[int, float | None], dict[int, float | None]]:
    """Per-seed values (plus, minus) whose difference plus - minus is A's advantage."""
    a, b = rows[claim.a], rows[claim.b]
    if claim.kind == "accuracy":
        return _final(a, suite), _final(b, suite)
    if claim.kind == "convergence":  # B's time minus A's
        return _time_to_target(b, suite, claim.measure), _time_to_target(a, suite, claim.measure)
    # robustness: B's change over the shared sweep points minus A's
    return _sweep_change(suite, rows, claim.b, claim.a), _sweep_change(
        suite, rows, claim.a, claim.b
    )


def _why_not_measured(claim: Claim, difference: PairedDifference | None) -> str:
    pairs = 0 if difference is None else difference.n
    what = {
        "accuracy": "finished runs of both entries",
        "convergence": "runs of both entries that reached the target",
        "robustness": "complete sweeps of both entries",
    }[claim.kind]
    return f"{pairs} seed{'s' if pairs != 1 else ''} with {what}; an interval needs 2"


def _finished(row: Row) -> list[RunRecord]:
    return [r for r in row.records if r.finished]


def _final(row: Row, suite: Suite) -> dict[int, float | None]:
    """Per seed: final top-1 on the evaluation split."""
    return {r.seed: r.final(f"{suite.eval_split}_top1") for r in _finished(row)}


def _time_to_target(row: Row, suite: Suite, measure: str) -> dict[int, float | None]:
    """Per seed that reached the target: epochs (or seconds) to it on the target split."""
    assert suite.target_accuracy is not None
    out: dict[int, float | None] = {}
    for r in _finished(row):
        hit = time_to_target(r.history, f"{suite.target_split}_top1", suite.target_accuracy)
        if hit is not None:
            out[r.seed] = float(hit.epoch) if measure == "epochs" else hit.seconds
    return out


def _sweep_change(
    suite: Suite, rows: Mapping[str, Row], label: str, other: str
) -> dict[int, float | None]:
    """Per seed: the mean over the sweep points ``label`` shares with ``other`` of
    ``|top-1 at the point - top-1 at label's base point|`` (points; the same seed's runs).
    Seeds missing any of those runs are left out."""
    ablation = suite.ablation
    if ablation is None:
        return {}
    mine, theirs = ablation.points_of(label), ablation.points_of(other)
    shared = sorted(set(mine) & set(theirs))
    if not shared or any(mine[k].label not in rows for k in shared):
        return {}
    base = _final(rows[label], suite)
    points = [_final(rows[mine[k].label], suite) for k in shared]
    out: dict[int, float | None] = {}
    for seed, value in base.items():
        values = [p.get(seed) for p in points]
        if value is None or any(v is None for v in values):
            continue
        out[seed] = sum(abs(float(v) - value) for v in values if v is not None) / len(values)
    return out


def results_by_verdict(results: Sequence[ClaimResult]) -> dict[str, int]:
    """How many claims got each verdict (every verdict present, 0 included)."""
    return {v: sum(r.verdict == v for r in results) for v in VERDICTS}
