"""Reading tracked runs back from MLflow: the records leaderboards and compare are built from.

A :class:`RunRecord` is what a leaderboard needs of one planned run: its identity (entry label,
optimizer, architecture, seed, configuration hash), its status and the per-epoch history of the
metrics the tables print. :func:`collect_records` finds, for each planned configuration, the run
that stands for it in the store (a finished one first, then a failed one, then the newest
unfinished one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.names import (
    DEFAULT_EXPERIMENT,
    FAILED,
    FINISHED,
    MISSING,
    RUN_METRICS,
    STEP_FLIP_METRIC,
    TAG_CONFIG_HASH,
    TAG_DATA_NOTE,
    TAG_DEVICE,
    TAG_FAILURE,
    TAG_HARDWARE,
    TAG_TORCH_VERSION,
    TAG_WORLD_SIZE,
)
from benchbnn.train.tracking import client_for, resolve_tracking_uri

#: Per-epoch metrics a leaderboard reads from each run.
HISTORY_METRICS = (
    "train_top1",
    "train_top5",
    "val_top1",
    "val_top5",
    "test_top1",
    "test_top5",
    "epoch_time_s",
    "flip_log_ratio",
)


class PlannedEntry(Protocol):
    """What a record needs of a suite entry: its label and optimizer name."""

    label: str
    optimizer: str


@dataclass(frozen=True)
class RunRecord:
    """One planned run as found in the tracking store (status MISSING when it is not there)."""

    label: str
    optimizer: str
    arch: str
    seed: int
    config_hash: str
    status: str = MISSING
    run_id: str | None = None
    failure: str | None = None
    history: tuple[Mapping[str, float], ...] = ()
    run_metrics: Mapping[str, float] = field(default_factory=dict)
    hardware: str = ""
    data_note: str = ""
    step_flips: tuple[tuple[int, float], ...] = ()

    @property
    def finished(self) -> bool:
        return self.status == FINISHED and bool(self.history)

    def final(self, metric: str) -> float | None:
        """The metric's value at the last epoch that logged it."""
        for row in reversed(self.history):
            value = row.get(metric)
            if value is not None:
                return float(value)
        return None

    def outcome(self) -> str:
        """How a run that gave no result ended, in a few words."""
        if self.status == MISSING:
            return "not run"
        if self.status == FAILED:
            return self.failure or "failed"
        epochs = len(self.history)
        return f"{self.status.lower()} after {epochs} epoch{'s' if epochs != 1 else ''}"


def _preference(run: Any) -> tuple[int, int]:
    """Which of several runs with one configuration hash stands for it.

    A finished run first (the earliest, so later duplicates never change a table), then a
    failed one with its reason, then the most recent unfinished one.
    """
    status = run.info.status
    start = int(run.info.start_time or 0)
    if status == FINISHED:
        return (0, start)
    if status == FAILED:
        return (1, start)
    return (2, -start)


def find_runs(client: Any, experiment_id: str, config_hash: str) -> list[Any]:
    """Every run of ``config_hash`` in the experiment, the preferred one first."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_CONFIG_HASH}` = '{config_hash}'",
        max_results=1000,
    )
    return sorted(runs, key=_preference)


def _history(client: Any, run_id: str) -> tuple[dict[str, float], ...]:
    by_epoch: dict[int, dict[str, float]] = {}
    for metric in HISTORY_METRICS:
        for m in client.get_metric_history(run_id, metric):
            if m.step >= 1:
                by_epoch.setdefault(int(m.step), {"epoch": int(m.step)})[metric] = float(m.value)
    return tuple(by_epoch[e] for e in sorted(by_epoch))


def hardware_of(tags: Mapping[str, str]) -> str:
    """The hardware line of one run: compare's hardware tag, torch version and device."""
    parts = [tags[TAG_HARDWARE]] if tags.get(TAG_HARDWARE) else []
    if tags.get(TAG_TORCH_VERSION):
        parts.append(f"torch {tags[TAG_TORCH_VERSION]}")
    if tags.get(TAG_DEVICE):
        world = tags.get(TAG_WORLD_SIZE, "1")
        parts.append(
            f"device {tags[TAG_DEVICE]}" + (f" x {world}" if world not in ("", "1") else "")
        )
    return ", ".join(parts)


def record_of(client: Any, run: Any, entry: PlannedEntry, arch: str, seed: int) -> RunRecord:
    """A :class:`RunRecord` from an MLflow run."""
    tags = run.data.tags
    run_id = run.info.run_id
    steps = tuple(
        (int(m.step), float(m.value))
        for m in sorted(client.get_metric_history(run_id, STEP_FLIP_METRIC), key=lambda m: m.step)
    )
    return RunRecord(
        label=entry.label,
        optimizer=entry.optimizer,
        arch=arch,
        seed=seed,
        config_hash=tags.get(TAG_CONFIG_HASH, ""),
        status=run.info.status,
        run_id=run_id,
        failure=tags.get(TAG_FAILURE),
        history=_history(client, run_id),
        run_metrics={k: float(v) for k, v in run.data.metrics.items() if k in RUN_METRICS},
        hardware=hardware_of(tags),
        data_note=tags.get(TAG_DATA_NOTE, ""),
        step_flips=steps,
    )


def collect_records(
    plan: Sequence[tuple[PlannedEntry, str, RunConfig]],
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> list[RunRecord]:
    """The tracked run standing for each planned configuration (MISSING ones left out)."""
    uri = resolve_tracking_uri(tracking_uri)
    if _missing_sqlite_file(uri):  # nothing tracked there; do not create an empty store
        return []
    client = client_for(uri)
    found = _get_experiment(client, experiment or DEFAULT_EXPERIMENT, uri)
    if found is None:
        return []
    records = []
    for entry, arch, config in plan:
        runs = find_runs(client, found, config.config_hash())
        if runs:
            records.append(record_of(client, runs[0], entry, arch, config.seed))
    return records


def _missing_sqlite_file(uri: str) -> bool:
    if not uri.startswith("sqlite:///"):
        return False
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return path not in ("", ":memory:") and not Path(path).exists()


def _get_experiment(client: Any, name: str, uri: str) -> str | None:
    try:
        found = client.get_experiment_by_name(name)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchbnnError(
            f"cannot read tracking store {uri}: {first}; pass --tracking-uri with the store "
            f"that holds the runs"
        ) from None
    return None if found is None else found.experiment_id
