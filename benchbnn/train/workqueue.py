"""A work queue on an Optuna storage: jobs queued as trials, taken atomically, heartbeated.

A job is a JSON object (what to train and where to track it, :mod:`benchbnn.bench.compare`).
``put`` queues each as a WAITING trial (``Study.enqueue_trial`` with the job as a user
attribute); ``take`` pops one with ``Study.ask``, which moves a WAITING trial to RUNNING in one
atomic storage operation, so a job is handed to one worker only. The worker's holder is
recorded on the trial (:class:`~benchbnn.train.ledger.Holder`) and on a database the trial
gets heartbeats; ``finish`` ends it COMPLETE. A job whose worker died goes back to the queue:
on a database Optuna's ``fail_stale_trials`` fails a trial whose heartbeat stopped and its
``RetryHeartbeatStaleTrialCallback`` queues a copy (same user attributes) as WAITING; on a
journal file the same is done for a holder process of this machine that is gone (:meth:`reap`).
An interrupted worker puts its job back itself (:meth:`put_back`).

Strays. ``ask`` creates a new trial when it finds nothing waiting: a worker that saw a waiting
job, but lost it to another worker before its ``ask``, gets a trial that is not from the queue.
Such a trial has no job; it is closed at once (FAIL, user attribute ``benchbnn.stray``) and is
never counted as work.

Shards. ``ask`` reads every waiting trial of its study, so one study of N jobs would cost O(N)
per take. The queue is spread over :data:`SHARDS` studies (``benchbnn.queue.00`` ...); ``put``
deals jobs round-robin from a random shard; ``take`` asks the shard it last took from at once
and counts the waiting jobs of any other before asking it (workers so make strays only when a
shard runs dry under them), visiting the others in a random order.

Several compares may share a queue; exactly-once training per configuration is the ledger's
business (:mod:`benchbnn.train.ledger`), not the queue's: two queued copies of one job are two
entries, and the second worker to take one finds the configuration claimed.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchbnn.train.ledger import ATTR_HOLDER, Holder, Ledger
from benchbnn.train.storage import quiet_optuna

#: The studies a queue is spread over, and their name prefix.
SHARDS = 16
QUEUE_PREFIX = "benchbnn.queue."
#: Trial user attributes: the job, and the mark of a trial ``ask`` created itself.
ATTR_JOB = "benchbnn.job"
ATTR_STRAY = "benchbnn.stray"
#: Values a finished job's trial is completed with: it settled its configuration (trained it,
#: or found its result), or found another process holding the configuration.
SETTLED, DUPLICATE = 0.0, 1.0


@dataclass(frozen=True)
class Taken:
    """A job this worker took: the job, and its trial (RUNNING, held by this process)."""

    job: Mapping[str, Any]
    trial_id: int
    number: int
    shard: int


class WorkQueue:
    """The queue kept in a ledger's storage (the same storage, heartbeat and holders)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._studies: dict[int, Any] = {}
        self._next = random.randrange(SHARDS)
        self._sticky = False

    # -- studies -----------------------------------------------------------------------------

    def _study(self, shard: int, create: bool) -> Any | None:
        """The Optuna study of ``shard`` (None when it does not exist and not ``create``)."""
        if shard in self._studies:
            return self._studies[shard]
        import optuna

        name = f"{QUEUE_PREFIX}{shard:02d}"
        if self.ledger.study_id(name, create=create) is None:
            return None
        with quiet_optuna():
            study = optuna.load_study(
                study_name=name,
                storage=self.ledger.storage,
                sampler=optuna.samplers.RandomSampler(seed=0),
            )
        self._studies[shard] = study
        return study

    def _existing(self) -> list[tuple[int, Any]]:
        found = [(shard, self._study(shard, create=False)) for shard in range(SHARDS)]
        return [(shard, study) for shard, study in found if study is not None]

    # -- producing ---------------------------------------------------------------------------

    def put(self, jobs: Sequence[Mapping[str, Any]]) -> int:
        """Queue ``jobs`` (JSON objects), dealt round-robin over the shards; returns how many.

        The claim study of every job with a ``key`` (:mod:`benchbnn.train.ledger`) is created
        now, so that a worker only looks it up. Raises what the storage raises.
        """
        start = random.randrange(SHARDS)
        with quiet_optuna():
            for i, job in enumerate(jobs):
                if "key" in job:
                    self.ledger.study_id(str(job["key"]))
                study = self._study((start + i) % SHARDS, create=True)
                assert study is not None  # created
                study.enqueue_trial({}, user_attrs={ATTR_JOB: dict(job)}, skip_if_exists=False)
        return len(jobs)

    # -- consuming ---------------------------------------------------------------------------

    def take(self, holder: Holder) -> Taken | None:
        """Pop a waiting job for ``holder`` (None when no shard has one). Raises what the
        storage raises."""
        from optuna.trial import TrialState

        storage = self.ledger.storage
        # the shard of the last take first, then the others in a random order, so that
        # workers spread over the shards instead of queueing behind each other on the next one
        others = [shard for shard in range(SHARDS) if shard != self._next]
        for step, shard in enumerate([self._next, *random.sample(others, len(others))]):
            study = self._study(shard, create=False)
            if study is None:
                continue
            # the shard this worker last took from is asked at once (it usually has more);
            # any other is counted first, so that empty shards make no strays
            sticky = step == 0 and self._sticky
            if not sticky and storage.get_n_trials(study._study_id, TrialState.WAITING) == 0:
                continue
            with quiet_optuna():
                trial = study.ask()
            job = trial.user_attrs.get(ATTR_JOB)
            if job is None:  # a stray: the shard ran dry between the count and the ask
                _close_stray(study, trial._trial_id)
                self._sticky = False
                continue
            self.ledger.heartbeat.add(trial._trial_id)
            if not self.ledger.heartbeat_s:  # no heartbeats: liveness by process id
                study._storage.set_trial_user_attr(trial._trial_id, ATTR_HOLDER, holder.as_attr())
            self._next, self._sticky = shard, True
            return Taken(job, trial._trial_id, trial.number, shard)
        self._sticky = False
        return None

    def finish(self, taken: Taken, value: float = SETTLED) -> None:
        """End a taken job (COMPLETE with ``value``: :data:`SETTLED` or :data:`DUPLICATE`).
        A job failed meanwhile by a reaper (and queued again) stays so. Never raises on that;
        raises what the storage raises otherwise."""
        import optuna
        from optuna.trial import TrialState

        self.ledger.heartbeat.remove(taken.trial_id)
        study = self._study(taken.shard, create=False)
        assert study is not None
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            study._storage.set_trial_state_values(taken.trial_id, TrialState.COMPLETE, [value])

    def put_back(self, taken: Taken) -> None:
        """Give a taken job back (this worker stops before it is done): its trial ends FAIL and
        a copy is queued again, as Optuna's retry callback does. Raises what the storage raises."""
        import optuna
        from optuna.trial import TrialState

        self.ledger.heartbeat.remove(taken.trial_id)
        study = self._study(taken.shard, create=False)
        assert study is not None
        try:
            changed = study._storage.set_trial_state_values(taken.trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            changed = False  # a reaper failed it, and queued it again, first
        if changed:
            _requeue(study, study._storage.get_trial(taken.trial_id))

    def release(self, taken: Taken) -> None:
        """Stop beating for a job without ending it (its claim was lost: a reaper fails it)."""
        self.ledger.heartbeat.remove(taken.trial_id)

    # -- watching ----------------------------------------------------------------------------

    def reap(self) -> int:
        """Queue again the jobs whose worker died; returns how many. Raises what the storage
        raises.

        On a database, trials whose heartbeat stopped (``optuna.storages.fail_stale_trials``,
        whose retry callback queues them again); everywhere, trials held by a process of this
        machine that is gone.
        """
        import optuna
        from optuna.trial import TrialState

        requeued = 0
        for _shard, study in self._existing():
            if self.ledger.heartbeat_s:
                before = len(self._running(study))
                with quiet_optuna():
                    optuna.storages.fail_stale_trials(study)
                requeued += before - len(self._running(study))
            for trial in self._running(study):
                holder = Holder.from_attr(trial.user_attrs.get(ATTR_HOLDER))
                if holder is None or holder.alive() is not False:
                    continue
                try:
                    changed = study._storage.set_trial_state_values(
                        trial._trial_id, TrialState.FAIL
                    )
                except optuna.exceptions.UpdateFinishedTrialError:
                    changed = False
                if changed:
                    _requeue(study, trial)
                    requeued += 1
        return requeued

    def _running(self, study: Any) -> list[Any]:
        from optuna.trial import TrialState

        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def pending(self) -> list[Mapping[str, Any]]:
        """The jobs waiting or being worked on, over every shard (strays left out)."""
        from optuna.trial import TrialState

        jobs: list[Mapping[str, Any]] = []
        for _shard, study in self._existing():
            trials = study.get_trials(
                deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)
            )
            jobs += [t.user_attrs[ATTR_JOB] for t in trials if ATTR_JOB in t.user_attrs]
        return jobs

    def waiting(self) -> int:
        """How many jobs wait to be taken (strays are never waiting)."""
        from optuna.trial import TrialState

        storage = self.ledger.storage
        return sum(
            storage.get_n_trials(study._study_id, TrialState.WAITING)
            for _shard, study in self._existing()
        )

    def trials(self) -> list[Any]:
        """Every trial of every shard (for reports and tests)."""
        return [t for _shard, study in self._existing() for t in study.get_trials(deepcopy=False)]


def _close_stray(study: Any, trial_id: int) -> None:
    """Close a trial ``ask`` created instead of taking a queued one: FAIL, marked a stray."""
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial_id, ATTR_STRAY, True)
    study._storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _requeue(study: Any, trial: Any) -> None:
    """Queue a copy of a failed job trial, as Optuna's retry callback does (its holder dropped)."""
    import copy

    import optuna

    callback = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    callback = callback or optuna.storages.RetryFailedTrialCallback
    copied = copy.deepcopy(trial)
    copied.user_attrs.pop(ATTR_HOLDER, None)
    with quiet_optuna():
        callback()(study, copied)


def jobs_by_key(jobs: Iterable[Mapping[str, Any]], field: str = "key") -> set[str]:
    """The ``field`` of every job that has one (e.g. the claim keys of pending jobs)."""
    return {str(job[field]) for job in jobs if field in job}


def wait_until_settled(
    queue: WorkQueue,
    keys: Iterable[str],
    *,
    poll_s: float = 2.0,
    on_poll: Callable[[bool], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> None:
    """Wait until no configuration of ``keys`` (claim keys) is queued, being worked on, or
    held in the ledger by a live process.

    Every poll reaps dead workers' jobs (:meth:`WorkQueue.reap`) and calls ``on_poll(work
    waits)`` (compare watches its local workers there; it may raise). A state with nothing left
    must be seen twice in a row, so that a job failed by a reaper and not yet queued again is
    not missed. ``say`` gets a line whenever the count of unsettled configurations changes.
    Raises what the storage and ``on_poll`` raise, and KeyboardInterrupt.
    """
    keys = set(keys)
    quiet_polls, last = 0, None
    while True:
        queue.reap()
        pending = jobs_by_key(queue.pending()) & keys
        if on_poll is not None:
            on_poll(queue.waiting() > 0)
        held = {k for k in keys - pending if queue.ledger.holder_of(k) is not None}
        left = len(pending | held)
        if say is not None and left != last and left:
            say(f"waiting for {left} of {len(keys)} runs (queued or training elsewhere)")
        last = left
        quiet_polls = quiet_polls + 1 if not left else 0
        if quiet_polls >= 2:
            return
        time.sleep(poll_s if left else min(poll_s, 0.5))
