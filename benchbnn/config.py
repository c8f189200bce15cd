"""What identifies a training run, and the names it is tracked under.

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

# Names shared by the engine (which writes them) and compare / leaderboard / tune (which read
# them). Accuracies are percentages (0-100), as in the papers' tables.
TAG_CONFIG_HASH = "benchbnn.config_hash"
TAG_VERSION = "benchbnn.version"
TAG_SUITE = "benchbnn.suite"
TAG_ENTRY = "benchbnn.entry"
TAG_FAILURE = "benchbnn.failure_reason"
TAG_STUDY = "benchbnn.study"
TAG_TRIAL = "benchbnn.trial"
DEFAULT_EXPERIMENT = "benchbnn"

EPOCH_METRICS = (
    "train_loss", "train_top1", "train_top5",
    "val_loss", "val_top1", "val_top5",
    "test_loss", "test_top1", "test_top5",
    "epoch_time_s", "images_per_s", "flip_ratio", "flip_log_ratio", "lr",
)
STEP_METRICS = ("step_flip_log_ratio",)
RUN_METRICS = ("binary_weights", "real_parameters", "state_bytes_per_binary_weight", "peak_memory_mb")

# Written by the engine's tracking plugin (benchbnn/tracking.py) for every run.
TAG_GIT_COMMIT = "benchbnn.git_commit"  # commit of the benchbnn source, "-dirty" if modified
TAG_TORCH_VERSION = "benchbnn.torch_version"
TAG_DEVICE = "benchbnn.device"
TAG_WORLD_SIZE = "benchbnn.world_size"
TAG_RESUMED = "benchbnn.resumed_from_epoch"  # set when --resume continued the run
TAG_PLUGIN_PREFIX = "benchbnn.plugin."  # + optimizer / architecture / dataset: "dist==version"
# MLflow params: the RunConfig fields by name (dataset, arch, optimizer, epochs, batch_size,
# seed, subset, val_fraction, l2), plus one param per entry of these mappings:
PARAM_HPARAM_PREFIX = "hparam."  # every optimizer hyperparameter, defaults filled in
PARAM_SCHEDULE_PREFIX = "schedule."  # schedule data as JSON
PARAM_ARCH_OPTION_PREFIX = "arch_option."  # architecture options, defaults filled in
PARAM_DATASET_OPTION_PREFIX = "dataset_option."
ARTIFACT_CONFIG = "config.json"
ARTIFACT_METRICS = "metrics.json"
ARTIFACT_CURVES = "curves.png"


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
