"""What identifies a training run.

A :class:`RunConfig` describes one run. Everything that changes the result is part of its
identity (and its :meth:`RunConfig.config_hash`); where the data lives, which device runs it and
where it is tracked are not (the numerical environment is recorded beside the identity, see
:mod:`benchbnn.train.identity`). Compare and tune look finished runs up by that hash, so a
configuration is never trained twice.

The identity is the *resolved* configuration (schema :data:`CONFIG_SCHEMA_VERSION`): every
optimizer hyperparameter with the plugin's defaults filled in, the architecture and dataset
options (the dataset's augmentation included) with defaults filled in, each in its declared
type, the schedules as data, the budget as whole numbers and floats, and the schema version.
Writing a default explicitly or leaving it out is the same run; a plugin release that changes a
default makes a new one. Computing it needs the optimizer, architecture and dataset plugins
installed (:class:`~benchbnn.core.errors.UnknownNameError` otherwise).

Default schedules. An optimizer may declare schedules that its runs follow unless the
configuration gives one for that hyperparameter
(:attr:`~benchbnn.core.specs.OptimizerSpec.default_schedules`). They are part of the identity,
written as schedule data under ``schedules`` as if the configuration had given them, so writing a
default schedule out or leaving it out is the same run; an optimizer without default schedules
has exactly the identity (and hash) it had before they existed. A value given for such a
hyperparameter without a schedule is refused (:func:`resolved_schedules`): the schedule would
overwrite it from the first step, so the configuration says ``constant:V`` to hold it at V.

Runs tracked before schema 2 carry the hash of the configuration as written
(:meth:`RunConfig.legacy_config_hash`, schema 1). They stand for a configuration only while the
hyperparameters and architecture options they recorded with defaults filled in are those the
configuration resolves to now (:func:`benchbnn.train.runs.find_config_runs`), so a default that
changed since is never reused silently.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from benchbnn.core import limits
from benchbnn.core.errors import BenchbnnError, HyperparameterError

#: Bump when the meaning of a configuration changes (e.g. a fix to an update rule), so that old
#: tracked runs stop being reused. 2: the resolved configuration (defaults filled in).
CONFIG_SCHEMA_VERSION = 2
#: The schema of runs tracked before: the configuration as written (defaults left out).
LEGACY_SCHEMA_VERSION = 1


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
    check of a run's budget: the engine, the input pipeline and suites all call it. Each value
    also stays within its declared range (:mod:`benchbnn.core.limits`: at most 100,000 epochs,
    ...).
    """
    for name, value in (("epochs", epochs), ("batch size", batch_size)):
        if not _whole(value) or value < 1:
            raise BenchbnnError(f"{name} must be a positive whole number, got {value!r}")
    if not _whole(seed) or seed < 0:
        raise BenchbnnError(f"seed must be a whole number >= 0, got {seed!r}")
    if subset is not None and (not _whole(subset) or subset < 1):
        raise BenchbnnError(f"subset must be a positive whole number or None, got {subset!r}")
    for name, value, declared in (
        ("epochs", epochs, limits.EPOCHS),
        ("batch size", batch_size, limits.BATCH_SIZE),
        ("seed", seed, limits.SEED),
        ("subset", subset, limits.SUBSET),
    ):
        if value is not None:  # the declared upper ends: past them a value is a typo
            limits.within(declared, value, name)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 <= val_fraction < 1
    ):
        raise BenchbnnError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if (
        isinstance(l2, bool)
        or not isinstance(l2, (int, float))
        or not (math.isfinite(l2) and l2 >= 0)
    ):
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
    in by :func:`resolved_options`, and the identity is of that resolved form); ``schedules``
    maps a hyperparameter name to schedule data such as
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
        """Everything that determines the result: the resolved configuration (see the module
        docstring), JSON-ready.

        Raises UnknownNameError for an optimizer, architecture or dataset no plugin provides,
        HyperparameterError for a hyperparameter or option it does not have or a value that
        does not fit.
        """
        return resolved_identity(self)

    def config_hash(self) -> str:
        """A short stable hash of :meth:`identity` (16 hex digits); raises what it raises."""
        return _digest(self.identity())

    def legacy_identity(self) -> dict[str, Any]:
        """The identity of schema 1: the fields as written (no plugin needed), never raises."""
        data = {f.name: _frozen(getattr(self, f.name)) for f in fields(self)}
        data["schema"] = LEGACY_SCHEMA_VERSION
        return data

    def legacy_config_hash(self) -> str:
        """The hash runs tracked before schema 2 were tagged with (16 hex digits)."""
        return _digest(self.legacy_identity())

    def to_dict(self) -> dict[str, Any]:
        return _frozen(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _digest(identity: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of ``identity`` as canonical JSON."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _as(kind: type, value: Any) -> Any:
    """``value`` as ``kind`` (int or float) when it is a number of either kind, else as is."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (kind is float or float(value).is_integer()):
        return kind(value)
    return value


def resolved_options(config: RunConfig) -> dict[str, dict[str, Any]]:
    """``config``'s hyperparameters, architecture options and dataset options (augmentation
    included) with the plugins' defaults filled in and every value in its declared type.

    Returns ``{"hparams": ..., "arch_options": ..., "dataset_options": ...}``. Raises
    UnknownNameError for a name no plugin provides, HyperparameterError for an unknown
    hyperparameter or option or a value that does not fit.
    """
    from benchbnn.core.plugins import get_architecture, get_dataset, get_optimizer

    hparams = get_optimizer(config.optimizer).resolve(**dict(config.hparams))
    arch_options = get_architecture(config.arch).resolve_options(config.arch_options)
    options, augmentation = get_dataset(config.dataset).resolve_options(config.dataset_options)
    return {
        "hparams": hparams,
        "arch_options": arch_options,
        "dataset_options": {**options, "augmentation": augmentation},
    }


def resolved_schedules(config: RunConfig) -> dict[str, Any]:
    """``config``'s schedules with its optimizer's default schedules for the hyperparameters it
    gives none for (defaults first, as data; the given ones as written).

    Raises HyperparameterError when ``config`` gives a value, but no schedule, for a
    hyperparameter that has a default schedule (the schedule would overwrite the value: the
    message says to write ``constant:V``), UnknownNameError for an unknown optimizer and
    PluginError for a default schedule its plugin declares wrongly.
    """
    from benchbnn.core.plugins import get_optimizer

    spec = get_optimizer(config.optimizer)
    defaults = spec.default_schedule_data()
    refuse_overwritten_values(spec.name, defaults, config.hparams, config.schedules)
    return {
        **{k: v for k, v in defaults.items() if k not in config.schedules},
        **config.schedules,
    }


def refuse_overwritten_values(
    optimizer: str,
    defaults: Mapping[str, Any],
    hparams: Mapping[str, Any],
    schedules: Mapping[str, Any],
) -> None:
    """Raise HyperparameterError for a value in ``hparams`` of a hyperparameter that has a
    default schedule (``defaults``: name -> schedule data or text) and no schedule in
    ``schedules``: the default schedule would overwrite it from the first step. The message
    names the fix (schedule it as ``constant:V``)."""
    for name in sorted(set(defaults) & set(hparams) - set(schedules)):
        default = defaults[name]
        shown = _compact(default) if isinstance(default, Mapping) else str(default)
        value = hparams[name]
        raise HyperparameterError(
            f"{name!r} of optimizer {optimizer!r} follows its default schedule {shown}, which "
            f"would overwrite the value {name} = {value!r} given without a schedule; to hold it "
            f"there, schedule it as constant (--schedule {name}=constant:{value} or "
            f'schedules.{name} = "constant:{value}"), or give another schedule'
        )


def _compact(data: Mapping[str, Any]) -> str:
    """Schedule data in a short readable form for messages (``cosine(start=.., end=..)``)."""
    values = ", ".join(f"{k}={v}" for k, v in data.items() if k != "schedule")
    return f"{data.get('schedule')}({values})"


def resolved_identity(config: RunConfig) -> dict[str, Any]:
    """The identity of ``config`` in schema :data:`CONFIG_SCHEMA_VERSION` (JSON-ready).

    An optimizer's ``rule_version`` above 1 is part of it (version 1 is left out, so older
    runs keep their hashes). The options come from :func:`resolved_options` (which raises what
    it raises); schedules are
    taken as data, as :func:`benchbnn.train.engine.canonical_config` writes them, with the
    optimizer's default schedules for the hyperparameters given none (:func:`resolved_schedules`,
    which raises what it raises).
    """
    from benchbnn.core.plugins import get_optimizer

    options = resolved_options(config)
    schedules = resolved_schedules(config)
    version = get_optimizer(config.optimizer).rule_version
    rule = {} if version == 1 else {"optimizer_rule_version": version}
    return {
        **rule,
        "schema": CONFIG_SCHEMA_VERSION,
        "dataset": config.dataset,
        "arch": config.arch,
        "optimizer": config.optimizer,
        "hparams": _frozen(options["hparams"]),
        "schedules": _frozen(schedules),
        "arch_options": _frozen(options["arch_options"]),
        "dataset_options": _frozen(options["dataset_options"]),
        "epochs": _as(int, config.epochs),
        "batch_size": _as(int, config.batch_size),
        "seed": _as(int, config.seed),
        "subset": _as(int, config.subset),
        "val_fraction": _as(float, config.val_fraction),
        "l2": _as(float, config.l2),
    }
