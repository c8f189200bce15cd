"""Reading tracked runs back from MLflow: the records leaderboards and compare are built from.

A :class:`RunRecord` is what a leaderboard needs of one planned run: its identity (entry label,
optimizer, architecture, seed, configuration hash), its status and the per-epoch history of the
metrics the tables print. :func:`collect_records` finds, for each planned configuration, the run
that stands for it in the store (a finished one first, then one that is a result without having
finished: it failed because of itself, or a plugin stopped it on purpose; then the newest other
one: unfinished, or failed because of its environment).

:func:`find_config_runs` finds the runs of a configuration by its hash, and runs tracked before
identity schema 2 by the hash of the configuration as written when what they recorded is what
the configuration resolves to now (:mod:`benchbnn.train.identity`). Given an environment, runs
of other environments are left out unless asked for (then ranked after those of the same
environment). :func:`reap_dead_runs` ends RUNNING runs whose owner process on this host is gone.
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
    FAILURE_ENVIRONMENT,
    FAILURE_STOPPED,
    FINISHED,
    KILLED,
    MISSING,
    RUN_METRICS,
    RUNNING,
    STEP_FLIP_METRIC,
    TAG_CONFIG_HASH,
    TAG_DATA_NOTE,
    TAG_DEVICE,
    TAG_FAILURE,
    TAG_FAILURE_CLASS,
    TAG_HARDWARE,
    TAG_HOST,
    TAG_PID,
    TAG_STEPS_PER_EPOCH,
    TAG_TORCH_VERSION,
    TAG_WORLD_SIZE,
)
from benchbnn.core.urls import redact
from benchbnn.train.identity import (
    environment_of,
    is_result,
    owner_state,
    recorded_as_resolved,
    recorded_failure_class,
    schema_of,
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
    "optimizer_step_s",
    "forward_backward_s",
    "load_average",
)


class PlannedEntry(Protocol):
    """What a record needs of a suite entry: its label and optimizer name.

    Read-only, so that frozen records (``SuiteEntry``) satisfy it.
    """

    @property
    def label(self) -> str: ...

    @property
    def optimizer(self) -> str: ...


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
    #: the run's environment line (benchbnn.environment; "unknown environment" before it was
    #: recorded, "" for a MISSING record) and, when it did not finish, its failure class
    environment: str = ""
    failure_class: str | None = None
    #: optimizer steps per epoch (benchbnn.steps_per_epoch), None where the run did not record
    #: it (runs tracked before 2026-12-01 keep it in their config.json artifact only)
    steps_per_epoch: int | None = None

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
        """How a run that did not finish ended, in a few words (a stopped run: its reason,
        e.g. ``pruned: ...``, and the epochs it trained)."""
        epochs = len(self.history)
        after = f"after {epochs} epoch{'s' if epochs != 1 else ''}"
        if self.status == MISSING:
            return "not run"
        if self.failure_class == FAILURE_STOPPED:  # on purpose, by a plugin: a result
            return f"{self.failure or 'stopped'} ({after})"
        if self.status == FAILED and self.failure_class == FAILURE_ENVIRONMENT:
            return f"failed in its environment, to be run again: {self.failure or 'failed'}"
        if self.status == FAILED:
            return self.failure or "failed"
        return f"{self.status.lower()} {after}"


def _preference(run: Any) -> tuple[int, int]:
    """Which of several runs with one configuration hash stands for it.

    A finished run first (the earliest, so later duplicates never change a table), then one
    that is a result without having finished (failed because of itself, or stopped on purpose
    by a plugin: shown with its reason), then the most recent other one (unfinished, or failed
    because of its environment: not a result).
    """
    status = run.info.status
    start = int(run.info.start_time or 0)
    if status == FINISHED:
        return (0, start)
    if is_result(status, run.data.tags):
        return (1, start)
    return (2, -start)


def find_runs(client: Any, experiment_id: str, config_hash: str) -> list[Any]:
    """Every run tagged with ``config_hash`` in the experiment, the preferred one first."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_CONFIG_HASH}` = '{config_hash}'",
        max_results=1000,
    )
    return sorted(runs, key=_preference)


def find_config_runs(
    client: Any,
    experiment_id: str,
    config: RunConfig,
    environment: str | None = None,
    any_environment: bool = True,
) -> list[Any]:
    """Every run that stands for ``config`` in the experiment, the preferred one first.

    Runs tagged with ``config.config_hash()``, and runs tracked before identity schema 2
    tagged with ``config.legacy_config_hash()`` whose recorded hyperparameters and
    architecture options are those ``config`` resolves to now
    (:func:`~benchbnn.train.identity.recorded_as_resolved`). With ``environment`` (an
    environment line, :meth:`~benchbnn.train.identity.Environment.key`), runs of other
    environments are left out, or with ``any_environment`` ranked after those of
    ``environment`` that are as good. Raises what ``config_hash`` and the store raise.
    """
    runs = find_runs(client, experiment_id, config.config_hash())
    legacy = [
        r
        for r in find_runs(client, experiment_id, config.legacy_config_hash())
        if schema_of(r.data.tags) < 2 and recorded_as_resolved(r.data.params, config)
    ]
    return in_environment(runs + legacy, environment, any_environment)


def in_environment(
    runs: Sequence[Any], environment: str | None, any_environment: bool = True
) -> list[Any]:
    """``runs`` in order of preference, restricted to ``environment`` (None: all) unless
    ``any_environment``, in which case those of ``environment`` come first among equals."""

    def key(run: Any) -> tuple[int, int, int]:
        rank, start = _preference(run)
        elsewhere = environment is not None and environment_of(run.data.tags) != environment
        return (rank, int(elsewhere), start)

    kept = [
        r
        for r in runs
        if environment is None or any_environment or environment_of(r.data.tags) == environment
    ]
    return sorted(kept, key=key)


def end_killed(client: Any, run: Any, reason: str) -> None:
    """End a RUNNING ``run`` KILLED as an environment failure with ``reason``.

    Raises what the store raises.
    """
    from mlflow.entities import RunTag

    tags = [RunTag(TAG_FAILURE, reason[:5000]), RunTag(TAG_FAILURE_CLASS, FAILURE_ENVIRONMENT)]
    client.log_batch(run.info.run_id, tags=tags)
    client.set_terminated(run.info.run_id, status=KILLED)


def reap_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """End KILLED every RUNNING run of the experiment whose owner process on this host is gone.

    The owner is the host, pid and process start time the engine tags every run with
    (:func:`~benchbnn.train.identity.owner_state`). Runs owned by another host, and runs
    tracked before owners were recorded, are left alone: only a heartbeat could tell whether
    they still train. Returns the ids of the runs ended; raises what the store raises.
    """
    running = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = '{RUNNING}'", max_results=10000
    )
    ended = []
    for run in running:
        tags = run.data.tags
        if owner_state(tags) is False:
            why = f"its process {tags.get(TAG_PID)} on {tags.get(TAG_HOST)} is gone"
            end_killed(client, run, why)
            ended.append(run.info.run_id)
    return ended


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
        environment=environment_of(tags),
        failure_class=recorded_failure_class(run.info.status, tags),
        steps_per_epoch=_positive_int(tags.get(TAG_STEPS_PER_EPOCH)),
    )


def _positive_int(text: str | None) -> int | None:
    """``text`` as a positive int, or None (absent or not one)."""
    try:
        value = int(text) if text is not None else 0
    except ValueError:
        return None
    return value if value > 0 else None


def collect_records(
    plan: Sequence[tuple[PlannedEntry, str, RunConfig]],
    tracking_uri: str | None = None,
    experiment: str | None = None,
    environment: str | None = None,
    any_environment: bool = True,
) -> list[RunRecord]:
    """The tracked run standing for each planned configuration (MISSING ones left out).

    Runs are found by :func:`find_config_runs`: with ``environment``, only runs of that
    environment stand for a configuration unless ``any_environment`` (then they are preferred);
    without, the preferred run of any environment does, as ``benchbnn leaderboard`` reads the
    store. Raises BenchbnnError when the store cannot be read.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if _missing_sqlite_file(uri):  # nothing tracked there; do not create an empty store
        return []
    client = client_for(uri)
    found = _get_experiment(client, experiment or DEFAULT_EXPERIMENT, uri)
    if found is None:
        return []
    records = []
    for entry, arch, config in plan:
        runs = find_config_runs(client, found, config, environment, any_environment)
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
            f"cannot read tracking store {redact(uri)}: {first}; pass --tracking-uri with the "
            f"store that holds the runs"
        ) from None
    return None if found is None else found.experiment_id
