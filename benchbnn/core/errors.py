"""Exceptions that separate a user's mistake from a failure while running.

The command line maps :class:`BenchbnnError` (and its subclasses) to exit status 2 with a single
line on stderr; anything else that escapes a command is a failure while running (exit status 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchbnnError(Exception):
    """Bad input from a user: the message says what was wrong and how to fix it."""


class UnknownNameError(BenchbnnError, KeyError):
    """A plugin name (optimizer, architecture, dataset, suite) that nobody registered."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class PluginError(BenchbnnError):
    """A plugin that failed to import or returned a malformed specification."""


class HyperparameterError(BenchbnnError, ValueError):
    """An unknown, mistyped or out-of-range hyperparameter."""


class UnsupportedInputError(BenchbnnError, ValueError):
    """An image size or channel count that an architecture is not defined for."""


class DataError(BenchbnnError):
    """Data that is missing, in the wrong layout, truncated or corrupt (the message names the
    path)."""


class RunFailed(Exception):
    """A run that started but could not finish (divergence, a crash in a plugin, ...)."""


class RunStopped(Exception):
    """Raised by a lifecycle plugin to stop a run on purpose before its last epoch.

    Early stopping, or a tuner pruning a hopeless trial: the run's end is a decision, not a
    failure of the run or of the machine. The engine ends the run KILLED (MLflow's only status
    for a run stopped before its last epoch) with the failure class ``stopped``
    (:data:`benchbnn.core.names.FAILURE_STOPPED`) and :meth:`record` as its failure reason,
    then raises the exception again to the caller of ``benchbnn.train``. Such a run is a
    result: compare and tune never redo it.

    ``reason`` says why in words (e.g. ``"validation top-1 80.56% after epoch 5 is below what
    the median pruner allows"``); ``outcome`` is the one word naming what happened to the run
    (``"stopped"``; a tuner's pruning says ``"pruned"``). Raises ValueError when ``outcome``
    is not one lower-case word, as the failure reason starts with it.
    """

    def __init__(self, reason: str = "", *, outcome: str = "stopped"):
        if not outcome.isalpha() or not outcome.islower():
            raise ValueError(
                f"RunStopped outcome must be one lower-case word such as 'stopped' or 'pruned', "
                f"got {outcome!r}"
            )
        super().__init__(reason)
        self.reason = str(reason)
        self.outcome = outcome

    def record(self) -> str:
        """The failure reason the run is tracked with: ``"<outcome>: <reason>"`` (the outcome
        alone when no reason was given)."""
        return f"{self.outcome}: {self.reason}" if self.reason else self.outcome


def first_line(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (the type alone for an empty message), for one-line
    reports of an exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Names among ``candidates`` that look like ``name`` (for 'did you mean' hints)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    found += [c for c in candidates if name and (name in c or c in name) and c not in found]
    return found[:n]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` Did you mean 'a', 'b'?`` for the close matches of ``name``, or ``""`` when none."""
    hint = close_matches(name, candidates)
    return f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""


def unknown_name_message(kind: str, name: str, candidates: Iterable[str]) -> str:
    """One line: the unknown name, what it might have meant, and what exists."""
    candidates = sorted(candidates)
    available = ", ".join(candidates) if candidates else "none installed"
    return (
        f"unknown {kind} {name!r}.{did_you_mean(name, candidates)} Available: {available}. "
        f"If it comes from a plugin module of your own, load it with -p MODULE (or the "
        f"BENCHBNN_PLUGINS environment variable)."
    )
