"""Opening an MLflow tracking store that several processes may be creating at the same moment.

MLflow creates the tables of a new SQLite store when a client first opens it, without a lock:
two processes that open the same new store at once both run the migrations and one of them
dies with an alembic or "table already exists" error. :func:`open_client` serialises that
first opening between processes on one machine with an exclusive lock on a file beside the
database (``.<name>.benchbnn-init.lock``, deleted again once the store is ready), and retries
on the errors a concurrent creator outside benchbnn can still cause. A store whose schema is
already complete is opened without any lock or file, so reading a store (even in a read-only
folder) writes nothing beside it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

#: How long to wait for another process to finish creating a store (seconds).
LOCK_TIMEOUT_S = 300.0
#: Attempts at opening a store when a concurrent creator makes it fail, and the first pause.
ATTEMPTS, FIRST_PAUSE_S = 6, 0.2
#: Words of the errors a concurrent creation causes (alembic, SQLite, SQLAlchemy).
RACE_SIGNS = (
    "already exists",
    "database is locked",
    "unique constraint failed",
    "online migration expected",
    "can't locate revision",
    "no such table",
    "out-of-date database schema",
)

try:  # POSIX; elsewhere stores are opened without the lock (with the retries)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    return None if path in ("", ":memory:") else Path(path).absolute()


def _head_revision() -> str | None:
    """The schema revision this MLflow creates (None if it cannot be read)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return str(_get_latest_schema_revision())
    except Exception:
        return None


def store_ready(path: Path) -> bool:
    """Whether the SQLite store at ``path`` exists with MLflow's current schema.

    Read-only and quick; False whenever it cannot tell (no file, tables still being created,
    the database locked by the process creating it, an MLflow that hides its revision).
    """
    if not path.is_file() or path.stat().st_size == 0:
        return False
    head = _head_revision()
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            connection.close()
    except sqlite3.Error:
        return False
    return head is not None and [r[0] for r in rows] == [head]


def lock_path(path: Path) -> Path:
    """The lock file that guards the creation of the store at ``path``."""
    return path.with_name(f".{path.name}.benchbnn-init.lock")


@contextlib.contextmanager
def creation_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[bool]:
    """Hold the exclusive lock on creating the store at ``path``; yields whether it is held.

    The lock is an ``flock`` on :func:`lock_path`, which is deleted before the lock is released;
    a process that locked a file that was deleted meanwhile tries again, so deleting it is safe.
    Yields False (no lock) where locks are not available or the folder cannot be written (the
    store's own creation then says why). Raises TimeoutError after ``timeout`` seconds of
    waiting for another process.
    """
    target = lock_path(path)
    if fcntl is None:
        yield False
        return
    deadline = time.monotonic() + timeout
    while True:
        fd = _open_lock_file(target)
        if fd is None:
            yield False
            return
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"waited {timeout:.0f} s for another process to create the "
                            f"tracking store {path} (lock {target})"
                        ) from None
                    time.sleep(0.05)
            if _same_file(fd, target):
                try:
                    yield True
                finally:
                    with contextlib.suppress(OSError):
                        target.unlink()
                return
        finally:
            os.close(fd)  # releases the lock


def _open_lock_file(target: Path) -> int | None:
    """A descriptor of ``target``, created if missing (None when its folder is not writable)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (not deleted or replaced)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def is_race(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a concurrent creation of the same store (see RACE_SIGNS)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(sign in text for sign in RACE_SIGNS)


def _with_retries(make: Callable[[], Any]) -> Any:
    """``make()``, again with growing pauses while it fails as a concurrent creation does."""
    pause = FIRST_PAUSE_S
    for attempt in range(ATTEMPTS):
        try:
            return make()
        except Exception as exc:
            if attempt == ATTEMPTS - 1 or not is_race(exc):
                raise
        time.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def open_client(uri: str, factory: Callable[[str], Any] | None = None) -> Any:
    """An ``MlflowClient`` for ``uri`` whose store exists and is ready, created if needed.

    For a local SQLite store that is not ready (:func:`store_ready`) the client is made under
    :func:`creation_lock`, so concurrent processes on this machine create it once; errors of a
    concurrent creation are retried. ``factory`` makes the client (default
    ``mlflow.MlflowClient(tracking_uri=uri)``). Raises what MLflow raises otherwise, and
    TimeoutError when another process holds the lock too long.
    """
    if factory is None:
        from mlflow import MlflowClient

        def factory(u: str) -> Any:
            return MlflowClient(tracking_uri=u)

    path = sqlite_path(uri)
    if path is None or store_ready(path):
        return _with_retries(lambda: factory(uri))
    with creation_lock(path):
        return _with_retries(lambda: factory(uri))
