"""Directories and file names a user gives, checked before any work starts."""

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


def check_writable_dir(path: str | Path, what: str, flag: str) -> Path:
    """Prove now, creating nothing, that ``path`` is or can become a directory that takes files.

    For outputs written at the end of long work (an ablation's figures): a file where the
    directory should be, or a read-only place, is refused before the work starts. A probe file
    is written and removed in ``path`` or in its nearest existing parent. Returns ``path``.
    Raises BenchbnnError naming ``what``, the path and ``flag``.
    """
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        problem = "it is a file" if existing == path else f"{existing} is a file"
        raise BenchbnnError(
            f"cannot write {what} to {path} ({problem}); pass {flag} with a directory"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".benchbnn-write-probe-"):
            pass
    except OSError as exc:
        raise BenchbnnError(
            f"cannot write {what} to {path} ({exc.strerror or exc}); pass {flag} with a "
            f"writable directory"
        ) from None
    return path


def check_file_name(name: str, what: str, fix: str) -> str:
    """``name`` if it can be one file or folder name inside a folder benchbnn writes to.

    Refused: an empty name, ``.`` and ``..``, and names with a path separator (``/`` or ``\\``)
    or a control character, any of which would write elsewhere or nowhere. Raises
    BenchbnnError naming ``what`` and the name, ending with ``fix``.
    """
    bad = (
        not name.strip()
        or name in (".", "..")
        or any(c in name for c in "/\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    )
    if bad:
        raise BenchbnnError(
            f"{what} {name!r} cannot name a file or folder (no '/', '\\', control characters, "
            f"'.' or '..'); {fix}"
        )
    return name
