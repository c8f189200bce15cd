"""Local worker processes: started, watched, started again while work waits, and stopped.

``compare --workers N`` trains through ``benchbnn worker`` subprocesses that take jobs from a
queue (:mod:`benchbnn.train.workqueue`). :class:`LocalWorkers` starts them (each with its own
command line: its device and thread share), and while compare waits, :meth:`LocalWorkers.check`
starts a worker again when jobs wait and fewer than N run (a worker leaves when the queue looked
empty, or died), and gives up with RunFailed when workers keep failing. :meth:`LocalWorkers.stop`
ends them all, so compare leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from benchbnn.core.errors import RunFailed

#: Exit status of a worker that was given bad input (it says why on stderr).
BAD_INPUT = 2
#: How long :meth:`LocalWorkers.stop` lets workers end by themselves, then after SIGTERM.
STOP_GRACE_S = 10.0


@dataclass
class _Slot:
    command: list[str]
    process: subprocess.Popen | None = None
    failures: int = 0


@dataclass
class LocalWorkers:
    """N worker processes, one per command line; ``env`` is added to this process's
    environment. ``say`` receives one line per start, exit and failure."""

    commands: Sequence[Sequence[str]]
    env: Mapping[str, str] = field(default_factory=dict)
    say: Callable[[str], None] = print
    max_failures: int = 3
    _slots: list[_Slot] = field(default_factory=list)

    def start(self) -> None:
        """Start every worker. Raises OSError when a process cannot be started."""
        self._slots = [_Slot(list(command)) for command in self.commands]
        for i in range(len(self._slots)):
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        slot = self._slots[i]
        slot.process = subprocess.Popen(slot.command, env={**os.environ, **self.env})
        self.say(f"worker {i + 1}: started (pid {slot.process.pid})")

    def alive(self) -> int:
        return sum(s.process is not None and s.process.poll() is None for s in self._slots)

    def check(self, work_waits: bool) -> None:
        """Look at every worker; start again those that ended while ``work_waits``.

        Raises RunFailed when a worker was given bad input (exit status 2: its message is on
        stderr above) or when one slot failed more than ``max_failures`` times.
        """
        for i, slot in enumerate(self._slots):
            process = slot.process
            if process is None:
                if work_waits:
                    self._spawn(i)
                continue
            code = process.poll()
            if code is None:
                continue
            slot.process = None
            if code == BAD_INPUT:
                raise RunFailed(
                    f"worker {i + 1} (pid {process.pid}) refused its job (exit status 2); see "
                    f"its message above"
                )
            if code != 0:
                slot.failures += 1
                self.say(f"worker {i + 1} (pid {process.pid}) failed with exit status {code}")
                if slot.failures > self.max_failures:
                    raise RunFailed(
                        f"worker {i + 1} failed {slot.failures} times (last exit status {code}); "
                        f"see its output above"
                    )
            if work_waits:
                self._spawn(i)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """End every worker: wait ``grace_s`` for those finishing by themselves, then SIGTERM
        (a worker puts its job back in the queue), then SIGKILL. Never raises."""
        running = [s.process for s in self._slots if s.process is not None]
        _wait_all(running, grace_s)
        for process in running:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    process.send_signal(signal.SIGTERM)
        _wait_all(running, grace_s)
        for process in running:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=grace_s)
        for slot in self._slots:
            slot.process = None


def _wait_all(processes: Sequence[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
