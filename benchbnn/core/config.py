"""What identifies a training run.

A :class:`RunConfig` is the resolved description of one run. Everything that changes the result
is part of its identity (and its :meth:`RunConfig.config_hash`); where the data lives, which
device runs it and where it is tracked are not. Compare and tune look finished runs up by that
hash, so a configuration is never trained twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Bump when the meaning of a configuration changes (e.g. a fix to an update rule), so that old
#: tracked runs stop being reused.
CONFIG_SCHEMA_VERSION = 1


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
