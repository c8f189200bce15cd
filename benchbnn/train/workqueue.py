"""A work queue on an Optuna storage: jobs queued as trials, taken atomically, heartbeated.

A job is a JSON object (what to train and where to track it, :mod:`benchbnn.bench.compare`).
``put`` queues each as a WAITING trial (``Study.enqueue_trial`` with the job as a user
attribute); ``take`` lists the waiting trials (ids and jobs) and takes one by id with the atomic
storage transition WAITING -> RUNNING that ``Study.ask`` uses (Optuna's
``set_trial_state_values``, :class:`~benchbnn.train.storage.TrialOps`): of several workers
taking one id, exactly one succeeds, so a job is handed to one worker only. On a database the
trial gets its first heartbeat in the same transaction, and heartbeats from then on; without
heartbeats the worker's holder (:class:`~benchbnn.train.ledger.Holder`) is recorded on it.
``finish`` ends it COMPLETE. A job whose worker died goes back to the queue:
on a database Optuna's ``fail_stale_trials`` fails a trial whose heartbeat stopped and its
``RetryHeartbeatStaleTrialCallback`` queues a copy (same user attributes) as WAITING; on a
journal file the same is done for a holder process of this machine that is gone (:meth:`reap`).
An interrupted worker puts its job back itself (:meth:`put_back`).

Two steps per job. :meth:`take_and_claim` takes a job and claims its configuration in the ledger
(the job's ``key``), :meth:`finish_claimed` ends both; on a database each is one transaction
(:class:`~benchbnn.train.ledger.JobPathOps`: 8 SQL statements and 2 commits per job, where
``take``, ``Ledger.try_claim``, ``Claim.finish`` and ``finish`` make 11 statements and 4
commits), and a take whose claim fails leaves the job WAITING.

Listing. A worker keeps the listing it read and takes its jobs one after the other from a
random place in it (workers so start on different jobs); when it loses one to another worker the
listing is stale and it reads a new one. ``take`` returns None only when a fresh listing is
empty. A listing is one query on a database, whatever the number of jobs.

Strays. Queues of earlier releases took jobs with ``Study.ask``, which creates a trial when it
finds nothing waiting; such a trial was closed at once (FAIL, user attribute
``benchbnn.stray``). ``take`` never creates a trial, and a trial without a job (a stray, or one
queued by something else) is never handed out nor counted as work.

Shards. The queue is spread over :data:`SHARDS` studies (``benchbnn.queue.00`` ...), ``put``
dealing jobs round-robin from a random shard, so that Optuna's per-study reads (``reap``,
``pending``) stay small; ``take`` lists all of them at once.

Several compares may share a queue; exactly-once training per configuration is the ledger's
business (:mod:`benchbnn.train.ledger`), not the queue's: two queued copies of one job are two
entries, and the second worker to take one finds the configuration claimed.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from benchbnn.train.ledger import ATTR_HOLDER, Claim, Holder, Ledger
from benchbnn.train.storage import Queued, quiet_optuna

#: The studies a queue is spread over, and their name prefix.
SHARDS = 16
QUEUE_PREFIX = "benchbnn.queue."
SHARD_NAMES = tuple(f"{QUEUE_PREFIX}{shard:02d}" for shard in range(SHARDS))
#: Trial user attributes: the job, and the mark of a trial ``ask`` created itself.
ATTR_JOB = "benchbnn.job"
ATTR_STRAY = "benchbnn.stray"
#: Values a finished job's trial is completed with: it settled its configuration (trained it,
#: or found its result), or found another process holding the configuration.
SETTLED, DUPLICATE = 0.0, 1.0
#: Seconds a job may stay RUNNING without a holder on a journal before :meth:`WorkQueue.reap`
#: takes its worker for dead (killed between the take and the holder record).
ORPHAN_GRACE_S = 60.0


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
        self._listing: deque[Queued] = deque()
        #: How many listings this queue read, and how many takes it lost to other workers.
        self.listings, self.lost = 0, 0

    # -- studies -----------------------------------------------------------------------------

    def _study(self, shard: int, create: bool) -> Any | None:
        """The Optuna study of ``shard`` (None when it does not exist and not ``create``)."""
        if shard in self._studies:
            return self._studies[shard]
        import optuna

        name = SHARD_NAMES[shard]
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
        """Take a waiting job for ``holder`` (None when a fresh listing has none). Raises what
        the storage raises."""
        attrs = self._take_attrs(holder)
        found = self._take_with(lambda queued, _job: (self._take_one(queued, attrs), None))
        return None if found is None else found[0]

    def take_and_claim(self, holder: Holder) -> tuple[Taken, Claim | None] | None:
        """Take a waiting job for ``holder`` and claim its configuration (the job's ``key``;
        None for a job without one), as :meth:`take` then :meth:`Ledger.try_claim
        <benchbnn.train.ledger.Ledger.try_claim>` do, in one transaction on a database
        (:meth:`Ledger.claim_taking <benchbnn.train.ledger.Ledger.claim_taking>`). None when a
        fresh listing has no job. End both with :meth:`finish_claimed`. Raises what the storage
        raises."""
        attrs = self._take_attrs(holder)

        def attempt(queued: Queued, job: Mapping[str, Any]) -> tuple[bool, Claim | None]:
            if "key" not in job:
                return self._take_one(queued, attrs), None
            claim = self.ledger.claim_taking(str(job["key"]), holder, queued.trial_id, attrs)
            return claim is not None, claim

        return self._take_with(attempt)

    def _take_attrs(self, holder: Holder) -> dict[str, Any]:
        """What a taken job's trial records: nothing with heartbeats, else its holder (its
        liveness is then told by process id)."""
        return {} if self.ledger.heartbeat_s else {ATTR_HOLDER: holder.as_attr()}

    def _take_one(self, queued: Queued, attrs: Mapping[str, Any]) -> bool:
        """Take listed job ``queued`` (WAITING -> RUNNING with user attributes ``attrs`` and its
        first heartbeat, beaten from then on); False when another worker took it first."""
        beats = bool(self.ledger.heartbeat_s)
        if not self.ledger.ops.take(queued.trial_id, attrs, beat=beats):
            return False
        self.ledger.heartbeat.add(queued.trial_id, beat=False)
        return True

    def _take_with(
        self, attempt: Callable[[Queued, Mapping[str, Any]], tuple[bool, Any]]
    ) -> tuple[Taken, Any] | None:
        """Try ``attempt(queued, job)`` (True when it took the job) on the listed jobs in turn:
        the taken job and what ``attempt`` returned with it, or None when a fresh listing has
        none. A lost take makes the listing stale: a new one is read."""
        fresh = False
        while True:
            if not self._listing:
                if fresh:
                    return None
                self._listing, fresh = self._list(), True
                continue
            queued = self._listing.popleft()
            job = queued.decoded()
            won, extra = attempt(queued, job)
            if won:
                shard = int(queued.study_name[len(QUEUE_PREFIX) :])
                return Taken(job, queued.trial_id, queued.number, shard), extra
            self.lost += 1
            self._listing.clear()  # another worker took it: the listing is stale
            fresh = False

    def _list(self) -> deque[Queued]:
        """The waiting jobs of every shard, in trial order from a random place."""
        listing = deque(self.ledger.ops.waiting(SHARD_NAMES, ATTR_JOB))
        self.listings += 1
        listing.rotate(random.randrange(len(listing)) if listing else 0)
        return listing

    def finish(self, taken: Taken, value: float = SETTLED) -> None:
        """End a taken job (COMPLETE with ``value``: :data:`SETTLED` or :data:`DUPLICATE`).
        A job failed meanwhile by a reaper (and queued again) stays so. Never raises on that;
        raises what the storage raises otherwise."""
        from optuna.trial import TrialState

        self.ledger.heartbeat.remove(taken.trial_id)
        self.ledger.ops.end(taken.trial_id, TrialState.COMPLETE, value)

    def finish_claimed(
        self, taken: Taken, claim: Claim | None, result: bool = True, value: float = SETTLED
    ) -> bool:
        """End a taken job and its claim (:meth:`take_and_claim`): the claim as
        :meth:`Claim.finish <benchbnn.train.ledger.Claim.finish>` with ``result`` (nothing for
        None, a claim not owned or ended already), the job as :meth:`finish` with ``value``, in
        one transaction on a database (:meth:`Ledger.end_with
        <benchbnn.train.ledger.Ledger.end_with>`). Returns whether the job was ended (False:
        a reaper failed it meanwhile, and queued it again). Raises what the storage raises."""
        return self.ledger.end_with(claim, result, taken.trial_id, value)

    def put_back(self, taken: Taken) -> None:
        """Give a taken job back (this worker stops before it is done): its trial ends FAIL and
        a copy is queued again, as Optuna's retry callback does. Raises what the storage raises."""
        from optuna.trial import TrialState

        self.ledger.heartbeat.remove(taken.trial_id)
        study = self._study(taken.shard, create=False)
        assert study is not None
        # False: a reaper failed it, and queued it again, first
        if self.ledger.ops.end(taken.trial_id, TrialState.FAIL):
            _requeue(study, study._storage.get_trial(taken.trial_id))

    def release(self, taken: Taken) -> None:
        """Stop beating for a job without ending it (its claim was lost: a reaper fails it)."""
        self.ledger.heartbeat.remove(taken.trial_id)

    # -- watching ----------------------------------------------------------------------------

    def reap(self, orphan_grace_s: float = ORPHAN_GRACE_S) -> int:
        """Queue again the jobs whose worker died; returns how many. Raises what the storage
        raises.

        On a database, trials whose heartbeat stopped (``optuna.storages.fail_stale_trials``,
        whose retry callback queues them again); everywhere, trials held by a process of this
        machine that is gone. On a journal a take is two log records (RUNNING, then the holder),
        so a worker killed between them leaves a RUNNING job without a holder: such a job is
        queued again once it has been RUNNING for ``orphan_grace_s`` seconds (a live worker
        records its holder within milliseconds of the take).
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
                if holder is None:
                    if not self._orphaned(trial, orphan_grace_s):
                        continue
                elif holder.alive() is not False:
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

    def _orphaned(self, trial: Any, grace_s: float) -> bool:
        """Whether RUNNING job ``trial`` lost its worker between the take and the holder record:
        no heartbeats (a journal), no holder, a job, RUNNING for more than ``grace_s`` seconds
        (Optuna stamps ``datetime_start`` with this machine's local clock at the take)."""
        if self.ledger.heartbeat_s or ATTR_JOB not in trial.user_attrs:
            return False
        started = trial.datetime_start
        return started is not None and (datetime.now() - started).total_seconds() > grace_s

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
        """How many jobs wait to be taken (trials without a job are not counted)."""
        return len(self.ledger.ops.waiting(SHARD_NAMES, ATTR_JOB))

    def trials(self) -> list[Any]:
        """Every trial of every shard (for reports and tests)."""
        return [t for _shard, study in self._existing() for t in study.get_trials(deepcopy=False)]


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
    noun: str = "runs",
) -> None:
    """Wait until no configuration of ``keys`` (claim keys) is queued, being worked on, or
    held in the ledger by a live process (``noun`` names what they are in ``say``'s lines).

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
            say(f"waiting for {left} of {len(keys)} {noun} (queued or training elsewhere)")
        last = left
        quiet_polls = quiet_polls + 1 if not left else 0
        if quiet_polls >= 2:
            return
        time.sleep(poll_s if left else min(poll_s, 0.5))
