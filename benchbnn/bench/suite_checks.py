"""Checks of suite values (counts, fractions, plugin names and options, hyperparameters).

:class:`ValueChecker` is shared by the suite file reader (:mod:`benchbnn.bench.suite_file`),
which knows where each key is written, and by :meth:`benchbnn.bench.suites.Suite.override`,
which checks command-line overrides the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from benchbnn.core import limits, plugins
from benchbnn.core.errors import BenchbnnError, did_you_mean
from benchbnn.core.plugins import get_architecture, get_dataset, get_optimizer

#: A key's place in a suite: table keys and array indices.
Path_ = tuple[str | int, ...]


class LineLookup(Protocol):
    def line_of(self, path: Path_) -> int | None: ...


class SuiteError(BenchbnnError):
    """A suite file that is malformed or refers to something that does not exist."""


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    return "." + did_you_mean(name, candidates)


def _format_key(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            part_text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += f".{part_text}" if out else part_text
    return out


def _canonical_hparams(optimizer: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Values converted to each hyperparameter's type, so equal settings hash equally."""

    spec = get_optimizer(optimizer)
    spec.resolve(**hparams)  # raises on unknown names or bad values
    return {
        name: spec.hparam(name).coerce(value, f"optimizer {optimizer!r}")
        for name, value in sorted(hparams.items())
    }


class ValueChecker:
    """Checks suite values one at a time, raising :class:`SuiteError` with the source and key.

    ``index`` (anything with ``line_of(path)``) adds the line a key is written on.
    """

    def __init__(self, source: str, index: LineLookup | None, default_name: str):
        self.source = source
        self.index = index
        self.default_name = default_name

    def fail(self, path: Path_, message: str) -> SuiteError:
        line = self.index.line_of(path) if self.index and path else None
        where = f"suite {self.source}"
        if line is not None:
            where += f", line {line}"
        if path:
            where += f", key {_format_key(path)}"
        return SuiteError(f"{where}: {message}")

    def registry_error(self, path: Path_, exc: BenchbnnError) -> SuiteError:
        return self.fail(path, str(exc))

    # --- scalar checks ----------------------------------------------------------------------

    def string(self, value: Any, path: Path_, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            raise self.fail(path, f"must be a non-empty string, got {value!r}")
        return value

    def positive_int(self, value: Any, path: Path_) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(path, f"must be a positive integer, got {value!r}")
        return value

    def number(
        self, value: Any, path: Path_, low: float | None = None, high: float | None = None
    ) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self.fail(path, f"must be a number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(path, f"must lie in [{low}, {high}], got {value!r}")
        return float(value)

    def fraction(self, value: Any, path: Path_) -> float:
        number = self.number(value, path)
        if not 0.0 <= number < 1.0:
            raise self.fail(path, f"must lie in [0, 1), got {value!r}")
        return number

    def table(self, value: Any, path: Path_) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a table, got {value!r}")
        return dict(value)

    def seeds(self, value: Any, path: Path_) -> tuple[int, ...]:
        """A seed count (seeds 0..count-1) or a list of distinct seeds, within
        :mod:`benchbnn.core.limits` (at most MAX_SEEDS of them, each at most MAX_SEED).

        Raises SuiteError naming the key (and the seed) that does not fit.
        """
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise self.fail(path, f"a seed count must be at least 1, got {value}")
            if value > limits.MAX_SEEDS:
                raise self.fail(
                    path, f"a seed count must be at most {limits.MAX_SEEDS}, got {value}"
                )
            return tuple(range(value))
        if isinstance(value, (list, tuple)) and value:
            if len(value) > limits.MAX_SEEDS:
                raise self.fail(
                    path, f"lists {len(value)} seeds; at most {limits.MAX_SEEDS} are allowed"
                )
            for i, seed in enumerate(value):
                if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                    raise self.fail(
                        path + (i,), f"seeds must be non-negative integers, got {seed!r}"
                    )
                if seed > limits.MAX_SEED:
                    raise self.fail(
                        path + (i,), f"a seed must be at most {limits.MAX_SEED}, got {seed}"
                    )
            if len(set(value)) != len(value):
                raise self.fail(path, f"seeds must be distinct, got {list(value)}")
            return tuple(value)
        raise self.fail(path, f"must be a seed count or a non-empty list of seeds, got {value!r}")

    def keys(self, data: Mapping[str, Any], allowed: Sequence[str], path: Path_) -> None:
        for key in data:
            if key not in allowed:
                raise self.fail(
                    path + (key,),
                    f"unknown key {key!r}{_did_you_mean(key, allowed)} "
                    f"Valid keys: {', '.join(allowed)}.",
                )

    # --- references to plugins ----------------------------------------------------------------

    def plugin(self, kind: str, name: Any, path: Path_) -> Any:

        name = self.string(name, path)
        getter = {
            "optimizer": plugins.get_optimizer,
            "architecture": plugins.get_architecture,
            "dataset": plugins.get_dataset,
        }[kind]
        try:
            return getter(name)
        except BenchbnnError as exc:
            raise self.registry_error(path, exc) from None

    def arch_options(
        self, archs: Sequence[str], options: Mapping[str, Any], path: Path_
    ) -> dict[str, Any]:
        """``options`` converted to their declared types (every architecture must accept them;
        the first one's values are kept), by the converter of :mod:`benchbnn.core.values`.

        Raises SuiteError naming the key for an unknown option or a value that does not fit.
        """
        converted: dict[str, Any] = {}
        for arch in archs:
            spec = get_architecture(arch)
            for key, value in options.items():
                if key not in spec.options:
                    raise self.fail(
                        path + (key,),
                        f"architecture {arch!r} has no option {key!r}"
                        f"{_did_you_mean(key, spec.options)} "
                        f"Options: {', '.join(sorted(spec.options)) or 'none'}."
                        + (
                            " Use [per_arch.NAME.arch_options] for one architecture."
                            if len(archs) > 1
                            else ""
                        ),
                    )
                try:
                    converted.setdefault(key, spec.coerce_options({key: value})[key])
                except BenchbnnError as exc:
                    raise self.fail(path + (key,), str(exc)) from None
        return converted

    def dataset_options(
        self, dataset: str, options: Mapping[str, Any], path: Path_
    ) -> dict[str, Any]:
        """``options`` (``augmentation`` included) converted to the data set's declared types.

        Raises SuiteError naming the key for an unknown option or a value that does not fit.
        """
        spec = get_dataset(dataset)
        converted: dict[str, Any] = {}
        for key, value in options.items():
            try:
                converted.update(spec.coerce_options({key: value}))
            except BenchbnnError as exc:
                raise self.fail(path + (key,), str(exc)) from None
        return converted

    # --- the whole file ---------------------------------------------------------------------
