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
