"""What a tracked run is, where it ran and who owns it: the tags that make the store a ledger.

Identity. A run's identity is its resolved configuration (:meth:`RunConfig.config_hash`, see
:mod:`benchbnn.core.config`), tagged as ``benchbnn.config_hash`` with the schema that made it.
Runs tracked before schema 2 carry the hash of the configuration as written; such a run stands
for a configuration only while the hyperparameters and architecture options it recorded (with
defaults filled in, as every run records them) equal those the configuration resolves to now
(:func:`recorded_as_resolved`). A plugin default that changed since the run was made therefore
makes the old run another configuration, never a silently wrong reuse. Dataset options were
recorded as written, so a dataset plugin's changed default is not detected for such runs.

An optimizer's default schedules are part of the identity (written as schedule data, as if the
configuration gave them); optimizers without any keep the identity they had before default
schedules existed. This module imports :mod:`benchbnn.optim.schedules`, which installs the reader
of default schedules that the identity needs.

Environment. What changes a run's numerics without being part of its configuration: the device
type, the torch version, the number of CPU threads torch uses (CPU runs: it changes the order of
floating-point reductions) and the world size. It is recorded on every run
(:func:`environment_tags`) and summed up in one line, ``benchbnn.environment``, that compare
matches runs by. Runs tracked before it was recorded are of :data:`UNKNOWN_ENVIRONMENT`.

Owner. Every run records the host, pid and process start time of the process training it
(:func:`owner_tags`), so that a RUNNING run whose process died can be told from one that is
still training (:func:`owner_state`).

Failure classes. A run that did not finish failed either because of itself (``run``: it
diverged, its configuration is invalid; that is a result) or because of its environment
(``environment``: killed, out of memory, an I/O or permission error, a dead worker; never a
result, compare redoes it), or a lifecycle plugin stopped it on purpose (``stopped``: raising
:class:`~benchbnn.core.errors.RunStopped`, as the tuner prunes a trial; a result, never redone,
although the run ends KILLED). :func:`failure_class_of` says which for an exception,
:func:`recorded_failure_class` for a tracked run (runs tracked before the class was recorded are
classed by their failure reason).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from benchbnn.core.config import CONFIG_SCHEMA_VERSION, RunConfig, resolved_options
from benchbnn.core.names import (
    FAILED,
    FAILURE_ENVIRONMENT,
    FAILURE_RUN,
    FAILURE_STOPPED,
    FINISHED,
    KILLED,
    PARAM_ARCH_OPTION_PREFIX,
    PARAM_HPARAM_PREFIX,
    RESULT_FAILURE_CLASSES,
    TAG_CONFIG_SCHEMA,
    TAG_CPU_THREADS,
    TAG_DEVICE_TYPE,
    TAG_ENVIRONMENT,
    TAG_FAILURE,
    TAG_FAILURE_CLASS,
    TAG_HOST,
    TAG_LEGACY_CONFIG_HASH,
    TAG_PID,
    TAG_PROCESS_START,
    TAG_TORCH_VERSION,
    TAG_WORLD_SIZE,
    UNKNOWN_ENVIRONMENT,
)
from benchbnn.core.processes import owner_alive, this_process
from benchbnn.optim import schedules  # noqa: F401 - installs the default-schedule reader

#: Tags a resumed run takes from the process that continues it.
OWNER_TAGS = (TAG_HOST, TAG_PID, TAG_PROCESS_START)
#: Words in a failure reason that mark an environment failure (for runs tracked before the
#: failure class was recorded, and for exceptions that wrap one).
ENVIRONMENT_SIGNS = (
    "out of memory",
    "dataloader worker",
    "permissionerror",
    "oserror",
    "ioerror",
    "filenotfounderror",
    "isadirectoryerror",
    "no space left",
    "memoryerror",
    "interrupted",
    "killed",
    "stopped by a plugin",
    "its checkpoint cannot be resumed",
    "is gone",
)


# --- identity ---------------------------------------------------------------------------------


def identity_tags(config: RunConfig) -> dict[str, str]:
    """The schema of ``config``'s hash and its schema-1 hash, as MLflow tags."""
    return {
        TAG_CONFIG_SCHEMA: str(CONFIG_SCHEMA_VERSION),
        TAG_LEGACY_CONFIG_HASH: config.legacy_config_hash(),
    }


def schema_of(tags: Mapping[str, str]) -> int:
    """The identity schema a tracked run's config hash is of (1 when not recorded)."""
    text = str(tags.get(TAG_CONFIG_SCHEMA, "1"))
    return int(text) if text.isdigit() else 1


def recorded_params(config: RunConfig) -> dict[str, str]:
    """The ``hparam.*`` and ``arch_option.*`` params a run of ``config`` records now.

    Defaults are filled in and values written as the tracker writes them. Raises what
    :func:`~benchbnn.core.config.resolved_options` raises.
    """
    from benchbnn.train.tracking import run_params

    options = resolved_options(config)
    view = SimpleNamespace(
        config=config,
        hparams=options["hparams"],
        arch_options=options["arch_options"],
        schedules={},  # only hparam.* and arch_option.* are compared
    )
    prefixes = (PARAM_HPARAM_PREFIX, PARAM_ARCH_OPTION_PREFIX)
    return {k: v for k, v in run_params(view).items() if k.startswith(prefixes)}


def recorded_as_resolved(params: Mapping[str, str], config: RunConfig) -> bool:
    """Whether a tracked run's ``params`` record ``config`` as it resolves now.

    True when the run's ``hparam.*`` and ``arch_option.*`` params are exactly (same names, same
    text) those a run of ``config`` records today (:func:`recorded_params`). This is the rule
    for runs of schema 1, found by the hash of the configuration as written: a default that
    changed since makes them another configuration. False when ``config`` cannot be resolved.
    """
    try:
        expected = recorded_params(config)
    except Exception:
        return False
    prefixes = (PARAM_HPARAM_PREFIX, PARAM_ARCH_OPTION_PREFIX)
    return {k: str(v) for k, v in params.items() if k.startswith(prefixes)} == expected


# --- environment ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """The numerical environment of a run.

    ``cpu_threads`` is ``torch.get_num_threads()`` for a CPU run, None on an accelerator;
    ``precision`` the arithmetic of the forward and backward passes ("fp32", or "bf16" for
    autocast, which rounds sums and gradients and so gives other numbers).
    """

    device_type: str
    torch_version: str
    cpu_threads: int | None
    world_size: int
    precision: str = "fp32"

    def key(self) -> str:
        """One line, e.g. ``cpu, torch 2.5.1, 2 threads, world size 1`` (what compare matches).

        A precision other than fp32 is appended (``..., world size 1, bf16``); fp32 is left
        out, so runs tracked before the precision was recorded keep their line.
        """
        parts = [self.device_type, f"torch {self.torch_version}"]
        if self.cpu_threads is not None:
            parts.append(f"{self.cpu_threads} thread{'s' if self.cpu_threads != 1 else ''}")
        parts.append(f"world size {self.world_size}")
        if self.precision != "fp32":
            parts.append(self.precision)
        return ", ".join(parts)

    def tags(self) -> dict[str, str]:
        """The environment as MLflow tags (see :mod:`benchbnn.core.names`)."""
        tags = {
            TAG_DEVICE_TYPE: self.device_type,
            TAG_TORCH_VERSION: self.torch_version,
            TAG_WORLD_SIZE: str(self.world_size),
            TAG_ENVIRONMENT: self.key(),
        }
        if self.cpu_threads is not None:
            tags[TAG_CPU_THREADS] = str(self.cpu_threads)
        return tags


def current_environment(
    device: Any = None, world_size: int | None = None, precision: str = "fp32"
) -> Environment:
    """The environment a run on ``device`` would have in this process, now.

    ``device`` is a torch device or its name (None: CUDA when available, else CPU, as the
    engine chooses); ``world_size`` defaults to torchrun's ``WORLD_SIZE`` (1 without torchrun);
    ``precision`` is the run's ``--precision``.
    """
    import torch

    if device is None:
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = torch.device(device).type
    if world_size is None:
        text = os.environ.get("WORLD_SIZE", "1")
        world_size = int(text) if text.isdigit() else 1
    threads = torch.get_num_threads() if kind == "cpu" else None
    return Environment(kind, torch.__version__, threads, int(world_size), precision)


def environment_of(tags: Mapping[str, str]) -> str:
    """The environment line of a tracked run (:data:`UNKNOWN_ENVIRONMENT` when unrecorded)."""
    return str(tags.get(TAG_ENVIRONMENT) or UNKNOWN_ENVIRONMENT)


def environment_tags(device: Any, world_size: int, precision: str = "fp32") -> dict[str, str]:
    """:meth:`Environment.tags` of :func:`current_environment`."""
    return current_environment(device, world_size, precision).tags()


def reopened_tags(existing: Mapping[str, str], current: Mapping[str, str]) -> dict[str, str]:
    """The tags to set on a tracked run that a process resumes: its new owner, and when the
    environment is not the one the run started in, ``benchbnn.environment`` saying both (so the
    run matches neither and is never reused as of one environment).

    ``existing`` are the run's tags, ``current`` those the resuming process would give a new run.
    """
    tags = {k: current[k] for k in OWNER_TAGS if k in current}
    before, now = environment_of(existing), current.get(TAG_ENVIRONMENT)
    if now and before != now and not before.startswith("mixed: "):
        tags[TAG_ENVIRONMENT] = f"mixed: {before}, then {now}"
    return tags


# --- owner ------------------------------------------------------------------------------------


def owner_tags() -> dict[str, str]:
    """The host, pid and start time of this process, as MLflow tags."""
    host, pid, start = this_process()
    return {TAG_HOST: host, TAG_PID: str(pid), TAG_PROCESS_START: start}


def owner_state(tags: Mapping[str, str]) -> bool | None:
    """Whether the process that owns a tracked run is alive.

    True or False on this host; None when the owner is on another host (only a heartbeat
    could tell) or was not recorded (runs tracked before owners were).
    """
    host, pid = tags.get(TAG_HOST), str(tags.get(TAG_PID, ""))
    if not host or not pid.isdigit():
        return None
    return owner_alive(host, int(pid), str(tags.get(TAG_PROCESS_START, "")))


# --- failure classes --------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (no loops)."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def failure_class_of(exc: BaseException) -> str:
    """:data:`FAILURE_ENVIRONMENT` or :data:`FAILURE_RUN` for a run that raised ``exc``.

    Environment: an interruption (KeyboardInterrupt, SystemExit), OSError (I/O, permissions,
    a full disk), MemoryError, torch's out-of-memory and distributed errors, a dead DataLoader
    worker, anywhere in the exception's chain. Anything else is the run's own failure.
    """
    import torch

    kinds: tuple[type[BaseException], ...] = (
        KeyboardInterrupt,
        SystemExit,
        OSError,
        MemoryError,
        torch.cuda.OutOfMemoryError,
    )
    dist_error = getattr(torch.distributed, "DistError", None)
    if isinstance(dist_error, type):
        kinds = (*kinds, dist_error)
    for item in _chain(exc):
        if isinstance(item, kinds):
            return FAILURE_ENVIRONMENT
        text = str(item).lower()
        if "out of memory" in text or "dataloader worker" in text:
            return FAILURE_ENVIRONMENT
    return FAILURE_RUN


def failure_class_of_reason(reason: str) -> str:
    """The failure class a failure reason suggests, for runs tracked before the class was
    recorded: environment when it names an interruption, an I/O or memory error or a dead
    worker (:data:`ENVIRONMENT_SIGNS`), else run (divergence and the like)."""
    text = reason.lower()
    return FAILURE_ENVIRONMENT if any(s in text for s in ENVIRONMENT_SIGNS) else FAILURE_RUN


def recorded_failure_class(status: str, tags: Mapping[str, str]) -> str | None:
    """How a tracked run that did not finish failed (None for FINISHED and RUNNING runs).

    KILLED is an environment failure unless its ``benchbnn.failure_class`` tag says ``stopped``
    (a plugin stopped it on purpose); FAILED is what that tag says, else what its failure
    reason suggests (:func:`failure_class_of_reason`).
    """
    if status == KILLED:
        stopped = tags.get(TAG_FAILURE_CLASS) == FAILURE_STOPPED
        return FAILURE_STOPPED if stopped else FAILURE_ENVIRONMENT
    if status != FAILED:
        return None
    recorded = tags.get(TAG_FAILURE_CLASS)
    if recorded in (FAILURE_RUN, FAILURE_ENVIRONMENT):
        return recorded
    return failure_class_of_reason(str(tags.get(TAG_FAILURE, "")))


def is_result(status: str, tags: Mapping[str, str]) -> bool:
    """True for a run that is a result: FINISHED, FAILED because of itself, or stopped on
    purpose by a plugin (:data:`~benchbnn.core.names.RESULT_FAILURE_CLASSES`)."""
    return status == FINISHED or recorded_failure_class(status, tags) in RESULT_FAILURE_CLASSES
