"""Directories a user names on the command line, checked before any work starts."""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchbnn.core.errors import BenchbnnError


def writable_dir(path: str | Path, what: str, flag: str) -> Path:
    """Create ``path`` now and prove a file can be written there, or raise one clear error.

    Permission bits are not enough: root passes ``os.access`` on read-only file systems such as
    ``/proc``, and a read-only mount says nothing until a write fails, after hours of training.
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".benchbnn-write-probe-"):
            pass
    except OSError as exc:
        raise BenchbnnError(
            f"cannot write {what} to {path} ({exc.strerror or exc}); pass {flag} with a "
            f"writable directory"
        ) from None
    return path
