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
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchbnn.core.errors import BenchbnnError
from benchbnn.core.urls import check_database_url, scheme_of, with_installed_driver

#: Seconds between heartbeats on database storages (a silent trial is failed after three).
DEFAULT_HEARTBEAT_S = 30
#: How often to try opening a database storage whose tables another process is creating.
SCHEMA_RACE_ATTEMPTS = 5
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
