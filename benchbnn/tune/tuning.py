"""Optuna studies over an optimizer's hyperparameters, run on a suite's protocol.

``benchbnn tune SUITE --optimizer O`` (or :func:`tune`) searches the hyperparameters that O's
plugin declares searchable (``HParam.search``), narrowed by the suite's ``[tune.O]`` table. Each
trial trains the suite's protocol through :func:`benchbnn.train.engine.train` with a validation
split held out of the training data, reports validation top-1 after every epoch (so hopeless trials
are pruned) and returns the final validation top-1, averaged over ``seeds`` seeds. The test split
never takes part in the selection.

Schedules: a tuned hyperparameter that follows a schedule (the entry's, or its optimizer's
default schedule) keeps it: the sampled value becomes the schedule's START and the schedule's
other values scale by the same ratio (a polynomial's or cosine's END, the bounds ``min``/``max``;
a step or exponential schedule keeps its FACTOR and period, so it decays from the tuned START as
before; a constant takes the value). When that is impossible (a schedule starting at 0, or a
scaled schedule that would leave the valid range somewhere in the search range), trials hold the
hyperparameter constant instead, and the study says so in one line and records it in
``best.json`` (``schedules_held_constant``). ``best.json`` shows every schedule the best trial
followed, default schedules included.

Budget: ``trials`` counts trials that ended (complete, pruned, or failed because training
diverged). Running the same command again continues the same study up to the new total. Trials
lost to a worker that died (a heartbeat that stopped on a database storage, or a dead process on
this machine) become FAIL, are re-queued with the same parameters, and do not count. Several
workers can share one study: each trial runs once and the study ends with exactly the requested
number of counted trials.

Storage: a journal file (``<out>/optuna.journal``, default ``tuning/``) that several processes on
one machine can share; any Optuna storage URL; PostgreSQL (``postgresql://...``) for workers on
several machines, with heartbeats. ``optuna-dashboard <storage>`` watches the same storage.

MLflow: one parent run per study, one nested run per trial and seed (tags ``benchbnn.study`` and
``benchbnn.trial``); the trial's user attributes hold its MLflow run ids. Divergence: a run the
engine reports as FAILED marks the trial FAIL (user attribute ``benchbnn.failure`` holds the
reason) and the study goes on; Optuna's samplers ignore failed trials. Pruning: the trial's run
is stopped on purpose (:class:`TrialPruned`, a :class:`~benchbnn.core.errors.RunStopped`): it
ends KILLED with the failure class ``stopped`` and the reason ``pruned: validation top-1 ...``,
the trial is PRUNED, and its configuration's claim completes: a result, never redone by
``tune`` or ``compare``.

The pieces live in :mod:`benchbnn.search_space` (what is searched) and :mod:`benchbnn.studies`
(samplers, pruners, storages, workers and the budget); this module ties them to suites, the
engine and MLflow.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from benchbnn.bench.compare import check_data
from benchbnn.bench.suite_file import load_suite
from benchbnn.core import limits
from benchbnn.core.config import RunConfig, resolved_schedules
from benchbnn.core.errors import BenchbnnError, RunFailed, RunStopped
from benchbnn.core.names import (
    DEFAULT_EXPERIMENT,
    DEFAULT_SUITE,
    FAILURE_ENVIRONMENT,
    FAILURE_STOPPED,
    KILLED,
    RESULT_FAILURE_CLASSES,
    TAG_BEST_PREFIX,
    TAG_ENTRY,
    TAG_FAILURE,
    TAG_FAILURE_CLASS,
    TAG_ROLE,
    TAG_STUDY,
    TAG_STUDY_UID,
    TAG_SUITE,
    TAG_TRIAL,
)
from benchbnn.core.paths import check_writable_dir
from benchbnn.core.plugins import get_optimizer, get_suite, hookimpl
from benchbnn.core.specs import OptimizerSpec, RunContext
from benchbnn.data.pipeline import build_loaders
from benchbnn.optim.schedules import check_schedule_range, effective_schedules, parse_schedule
from benchbnn.train import tracking
from benchbnn.train.engine import canonical_config, train
from benchbnn.train.exclusive import stored_result
from benchbnn.train.identity import current_environment, owner_tags, recorded_failure_class
from benchbnn.train.ledger import claim_key, open_ledger, this_holder
from benchbnn.train.runs import reap_dead_runs
from benchbnn.train.storage import check_queue_storage
from benchbnn.tune.search_space import SearchParam, SearchSpace, powers_of_ten, search_space
from benchbnn.tune.studies import (
    ATTR_FAILURE,
    ATTR_PARENT,
    ATTR_SPACE,
    ATTR_SURPLUS,
    ATTR_UID,
    ATTR_WORKER,
    DEFAULT_HEARTBEAT_S,
    DEFAULT_TUNE_DIR,
    JOURNAL_NAME,
    PRUNERS,
    SAMPLERS,
    STORAGE_ENV,
    TPE_STARTUP_TRIALS,
    Counts,
    check_storage,
    check_study_matches,
    check_study_name,
    count_trials,
    default_storage,
    fail_lost_trials,
    is_surplus,
    jsonable,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    quiet_optuna,
    redact,
    run_study,
    study_name,
    worker_token,
)

__all__ = [  # the tuning API; the pieces come from benchbnn.search_space and benchbnn.studies
    "DEFAULT_TUNE_DIR",
    "JOURNAL_NAME",
    "PRUNERS",
    "SAMPLERS",
    "STORAGE_ENV",
    "Counts",
    "Protocol",
    "SearchParam",
    "SearchSpace",
    "TrialPruned",
    "TuneResult",
    "TunedParams",
    "best_trial_hparams",
    "build_protocol",
    "check_study_matches",
    "count_trials",
    "default_storage",
    "fail_lost_trials",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "powers_of_ten",
    "redact",
    "search_space",
    "study_name",
    "tune",
]

TrialState = optuna.trial.TrialState
DEFAULT_TRIALS = 20
DEFAULT_VAL_FRACTION = 0.1

# Trial user attributes (besides benchbnn.failure, .surplus and .worker from studies).
ATTR_RUN_ID = "mlflow_run_id"
ATTR_RUN_IDS = "mlflow_run_ids"
ATTR_HPARAMS = "benchbnn.hparams"
ATTR_SCHEDULES = "benchbnn.schedules"
ATTR_SEED_VALUES = "val_top1_per_seed"
# Tags of the study's parent MLflow run.
OBJECTIVE_METRIC = "val_top1"


# --- the protocol a study tunes on ------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """One suite entry's training protocol with the validation split tuning selects on.

    ``base`` is the entry's run configuration for the first seed; a trial replaces the tuned
    hyperparameters and runs one config per seed in ``seeds``. ``schedules`` holds the schedule
    (as data) that a tuned hyperparameter keeps, moved to start at the sampled value
    (:func:`moved_schedule`); ``held`` the tuned hyperparameters whose schedule trials drop
    (name -> why), which a default schedule would otherwise overwrite: trials schedule them as
    constants (``constant:V``).
    """

    suite: str
    entry: str | None
    base: RunConfig
    seeds: tuple[int, ...]
    schedules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    held: Mapping[str, str] = field(default_factory=dict)
    defaulted: tuple[str, ...] = ()

    def config(self, params: Mapping[str, Any], seed: int) -> RunConfig:
        tuned = set(params)
        schedules = {k: v for k, v in self.base.schedules.items() if k not in tuned}
        for name in sorted(tuned):
            if name in self.schedules:
                schedules[name] = moved_schedule(self.schedules[name], params[name])
            elif name in self.defaulted:  # a value alone would be overwritten by the default
                schedules[name] = {"schedule": "constant", "value": float(params[name])}
        return replace(
            self.base,
            hparams={**self.base.hparams, **params},
            schedules=schedules,
            seed=seed,
        )

    def identity(self) -> dict[str, Any]:
        """What makes trials comparable: everything but the seed (``seeds`` lists them), and
        the schedules tuned hyperparameters keep (only when some do, so that studies made
        before schedules were kept still match)."""
        data = self.base.to_dict()
        data.pop("seed", None)
        kept = {"tuned_schedules": dict(self.schedules)} if self.schedules else {}
        return {
            "suite": self.suite,
            "entry": self.entry,
            "seeds": list(self.seeds),
            **data,
            **kept,
        }


def moved_schedule(data: Mapping[str, Any], value: float) -> dict[str, Any]:
    """Schedule ``data`` scaled to start at ``value``, as data (see the module docstring).

    Raises ScheduleError when it cannot be (a schedule starting at 0, or at the other sign).
    """
    return parse_schedule(dict(data)).starting_at(float(value)).to_dict()


def kept_schedules(
    spec: OptimizerSpec, base: RunConfig, space: SearchSpace
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``(kept, held)`` for the searched hyperparameters that follow a schedule in ``base``
    (given, or the optimizer's default): ``kept`` maps those whose schedule can start at every
    value of the search range to the schedule's data, ``held`` the others to the reason.

    Every value of a schedule scaled by ``r > 0`` is ``r`` times the original's, so a scaled
    schedule lies in the valid range for every START in ``[low, high]`` exactly when it does
    for ``low`` and ``high``: both ends are checked over ``base``'s epochs
    (:func:`~benchbnn.optim.schedules.check_schedule_range`).
    """
    effective = effective_schedules(spec, base.schedules)
    kept: dict[str, dict[str, Any]] = {}
    held: dict[str, str] = {}
    for name in sorted(set(space.params) & set(effective)):
        schedule = parse_schedule(effective[name])
        if schedule.kind == "constant" and name not in spec.default_schedules:
            continue  # the tuned value replaces it, as it always has (the same configuration)
        try:
            for end in space.params[name].bounds():
                check_schedule_range(
                    schedule.starting_at(end),
                    spec.hparam(name),
                    f"optimizer {spec.name!r}",
                    base.epochs,
                )
        except (BenchbnnError, ValueError) as exc:  # ValueError: a range not resolved
            held[name] = f"schedule {schedule.describe()} cannot follow its search range: {exc}"
            continue
        kept[name] = schedule.to_dict()
    return kept, held


def _entry_for(suite: Any, optimizer: str, entry: str | None) -> Any | None:
    """The suite entry whose base point a study starts from (None: the optimizer's defaults)."""
    if entry is not None:
        chosen = suite.entry(entry)
        if chosen.optimizer != optimizer:
            raise BenchbnnError(
                f"entry {entry!r} of suite {suite.name!r} uses optimizer {chosen.optimizer!r}, "
                f"not {optimizer!r}; pick an entry of {optimizer!r} or drop --entry"
            )
        return chosen
    matching = [e for e in suite.entries if e.optimizer == optimizer]
    if len(matching) > 1:
        raise BenchbnnError(
            f"suite {suite.name!r} has {len(matching)} entries using {optimizer!r} "
            f"({', '.join(e.label for e in matching)}); choose one with --entry LABEL"
        )
    return matching[0] if matching else None


def build_protocol(
    suite: Any,
    optimizer: str,
    *,
    entry: str | None = None,
    arch: str | None = None,
    seeds: int = 1,
    epochs: int | None = None,
    space: SearchSpace | None = None,
) -> Protocol:
    """The suite's protocol for ``optimizer``: its entry's (or default) hyperparameters, the
    suite's validation split (10% of the training data when the suite has none)."""
    if seeds < 1:
        raise BenchbnnError(f"--seeds must be at least 1, got {seeds}")
    chosen = _entry_for(suite, optimizer, entry)
    select = chosen.label if chosen is not None else optimizer
    rows = [
        (e, a, c)
        for e, a, c in suite.run_configs(seeds=seeds, epochs=epochs, optimizers=[select])
        if e.optimizer == optimizer and (chosen is None or e.label == chosen.label)
    ]
    archs = sorted({a for _, a, _ in rows})
    arch = arch or suite.archs[0]
    if arch not in archs:
        raise BenchbnnError(
            f"suite {suite.name!r} has no architecture {arch!r}; its architectures: "
            f"{', '.join(suite.archs)}"
        )
    configs = [c for _, a, c in rows if a == arch]
    val_fraction = suite.val_fraction if suite.val_fraction > 0 else DEFAULT_VAL_FRACTION
    fixed = dict(space.fixed) if space is not None else {}
    spec = get_optimizer(optimizer)
    defaulted = tuple(sorted(spec.default_schedules))
    base = configs[0]
    pinned = {  # a pinned value replaces a schedule; a default one is replaced by a constant
        k: {"schedule": "constant", "value": float(v)} for k, v in fixed.items() if k in defaulted
    }
    base = replace(
        base,
        val_fraction=val_fraction,
        hparams={**base.hparams, **fixed},
        schedules={**{k: v for k, v in base.schedules.items() if k not in fixed}, **pinned},
    )
    label = chosen.label if chosen is not None else None
    kept, held = kept_schedules(spec, base, space) if space is not None else ({}, {})
    seeds_used = tuple(c.seed for c in configs)
    return Protocol(suite.name, label, base, seeds_used, kept, held, defaulted)


# --- the objective ------------------------------------------------------------------------------


class TrialDiverged(RunFailed):
    """Training of a trial's configuration diverged (the engine returned FAILED)."""


class TrialPruned(RunStopped, optuna.TrialPruned):
    """A hopeless trial stopped by the study's pruner.

    Both a :class:`~benchbnn.core.errors.RunStopped` (the engine ends the trial's run KILLED
    with the failure class ``stopped`` and the reason ``pruned: <reason>``, a result that is
    never redone) and an :class:`optuna.TrialPruned` (Optuna records the trial PRUNED).
    """

    def __init__(self, reason: str):
        super().__init__(reason, outcome="pruned")


def pruner_words(pruner: Any) -> str:
    """How a failure reason names ``pruner``: ``"the median pruner"`` for Optuna's
    MedianPruner (the class name without ``Pruner``, in lower case)."""
    name = type(pruner).__name__
    base = name[: -len("Pruner")] if name.endswith("Pruner") and name != "Pruner" else name
    return f"the {base.lower()} pruner"


class TrialReporter:
    """Lifecycle plugin: reports validation top-1 after each epoch and prunes hopeless trials
    (raising :class:`TrialPruned`)."""

    def __init__(self, trial: Any, run_ids: list[str], report: bool = True):
        self.trial = trial
        self.report = report
        self.run_ids = run_ids  # shared by the trial's seeds

    @hookimpl
    def benchbnn_run_start(self, run: Any) -> None:
        if run.run_id:
            self.run_ids.append(run.run_id)
            self.trial.set_user_attr(ATTR_RUN_ID, self.run_ids[0])
            self.trial.set_user_attr(ATTR_RUN_IDS, list(self.run_ids))

    @hookimpl
    def benchbnn_epoch_end(self, run: Any, epoch: int, metrics: dict) -> None:
        value = metrics.get(OBJECTIVE_METRIC)
        if not self.report or value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), step=int(epoch))
        # after the last epoch there is nothing left to save: the trial completes
        if epoch < run.config.epochs and self.trial.should_prune():
            pruner = getattr(getattr(self.trial, "study", None), "pruner", None)
            raise TrialPruned(
                f"validation top-1 {float(value):.2f}% after epoch {epoch} is below what "
                f"{pruner_words(pruner) if pruner is not None else 'the pruner'} allows"
            )


@dataclass
class TrainOptions:
    """Where and how trials train (nothing here changes a result)."""

    data_dir: str | None = None
    device: str | None = None
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    quiet: bool = True
    download: bool = False
    checkpoint_root: Path = DEFAULT_TUNE_DIR / "checkpoints"
    #: keep the checkpoints of trials' finished runs (else deleted, as those of unfinished ones)
    keep_checkpoints: bool = False
    #: the run ledger a trial's configuration is claimed in before it trains (None: no claim)
    ledger: Any = None


class Objective:
    """Trains a trial's configuration on every seed; returns the mean final validation top-1.

    Only the first seed reports intermediate values (one curve per trial is what pruners
    compare). The objective never sees the test split's numbers.
    """

    def __init__(
        self,
        protocol: Protocol,
        space: SearchSpace,
        study_name: str,
        parent_run_id: str | None,
        options: TrainOptions,
        target: int,
    ):
        self.protocol = protocol
        self.space = space
        self.study_name = study_name
        self.parent_run_id = parent_run_id
        self.options = options
        self.target = target
        self.current: int | None = None

    def __call__(self, trial: Any) -> float:
        """Returns NaN, which Optuna records as FAIL, for a diverged or surplus trial."""
        self.current = trial.number
        trial.set_user_attr(ATTR_WORKER, worker_token())
        if is_surplus(trial, self.target):
            trial.set_user_attr(ATTR_SURPLUS, True)
            return float("nan")
        params = self.space.sample(trial)
        first = self.protocol.config(params, self.protocol.seeds[0])
        trial.set_user_attr(ATTR_HPARAMS, jsonable(dict(first.hparams)))
        trial.set_user_attr(ATTR_SCHEDULES, jsonable(resolved_schedules(first)))
        run_ids: list[str] = []
        values = []
        for i, seed in enumerate(self.protocol.seeds):
            try:
                reporter = TrialReporter(trial, run_ids, report=i == 0)
                values.append(self._train(trial, params, seed, reporter))
            except TrialDiverged as exc:
                trial.set_user_attr(ATTR_FAILURE, str(exc))
                return float("nan")
        trial.set_user_attr(ATTR_SEED_VALUES, values)
        return float(sum(values) / len(values))

    def _train(
        self, trial: Any, params: Mapping[str, Any], seed: int, reporter: TrialReporter
    ) -> float:

        # A trial's checkpoints are only an interruption's safety net: removed when it ends
        # (a finished run's are kept with keep_checkpoints).
        checkpoints = self.options.checkpoint_root / f"trial-{trial.number}-seed-{seed}"
        keep = self.options.keep_checkpoints
        config = self.protocol.config(params, seed)
        result = None
        with self._claimed(config) as claim:
            if claim is not None and claim.waited_for is not None:
                done = self._result_of_waited(config, claim)
                if done is not None:
                    return self._adopt(done, reporter, seed)
            guard = [claim.guard()] if claim is not None else []
            try:
                result = train(
                    config,
                    data_dir=self.options.data_dir,
                    device=self.options.device,
                    tracking_uri=self.options.tracking_uri,
                    experiment=self.options.experiment,
                    quiet=self.options.quiet,
                    plugins=[reporter, *guard],
                    parent_run_id=self.parent_run_id,
                    tags={TAG_STUDY: self.study_name, TAG_TRIAL: str(trial.number)},
                    run_name=f"{self.study_name}/trial-{trial.number}/seed-{seed}",
                    download=self.options.download,
                    checkpoint_dir=checkpoints,
                    keep_checkpoint=keep,
                )
            except RunStopped:  # pruned: the configuration has its result, never to be retried
                if claim is not None:
                    claim.finish(True)
                raise
            finally:
                if not (keep and result is not None and result.finished):
                    shutil.rmtree(checkpoints, ignore_errors=True)
            if claim is not None:
                claim.finish(result.finished or result.failure_class in RESULT_FAILURE_CLASSES)
        if result.status == "KILLED":  # interrupted: the trial is queued again, not counted
            raise KeyboardInterrupt(result.error or "training was interrupted")
        if result.status != "FINISHED":
            raise TrialDiverged(f"seed {seed}: {result.error or 'training ended ' + result.status}")
        value = result.metrics.get(OBJECTIVE_METRIC)
        if value is None or not math.isfinite(float(value)):
            raise TrialDiverged(f"seed {seed}: final {OBJECTIVE_METRIC} is {value}")
        return float(value)

    @contextlib.contextmanager
    def _claimed(self, config: RunConfig) -> Iterator[Any]:
        """Hold ``config``'s claim in the run ledger while the block trains it (None: tuning
        without a ledger), waiting while another live process holds it."""
        ledger = self.options.ledger
        if ledger is None:
            yield None
            return
        uri, experiment = str(self.options.tracking_uri), self.options.experiment
        key = claim_key(uri, experiment, config.config_hash())
        with ledger.hold(key, this_holder("tune", ledger.heartbeat_s)) as claim:
            yield claim

    def _result_of_waited(self, config: RunConfig, claim: Any) -> Any | None:
        """The result the process this trial waited for left in the store (None: none)."""
        environment = current_environment(self.options.device).key()
        uri, experiment = str(self.options.tracking_uri), self.options.experiment
        found = stored_result(uri, experiment, config, environment)
        if found is not None:
            claim.finish(True)
        return found

    def _adopt(self, run: Any, reporter: TrialReporter, seed: int) -> float:
        """Score a seed by a run another process trained while this trial waited for it."""
        reporter.run_ids.append(run.info.run_id)
        reporter.trial.set_user_attr(ATTR_RUN_ID, reporter.run_ids[0])
        reporter.trial.set_user_attr(ATTR_RUN_IDS, list(reporter.run_ids))
        value = run.data.metrics.get(OBJECTIVE_METRIC)
        if recorded_failure_class(run.info.status, run.data.tags) == FAILURE_STOPPED:
            reason = run.data.tags.get(TAG_FAILURE) or "stopped"
            raise TrialPruned(f"seed {seed} was stopped in another process ({reason})")
        if run.info.status != "FINISHED" or value is None or not math.isfinite(float(value)):
            why = run.data.tags.get(TAG_FAILURE) or f"final {OBJECTIVE_METRIC} is {value}"
            raise TrialDiverged(f"seed {seed}: {why}")
        return float(value)


# --- best trial ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunedParams:
    """The best complete trial of a study, ready for ``compare --tuned``.

    ``hparams`` are the values the study chose: the tuned ones and those the suite's tune table
    pins. Set them over the entry's hyperparameters and their schedules in ``schedules`` over
    the entry's schedules of the same names, as the trial did (a tuned hyperparameter keeps its
    schedule moved to the tuned START; one whose schedule could not follow is constant).
    ``params`` holds only the tuned values, ``config_hparams`` the trial's complete
    hyperparameters and ``schedules`` every schedule it followed (the optimizer's default
    schedules included).
    """

    hparams: Mapping[str, Any]
    trial_number: int
    value: float
    study_name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    config_hparams: Mapping[str, Any] = field(default_factory=dict)
    schedules: Mapping[str, Any] = field(default_factory=dict)
    storage: str = ""
    mlflow_run_id: str | None = None

    def describe(self) -> str:
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(self.params.items()))
        return (
            f"study {self.study_name!r} trial {self.trial_number}: validation top-1 "
            f"{self.value:.2f}% with {values}"
        )

    def as_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "study": self.study_name,
                "storage": self.storage,
                "trial_number": self.trial_number,
                "value": self.value,
                "params": dict(self.params),
                "hparams": dict(self.hparams),
                "config_hparams": dict(self.config_hparams),
                "schedules": dict(self.schedules),
                "mlflow_run_id": self.mlflow_run_id,
            }
        )


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_of(study: Any, storage: str = "") -> TunedParams | None:
    """The complete trial with the highest value (the earliest one on ties), or None."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    fixed = dict(study.user_attrs.get(ATTR_SPACE, {}).get("fixed", {}))
    return TunedParams(
        hparams={**fixed, **best.params},
        trial_number=best.number,
        value=float(best.value),
        study_name=study.study_name,
        params=dict(best.params),
        config_hparams=dict(best.user_attrs.get(ATTR_HPARAMS, {})),
        schedules=dict(best.user_attrs.get(ATTR_SCHEDULES, {})),
        storage=redact(storage),
        mlflow_run_id=best.user_attrs.get(ATTR_RUN_ID),
    )


def best_trial_hparams(
    suite: Any,
    optimizer: str,
    storage: str | None = None,
    study: str | None = None,
    entry: str | None = None,
) -> TunedParams:
    """The best complete trial of the study that tuned ``optimizer`` on ``suite``.

    The study is ``study`` if given, else ``<suite>-<optimizer>-<entry>`` (when ``entry`` is
    given and such a study exists), else ``<suite>-<optimizer>``; the storage is ``storage``,
    else ``$BENCHBNN_TUNE_STORAGE``, else ``tuning/optuna.journal``. A missing study or one
    without a complete trial is a BenchbnnError naming the command that creates it.
    """
    with quiet_optuna():
        return _best_trial_hparams(suite, optimizer, storage, study, entry)


def _best_trial_hparams(
    suite: Any, optimizer: str, storage: str | None, study: str | None, entry: str | None
) -> TunedParams:
    suite_name, suite_arg = _suite_name(suite)
    url = storage or default_storage()
    store = open_storage(url, heartbeat=None, create=False)
    names = (
        [study]
        if study
        else (
            ([study_name(suite_name, optimizer, entry)] if entry else [])
            + [study_name(suite_name, optimizer)]
        )
    )
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    existing = {s.study_name for s in summaries}
    found = next((n for n in names if n in existing), None)
    command = (
        f"benchbnn tune {suite_arg} --optimizer {optimizer}"
        + (f" --entry {entry}" if entry and not study else "")
        + (f" --study {study}" if study else "")
        + (f" --storage {redact(url)}" if storage else "")
    )
    if found is None:
        raise BenchbnnError(
            f"no tuning study {' or '.join(map(repr, names))} in {redact(url)}; create it with "
            f"'{command}'"
        )
    loaded = optuna.load_study(study_name=found, storage=store)
    best = best_of(loaded, url)
    if best is None:
        counts = count_trials(loaded.get_trials(deepcopy=False))
        raise BenchbnnError(
            f"study {found!r} in {redact(url)} has no complete trial yet ({counts.pruned} pruned, "
            f"{counts.failed} diverged, {counts.running} running); run '{command}' to finish some"
        )
    return best


def _suite_name(suite: Any) -> tuple[str, str]:
    """The suite's name, and how to name it on a command line (its file when not built in)."""
    if hasattr(suite, "name") and hasattr(suite, "entries"):
        try:
            registered = Path(get_suite(suite.name).path).resolve() == Path(suite.path).resolve()
        except (BenchbnnError, TypeError):
            registered = False
        return suite.name, suite.name if registered or suite.path is None else str(suite.path)
    text = str(suite)
    if text.endswith(".toml") or os.sep in text or Path(text).is_file():
        return load_suite(text).name, text
    return text, text


def write_best(path: Path, best: TunedParams, extra: Mapping[str, Any]) -> None:
    """``best.json``, written atomically (several workers may write it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**best.as_dict(), **jsonable(dict(extra))}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --- MLflow parent run ----------------------------------------------------------------------------


class StudyTracking:
    """The study's parent MLflow run: created once with the study, found again on resume."""

    def __init__(self, tracking_uri: str | None, experiment: str):

        self.uri = tracking.resolve_tracking_uri(tracking_uri)
        tracking.check_tracking_location(self.uri)
        try:
            self.client = tracking.client_for(self.uri)
            self.experiment_id = tracking.ensure_experiment(self.client, experiment, self.uri)
        except BenchbnnError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BenchbnnError(
                f"cannot use tracking location {redact(self.uri)}: {first}; pass --tracking-uri "
                f"with a reachable, writable MLflow store"
            ) from None

    def create(self, name: str, uid: str, protocol: Protocol, space: SearchSpace) -> str:
        from mlflow.entities import Param

        tags = {TAG_STUDY: name, TAG_STUDY_UID: uid, TAG_ROLE: "study", TAG_SUITE: protocol.suite}
        if protocol.entry:
            tags[TAG_ENTRY] = protocol.entry
        run = self.client.create_run(self.experiment_id, run_name=f"study {name}", tags=tags)
        base = protocol.base
        searched = space.as_dict()["params"]
        params = {
            "optimizer": base.optimizer,
            "dataset": base.dataset,
            "arch": base.arch,
            "epochs": base.epochs,
            "batch_size": base.batch_size,
            "subset": base.subset,
            "val_fraction": base.val_fraction,
            "seeds": list(protocol.seeds),
            **{f"search.{k}": json.dumps(v, sort_keys=True) for k, v in searched.items()},
            **{f"base.{k}": v for k, v in sorted(base.hparams.items())},
            **{
                f"base_schedule.{k}": json.dumps(v, sort_keys=True)
                for k, v in sorted(base.schedules.items())
            },
        }
        self.client.log_batch(
            run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
        )
        return run.info.run_id

    def find(
        self, name: str, attrs: Mapping[str, Any], protocol: Protocol, space: SearchSpace
    ) -> str:
        """The parent run recorded with the study, else one tagged with its uid, else a new one
        (a worker whose tracking store is not the creator's)."""
        from mlflow.exceptions import MlflowException

        run_id = attrs.get(ATTR_PARENT)
        if run_id:
            try:
                self.client.get_run(run_id)
                return run_id
            except MlflowException:
                pass
        uid = attrs.get(ATTR_UID, "")
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_STUDY_UID}` = '{uid}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return found[0].info.run_id if found else self.create(name, uid, protocol, space)

    def record_best(self, run_id: str, best: TunedParams, done: int) -> None:
        tags = {
            f"{TAG_BEST_PREFIX}trial": str(best.trial_number),
            f"{TAG_BEST_PREFIX}value": f"{best.value:.6g}",
        }
        tags.update(
            {f"{TAG_BEST_PREFIX}{k}": _fmt_exact(v) for k, v in sorted(best.params.items())}
        )
        if best.mlflow_run_id:
            tags[f"{TAG_BEST_PREFIX}run_id"] = best.mlflow_run_id
        from mlflow.entities import Metric, RunTag

        self.client.log_batch(
            run_id,
            metrics=[Metric("best_val_top1", best.value, int(time.time() * 1000), done)],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Set the parent run's status: RUNNING (owned by this process from now on, so that
        :func:`~benchbnn.train.runs.reap_dead_runs` ends it if this process dies), or ended as
        ``status``; a KILLED one gets ``reason`` and the environment failure class. Raises what
        the store raises."""
        from mlflow.entities import RunTag

        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
            tags = [RunTag(k, v) for k, v in owner_tags().items()]
            self.client.log_batch(run_id, tags=tags)
        else:
            if status == KILLED:
                tags = [
                    RunTag(TAG_FAILURE, (reason or "stopped")[:5000]),
                    RunTag(TAG_FAILURE_CLASS, FAILURE_ENVIRONMENT),
                ]
                self.client.log_batch(run_id, tags=tags)
            self.client.set_terminated(run_id, status=status)


def _fmt_exact(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# --- running a study ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneResult:
    """What a call of :func:`tune` left behind."""

    study_name: str
    storage: str
    target: int
    counts: Counts
    best: TunedParams | None
    parent_run_id: str
    best_path: Path | None
    trials_run: int


def tune(
    suite: Any = DEFAULT_SUITE,
    optimizer: str | None = None,
    *,
    trials: int | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    storage: str | None = None,
    study: str | None = None,
    seeds: int = 1,
    epochs: int | None = None,
    entry: str | None = None,
    arch: str | None = None,
    data_dir: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    out: str | Path | None = None,
    device: str | None = None,
    quiet: bool = False,
    sampler_seed: int = 0,
    startup_trials: int = TPE_STARTUP_TRIALS,
    heartbeat: int = DEFAULT_HEARTBEAT_S,
    download: bool = False,
    poll_s: float = 2.0,
    log: Callable[[str], None] | None = None,
    keep_checkpoints: bool = False,
) -> TuneResult:
    """Tune ``optimizer`` on ``suite`` until the study has ``trials`` counted trials.

    See the module docstring for the budget, storage and tracking rules. Bad input raises
    BenchbnnError before any trial starts, and before the tracking store or the Optuna storage
    is opened: counts outside :mod:`benchbnn.core.limits`, a study name that is no single file
    name, an ``out`` that cannot be written, a storage URL of an unknown scheme or without its
    database driver.
    """
    with quiet_optuna():
        return _tune(**locals())


def _tune(
    suite: Any,
    optimizer: str | None,
    *,
    trials: int | None,
    sampler: str,
    pruner: str,
    storage: str | None,
    study: str | None,
    seeds: int,
    epochs: int | None,
    entry: str | None,
    arch: str | None,
    data_dir: str | None,
    tracking_uri: str | None,
    experiment: str,
    out: str | Path | None,
    device: str | None,
    quiet: bool,
    sampler_seed: int,
    startup_trials: int,
    heartbeat: int,
    download: bool,
    poll_s: float,
    log: Callable[[str], None] | None,
    keep_checkpoints: bool,
) -> TuneResult:
    say = (lambda _msg: None) if quiet else (log or print)
    suite_obj, spec, space, protocol = _inputs(
        suite, optimizer, sampler, pruner, heartbeat, entry, arch, seeds, epochs, data_dir
    )
    target = _target(trials, sampler, space, say)
    limits.within(limits.STARTUP_TRIALS, startup_trials, "--startup-trials")
    limits.within(limits.SEED, sampler_seed, "--sampler-seed")
    url = storage or default_storage(out)
    name = check_study_name(study or study_name(suite_obj.name, spec.name, entry))
    # everything this worker writes or opens, checked before the tracking store is touched
    check_writable_dir(Path(out or DEFAULT_TUNE_DIR) / name, "the tuning results", "--out")
    check_storage(url)
    tracking = StudyTracking(tracking_uri, experiment)
    ledger = open_ledger(_claims_storage(url), tracking.uri, heartbeat)
    store = open_storage(url, heartbeat=heartbeat)
    epochs_run = protocol.base.epochs
    the_study, attrs = open_study(
        store,
        url,
        name,
        make_sampler(sampler, space, sampler_seed, startup_trials),
        make_pruner(pruner, epochs_run),
        space.as_dict(),
        protocol.identity(),
        create_parent=lambda uid: tracking.create(name, uid, protocol, space),
    )
    parent = tracking.find(name, attrs, protocol, space)
    out_dir = Path(out or DEFAULT_TUNE_DIR) / name
    options = TrainOptions(
        data_dir,
        device,
        tracking.uri,
        experiment,
        quiet,
        download,
        out_dir / "checkpoints",
        keep_checkpoints,
        ledger,
    )
    objective = Objective(protocol, space, name, parent, options, target)
    extra = {
        "suite": protocol.suite,
        "optimizer": spec.name,
        "entry": protocol.entry,
        "arch": protocol.base.arch,
        "epochs": epochs_run,
        "seeds": list(protocol.seeds),
    }
    extra.update(_schedule_notes(protocol, say))
    recorder = _BestRecorder(tracking, parent, out_dir / "best.json", url, extra, say)
    say(
        f"study {name!r} in {redact(url)}: tuning {', '.join(sorted(space.params))} of "
        f"{spec.name} on {protocol.base.dataset}/{protocol.base.arch}, {epochs_run} epochs, "
        f"{len(protocol.seeds)} seed(s), {sampler} sampler, {pruner} pruner, {target} trials"
    )
    reap_dead_runs(tracking.client, tracking.experiment_id)  # trials and parents of dead workers
    tracking.set_status(parent, "RUNNING")
    ran = 0
    try:
        ran = run_study(the_study, objective, target, recorder, poll_s, say)
    finally:
        counts = count_trials(the_study.get_trials(deepcopy=False))
        best = recorder.update(the_study, counts.done)
        if counts.done >= target:
            tracking.set_status(parent, "FINISHED")
        elif counts.running == 0:  # stopped early, and no other worker will end the study
            why = f"the study stopped after {counts.done} of {target} trials (interrupted)"
            tracking.set_status(parent, KILLED, why)
        with contextlib.suppress(OSError):  # left empty by trials that ended
            options.checkpoint_root.rmdir()
        options.ledger.close()
    return TuneResult(
        name,
        redact(url),
        target,
        counts,
        best,
        parent,
        recorder.path if best is not None else None,
        ran,
    )


def check_tune_inputs(
    suite: Any,
    optimizer: str,
    *,
    entry: str | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    data_dir: str | None = None,
) -> None:
    """Raise BenchbnnError for what :func:`tune` refuses before its first trial (an unknown
    sampler or pruner, an optimizer with nothing to tune, a data directory without the suite's
    data, ...), opening no storage and no tracking store: for callers that queue studies for
    other processes (:func:`benchbnn.tune.rulesets.external_suite`)."""
    with quiet_optuna():
        _inputs(suite, optimizer, sampler, pruner, None, entry, None, 1, None, data_dir)


def _schedule_notes(protocol: Protocol, say: Callable[[str], None]) -> dict[str, Any]:
    """One line per tuned hyperparameter that follows a schedule (kept, or held constant), and
    the same as data for ``best.json``."""
    for name, data in sorted(protocol.schedules.items()):
        say(
            f"{name}: trials tune the START of its schedule {parse_schedule(dict(data))}; its "
            f"other values scale with it"
        )
    for name, why in sorted(protocol.held.items()):
        say(f"{name}: trials hold it constant at the tuned value; its {why}")
    return {
        "schedules_tuned": dict(protocol.schedules),
        "schedules_held_constant": dict(protocol.held),
    }


def _claims_storage(url: str) -> str | None:
    """Where a study's trials claim their configurations: the study's own storage when it is
    a database other workers share (PostgreSQL, MySQL), else the ledger beside the tracking
    store (None), which ``compare``, ``run`` and ``worker`` use by default too."""
    try:
        check_queue_storage(url)
    except BenchbnnError:  # SQLite: not a safe ledger
        return None
    return url if "://" in url and not url.startswith(("redis://", "rediss://")) else None


def _inputs(
    suite: Any,
    optimizer: str | None,
    sampler: str,
    pruner: str,
    heartbeat: int | None,
    entry: str | None,
    arch: str | None,
    seeds: int,
    epochs: int | None,
    data_dir: str | None,
) -> tuple:
    """Everything a study needs from the user, checked before anything is opened or trained."""

    if optimizer is None:
        raise BenchbnnError("choose the optimizer to tune with --optimizer NAME")
    if sampler not in SAMPLERS:
        raise BenchbnnError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise BenchbnnError(f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")
    if heartbeat is not None and heartbeat < 1:
        raise BenchbnnError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    suite_obj = suite if hasattr(suite, "entries") else load_suite(suite)
    spec = get_optimizer(optimizer)
    narrowed = suite_obj.tune.get(spec.name)
    context = None
    if any(h.search_depends_on_run and h.name not in (narrowed or {}) for h in spec.hparams):
        draft = build_protocol(
            suite_obj, spec.name, entry=entry, arch=arch, seeds=seeds, epochs=epochs
        )
        context = run_context(draft.base, data_dir)
    space = search_space(
        spec,
        narrowed,
        source=f"suite {suite_obj.name!r}, table [tune.{spec.name}]",
        context=context,
    )
    if not space.params:
        raise BenchbnnError(
            f"optimizer {spec.name!r} declares no searchable hyperparameter and suite "
            f"{suite_obj.name!r} adds none in [tune.{spec.name}]; nothing to tune"
        )
    protocol = build_protocol(
        suite_obj, spec.name, entry=entry, arch=arch, seeds=seeds, epochs=epochs, space=space
    )
    # the base point as every trial keeps it: its values, and its schedules over the epochs
    # tuned on (which --epochs may change from the suite's own)
    canonical_config(protocol.base)
    check_data(suite_obj, Path(data_dir).expanduser() if data_dir else None)
    return suite_obj, spec, space, protocol


def run_context(config: RunConfig, data_dir: str | None, world_size: int = 1) -> RunContext:
    """The :class:`~benchbnn.core.specs.RunContext` a run of ``config`` will have (on the CPU),
    for search ranges that depend on the run: its training images (after ``subset`` and the
    validation split), optimizer steps per epoch and in total, ``world_size``. Reads the data
    set's training split (the data set's own loader). Raises what loading the data raises.
    """
    data = build_loaders(
        config.dataset,
        data_dir=Path(data_dir).expanduser() if data_dir else None,
        batch_size=config.batch_size // world_size,
        seed=config.seed,
        subset=config.subset,
        val_fraction=config.val_fraction,
        world_size=world_size,
        options=dict(config.dataset_options) or None,
    )
    steps = len(data.train)
    return RunContext(
        train_size=data.train.dataset_size,
        steps_per_epoch=steps,
        total_steps=steps * config.epochs,
        world_size=world_size,
        device="cpu",
        seed=config.seed,
    )


def _target(
    trials: int | None, sampler: str, space: SearchSpace, say: Callable[[str], None]
) -> int:
    if trials is not None and trials < 1:
        raise BenchbnnError(f"--trials must be at least 1, got {trials}")
    if sampler != "grid":
        return trials or DEFAULT_TRIALS
    size = space.grid_size()
    if trials is not None and trials > size:
        say(f"the grid has {size} points; running {size} trials instead of {trials}")
    return min(trials or size, size)


class _BestRecorder:
    """After every trial: one line of progress; when the best changes, best.json and MLflow."""

    def __init__(
        self,
        tracking: StudyTracking,
        parent: str,
        path: Path,
        storage: str,
        extra: Mapping[str, Any],
        say: Callable[[str], None],
    ):
        self.tracking, self.parent, self.path = tracking, parent, path
        self.storage, self.extra, self.say = storage, extra, say
        self.last: tuple[int, float] | None = None

    def __call__(self, study: Any, trial: Any) -> None:
        counts = count_trials(study.get_trials(deepcopy=False))
        if ATTR_SURPLUS not in trial.user_attrs:
            self.say(_trial_line(trial))
        self.update(study, counts.done)

    def update(self, study: Any, done: int) -> TunedParams | None:
        best = best_of(study, self.storage)
        if best is None:
            return None
        key = (best.trial_number, best.value)
        if key != self.last or not self.path.exists():
            write_best(self.path, best, self.extra)
            self.tracking.record_best(self.parent, best, done)
            self.last = key
        return best


def _trial_line(trial: Any) -> str:
    values = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.params.items()))
    if trial.state == TrialState.COMPLETE:
        outcome = f"validation top-1 {trial.value:.2f}%"
    elif trial.state == TrialState.PRUNED:
        step = max(trial.intermediate_values, default=0)
        outcome = f"pruned after epoch {step}"
    else:
        outcome = "failed: " + str(trial.user_attrs.get(ATTR_FAILURE, "see the log"))
    return f"trial {trial.number}: {values} -> {outcome}"
