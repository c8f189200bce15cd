"""Optuna mechanics of benchbnn's studies: samplers, pruners, storages, workers, budget.

Storages: a journal file that several processes on one machine share (no server), or any Optuna
storage URL; database storages get heartbeats, so the trial of a worker that stops beating
becomes FAIL and is queued again with the same parameters. On a journal file a trial whose worker
process on this machine died is treated the same way.

Budget: a study has ``target`` trials when that many *count*: complete, pruned, or failed because
training diverged. A trial lost with its worker, or interrupted, is queued again and does not
count; a trial started in a race between workers when the budget was already covered ends FAIL
without training (``benchbnn.surplus``) and does not count either.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from benchbnn.core.errors import BenchbnnError
from benchbnn.core.paths import check_file_name
from benchbnn.core.processes import pid_alive
from benchbnn.train.storage import (  # noqa: F401 - re-exported: the tuning API names them here
    DEFAULT_HEARTBEAT_S,
    STORAGE_SCHEMES,
    check_storage,
    is_url,
    open_storage,
    quiet_optuna,
    redact,
)
from benchbnn.tune.search_space import SearchSpace

TrialState = optuna.trial.TrialState

#: Where the default storage and per-study outputs go (relative to the working directory).
DEFAULT_TUNE_DIR = Path("tuning")
JOURNAL_NAME = "optuna.journal"
#: An Optuna storage URL or journal path used when ``--storage`` is not given.
STORAGE_ENV = "BENCHBNN_TUNE_STORAGE"
TPE_STARTUP_TRIALS = 10
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "hyperband", "none")

# Study user attributes (written once, by the process that creates the study).
ATTR_SPACE = "benchbnn.search_space"
ATTR_PROTOCOL = "benchbnn.protocol"
ATTR_UID = "benchbnn.study_uid"
ATTR_PARENT = "benchbnn.mlflow_parent_run_id"
# Trial user attributes read here.
ATTR_FAILURE = "benchbnn.failure"
ATTR_SURPLUS = "benchbnn.surplus"
ATTR_WORKER = "benchbnn.worker"


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """Builds a fresh inner sampler for each trial, seeded from (seed, trial number).

    Trial numbers are unique across the workers of a study, so two workers that start at the
    same moment never draw the same random point, and one worker alone is reproducible.
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._factory = factory
        self._seed = seed
        self._inner = factory(seed)

    def _trial_seed(self, number: int) -> int:
        """A well-mixed 31-bit seed for (seed, number); neighbours give unrelated draws."""
        import numpy as np

        return int(np.random.SeedSequence([self._seed, number]).generate_state(1)[0] >> 1)

    def before_trial(self, study, trial) -> None:
        self._inner = self._factory(self._trial_seed(trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(
    kind: str, space: SearchSpace, seed: int = 0, startup_trials: int = TPE_STARTUP_TRIALS
):
    """TPE (multivariate, constant liar, pinned startup trials), grid, or random; all seeded."""
    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if kind == "tpe":

        def factory(s: int):
            return optuna.samplers.TPESampler(
                n_startup_trials=startup_trials, multivariate=True, constant_liar=True, seed=s
            )
    elif kind == "random":

        def factory(s: int):
            return optuna.samplers.RandomSampler(seed=s)
    else:
        raise BenchbnnError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")
    return PerTrialSeedSampler(factory, seed)


def make_pruner(kind: str, epochs: int):
    """Median (after 3 trials, from the first quarter of the epochs), Hyperband, or none."""
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=3, n_warmup_steps=epochs // 4, interval_steps=1
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, epochs), reduction_factor=3
        )
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise BenchbnnError(f"unknown pruner {kind!r}; choose one of {', '.join(PRUNERS)}")


# --- storage ----------------------------------------------------------------------------------


def default_storage(out: str | Path | None = None) -> str:
    """``$BENCHBNN_TUNE_STORAGE``, else the journal file in ``out`` (default ``tuning/``)."""
    if out is None and os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    return str(Path(out or DEFAULT_TUNE_DIR) / JOURNAL_NAME)


# Opening storages (journal files, Redis, databases with heartbeats) lives in the training layer,
# which the work queue and the run claims share: benchbnn.train.storage.


# --- studies ----------------------------------------------------------------------------------


def study_name(suite: str, optimizer: str, entry: str | None = None) -> str:
    """``<suite>-<optimizer>``, plus ``-<entry>`` when a suite entry was chosen."""
    return f"{suite}-{optimizer}" + (f"-{entry}" if entry else "")


def check_study_name(name: str) -> str:
    """``name`` if it can name the study's folder (``TUNE_DIR/NAME/``) and nothing outside it.

    Raises BenchbnnError for a name with a path separator, a control character, ``.`` or
    ``..`` (:func:`benchbnn.core.paths.check_file_name`).
    """
    return check_file_name(
        name, "study name", "choose another with --study NAME (letters, digits, '-', '_', '.')"
    )


def jsonable(value: Any) -> Any:
    """A JSON round trip: the form a value has once stored in a study (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def check_study_matches(
    name: str,
    attrs: Mapping[str, Any],
    space: Mapping[str, Any],
    protocol: Mapping[str, Any],
    storage: str,
) -> None:
    """Refuse to add trials to a study made for another search space or protocol."""
    if ATTR_SPACE not in attrs:
        raise BenchbnnError(
            f"study {name!r} in {redact(storage)} was not created by 'benchbnn tune' (or its "
            f"creator stopped before describing it); choose another name with --study NAME"
        )
    for label, old, new in (
        ("search space", attrs[ATTR_SPACE], space),
        ("protocol", attrs.get(ATTR_PROTOCOL, {}), protocol),
    ):
        old, new = jsonable(old), jsonable(new)
        if old != new:
            keys = _differences(old, new) if isinstance(old, dict) and isinstance(new, dict) else []
            detail = "; ".join(
                f"{k}: study has {old.get(k)!r}, this run {new.get(k)!r}" for k in keys
            )
            raise BenchbnnError(
                f"study {name!r} in {redact(storage)} was created with a different {label} "
                f"({detail or 'see its user attributes'}); choose another study name with "
                f"--study NAME (or tune with the study's original settings)"
            )


@dataclass(frozen=True)
class Counts:
    """Trials that count towards the budget (``done``), and those still to finish."""

    done: int
    running: int
    waiting: int
    complete: int
    pruned: int
    failed: int


def counted(trial: Any) -> bool:
    """Complete, pruned, or failed because training diverged."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and ATTR_FAILURE in trial.user_attrs


def count_trials(trials: Iterable[Any]) -> Counts:
    trials = list(trials)
    states = [t.state for t in trials]
    return Counts(
        done=sum(1 for t in trials if counted(t)),
        running=states.count(TrialState.RUNNING),
        waiting=states.count(TrialState.WAITING),
        complete=states.count(TrialState.COMPLETE),
        pruned=states.count(TrialState.PRUNED),
        failed=sum(
            1 for t in trials if t.state == TrialState.FAIL and ATTR_FAILURE in t.user_attrs
        ),
    )


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (Linux), so a reused pid is not mistaken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def worker_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def _worker_alive(token: str) -> bool:
    host, _, rest = token.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another machine: only heartbeats can tell
    pid = int(pid_text)
    if Path("/proc").is_dir():
        return Path(f"/proc/{pid}").exists() and _process_start(pid) == start
    return pid_alive(pid)


def requeue(study: Any, trial: Any) -> None:
    """Queue a failed trial again with the same parameters (and grid point)."""
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (ATTR_WORKER,)}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )


def fail_lost_trials(study: Any) -> list[int]:
    """Mark RUNNING trials of dead workers FAIL and queue them again; return their numbers.

    On a storage with heartbeats Optuna does this for trials whose heartbeat stopped (and they
    are not listed here). On storages without them (the journal file) a trial whose worker was
    a process on this machine that no longer exists is lost; a worker on another machine can
    only be noticed through heartbeats.
    """
    optuna.storages.fail_stale_trials(study)
    interval = getattr(study._storage, "get_heartbeat_interval", lambda: None)()
    if interval:
        return []
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        token = trial.user_attrs.get(ATTR_WORKER)
        if not token or _worker_alive(token):
            continue
        try:
            changed = study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            changed = False
        if changed:
            requeue(study, trial)
            lost.append(trial.number)
    return lost


def open_study(
    storage: Any,
    storage_url: str,
    name: str,
    sampler: Any,
    pruner: Any,
    space: Mapping[str, Any],
    protocol: Mapping[str, Any],
    create_parent: Callable[[str], str],
    wait_s: float = 30.0,
) -> tuple[Any, dict]:
    """Create the study and describe it, or load it and check it is the same study.

    Returns the study and its user attributes. The creator records the protocol, a uid, the
    id of the parent run ``create_parent(uid)`` makes, and the search space last, so a worker
    loading a study that is being created waits for that attribute. A study of the same name
    with another search space or protocol is a BenchbnnError.
    """
    space, protocol = jsonable(space), jsonable(protocol)
    try:
        study = optuna.create_study(
            storage=storage, sampler=sampler, pruner=pruner, study_name=name, direction="maximize"
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        attrs = _wait_for_description(study, wait_s)
        check_study_matches(name, attrs, space, protocol, storage_url)
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise BenchbnnError(
                f"study {name!r} minimizes; choose another name with --study NAME"
            ) from None
        return study, attrs
    try:
        uid = uuid.uuid4().hex
        study.set_user_attr(ATTR_PROTOCOL, protocol)
        study.set_user_attr(ATTR_UID, uid)
        study.set_user_attr(ATTR_PARENT, create_parent(uid))
        study.set_user_attr(ATTR_SPACE, space)
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)
        raise
    return study, dict(study.user_attrs)


def _wait_for_description(study: Any, wait_s: float) -> dict[str, Any]:
    """The study's attributes once its creator has described it (or gave up: not benchbnn's
    study if no uid appears within 2 s, a crashed creator if the space is missing after wait_s)."""
    start = time.monotonic()
    while True:
        attrs = dict(study.user_attrs)
        waited = time.monotonic() - start
        if ATTR_SPACE in attrs or waited > wait_s or (ATTR_UID not in attrs and waited > 2.0):
            return attrs
        time.sleep(0.2)


def is_surplus(trial: Any, target: int) -> bool:
    """True when trials that counted or started before ``trial`` already fill the budget.

    Workers check the budget before they start a trial, but two of them can check at the same
    moment; trial numbers are unique and ordered, so the later trial gives way.
    """
    trials = trial.study.get_trials(deepcopy=False)
    earlier = sum(
        1
        for t in trials
        if t.number < trial.number and t.state in (TrialState.RUNNING, TrialState.WAITING)
    )
    return sum(1 for t in trials if counted(t)) + earlier >= target


def run_study(
    study: Any,
    objective: Any,
    target: int,
    on_trial: Callable[[Any, Any], None],
    poll_s: float,
    say: Callable[[str], None],
) -> int:
    """Run trials until ``target`` trials count; return how many this worker ran.

    ``objective.current`` must hold the number of the trial it is running (an interrupted trial
    is queued again). Before each trial, trials of dead workers are failed and queued again; if
    the rest of the budget is covered by trials running elsewhere, wait for them (one of them
    may still die).
    """
    ran = 0
    waiting_said = False
    while True:
        lost = fail_lost_trials(study)
        if lost:
            say(f"trial(s) {', '.join(map(str, lost))} lost their worker; queued again")
        counts = count_trials(study.get_trials(deepcopy=False))
        if counts.done >= target:
            return ran
        if counts.waiting == 0 and counts.done + counts.running >= target:
            if not waiting_said:
                say(f"waiting for {counts.running} trial(s) running in other workers")
                waiting_said = True
            time.sleep(poll_s)
            continue
        waiting_said = False
        try:
            study.optimize(objective, n_trials=1, callbacks=[on_trial], gc_after_trial=False)
        except KeyboardInterrupt:
            _requeue_interrupted(study, objective.current)
            raise
        ran += 1


def _requeue_interrupted(study: Any, number: int | None) -> None:
    if number is None:
        return
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if (
        trial is not None
        and trial.state == TrialState.FAIL
        and not counted(trial)
        and ATTR_SURPLUS not in trial.user_attrs
    ):
        requeue(study, trial)
