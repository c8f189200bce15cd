"""Tuned entries: a suite whose entries take the best trial of their Optuna studies.

``benchbnn compare --tuned`` and ``benchbnn leaderboard --tuned`` resolve the suite here, above
the benchmark layer: compare and the leaderboard then receive a suite whose hyperparameters are
already the tuned ones, and the :class:`TunedEntry` records as plain data for their reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchbnn.bench.suites import Suite
from benchbnn.core.formatting import settings
from benchbnn.tune.tuning import best_trial_hparams


@dataclass(frozen=True)
class TunedEntry:
    """Which trial's hyperparameters an entry now uses."""

    label: str
    optimizer: str
    hparams: Mapping[str, Any]
    study_name: str
    trial_number: int
    value: float | None

    def describe(self) -> str:
        value = "-" if self.value is None else f"{self.value:.4g}"
        chosen = settings(dict(self.hparams), empty="none")
        return (
            f"entry {self.label}: tuned hyperparameters from study {self.study_name!r} trial "
            f"#{self.trial_number} (value {value}): {chosen}"
        )


def apply_tuned(
    suite: Suite, storage: str | None = None, study: str | None = None
) -> tuple[Suite, list[TunedEntry]]:
    """The suite with every entry's hyperparameters replaced by its study's best trial.

    A study of the entry itself wins over one of its optimizer
    (:func:`benchbnn.tune.tuning.best_trial_hparams`); an entry that was never tuned is an error
    that says which ``benchbnn tune`` command to run. Select the entries first
    (:meth:`Suite.select`) to tune only some.
    """
    used = []
    for entry in suite.entries:
        found = best_trial_hparams(
            suite, entry.optimizer, storage=storage, study=study, entry=entry.label
        )
        suite = suite.with_entry_hparams(entry.label, found.hparams)
        suite = with_entry_schedules(suite, entry.label, _trial_schedules(found))
        used.append(
            TunedEntry(
                entry.label,
                entry.optimizer,
                dict(found.hparams),
                str(found.study_name),
                int(found.trial_number),
                None if found.value is None else float(found.value),
            )
        )
    return suite, used


def _trial_schedules(found: Any) -> dict[str, Any]:
    """The schedules the best trial followed for the hyperparameters it set (tuned or pinned):
    a tuned hyperparameter's schedule moved to the tuned START, or a constant. Studies made
    before tuning kept schedules recorded none for them (their values stay constant)."""
    return {k: v for k, v in dict(found.schedules).items() if k in found.hparams}


def with_entry_schedules(suite: Suite, label: str, schedules: Mapping[str, Any]) -> Suite:
    """A copy whose entry ``label`` follows ``schedules`` (name -> schedule data) over its own
    schedules of the same names."""
    if not schedules:
        return suite
    entries = tuple(
        replace(e, schedules={**e.schedules, **schedules}) if e.label == label else e
        for e in suite.entries
    )
    return replace(suite, entries=entries)


def tuned_suite(
    suite: Suite,
    optimizers: Sequence[str] | str | None = None,
    storage: str | None = None,
    study: str | None = None,
) -> tuple[Suite, list[TunedEntry]]:
    """The entries that take part (``optimizers``, as in :meth:`Suite.select`), tuned."""
    return apply_tuned(suite.select(optimizers), storage=storage, study=study)
