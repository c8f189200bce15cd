"""What identifies a training run.

A :class:`RunConfig` is the resolved description of one run. Everything that changes the result
is part of its identity (and its :meth:`RunConfig.config_hash`); where the data lives, which
device runs it and where it is tracked are not. Compare and tune look finished runs up by that
hash, so a configuration is never trained twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from benchbnn.core.errors import BenchbnnError

#: Bump when the meaning of a configuration changes (e.g. a fix to an update rule), so that old
#: tracked runs stop being reused.
CONFIG_SCHEMA_VERSION = 1


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_budget(
    *,
    epochs: Any = 1,
    batch_size: Any = 1,
    seed: Any = 0,
    subset: Any = None,
    val_fraction: Any = 0.0,
    l2: Any = 0.0,
) -> None:
    """Raise BenchbnnError naming the first budget value that no run can have.

    ``epochs`` and ``batch_size`` (per rank) are whole numbers >= 1, ``seed`` >= 0, ``subset``
    None or >= 1 images, ``val_fraction`` in [0, 1), ``l2`` finite and >= 0. This is the one
    check of a run's budget: the engine, the input pipeline and suites all call it.
    """
    for name, value in (("epochs", epochs), ("batch size", batch_size)):
        if not _whole(value) or value < 1:
            raise BenchbnnError(f"{name} must be a positive whole number, got {value!r}")
    if not _whole(seed) or seed < 0:
        raise BenchbnnError(f"seed must be a whole number >= 0, got {seed!r}")
    if subset is not None and (not _whole(subset) or subset < 1):
        raise BenchbnnError(f"subset must be a positive whole number or None, got {subset!r}")
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 <= val_fraction < 1
    ):
        raise BenchbnnError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not (math.isfinite(l2) and l2 >= 0):
        raise BenchbnnError(f"l2 must be a finite number >= 0, got {l2!r}")


def _frozen(value: Any) -> Any:
    """A canonical, JSON-ready copy (sorted mappings, lists for tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _frozen(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_frozen(v) for v in value]
    return value


@dataclass(frozen=True)
class RunConfig:
    """One training run: data, model, optimizer with hyperparameters and schedules, budget, seed.

    ``hparams`` holds the optimizer hyperparameters as the user wrote them (defaults are filled
    in by :meth:`resolved`); ``schedules`` maps a hyperparameter name to schedule data such as
    ``{"schedule": "polynomial", "start": 1e-5, "end": 1e-8}``.
    """

    dataset: str
    arch: str
    optimizer: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    schedules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    arch_options: Mapping[str, Any] = field(default_factory=dict)
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 100
    seed: int = 0
    subset: int | None = None
    val_fraction: float = 0.0
    l2: float = 0.0

    def check_budget(self) -> None:
        """Raise BenchbnnError when the budget is invalid (see :func:`check_budget`)."""
        check_budget(
            epochs=self.epochs,
            batch_size=self.batch_size,
            seed=self.seed,
            subset=self.subset,
            val_fraction=self.val_fraction,
            l2=self.l2,
        )

    def identity(self) -> dict[str, Any]:
        """Everything that determines the result, in canonical form."""
        data = {f.name: _frozen(getattr(self, f.name)) for f in fields(self)}
        data["schema"] = CONFIG_SCHEMA_VERSION
        return data

    def config_hash(self) -> str:
        """A short stable hash of :meth:`identity` (16 hex digits)."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return _frozen(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
