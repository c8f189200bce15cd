"""Per-configuration claims: at most one live process trains a configuration at any time.

Every process that trains a configuration of a tracking store (``compare``, ``worker``,
``run``, ``tune``) first claims it in the *ledger*, an Optuna storage
(:mod:`benchbnn.train.storage`) shared by all of them: a journal file by default
(:func:`default_ledger`, beside a local SQLite tracking store, else
``./.benchbnn/ledger.journal``), or a database (PostgreSQL, MySQL) for processes on several
machines. SQLite is refused: Optuna's SQLite storage does not serialise
writers the way claims need.

The rule. Each configuration (tracking store, experiment, configuration hash:
:func:`claim_key`) has its own Optuna study. A claimant adds a RUNNING trial to it, created in
one storage operation with its holder (host, pid, process start, command, heartbeat) as a user
attribute and, on a database, its first heartbeat (:class:`~benchbnn.train.storage.TrialOps`),
then reads the study's RUNNING trials: *the lowest-numbered RUNNING trial owns the
configuration*. If a lower one is RUNNING, the claimant closes its own trial at once (FAIL, a
duplicate) and the configuration is busy. This is exclusive because trial numbers are handed out
one at a time (Optuna locks the study row to number a trial; a journal orders its log), so when a
claimant reads, every lower-numbered trial is already visible, and a trial only ever leaves
RUNNING: two claimants can never both find no lower RUNNING trial while both are RUNNING.

Freeing. An owner ends its trial COMPLETE (the configuration has a result) or FAIL (released
without one: interrupted, failed because of its environment, nothing to do). An owner that died
frees it too: on a database its heartbeat (Optuna's ``record_heartbeat``, a background thread)
stops and after three intervals its trial is failed by the next claimant; on this machine its
process id is checked (journal files, and databases too). A holder is only declared stale by a
claimant whose own heartbeat interval is at least the holder's, so processes started with
different ``--heartbeat`` values never steal from each other. The store stays the truth about
results: a new owner re-reads it before it trains (what was finished meanwhile is not trained
again).

Fencing. An owner checks at the end of every epoch that its claim still stands
(:meth:`Claim.guard`): a process whose claim was failed (it stopped beating long enough, e.g.
suspended) stops training before it writes its next checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchbnn.core.errors import BenchbnnError, RunFailed
from benchbnn.core.plugins import hookimpl
from benchbnn.core.processes import owner_alive, this_process
from benchbnn.train.storage import (
    DEFAULT_HEARTBEAT_S,
    RDBTrialOps,
    TrialOps,
    check_queue_storage,
    heartbeat_of,
    open_storage,
    quiet_optuna,
    redact,
    trial_ops,
)
from benchbnn.train.store import sqlite_path

#: Where the default ledger lives, relative to the tracking store's folder (or the cwd).
LEDGER_DIR, LEDGER_NAME = ".benchbnn", "ledger.journal"
#: Name prefix of the per-configuration claim studies.
CLAIM_PREFIX = "benchbnn.claim."
#: Trial user attribute holding the holder of a claim or of a queued job.
ATTR_HOLDER = "benchbnn.holder"
#: How often a claimant that waits for another holder looks again (seconds).
POLL_S = 2.0


class ClaimLost(RunFailed):
    """An owner's claim was failed by another process (it stopped beating): stop training."""


# --- where the ledger is, and what a claim is of ----------------------------------------------


def default_ledger(tracking_uri: str) -> str:
    """The default ledger of a tracking store: ``.benchbnn/ledger.journal`` beside a local
    SQLite database, else in the working directory. Every process tracking to the same local
    store on this machine therefore shares it; processes on several machines need a database
    ledger (``--storage postgresql://...``)."""
    path = sqlite_path(tracking_uri)
    folder = path.parent if path is not None else Path.cwd()
    return str(folder / LEDGER_DIR / LEDGER_NAME)


def store_identity(tracking_uri: str) -> str:
    """The tracking store as claims name it: an absolute path for SQLite, the URL (no password,
    no trailing slash) otherwise."""
    path = sqlite_path(tracking_uri)
    if path is not None:
        return f"sqlite:///{path.resolve()}"
    return redact(tracking_uri).rstrip("/")


def claim_key(tracking_uri: str, experiment: str, config_hash: str) -> str:
    """The name of the claim study of one configuration of one store and experiment."""
    scope = f"{store_identity(tracking_uri)}\n{experiment}".encode()
    return f"{CLAIM_PREFIX}{hashlib.sha256(scope).hexdigest()[:12]}.{config_hash}"


@dataclass(frozen=True)
class Holder:
    """Who holds a claim (or a queued job): a process, what it runs, how often it beats."""

    command: str
    host: str
    pid: int
    start: str = ""
    heartbeat_s: int | None = None

    def as_attr(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "host": self.host,
            "pid": self.pid,
            "start": self.start,
            "heartbeat_s": self.heartbeat_s,
        }

    @classmethod
    def from_attr(cls, data: Any) -> Holder | None:
        """The holder recorded in a trial's user attribute (None when absent or malformed)."""
        if not isinstance(data, dict):
            return None
        try:
            beat = data.get("heartbeat_s")
            return cls(
                command=str(data.get("command", "?")),
                host=str(data["host"]),
                pid=int(data["pid"]),
                start=str(data.get("start", "")),
                heartbeat_s=int(beat) if beat is not None else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def alive(self) -> bool | None:
        """True or False for a process of this machine, None for one of another machine."""
        return owner_alive(self.host, self.pid, self.start)

    def describe(self) -> str:
        """E.g. ``benchbnn worker (pid 4242 on node-3)``."""
        return f"benchbnn {self.command} (pid {self.pid} on {self.host})"


def this_holder(command: str, heartbeat_s: int | None = None) -> Holder:
    """This process as a holder of claims and jobs."""
    host, pid, start = this_process()
    return Holder(command, host, pid, start, heartbeat_s)


# --- heartbeats -------------------------------------------------------------------------------


class Heartbeat:
    """Records Optuna heartbeats for the trials this process holds, every ``interval`` seconds,
    from one daemon thread (none on storages without heartbeats)."""

    def __init__(self, storage: Any, interval: int | None) -> None:
        self.storage, self.interval = storage, interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval:
            self._thread = threading.Thread(target=self._beat, name="benchbnn-heartbeat")
            self._thread.daemon = True
            self._thread.start()

    def add(self, trial_id: int, beat: bool = True) -> None:
        """Beat for ``trial_id`` from now on, and now with ``beat`` (False: its first beat was
        recorded with the trial, :class:`~benchbnn.train.storage.TrialOps`). Raises what the
        storage raises."""
        if not self.interval:
            return
        if beat:
            self.storage.record_heartbeat(trial_id)
        with self._lock:
            self._ids.add(trial_id)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        assert self.interval
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                # a miss is retried at the next beat; three misses in a row free the claim
                with contextlib.suppress(Exception):
                    self.storage.record_heartbeat(trial_id)


# --- a job's path in few round trips (databases) ---------------------------------------------


@dataclass(frozen=True)
class Made:
    """A claim trial just created: its study, trial id and number, and how many trials of the
    study were RUNNING when it was numbered (None: not counted; read them afterwards)."""

    study_id: int
    trial_id: int
    number: int
    others_running: int | None


class JobPathOps(RDBTrialOps):
    """:class:`~benchbnn.train.storage.RDBTrialOps` plus a worker's job path in two transactions.

    - Claiming (:meth:`claim`), alone or after taking a job in the same transaction
      (:meth:`take_and_claim`: the job's WAITING -> RUNNING ``UPDATE`` of
      :meth:`~benchbnn.train.storage.RDBTrialOps.take` first): the claim study's row locked by
      name (``SELECT ... FOR UPDATE``, which also looks its id up), its trials counted (the new
      number, as Optuna's ``_create_new_trial`` numbers under that lock) together with its
      RUNNING ones, the trial and its holder inserted, and the first heartbeats of the new
      trials in one INSERT. Take and claim: 6 statements and one commit, where the parent
      class's take, ``study_id``, ``create_running`` and ``running`` are 9 statements in 4
      transactions (a claim alone: 5 statements and one commit, where they are 7 in 3).
    - Ending several trials (:meth:`end_many`): one ``UPDATE ... RETURNING`` of all of them when
      they end in one state and the database returns rows from an UPDATE (PostgreSQL, MariaDB;
      else one UPDATE each), then one INSERT of the values of those it ended. A claim and its
      job: 2 statements and one commit, where two ends are 4 statements in 2 transactions.

    Why the RUNNING count may replace the read after the commit (:meth:`Ledger.try_claim`'s
    rule, the lowest-numbered RUNNING claim owns): trials are numbered one at a time under the
    study lock, so when the count runs every lower-numbered claim is committed and counted,
    and a claim never goes back to RUNNING. None RUNNING then means this claim is the lowest
    RUNNING one for as long as it runs. Rows are those Optuna writes (as in the parent class).
    Raises what SQLAlchemy raises; a transaction that raises changes nothing (a job taken in it
    stays WAITING).
    """

    def __init__(self, storage: Any) -> None:
        import sqlalchemy as sa
        from optuna.trial import TrialState

        super().__init__(storage)
        trials, studies = self._trials, self._studies
        running = sa.case((trials.c.state == TrialState.RUNNING, 1), else_=0)
        # statements built once; SQLAlchemy caches their compiled form
        self._lock_study = (
            sa.select(studies.c.study_id)
            .where(studies.c.study_name == sa.bindparam("name"))
            .with_for_update()
        )
        self._count = sa.select(
            sa.func.count(trials.c.trial_id), sa.func.coalesce(sa.func.sum(running), 0)
        ).where(trials.c.study_id == sa.bindparam("sid"))
        self._take_one = (
            sa.update(trials)
            .where(trials.c.trial_id == sa.bindparam("tid"), trials.c.state == TrialState.WAITING)
            .values(state=TrialState.RUNNING, datetime_start=sa.bindparam("now"))
        )
        self._end_one = (
            sa.update(trials)
            .where(trials.c.trial_id == sa.bindparam("tid"), trials.c.state == TrialState.RUNNING)
            .values(state=sa.bindparam("st"), datetime_complete=sa.bindparam("now"))
        )
        self._end_all = (
            sa.update(trials)
            .where(
                trials.c.trial_id.in_(sa.bindparam("tids", expanding=True)),
                trials.c.state == TrialState.RUNNING,
            )
            .values(state=sa.bindparam("st"), datetime_complete=sa.bindparam("now"))
            .returning(trials.c.trial_id)
        )
        self._insert_trial = sa.insert(trials)
        self._insert_attrs = sa.insert(self._attrs)
        self._insert_beats = sa.insert(self._beats).values(heartbeat=sa.func.current_timestamp())
        self._insert_values = sa.insert(self._values)

    def claim(self, study_name: str, attrs: Mapping[str, Any], beat: bool) -> Made | None:
        """A RUNNING trial in study ``study_name`` with user attributes ``attrs`` (and, with
        ``beat``, its first heartbeat); None when the study does not exist."""
        with self._connection() as conn:
            return self._claim_on(conn, study_name, attrs, [] if beat else None)

    def take_and_claim(
        self,
        trial_id: int,
        take_attrs: Mapping[str, Any],
        study_name: str,
        attrs: Mapping[str, Any],
        beat: bool,
    ) -> tuple[bool, Made | None]:
        """Take WAITING trial ``trial_id`` (as :meth:`take`, with ``take_attrs``) and, when it
        was taken, claim in ``study_name`` (as :meth:`claim`), in one transaction: (taken,
        the claim made or None when not taken or the study does not exist)."""
        with self._connection() as conn:
            moved = conn.execute(self._take_one, {"tid": trial_id, "now": _utc_now()}).rowcount
            if moved != 1:
                return False, None
            if take_attrs:
                self._add(conn, trial_id, take_attrs, beat=False, replace=True)
            return True, self._claim_on(conn, study_name, attrs, [trial_id] if beat else None)

    def _claim_on(
        self, conn: Any, study_name: str, attrs: Mapping[str, Any], beats: list[int] | None
    ) -> Made | None:
        """The claim of :meth:`claim` on the open transaction ``conn``; ``beats``: the other
        trials whose first heartbeat goes with the claim's (None: no heartbeats)."""
        from optuna.trial import TrialState

        found = conn.execute(self._lock_study, {"name": study_name}).first()
        if found is None:
            if beats:
                conn.execute(self._insert_beats, [{"trial_id": i} for i in beats])
            return None
        study_id = int(found[0])
        number, running = conn.execute(self._count, {"sid": study_id}).one()
        row = {"study_id": study_id, "number": int(number), "state": TrialState.RUNNING}
        inserted = conn.execute(self._insert_trial, {**row, "datetime_start": _utc_now()})
        trial_id = int(inserted.inserted_primary_key[0])
        if attrs:
            conn.execute(
                self._insert_attrs,
                [
                    {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                    for k, v in attrs.items()
                ],
            )
        if beats is not None:
            conn.execute(self._insert_beats, [{"trial_id": i} for i in [*beats, trial_id]])
        return Made(study_id, trial_id, int(number), int(running))

    def end_many(self, ends: Sequence[tuple[int, Any, float | None]]) -> list[bool]:
        """End RUNNING trials, each ``(trial id, finished TrialState, objective value or
        None)``, in one transaction; for each whether it was ended (False: it had ended
        already, e.g. a reaper failed it)."""
        now = _utc_now()
        with self._connection() as conn:
            states = {state for _, state, _ in ends}
            if len(states) == 1 and conn.dialect.update_returning:
                params = {"tids": [i for i, _, _ in ends], "st": states.pop(), "now": now}
                ended = {int(i) for (i,) in conn.execute(self._end_all, params)}
            else:
                ended = {
                    i
                    for i, state, _ in ends
                    if conn.execute(self._end_one, {"tid": i, "st": state, "now": now}).rowcount
                    == 1
                }
            values = [(i, v) for i, _, v in ends if i in ended and v is not None]
            if values:
                conn.execute(self._insert_values, [self._value_row(i, v) for i, v in values])
        return [i in ended for i, _, _ in ends]

    def _value_row(self, trial_id: int, value: float) -> dict[str, Any]:
        stored, kind = self._models.TrialValueModel.value_to_stored_repr(value)
        return {"trial_id": trial_id, "objective": 0, "value": stored, "value_type": kind}


def ledger_ops(storage: Any) -> TrialOps:
    """The trial operations of a ledger: :class:`JobPathOps` on a database, else
    :func:`~benchbnn.train.storage.trial_ops`'s."""
    import optuna

    return (
        JobPathOps(storage)
        if isinstance(storage, optuna.storages.RDBStorage)
        else trial_ops(storage)
    )


def _utc_now() -> datetime.datetime:
    """Now as Optuna's RDB storage keeps trial datetimes: naive UTC."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


# --- claims -----------------------------------------------------------------------------------


class Claim:
    """The outcome of claiming a configuration: ``owned``, or busy with ``owner`` holding it.

    An owned claim is released when its ``with`` block ends without :meth:`finish`."""

    def __init__(
        self,
        ledger: Ledger,
        key: str,
        trial_id: int | None,
        owner: Holder | None = None,
        waited_for: Holder | None = None,
    ) -> None:
        self.ledger, self.key, self.trial_id = ledger, key, trial_id
        self.owner = owner
        self.waited_for = waited_for
        self.ended = trial_id is None

    @property
    def owned(self) -> bool:
        return self.trial_id is not None

    def finish(self, result: bool = True) -> None:
        """End the claim: COMPLETE when the configuration now has a result, else FAIL. Never
        raises (a claim failed meanwhile by a reaper stays failed)."""
        if self.ended or self.trial_id is None:
            return
        from optuna.trial import TrialState

        state = TrialState.COMPLETE if result else TrialState.FAIL
        self.ended = True
        self.ledger.heartbeat.remove(self.trial_id)
        try:  # False: a reaper failed it meanwhile
            self.ledger.ops.end(self.trial_id, state, 0.0 if result else None)
        except Exception as exc:  # the storage is gone
            warnings.warn(f"benchbnn: could not end claim {self.key}: {exc!r}", stacklevel=2)

    def release(self) -> None:
        """Free the configuration without a result (FAIL). Never raises."""
        self.finish(result=False)

    def lost(self) -> bool:
        """Whether another process failed this owner's claim (it looked dead). A storage that
        cannot be read says nothing: False."""
        if not self.owned or self.ended:
            return False
        from optuna.trial import TrialState

        try:
            state = self.ledger.storage.get_trial(self.trial_id).state
        except Exception:
            return False
        return state != TrialState.RUNNING

    def guard(self) -> ClaimGuard:
        """A lifecycle plugin that stops the run at an epoch end once this claim is lost."""
        return ClaimGuard(self)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ClaimGuard:
    """Lifecycle plugin: raises :class:`ClaimLost` at the end of an epoch (before its
    checkpoint is written) when the run's claim was failed by another process."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim

    @hookimpl
    def benchbnn_epoch_end(self, run: Any, epoch: int, metrics: dict) -> None:
        if self.claim.lost():
            raise ClaimLost(
                f"the claim on {self.claim.key} was taken over by another process after epoch "
                f"{epoch}; this process stops training it"
            )


class Ledger:
    """Claims on one Optuna storage. Open with :meth:`open`; :meth:`close` stops its heartbeat."""

    def __init__(self, storage: Any, url: str) -> None:
        self.storage, self.url = storage, url
        self.heartbeat_s = heartbeat_of(storage)
        self.heartbeat = Heartbeat(storage, self.heartbeat_s)
        self.ops = ledger_ops(storage)
        self._study_ids: dict[str, int] = {}

    @classmethod
    def open(
        cls, storage: str, heartbeat: int | None = DEFAULT_HEARTBEAT_S, flag: str = "--storage"
    ) -> Ledger:
        """The ledger kept in ``storage`` (a journal path or a database URL).

        Raises BenchbnnError for SQLite, an unknown scheme, a missing driver, an unreachable
        server or a journal file that cannot be written.
        """
        check_queue_storage(storage, flag)
        return cls(open_storage(storage, heartbeat=heartbeat), storage)

    def close(self) -> None:
        self.heartbeat.stop()
        self.ops.close()

    def describe(self) -> str:
        return redact(self.url)

    # -- studies -----------------------------------------------------------------------------

    def study_id(self, name: str, create: bool = True) -> int | None:
        """The id of study ``name``, created if missing (None when missing and not ``create``)."""
        if name in self._study_ids:
            return self._study_ids[name]
        import optuna

        found = self.ops.study_id(name)
        if found is None:
            if not create:
                return None
            try:
                with quiet_optuna():  # no "A new study created" line per configuration
                    direction = [optuna.study.StudyDirection.MINIMIZE]
                    found = self.storage.create_new_study(direction, name)
            except optuna.exceptions.DuplicatedStudyError:
                found = self.storage.get_study_id_from_name(name)
        self._study_ids[name] = found
        return found

    # -- claiming ------------------------------------------------------------------------------

    def try_claim(self, key: str, holder: Holder) -> Claim:
        """Claim configuration ``key`` for ``holder`` now: an owned claim, or a busy one naming
        the live holder. Raises what the storage raises.

        The trial is created with its holder and first heartbeat in one storage operation
        (:meth:`~benchbnn.train.storage.TrialOps.create_running`; on a database
        :meth:`JobPathOps.claim`, which also counts the RUNNING trials it found: none, and the
        claim is owned at once); then the ids and numbers of the study's RUNNING trials are
        read, and only when a lower-numbered one is RUNNING (or this one is not) are they read
        in full to name and check their holders.
        """
        attrs, beat = {ATTR_HOLDER: holder.as_attr()}, bool(self.heartbeat_s)
        made = self.ops.claim(key, attrs, beat) if isinstance(self.ops, JobPathOps) else None
        if made is None:  # Optuna's API, or a database without the claim study yet
            study_id = self.study_id(key)
            assert study_id is not None
            trial_id, number = self.ops.create_running(study_id, attrs, beat=beat)
            made = Made(study_id, trial_id, number, None)
        return self._settle(key, made)

    def claim_taking(
        self, key: str, holder: Holder, job_trial_id: int, job_attrs: Mapping[str, Any]
    ) -> Claim | None:
        """Take queued trial ``job_trial_id`` (WAITING -> RUNNING with user attributes
        ``job_attrs`` and, on a database, its first heartbeat, beaten from then on) and claim
        configuration ``key`` for ``holder``, as :meth:`try_claim`; None when another process
        took the trial first (nothing claimed). On a database both are one transaction
        (:meth:`JobPathOps.take_and_claim`). Raises what the storage raises (on a database the
        trial is then still WAITING)."""
        beat = bool(self.heartbeat_s)
        if not isinstance(self.ops, JobPathOps):
            if not self.ops.take(job_trial_id, job_attrs, beat=beat):
                return None
            self.heartbeat.add(job_trial_id, beat=False)
            return self.try_claim(key, holder)
        attrs = {ATTR_HOLDER: holder.as_attr()}
        taken, made = self.ops.take_and_claim(job_trial_id, job_attrs, key, attrs, beat)
        if not taken:
            return None
        self.heartbeat.add(job_trial_id, beat=False)
        return self.try_claim(key, holder) if made is None else self._settle(key, made)

    def end_with(self, claim: Claim | None, result: bool, trial_id: int, value: float) -> bool:
        """End ``claim`` (as :meth:`Claim.finish` with ``result``; nothing for None, a claim
        not owned or ended already) and RUNNING trial ``trial_id`` (COMPLETE with ``value``:
        a queued job), in one transaction on a database (:meth:`JobPathOps.end_many`). Returns
        whether ``trial_id`` was ended (False: a reaper failed it meanwhile). Raises what the
        storage raises (the claim then counts as ended here; its heartbeat stopped, a reaper
        frees it)."""
        from optuna.trial import TrialState

        ends: list[tuple[int, Any, float | None]] = [(trial_id, TrialState.COMPLETE, value)]
        if claim is not None and claim.trial_id is not None and not claim.ended:
            claim.ended = True
            self.heartbeat.remove(claim.trial_id)
            state = TrialState.COMPLETE if result else TrialState.FAIL
            ends.insert(0, (claim.trial_id, state, 0.0 if result else None))
        self.heartbeat.remove(trial_id)
        if isinstance(self.ops, JobPathOps):
            return self.ops.end_many(ends)[-1]
        return [self.ops.end(*end) for end in ends][-1]

    def _settle(self, key: str, made: Made) -> Claim:
        """The claim of ``key`` whose trial was just ``made``: owned when it is the lowest
        RUNNING one, else released at once and naming the live holder (holders found dead are
        freed on the way)."""
        study_id, trial_id, number = made.study_id, made.trial_id, made.number
        self.heartbeat.add(trial_id, beat=False)
        if made.others_running == 0 or self.ops.running(study_id)[:1] == [(trial_id, number)]:
            return Claim(self, key, trial_id)  # the lowest RUNNING trial is this one
        running = self._running(study_id)
        mine = next((t for t in running if t._trial_id == trial_id), None)
        lower = [t for t in running if mine is None or t.number < mine.number]
        if lower:
            gone = self._reap(study_id, lower)
            lower = [t for t in lower if t._trial_id not in gone]
        if mine is not None and not lower:
            return Claim(self, key, trial_id)
        duplicate = Claim(self, key, trial_id)
        duplicate.release()
        owner = Holder.from_attr(lower[0].user_attrs.get(ATTR_HOLDER)) if lower else None
        return Claim(self, key, None, owner=owner)

    def holder_of(self, key: str) -> Holder | None:
        """The holder of configuration ``key`` if a live process holds it, else None (holders
        found dead are freed on the way). Reads only; raises what the storage raises."""
        study_id = self.study_id(key, create=False)
        if study_id is None:
            return None
        running = self._running(study_id)
        gone = self._reap(study_id, running) if running else set()
        live = [t for t in running if t._trial_id not in gone]
        if not live:
            return None
        holder = Holder.from_attr(live[0].user_attrs.get(ATTR_HOLDER))
        return holder or Holder("?", "?", 0)

    def hold(
        self,
        key: str,
        holder: Holder,
        on_wait: Callable[[Holder], None] | None = None,
        poll_s: float = POLL_S,
    ) -> Claim:
        """Claim ``key``, waiting while another live process holds it.

        ``on_wait`` is called with each new holder waited for; the returned (owned) claim names
        the first in ``waited_for``. Raises what the storage raises, and KeyboardInterrupt.
        """
        waited: Holder | None = None
        said: Holder | None = None
        while True:
            claim = self.try_claim(key, holder)
            if claim.owned:
                claim.waited_for = waited
                return claim
            owner = claim.owner or Holder("?", "?", 0)
            waited = waited or owner
            if on_wait is not None and owner != said:
                on_wait(owner)
                said = owner
            while self.holder_of(key) is not None:  # read-only while it is held
                time.sleep(poll_s)

    # -- dead holders --------------------------------------------------------------------------

    def _running(self, study_id: int) -> list[Any]:
        from optuna.trial import TrialState

        trials = self.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return sorted(trials, key=lambda t: t.number)

    def _reap(self, study_id: int, trials: list[Any]) -> set[int]:
        """Fail those of ``trials`` (RUNNING claims) whose holder is dead; return their ids.

        Dead: a process of this machine that is gone, or (on a database) a holder whose
        heartbeat stopped for three of this process's intervals, when that interval is at least
        the holder's own. Holders on other machines of a journal are never declared dead.
        """
        from optuna.trial import TrialState

        gone: set[int] = set()
        stale: set[int] | None = None
        here = socket.gethostname()
        for trial in trials:
            holder = Holder.from_attr(trial.user_attrs.get(ATTR_HOLDER))
            dead = False
            if holder is not None and holder.host == here:
                dead = holder.alive() is False
            elif self.heartbeat_s:
                if stale is None:
                    stale = self._stale_ids(study_id)
                beats = holder.heartbeat_s if holder is not None else None
                dead = trial._trial_id in stale and (beats is None or beats <= self.heartbeat_s)
            if not dead:
                continue
            try:
                if self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    gone.add(trial._trial_id)
            except Exception:  # failed meanwhile by another claimant: gone as well
                gone.add(trial._trial_id)
        return gone

    def _stale_ids(self, study_id: int) -> set[int]:
        """Trials whose Optuna heartbeat stopped for the grace period (three intervals)."""
        getter = getattr(self.storage, "_get_stale_trial_ids", None)
        if getter is None:
            return set()
        try:
            return set(getter(study_id))
        except Exception:
            return set()


def open_ledger(
    storage: str | None,
    tracking_uri: str,
    heartbeat: int | None = DEFAULT_HEARTBEAT_S,
    flag: str = "--storage",
) -> Ledger:
    """The ledger in ``storage``, or the tracking store's default one (:func:`default_ledger`).

    Raises BenchbnnError when it cannot be opened (see :meth:`Ledger.open`).
    """
    try:
        return Ledger.open(storage or default_ledger(tracking_uri), heartbeat, flag)
    except BenchbnnError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BenchbnnError(
            f"cannot open the run ledger {redact(storage or default_ledger(tracking_uri))}: "
            f"{first}; pass {flag} with a writable journal file or a reachable database"
        ) from None
