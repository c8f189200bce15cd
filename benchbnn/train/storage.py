"""Opening the Optuna storages benchbnn keeps studies, work queues and run claims in.

A storage is a journal file (a path: several processes on one machine share it, no server), a
Redis journal (``redis://``), or a SQLAlchemy database URL (``postgresql://``, ``mysql://``,
``sqlite:///``). Database storages get heartbeats (:func:`open_storage`): a trial whose process
stops beating for three intervals is failed, and queued again by Optuna's
``RetryHeartbeatStaleTrialCallback`` when a reaper calls ``optuna.storages.fail_stale_trials``.
Journal storages have no heartbeats: a trial's owner is told dead by its process id on this
machine (:mod:`benchbnn.train.ledger`).

Tuning studies (:mod:`benchbnn.tune.studies`), the work queue (:mod:`benchbnn.train.workqueue`)
and the per-configuration claims (:mod:`benchbnn.train.ledger`) all open storages here. Every
function here is cheap to import: Optuna is imported when a storage is opened.

The queue and the ledger make a few trial operations per job (list waiting trials, take one by
id, create a RUNNING trial, list RUNNING ones, end one): :func:`trial_ops` gives them through
Optuna's public storage API (:class:`TrialOps`), or on a database in SQLAlchemy Core statements
on Optuna's own tables (:class:`RDBTrialOps`, about a quarter of the round trips and a sixth of
the CPU of Optuna's ORM calls; its docstring says why and how it stays atomic).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchbnn.core.errors import BenchbnnError
from benchbnn.core.urls import check_database_url, scheme_of, with_installed_driver

#: Seconds between heartbeats on database storages (a silent trial is failed after three).
DEFAULT_HEARTBEAT_S = 30
#: How often to try opening a database storage whose tables another process is creating.
SCHEMA_RACE_ATTEMPTS = 5
#: How long a database connection is used again without a pool checkout (seconds).
HOLD_S = 5.0
#: The storages Optuna can keep studies in, as the messages about a bad ``--storage`` list them.
STORAGE_SCHEMES = (
    "Optuna keeps studies in a journal file (a path), redis:// or a SQLAlchemy database: "
    "sqlite:///PATH.db, postgresql://, mysql://"
)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's own log lines and its warnings about experimental features (heartbeats, the
    retry callback, ``ask`` on a storage with heartbeats) are silenced while benchbnn drives
    it. Not thread-safe (``warnings.catch_warnings``); call it from the main thread."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message=".*failed_trial_callback.*")
            warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def is_url(storage: str) -> bool:
    """Whether ``storage`` is a URL (else a journal file path)."""
    return "://" in storage


def redact(storage: str) -> str:
    """The storage URL with any password hidden (for messages, tags and best.json)."""
    if not is_url(storage):
        return storage
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:
        return storage


def check_storage(storage: str) -> None:
    """Raise BenchbnnError unless ``storage`` is a journal path, a ``redis://`` URL with the
    redis package installed, or a database URL SQLAlchemy knows with its driver installed.

    Nothing is opened or connected; messages hide the password (:func:`redact`).
    """
    if not is_url(storage):
        return
    what = f"the Optuna storage {redact(storage)}"
    if storage.startswith(("redis://", "rediss://")):
        if importlib.util.find_spec("redis") is None:
            raise BenchbnnError(f"{what} needs the redis package (pip install redis)")
        return
    check_database_url(with_installed_driver(storage), what, "--storage", STORAGE_SCHEMES)


def check_queue_storage(storage: str, flag: str = "--storage") -> None:
    """Raise BenchbnnError unless ``storage`` can hold a work queue and run claims.

    Everything :func:`check_storage` accepts except SQLite: Optuna's SQLite storage does not
    make taking a queued trial atomic (two workers were seen to take the same one), so it is
    refused; a journal file (one machine) or PostgreSQL / MySQL (many machines) is safe.
    """
    check_storage(storage)
    if scheme_of(storage) == "sqlite":
        raise BenchbnnError(
            f"the Optuna storage {redact(storage)} is SQLite, which is not a safe work queue "
            f"(two workers can take the same queued trial); pass {flag} with a journal file path "
            f"(one machine) or a postgresql:// or mysql:// URL (several machines)"
        )


def heartbeat_of(storage: Any) -> int | None:
    """The heartbeat interval of an opened storage in seconds (None: it has no heartbeats)."""
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter() if callable(getter) else None


def open_storage(storage: str, heartbeat: int | None = DEFAULT_HEARTBEAT_S, create: bool = True):
    """An Optuna storage for a journal path or a database URL (heartbeats on databases).

    A database storage gets ``heartbeat`` second heartbeats and a grace period of three beats:
    the trial of a worker that stops beating becomes FAIL and is queued again with the same
    parameters (``RetryHeartbeatStaleTrialCallback``) when someone calls
    ``optuna.storages.fail_stale_trials``. ``create=False`` refuses a journal file that does
    not exist yet. Raises BenchbnnError for a storage that cannot be opened (unknown scheme,
    missing driver, unreachable server, unwritable journal file).
    """
    with quiet_optuna():
        return _open_storage(storage, heartbeat, create)


def _open_storage(storage: str, heartbeat: int | None, create: bool):
    import optuna

    if not is_url(storage):
        return _journal(Path(storage), create)
    check_storage(storage)  # a known scheme with its driver installed, before connecting
    if storage.startswith(("redis://", "rediss://")):
        return _redis_journal(storage)
    url = with_installed_driver(storage)  # postgres:// and postgresql:// as psycopg2 needs
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    callbacks = (
        {"heartbeat_stale_trial_callback": retry()}
        if retry is not None
        else {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback()}
    )
    hb = (
        {"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat, **callbacks}
        if heartbeat
        else {}
    )
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **hb)
        except Exception as exc:
            if attempt + 1 < SCHEMA_RACE_ATTEMPTS and _schema_race(exc):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise _storage_error(storage, exc) from None
    raise AssertionError("the loop above returns or raises")


def _schema_race(exc: BaseException) -> bool:
    """Two workers that open a fresh database at once both create Optuna's tables; the slower
    one fails on a duplicate type or table (optuna/optuna#1092). Opening again then succeeds."""
    import sqlalchemy.exc

    text = str(exc).lower()
    return isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) and (
        "duplicate key" in text or "already exists" in text
    )


def _unreachable(storage: str, exc: BaseException) -> BenchbnnError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = reason[0] if reason else type(exc).__name__
    return BenchbnnError(
        f"cannot open the Optuna storage {redact(storage)} ({first}); check that the database "
        f"server is running and reachable and that the host, port, database name and "
        f"credentials in the URL are right"
    )


def _storage_error(storage: str, exc: BaseException) -> BenchbnnError:
    """The one-line error for a storage that could not be opened."""
    if isinstance(exc, ImportError):
        return BenchbnnError(
            f"no database driver for the Optuna storage {redact(storage)} ({exc}); for PostgreSQL "
            f"install psycopg2-binary (pip install 'benchbnn[postgres]')"
        )
    return _unreachable(storage, exc)  # SQLAlchemy's connection and URL errors


def _redis_journal(url: str):
    """A journal kept in Redis (no heartbeats: only dead workers on this machine are noticed)."""
    import optuna
    from optuna.storages.journal import JournalRedisBackend

    try:
        return optuna.storages.JournalStorage(JournalRedisBackend(url))
    except ImportError:
        raise BenchbnnError(
            f"the Optuna storage {redact(url)} needs the redis package (pip install redis)"
        ) from None
    except Exception as exc:
        raise _unreachable(url, exc) from None


def _journal(path: Path, create: bool):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if not path.exists() and not create:
        raise BenchbnnError(
            f"no Optuna storage at {path}; run 'benchbnn tune' first or pass the --storage "
            f"that your tuning used"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    except OSError as exc:
        raise BenchbnnError(f"cannot use {path} as an Optuna journal file: {exc}") from None
    return optuna.storages.JournalStorage(backend)


# --- the per-job trial operations of the work queue and the ledger -----------------------------


@dataclass(frozen=True)
class Queued:
    """A WAITING trial of a queue study, as a listing returns it: its study's name, ids, and the
    user attribute holding its job (a JSON text on a database, the decoded value elsewhere)."""

    study_name: str
    trial_id: int
    number: int
    job: Any

    def decoded(self) -> Any:
        """The job, decoded from JSON when it was listed as text."""
        return json.loads(self.job) if isinstance(self.job, str) else self.job


class TrialOps:
    """The few trial operations a worker makes per job, through Optuna's public storage API.

    Works on every storage (journal file, Redis journal, databases); :class:`RDBTrialOps` does
    the same on a database in fewer round trips. Taking a queued trial is Optuna's own atomic
    transition ``set_trial_state_values(trial_id, RUNNING)``, which returns False when another
    process moved it first (a journal orders its log; a database locks the trial row).
    """

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def close(self) -> None:
        """Free what these operations hold between calls (nothing here)."""

    def study_id(self, name: str) -> int | None:
        """The id of study ``name`` (None when there is none)."""
        try:
            return int(self.storage.get_study_id_from_name(name))
        except KeyError:
            return None

    def waiting(self, study_names: Sequence[str], attr: str) -> list[Queued]:
        """The WAITING trials of the existing studies among ``study_names`` that carry user
        attribute ``attr``, by trial id. Raises what the storage raises."""
        from optuna.trial import TrialState

        found: list[Queued] = []
        for name in study_names:
            try:
                study_id = self.storage.get_study_id_from_name(name)
            except KeyError:
                continue
            trials = self.storage.get_all_trials(
                study_id, deepcopy=False, states=(TrialState.WAITING,)
            )
            found += [
                Queued(name, t._trial_id, t.number, t.user_attrs[attr])
                for t in trials
                if attr in t.user_attrs
            ]
        return sorted(found, key=lambda q: q.trial_id)

    def take(self, trial_id: int, attrs: Mapping[str, Any], beat: bool) -> bool:
        """Move WAITING trial ``trial_id`` to RUNNING for this process; False when another
        process took it (or it ended) first. The winner sets user attributes ``attrs`` and, with
        ``beat``, records the trial's first heartbeat. Raises what the storage raises."""
        import optuna
        from optuna.trial import TrialState

        try:
            if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)
        if beat:
            self.storage.record_heartbeat(trial_id)
        return True

    def create_running(
        self, study_id: int, attrs: Mapping[str, Any], beat: bool
    ) -> tuple[int, int]:
        """A new RUNNING trial of ``study_id`` with user attributes ``attrs`` (and, with
        ``beat``, its first heartbeat): its (trial id, number). Numbers are handed out one at a
        time per study (Optuna locks the study row; a journal orders its log). Raises what the
        storage raises."""
        import optuna
        from optuna.trial import TrialState

        template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=dict(attrs))
        with quiet_optuna():
            trial_id = self.storage.create_new_trial(study_id, template_trial=template)
        if beat:
            self.storage.record_heartbeat(trial_id)
        return trial_id, self.storage.get_trial(trial_id).number

    def running(self, study_id: int) -> list[tuple[int, int]]:
        """The (trial id, number) of every RUNNING trial of ``study_id``, by number."""
        from optuna.trial import TrialState

        trials = self.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return sorted(((t._trial_id, t.number) for t in trials), key=lambda pair: pair[1])

    def end(self, trial_id: int, state: Any, value: float | None = None) -> bool:
        """End RUNNING trial ``trial_id`` in ``state`` (a finished TrialState) with objective
        ``value``; False when it had ended already (a reaper failed it). Raises what the storage
        raises otherwise."""
        import optuna

        values = None if value is None else [value]
        try:
            return bool(self.storage.set_trial_state_values(trial_id, state, values))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False


class RDBTrialOps(TrialOps):
    """:class:`TrialOps` on a database storage in SQLAlchemy Core statements on Optuna's tables.

    Why not Optuna's API here: each of its calls is an ORM session of 4 to 7 statements (a
    listing of waiting trials loads every trial with five related tables), about 1 ms of client
    CPU per statement; a job took ~45 statements and ~38 ms of CPU, more than the issue's target
    allows on two cores. Here a job is about a dozen statements in four transactions:

    - taking: ``UPDATE trials SET state=RUNNING WHERE trial_id=? AND state=WAITING`` and the
      first heartbeat in one transaction; the UPDATE locks the row, so of two processes taking
      the same id the second waits for the first to commit, finds the row no longer WAITING and
      changes nothing (row count 0): exactly one wins. This is the transition Optuna's own
      ``set_trial_state_values`` makes under ``SELECT ... FOR UPDATE``;
    - creating a claim: the study row locked (``SELECT ... FOR UPDATE``, as Optuna's
      ``_create_new_trial``), its trial count taken as the new number, the trial, its user
      attributes and first heartbeat inserted, in one transaction;
    - ending: ``UPDATE ... WHERE state=RUNNING`` and the objective value, in one transaction.

    The rows written are those Optuna writes (datetimes as naive UTC, values through
    ``TrialValueModel.value_to_stored_repr``, heartbeats as the database's current time), so
    Optuna reads them as its own; PostgreSQL and MySQL take the same statements.
    """

    def __init__(self, storage: Any) -> None:
        from optuna.storages._rdb import models

        super().__init__(storage)
        self._engine = storage.engine
        self._held: Any = None  # the connection kept between the operations of one job
        self._used = 0.0  # when it was last used (time.monotonic, seconds)
        self._lock = threading.Lock()
        self._models = models
        self._trials = models.TrialModel.__table__
        self._attrs = models.TrialUserAttributeModel.__table__
        self._beats = models.TrialHeartbeatModel.__table__
        self._values = models.TrialValueModel.__table__
        self._studies = models.StudyModel.__table__

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A connection in a transaction that commits at the end (read-only ones too).

        The operations of one job come within milliseconds of each other: a connection used in
        the last :data:`HOLD_S` seconds is used again as it is (a pool checkout, its ping and
        its reset cost about 0.2 ms of CPU, four times a short statement); an older one goes
        back to the pool and a fresh one is checked out (pinged: one the server dropped while
        the job ran is replaced). A connection whose operation raised is given back, never
        used again. One operation at a time per process (a lock).
        """
        with self._lock:
            if self._held is not None and time.monotonic() - self._used > HOLD_S:
                self._release()
            if self._held is None:
                self._held = self._engine.connect()
            try:
                with self._held.begin():
                    yield self._held
            except BaseException:
                self._release()
                raise
            finally:
                self._used = time.monotonic()

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):
                held.close()

    def close(self) -> None:
        """Give back the connection kept between operations (it is checked out again if
        needed)."""
        with self._lock:
            self._release()

    def study_id(self, name: str) -> int | None:
        import sqlalchemy as sa

        studies = self._studies
        query = sa.select(studies.c.study_id).where(studies.c.study_name == name)
        with self._connection() as conn:
            found = conn.execute(query).scalar_one_or_none()
        return None if found is None else int(found)

    def waiting(self, study_names: Sequence[str], attr: str) -> list[Queued]:
        import sqlalchemy as sa
        from optuna.trial import TrialState

        trials, attrs, studies = self._trials, self._attrs, self._studies
        query = (
            sa.select(studies.c.study_name, trials.c.trial_id, trials.c.number, attrs.c.value_json)
            .select_from(
                trials.join(studies, studies.c.study_id == trials.c.study_id).join(
                    attrs, sa.and_(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == attr)
                )
            )
            .where(studies.c.study_name.in_(list(study_names)))
            .where(trials.c.state == TrialState.WAITING)
            .order_by(trials.c.trial_id)
        )
        with self._connection() as conn:
            return [Queued(*row) for row in conn.execute(query)]

    def take(self, trial_id: int, attrs: Mapping[str, Any], beat: bool) -> bool:
        import sqlalchemy as sa
        from optuna.trial import TrialState

        trials = self._trials
        with self._connection() as conn:
            moved = conn.execute(
                sa.update(trials)
                .where(trials.c.trial_id == trial_id, trials.c.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, datetime_start=_utc_now())
            ).rowcount
            if moved != 1:
                return False
            self._add(conn, trial_id, attrs, beat, replace=True)
        return True

    def create_running(
        self, study_id: int, attrs: Mapping[str, Any], beat: bool
    ) -> tuple[int, int]:
        import sqlalchemy as sa
        from optuna.trial import TrialState

        trials, studies = self._trials, self._studies
        with self._connection() as conn:
            lock = sa.select(studies.c.study_id).where(studies.c.study_id == study_id)
            locked = conn.execute(lock.with_for_update()).first()
            if locked is None:
                raise KeyError(f"no study with id {study_id}")
            number = conn.execute(
                sa.select(sa.func.count(trials.c.trial_id)).where(trials.c.study_id == study_id)
            ).scalar_one()
            inserted = conn.execute(
                sa.insert(trials).values(
                    study_id=study_id,
                    number=number,
                    state=TrialState.RUNNING,
                    datetime_start=_utc_now(),
                )
            )
            trial_id = int(inserted.inserted_primary_key[0])
            self._add(conn, trial_id, attrs, beat, replace=False)
        return trial_id, int(number)

    def running(self, study_id: int) -> list[tuple[int, int]]:
        import sqlalchemy as sa
        from optuna.trial import TrialState

        trials = self._trials
        query = (
            sa.select(trials.c.trial_id, trials.c.number)
            .where(trials.c.study_id == study_id, trials.c.state == TrialState.RUNNING)
            .order_by(trials.c.number)
        )
        with self._connection() as conn:
            return [(int(i), int(n)) for i, n in conn.execute(query)]

    def end(self, trial_id: int, state: Any, value: float | None = None) -> bool:
        import sqlalchemy as sa
        from optuna.trial import TrialState

        trials = self._trials
        with self._connection() as conn:
            ended = conn.execute(
                sa.update(trials)
                .where(trials.c.trial_id == trial_id, trials.c.state == TrialState.RUNNING)
                .values(state=state, datetime_complete=_utc_now())
            ).rowcount
            if ended != 1:
                return False
            if value is not None:
                stored, kind = self._models.TrialValueModel.value_to_stored_repr(value)
                conn.execute(
                    sa.insert(self._values).values(
                        trial_id=trial_id, objective=0, value=stored, value_type=kind
                    )
                )
        return True

    def _add(
        self, conn: Any, trial_id: int, attrs: Mapping[str, Any], beat: bool, replace: bool
    ) -> None:
        """Insert user attributes (replacing any of the same key with ``replace``) and the
        first heartbeat of ``trial_id`` on the open transaction ``conn``."""
        import sqlalchemy as sa

        table = self._attrs
        for key, value in attrs.items():
            if replace:
                conn.execute(
                    sa.delete(table).where(table.c.trial_id == trial_id, table.c.key == key)
                )
            conn.execute(
                sa.insert(table).values(trial_id=trial_id, key=key, value_json=json.dumps(value))
            )
        if beat:
            conn.execute(
                sa.insert(self._beats).values(
                    trial_id=trial_id, heartbeat=sa.func.current_timestamp()
                )
            )


def _utc_now() -> datetime.datetime:
    """Now as Optuna's RDB storage keeps trial datetimes: naive UTC."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def trial_ops(storage: Any) -> TrialOps:
    """The per-job trial operations for an opened storage: :class:`RDBTrialOps` on an Optuna
    ``RDBStorage`` (PostgreSQL, MySQL), Optuna's public API (:class:`TrialOps`) elsewhere."""
    import optuna

    if isinstance(storage, optuna.storages.RDBStorage):
        return RDBTrialOps(storage)
    return TrialOps(storage)
