"""The leaderboard model: runs summarized per entry and architecture, without any I/O.

:func:`build` turns plain :class:`~benchbnn.train.runs.RunRecord` values into a
:class:`Leaderboard` (seed statistics, paired differences to the baseline, time to target). The
renderers (:mod:`benchbnn.bench.tables`, :mod:`benchbnn.bench.plots`) print it; the report writer
(:mod:`benchbnn.bench.report`) puts it in files.

Layouts follow the paper: one architecture gives Table 1's (entry, training accuracy,
validation accuracy); several give Table 2's (entry x architecture, top-1 and top-5).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchbnn.bench.stats import (
    PairedDifference,
    Summary,
    paired_difference,
    summarize,
    time_to_target,
)
from benchbnn.bench.suites import Suite, SuiteEntry
from benchbnn.core.names import MISSING, UNKNOWN_ENVIRONMENT
from benchbnn.train.runs import RunRecord


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

    @property
    def mixed_environments(self) -> bool:
        """Whether the runs were made in more than one numerical environment."""
        return len(self.environments) > 1

    @property
    def layout(self) -> str:
        return "table1" if len(self.suite.archs) == 1 else "table2"

    @property
    def eval_name(self) -> str:
        """What the 'validation' column is measured on."""
        if self.suite.val_fraction > 0:
            return f"validation ({self.suite.val_fraction:g} of the training split held out)"
        return "test split"

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
) -> Leaderboard:
    """The leaderboard of ``plan`` (from :meth:`Suite.run_configs`) given the runs found.

    ``suite`` must be the suite as expanded for the plan (:meth:`Suite.expanded`); ``changes``
    says how that differs from the suite file (:func:`benchbnn.bench.tables.protocol_changes`).
    Planned runs without a record count as MISSING, so nothing is silently dropped.
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
            rows.append(_row(suite, entry, arch, runs, metric))
    baseline = {row.arch: row for row in rows if row.entry.label == suite.baseline}
    rows = [_with_difference(row, baseline.get(row.arch), metric) for row in rows]
    all_runs = [r for row in rows for r in row.records]
    hardware = tuple(sorted({r.hardware for r in all_runs if r.hardware}))
    notes = tuple(sorted({r.data_note for r in all_runs if r.data_note}))
    return Leaderboard(
        suite, tuple(rows), hardware, command, tuple(changes), notes, environments(all_runs)
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
    suite: Suite, entry: SuiteEntry, arch: str, runs: tuple[RunRecord, ...], metric: str
) -> Row:
    done = [r for r in runs if r.finished]
    times = [summarize(row.get("epoch_time_s") for row in r.history) for r in done]
    state = [r.run_metrics.get("state_bytes_per_binary_weight") for r in done]
    state = [s for s in state if s is not None]
    reached = []
    if suite.target_accuracy is not None:
        for r in done:
            hit = time_to_target(r.history, metric + "1", suite.target_accuracy)
            if hit is not None:
                reached.append(hit)
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
        target_seconds=summarize(h.seconds for h in reached),
        target_reached=len(reached),
        paper=dict(suite.paper.get(entry.label, {}).get(arch, {})),
    )


def _with_difference(row: Row, baseline: Row | None, metric: str) -> Row:
    if baseline is None or row.is_baseline:
        return row
    ours = {r.seed: r.final(metric + "1") for r in row.records if r.finished}
    theirs = {r.seed: r.final(metric + "1") for r in baseline.records if r.finished}
    return replace(row, difference=paired_difference(ours, theirs))
