"""The leaderboard model: runs summarized per entry and architecture, without any I/O.

:func:`build` turns plain :class:`~benchbnn.train.runs.RunRecord` values into a
:class:`Leaderboard` (seed statistics, paired differences to the baseline, time to target). The
renderers (:mod:`benchbnn.bench.tables`, :mod:`benchbnn.bench.plots`) print it; the report writer
(:mod:`benchbnn.bench.report`) puts it in files.

Layouts follow the paper: one architecture gives Table 1's (entry, training accuracy,
evaluation accuracy); several give Table 2's (entry x architecture, top-1 and top-5). The
evaluation column is named by the split it measures (:attr:`Leaderboard.split_title`): the
held-out validation split when the suite holds one out (``val_fraction`` > 0), the test split
otherwise. The paper calls its figures "validation" accuracy, but the authors' code evaluates
on CIFAR-10's test split (ImageNet's validation set, which benchbnn reads as the test split).

Time to result (benchbnn issue 17): the first epoch whose top-1 on the validation split (the test
split when the suite holds out none) reaches the suite's ``target_accuracy``, with the optimizer
steps (epochs x steps per epoch) and the wall seconds of the epochs up to it. A run that never
reaches it is "not reached", never 0. Cost (issue 19): the optimizer's own step time measured in
process (``optimizer_step_s``) beside the forward and backward passes (``forward_backward_s``),
each per epoch, their ratio to the baseline's, and the largest 1-minute load average recorded
while they were measured; runs tracked before these metrics existed show them as not measured.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchbnn.bench.stats import (
    PairedDifference,
    Summary,
    epoch_max,
    epoch_sums,
    paired_difference,
    summarize,
    time_to_target,
)
from benchbnn.bench.suites import Suite, SuiteEntry
from benchbnn.core.machine import usable_cores
from benchbnn.core.names import MISSING, UNKNOWN_ENVIRONMENT
from benchbnn.train.runs import RunRecord

#: Per-epoch metrics of the in-process timing (issue 19); see benchbnn.core.names.
OPTIMIZER_STEP, FORWARD_BACKWARD, LOAD_AVERAGE = (
    "optimizer_step_s",
    "forward_backward_s",
    "load_average",
)


@dataclass(frozen=True)
class Budget:
    """The tuning budget one entry's setting came from under a ruleset.

    ``trials`` counts the trials of each study (complete, pruned or diverged: Optuna's counted
    trials), ``studies`` names the studies (empty when nothing was tuned), ``chosen`` the study
    whose best trial the entry uses (the median one under ``external``).
    """

    label: str
    trials: tuple[int, ...] = ()
    studies: tuple[str, ...] = ()
    chosen: str | None = None

    def describe(self) -> str:
        """``3 studies x 2 trials (a, b, c); median: b`` or ``no tuning``."""
        if not self.studies:
            return "no tuning"
        trials = sorted(set(self.trials))
        each = str(trials[0]) if len(trials) == 1 else "/".join(map(str, self.trials))
        text = f"{len(self.studies)} studies x {each} trials ({', '.join(self.studies)})"
        return text + (f"; median study: {self.chosen}" if self.chosen else "")

    def key(self) -> tuple[int, tuple[int, ...]]:
        """What must be equal across entries for a ranking: studies and trials per study."""
        return (len(self.studies), tuple(sorted(self.trials)))


@dataclass(frozen=True)
class RulesetInfo:
    """Which ruleset made a leaderboard (docs/rulesets.md), its version and every budget."""

    name: str
    version: int
    budgets: tuple[Budget, ...] = ()
    sampler: str = ""

    @property
    def tunes(self) -> bool:
        """Whether any entry's setting came from tuning studies."""
        return any(b.studies for b in self.budgets)

    def budget(self, label: str) -> Budget | None:
        return next((b for b in self.budgets if b.label == label), None)

    def refusal(self) -> str | None:
        """One line saying why entries are not ranked, or None when every budget is equal."""
        keys = {b.key() for b in self.budgets}
        if len(keys) <= 1:
            return None
        parts = "; ".join(f"{b.label}: {b.describe()}" for b in self.budgets)
        return (
            f"Not ranked: under ruleset {self.name!r} every entry must have the same tuning "
            f"budget, and these differ ({parts}); rerun with one --trials and --studies for all"
        )


#: The suite's hyperparameters as written (docs/rulesets.md): what a leaderboard made without
#: another ruleset states (the version is that of benchbnn.tune.rulesets.RULESETS["fixed"]).
FIXED = RulesetInfo("fixed", 1)


@dataclass(frozen=True)
class Row:
    """One entry on one architecture, summarized over its seeds."""

    entry: SuiteEntry
    arch: str
    records: tuple[RunRecord, ...]
    train_top1: Summary | None
    train_top5: Summary | None
    eval_top1: Summary | None
    eval_top5: Summary | None
    difference: PairedDifference | None
    is_baseline: bool
    epoch_time: Summary | None
    state_bytes: float | None
    target_epochs: Summary | None
    target_seconds: Summary | None
    target_reached: int
    paper: Mapping[str, float]
    #: optimizer steps to the target over the runs that reached it (None: steps unknown)
    target_steps: Summary | None = None
    #: test top-1 at the final epoch, when the suite selects on a validation split
    test_top1: Summary | None = None
    #: seconds per epoch of the optimizer's own step and of forward + backward (None: not
    #: measured), and the optimizer step's ratio to the baseline's on the same architecture
    optimizer_step: Summary | None = None
    forward_backward: Summary | None = None
    step_ratio: float | None = None
    #: the largest load average recorded while the row's epochs were timed, and the cores of
    #: the machine that timed them (from its hardware line; None: not recorded)
    max_load: float | None = None
    cores: int | None = None

    @property
    def under_load(self) -> bool:
        """Whether the timings were taken with a load average above the usable cores."""
        return self.max_load is not None and self.max_load > (self.cores or usable_cores())

    @property
    def finished(self) -> int:
        return sum(r.finished for r in self.records)

    @property
    def unfinished(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.records if not r.finished)


@dataclass(frozen=True)
class Leaderboard:
    """Everything the renderers print, already computed and sorted."""

    suite: Suite
    rows: tuple[Row, ...]
    hardware: tuple[str, ...]
    command: str
    changes: tuple[str, ...] = ()
    data_notes: tuple[str, ...] = ()
    #: (environment line, runs found in it) over the runs found, sorted by environment; empty
    #: when none of them recorded its environment (runs tracked before it was recorded)
    environments: tuple[tuple[str, int], ...] = ()
    #: the ruleset that chose the entries' settings (None: the suite as written, unlabelled)
    ruleset: RulesetInfo | None = None

    @property
    def refusal(self) -> str | None:
        """Why the entries are not ranked (budgets differ), or None."""
        return self.ruleset.refusal() if self.ruleset is not None else None

    @property
    def target_name(self) -> str:
        """The split time to result is measured on."""
        if self.suite.val_fraction > 0:
            return f"validation split ({self.suite.val_fraction:g} of the training split held out)"
        return "test split"

    @property
    def mixed_environments(self) -> bool:
        """Whether the runs were made in more than one numerical environment."""
        return len(self.environments) > 1

    @property
    def layout(self) -> str:
        return "table1" if len(self.suite.archs) == 1 else "table2"

    @property
    def split_title(self) -> str:
        """The evaluation columns' name (:attr:`Suite.eval_split`: the test split)."""
        return "Test"

    @property
    def eval_name(self) -> str:
        """The split the evaluation (accuracy) columns are measured on, in words."""
        return "test split (final epoch)"

    @property
    def records(self) -> tuple[RunRecord, ...]:
        return tuple(r for row in self.rows for r in row.records)

    def row(self, label: str, arch: str) -> Row:
        for row in self.rows:
            if row.entry.label == label and row.arch == arch:
                return row
        raise KeyError((label, arch))


def build(
    suite: Suite,
    plan: Sequence[tuple[SuiteEntry, str, Any]],
    records: Iterable[RunRecord],
    command: str = "",
    changes: Sequence[str] = (),
    steps_per_epoch: Mapping[str, int] | None = None,
    ruleset: RulesetInfo | None = None,
) -> Leaderboard:
    """The leaderboard of ``plan`` (from :meth:`Suite.run_configs`) given the runs found.

    ``suite`` must be the suite as expanded for the plan (:meth:`Suite.expanded`); ``changes``
    says how that differs from the suite file (:func:`benchbnn.bench.tables.protocol_changes`).
    Planned runs without a record count as MISSING, so nothing is silently dropped.
    ``steps_per_epoch`` maps run ids to their optimizer steps per epoch (runs left out: steps
    to the target unknown); ``ruleset`` names the ruleset and the entries' budgets.
    """
    found = {(r.label, r.arch, r.seed): r for r in records}
    metric = f"{suite.eval_split}_top"
    rows = []
    for entry in suite.entries:
        for arch in suite.archs:
            runs = tuple(
                found.get(
                    (entry.label, arch, config.seed),
                    RunRecord(
                        entry.label, entry.optimizer, arch, config.seed, config.config_hash()
                    ),
                )
                for e, a, config in plan
                if e.label == entry.label and a == arch
            )
            rows.append(_row(suite, entry, arch, runs, metric, steps_per_epoch or {}))
    baseline = {row.arch: row for row in rows if row.entry.label == suite.baseline}
    rows = [_with_difference(row, baseline.get(row.arch), metric) for row in rows]
    rows = [_with_step_ratio(row, baseline.get(row.arch)) for row in rows]
    all_runs = [r for row in rows for r in row.records]
    hardware = tuple(sorted({r.hardware for r in all_runs if r.hardware}))
    notes = tuple(sorted({r.data_note for r in all_runs if r.data_note}))
    return Leaderboard(
        suite,
        tuple(rows),
        hardware,
        command,
        tuple(changes),
        notes,
        environments(all_runs),
        ruleset,
    )


def environments(records: Iterable[RunRecord]) -> tuple[tuple[str, int], ...]:
    """(environment line, number of runs) over the runs found (MISSING ones left out).

    Empty when no run recorded its environment, so that leaderboards of runs tracked before
    environments were recorded read as they always did.
    """
    counts = Counter(r.environment for r in records if r.status != MISSING and r.environment)
    if set(counts) <= {UNKNOWN_ENVIRONMENT}:
        return ()
    return tuple(sorted(counts.items()))


def _row(
    suite: Suite,
    entry: SuiteEntry,
    arch: str,
    runs: tuple[RunRecord, ...],
    metric: str,
    steps_per_epoch: Mapping[str, int],
) -> Row:
    done = [r for r in runs if r.finished]
    times = [summarize(row.get("epoch_time_s") for row in r.history) for r in done]
    state = [r.run_metrics.get("state_bytes_per_binary_weight") for r in done]
    state = [s for s in state if s is not None]
    reached = []
    if suite.target_accuracy is not None:
        for r in done:
            spe = steps_per_epoch.get(r.run_id or "")
            hit = time_to_target(
                r.history, f"{suite.target_split}_top1", suite.target_accuracy, steps_per_epoch=spe
            )
            if hit is not None:
                reached.append(hit)
    loads = [epoch_max(r.history, LOAD_AVERAGE) for r in done]
    cores = [c for c in (cores_of(r.hardware) for r in done) if c is not None]
    return Row(
        entry=entry,
        arch=arch,
        records=runs,
        train_top1=summarize(r.final("train_top1") for r in done),
        train_top5=summarize(r.final("train_top5") for r in done),
        eval_top1=summarize(r.final(metric + "1") for r in done),
        eval_top5=summarize(r.final(metric + "5") for r in done),
        difference=None,
        is_baseline=entry.label == suite.baseline,
        epoch_time=summarize(t.mean for t in times if t is not None),
        state_bytes=state[0] if state else None,
        target_epochs=summarize(h.epoch for h in reached),
        target_seconds=_all_or_none([h.seconds for h in reached]),
        target_reached=len(reached),
        paper=dict(suite.paper.get(entry.label, {}).get(arch, {})),
        target_steps=_all_or_none([h.steps for h in reached]),
        test_top1=summarize(r.final("test_top1") for r in done) if metric != "test_top" else None,
        optimizer_step=per_epoch(done, OPTIMIZER_STEP),
        forward_backward=per_epoch(done, FORWARD_BACKWARD),
        max_load=max((v for v in loads if v is not None), default=None),
        cores=min(cores) if cores else None,
    )


def _all_or_none(values: Sequence[float | int | None]) -> Summary | None:
    """Summary of the values when every one was measured; None (not measured) otherwise."""
    if not values or any(v is None for v in values):
        return None
    return summarize(float(v) for v in values if v is not None)


def per_epoch(records: Sequence[RunRecord], metric: str) -> Summary | None:
    """Mean seconds per epoch of ``metric`` over the runs, summarized over runs (seeds).

    Only when every run logged it at every epoch: a run of an older store contributes
    nothing, and a row of such runs is None (not measured), never 0.
    """
    values = []
    for r in records:
        total = epoch_sums(r.history, metric)
        if total is None:
            return None
        values.append(total / len(r.history))
    return summarize(values)


def cores_of(hardware: str) -> int | None:
    """The usable cores a run's hardware line names (``..., 2 cores, ...``), or None."""
    found = re.search(r"(\d+) cores?\b", hardware)
    return int(found.group(1)) if found else None


def _with_step_ratio(row: Row, baseline: Row | None) -> Row:
    if baseline is None or row.optimizer_step is None or baseline.optimizer_step is None:
        return row
    if baseline.optimizer_step.mean <= 0:
        return row
    return replace(row, step_ratio=row.optimizer_step.mean / baseline.optimizer_step.mean)


def _with_difference(row: Row, baseline: Row | None, metric: str) -> Row:
    if baseline is None or row.is_baseline:
        return row
    ours = {r.seed: r.final(metric + "1") for r in row.records if r.finished}
    theirs = {r.seed: r.final(metric + "1") for r in baseline.records if r.finished}
    return replace(row, difference=paired_difference(ours, theirs))
