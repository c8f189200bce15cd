"""Whether a process on this machine is still running, for cleaning up after dead workers."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True unless no process ``pid`` exists here (one owned by another user counts as alive).

    Signal 0 checks existence and permission without delivering anything; a pid may have been
    reused, so callers that must be sure compare the process's start time as well.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` in clock ticks since boot (Linux), as text.

    Empty where ``/proc`` does not tell (another system, or no such process). Recorded beside a
    pid, it tells a process from a later one that reuses its pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def this_process() -> tuple[str, int, str]:
    """(host name, pid, start time) of the running process, as :func:`owner_alive` reads them."""
    pid = os.getpid()
    return socket.gethostname(), pid, process_start(pid)


def owner_alive(host: str, pid: int, start: str = "") -> bool | None:
    """Whether process ``pid`` started at ``start`` (:func:`process_start`) on ``host`` runs.

    None for another host: only a heartbeat could tell. On this host, False when no process
    ``pid`` exists, or when one does but started at another time than ``start`` (a reused pid;
    not checked when ``start`` or ``/proc`` is missing). Never raises.
    """
    if host != socket.gethostname():
        return None
    if pid <= 0 or not pid_alive(pid):
        return False
    return not (start and Path("/proc").is_dir() and process_start(pid) != start)
