"""Whether a process on this machine is still running, for cleaning up after dead workers."""

from __future__ import annotations

import os


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
