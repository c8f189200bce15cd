"""Per-epoch checkpoints that let a killed run continue bit-identically.

A checkpoint holds everything the rest of the run depends on: model and optimizer state (PBop's
generator included), the step counter (schedules are a pure function of it), the epoch (the data
order is a pure function of seed and epoch), the random number generators, the history so far
and the MLflow run id. It is written to a temporary file and renamed over the previous one, so a
kill at any moment leaves either the old or the new checkpoint, never a torn file. Once a run
has finished the engine deletes its checkpoint (:func:`remove`) unless asked to keep it.

A checkpoint also records what made it (:func:`made_with`): the checkpoint format, the benchbnn
release, the configuration hash, the optimizer, architecture and dataset plugins with their
versions, and the optimizer's state layout (per param group kind: hyperparameter names and state
buffers with their dtypes). Before a resume, :func:`check_resumable` compares the checkpoint with
the run as built now and raises :class:`CheckpointMismatch`, in one line saying what differs,
when the checkpoint cannot continue it (e.g. a plugin release added a state buffer). The layout
is read from the saved tensors themselves, so checkpoints of format 1, written before the record
existed, are checked the same way and resume whenever they do match.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError, first_line
from benchbnn.core.names import VERSION
from benchbnn.core.paths import writable_dir
from benchbnn.core.plugins import provenance

#: 2: checkpoints carry the :data:`RECORD` of what made them; 1: written before it existed.
FORMAT_VERSION = 2
#: The formats :func:`load` reads.
READABLE_FORMATS = (1, 2)
FILENAME = "last.pt"
SUMMARY = "last.json"
#: Key of the record of what made a checkpoint, in the checkpoint and in its summary.
RECORD = "made_with"
#: (plugin kind, RunConfig field naming it) for every plugin a checkpoint records.
PLUGIN_FIELDS = (("optimizer", "optimizer"), ("architecture", "arch"), ("dataset", "dataset"))
#: How ``benchbnn run`` starts a run over when its checkpoint cannot continue it.
START_OVER = "run it again without --resume to start over from epoch 1 (in a new MLflow run)"


class CheckpointMismatch(BenchbnnError):
    """A checkpoint that cannot continue this run: unreadable, in a format this benchbnn does not
    read, or made with another model or optimizer state layout.

    ``reason`` says in one line what differs; ``run_id`` is the MLflow run the checkpoint
    belongs to (None when unknown) and ``epoch`` the epochs it holds. The message is the reason
    followed by ``remedy``, how to go on.
    """

    def __init__(
        self,
        reason: str,
        *,
        run_id: str | None = None,
        epoch: int | None = None,
        remedy: str = START_OVER,
    ) -> None:
        super().__init__(f"{reason}; {remedy}")
        self.reason, self.run_id, self.epoch, self.remedy = reason, run_id, epoch, remedy


def default_dir(config_hash: str, root: str | Path | None = None) -> Path:
    """``<cwd>/.benchbnn/checkpoints/<config_hash>`` (or under ``root``)."""
    base = Path(root) if root is not None else Path.cwd() / ".benchbnn" / "checkpoints"
    return base / config_hash


def run_dir(config_hash: str, given: str | Path | None = None) -> Path:
    """The folder of a run's checkpoint: ``given`` (``--checkpoint-dir``) when set, else
    :func:`default_dir`."""
    return Path(given) if given else default_dir(config_hash)


def check_writable(directory: Path) -> None:
    """Raise a clear error now if checkpoints could not be written into ``directory`` later."""
    writable_dir(directory, "checkpoints", "--checkpoint-dir")


def rng_state() -> dict[str, Any]:
    """Every random number generator the run may touch, in a form torch.load(weights_only) reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _write_atomically(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(directory: Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` atomically as ``directory/last.pt`` (plus a ``last.json`` summary)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / FILENAME
    _write_atomically(target, lambda fh: torch.save({"format": FORMAT_VERSION, **state}, fh))
    summary = {k: state.get(k) for k in ("config_hash", "epoch", "step", "run_id", RECORD)}
    summary["format"] = FORMAT_VERSION
    _write_atomically(directory / SUMMARY, lambda fh: fh.write(json.dumps(summary).encode()))
    return target


def _summary_run_id(directory: Path, config_hash: str) -> str | None:
    """The MLflow run id in ``config_hash``'s ``last.json`` summary (None if unknown)."""
    try:
        summary = json.loads((directory / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("config_hash") != config_hash:
        return None
    return summary.get("run_id")


def load(directory: Path, config_hash: str) -> dict[str, Any] | None:
    """The last checkpoint in ``directory`` (None if there is none), checked against the config.

    Raises CheckpointMismatch when it cannot be read or is in a format this benchbnn does not
    read, BenchbnnError when it belongs to another configuration.
    """
    path = directory / FILENAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatch(
            f"checkpoint {path} cannot be read ({first_line(exc)})",
            run_id=_summary_run_id(directory, config_hash),
        ) from None
    if not isinstance(state, dict):
        raise CheckpointMismatch(
            f"checkpoint {path} holds a {type(state).__name__}, not a benchbnn checkpoint",
            run_id=_summary_run_id(directory, config_hash),
        )
    if state.get("format") not in READABLE_FORMATS:
        raise CheckpointMismatch(
            f"checkpoint {path} has format {state.get('format')!r}, this benchbnn "
            f"{VERSION} reads formats {', '.join(map(str, READABLE_FORMATS))}",
            run_id=state.get("run_id") if state.get("config_hash") == config_hash else None,
            epoch=state.get("epoch"),
        )
    if state.get("config_hash") != config_hash:
        raise BenchbnnError(
            f"checkpoint {path} belongs to configuration {state.get('config_hash')}, not "
            f"{config_hash}; use another --checkpoint-dir"
        )
    return state


def remove(directory: Path) -> bool:
    """Delete the checkpoint in ``directory`` (``last.pt``, ``last.json`` and temporary files
    left by an interrupted write), then the directory itself if nothing else is in it.

    Only files benchbnn writes are touched, so a ``--checkpoint-dir`` shared with other files
    keeps them. Returns whether a checkpoint was deleted. Never raises: a file that cannot be
    deleted is left with a warning.
    """
    removed = False
    try:
        targets = [directory / FILENAME, directory / SUMMARY]
        targets += [
            p
            for p in directory.glob(".*.tmp")
            if p.name.startswith((f".{FILENAME}-", f".{SUMMARY}-"))
        ]
        for path in targets:
            if path.is_file():
                path.unlink()
                removed = removed or path.name == FILENAME
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    except OSError as exc:
        warnings.warn(f"benchbnn: could not delete checkpoint {directory}: {exc}", stacklevel=2)
    return removed


def saved_epoch(directory: Path, config_hash: str) -> int | None:
    """The epoch of ``config_hash``'s checkpoint in ``directory`` (None if there is none).

    Reads the small ``last.json`` summary written beside the checkpoint, not the tensors.
    """
    try:
        summary = json.loads((directory / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if summary.get("config_hash") != config_hash or not (directory / FILENAME).is_file():
        return None
    return int(summary["epoch"])


# --- what made a checkpoint, and whether it can continue a run --------------------------------


def plugin_record(config: RunConfig) -> dict[str, dict[str, str]]:
    """Name, distribution and version of the plugins behind ``config``'s optimizer,
    architecture and dataset, by plugin kind.

    Raises UnknownNameError for a name no plugin registered.
    """
    record = {}
    for kind, field in PLUGIN_FIELDS:
        name = str(getattr(config, field))
        info = provenance(kind, name)
        record[kind] = {"name": name, "distribution": info.distribution, "version": info.version}
    return record


def _describe(value: Any, shape: tuple[int, ...] | None) -> str:
    """A state entry's type: its dtype, plus its shape when that is not its parameter's."""
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    dtype = str(value.dtype).removeprefix("torch.")
    return dtype if tuple(value.shape) == shape else f"{dtype} of shape {tuple(value.shape)}"


def _group_layout(
    index: int,
    group: Mapping[str, Any],
    saved: Mapping[Any, Any],
    shapes: list[tuple[int, ...]],
) -> dict[str, Any]:
    """The layout of one saved param group (see :func:`state_layout`)."""
    params = list(group.get("params", []))
    buffers: dict[str, set[str]] = {}
    for position, key in enumerate(params):
        shape = shapes[position] if position < len(shapes) else None
        entry = saved.get(key, {})
        for name, value in entry.items() if isinstance(entry, Mapping) else ():
            buffers.setdefault(str(name), set()).add(_describe(value, shape))
    return {
        "kind": str(group.get("kind", f"group {index}")),
        "params": len(params),
        "hyperparameters": sorted(str(k) for k in group if k != "params"),
        "buffers": {
            name: " or ".join(sorted(kinds)) if len(kinds) < 3 else "various types"
            for name, kinds in sorted(buffers.items())
        },
    }


def state_layout(state: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What an optimizer ``state_dict()`` keeps, without the values (JSON-ready).

    One entry per param group: its ``kind``, how many parameters it has, its hyperparameter
    names and, per state buffer name, the dtype (with the shape when that is not its
    parameter's, for which ``optimizer``'s parameters are the reference); ``extra`` lists the
    keys of a BinaryOptimizer's extra state (e.g. PBop's generator). Never raises: entries of an
    unexpected form are left out.
    """
    if not isinstance(state, Mapping):
        return {"groups": [], "extra": []}
    shapes = [[tuple(p.shape) for p in g["params"]] for g in optimizer.param_groups]
    saved = state.get("state", {})
    saved = saved if isinstance(saved, Mapping) else {}
    groups = [
        _group_layout(i, group, saved, shapes[i] if i < len(shapes) else [])
        for i, group in enumerate(state.get("param_groups", []))
        if isinstance(group, Mapping)
    ]
    extra = state.get("benchbnn")
    keys = sorted(map(str, extra)) if isinstance(extra, Mapping) else []
    return {"groups": groups, "extra": keys}


def made_with(
    config_hash: str,
    config: RunConfig,
    optimizer_state: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """The record a checkpoint keeps of what made it (JSON-ready).

    Checkpoint format, benchbnn release, configuration hash, the plugins with their versions
    (:func:`plugin_record`) and the layout of ``optimizer_state``, the optimizer state saved
    (:func:`state_layout`). Raises UnknownNameError for a plugin name nobody registered.
    """
    return {
        "format": FORMAT_VERSION,
        "benchbnn": VERSION,
        "config_hash": config_hash,
        "plugins": plugin_record(config),
        "optimizer_state": state_layout(optimizer_state, optimizer),
    }


def _names(names: Any) -> str:
    return f"({', '.join(names)})" if names else "(none)"


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _them(names: list[Any]) -> str:
    return "them" if len(names) > 1 else "it"


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def model_differences(saved: Any, model: torch.nn.Module) -> list[tuple[str, str]]:
    """Why a checkpoint's model state does not load into ``model``: (what the checkpoint holds,
    what the model is now) pairs, empty when every entry is there with its shape.

    Only names and shapes count (``load_state_dict`` converts dtypes).
    """
    if not isinstance(saved, Mapping):
        return [("no model state", "builds a model")]
    current = model.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    reshaped = [k for k in current if k in saved and _shape(saved[k]) != _shape(current[k])]
    found = []
    if missing:
        found.append((f"model state lacking {_few(missing)}", f"builds {_them(missing)}"))
    if unexpected:
        no_longer = f"no longer builds {_them(unexpected)}"
        found.append((f"model state with {_few(unexpected)}", no_longer))
    for key in reshaped[:1]:
        more = f" (and {len(reshaped) - 1} more)" if len(reshaped) > 1 else ""
        found.append(
            (
                f"{key} of shape {_shape(saved[key])}{more}",
                f"builds it with shape {_shape(current[key])}",
            )
        )
    return found


def _group_differences(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What one saved param group lacks or holds differently (see :func:`layout_differences`)."""
    kind = now["kind"]
    if then["kind"] != kind:
        return [(f"a parameter group of kind {then['kind']!r}", f"expects kind {kind!r}")]
    if then["params"] != now["params"]:
        return [(f"{then['params']} {kind} parameters", f"optimizes {now['params']}")]
    found = []
    missing = [h for h in now["hyperparameters"] if h not in then["hyperparameters"]]
    if missing:
        found.append((f"no {kind} hyperparameter {_names(missing)}", f"needs {_them(missing)}"))
    buffers, saved = now["buffers"], then["buffers"]
    if buffers and any(name not in saved for name in buffers):
        found.append((f"{kind} state buffers {_names(saved)}", f"keeps {_names(buffers)}"))
    for name, kinds in buffers.items():
        if name in saved and saved[name] != kinds:
            found.append((f"{kind} state buffer {name} as {saved[name]}", f"keeps it as {kinds}"))
    return found


def _kinds(groups: list[Mapping[str, Any]]) -> str:
    return _names([g["kind"] for g in groups])


def layout_differences(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Why an optimizer state of layout ``then`` cannot continue an optimizer of layout ``now``
    (both from :func:`state_layout`): (what the checkpoint holds, what the optimizer keeps now)
    pairs, empty when it can.

    Everything the optimizer keeps now must be in the checkpoint: the param groups (kind and
    number of parameters), their hyperparameters, their state buffers with the same dtype and
    shape, and the extra state. A group whose state is empty when built (an optimizer that
    creates its buffers at the first step) is not checked for buffers, and entries only the
    checkpoint has are not held against it.
    """
    old, new = list(then.get("groups", [])), list(now.get("groups", []))
    if len(old) != len(new):
        return [(f"{len(old)} parameter groups {_kinds(old)}", f"has {len(new)} {_kinds(new)}")]
    found = [d for a, b in zip(old, new) for d in _group_differences(a, b)]
    extra, saved = list(now.get("extra", [])), list(then.get("extra", []))
    if any(key not in saved for key in extra):
        found.append((f"extra optimizer state {_names(saved)}", f"keeps {_names(extra)}"))
    return found


def recorded_plugins(state: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The plugins a checkpoint records (empty for format 1, which recorded none)."""
    record = state.get(RECORD)
    plugins = record.get("plugins") if isinstance(record, Mapping) else None
    if not isinstance(plugins, Mapping):
        return {}
    return {str(k): dict(v) for k, v in plugins.items() if isinstance(v, Mapping)}


def plugin_label(info: Mapping[str, str]) -> str:
    """``layout-flip 0.2.0``, ``pbop from benchbnn 0.1.0`` or ``my-opt (local module)``."""
    name, dist, version = (info.get(k, "?") for k in ("name", "distribution", "version"))
    if version in ("-", "", "?"):
        return f"{name} ({dist})"
    return f"{name} {version}" if dist == name else f"{name} from {dist} {version}"


def _changed(old: Mapping[str, str], new: Mapping[str, str]) -> bool:
    return (old.get("distribution"), old.get("version")) != (
        new.get("distribution"),
        new.get("version"),
    )


def version_changes(
    then: Mapping[str, Mapping[str, str]], now: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """The recorded plugins whose distribution or version changed, as ``old -> new`` labels."""
    return [
        f"{plugin_label(old)} -> {plugin_label(now[kind])}"
        for kind, old in then.items()
        if kind in now and _changed(old, now[kind])
    ]


def _remedy(then: Mapping[str, Mapping[str, str]], now: Mapping[str, Mapping[str, str]]) -> str:
    """How to go on: start over, or go back to the releases that made the checkpoint."""
    back = dict.fromkeys(
        f"{old['distribution']}=={old['version']}"
        for kind, old in then.items()
        if kind in now
        and _changed(old, now[kind])
        and old.get("version") not in ("-", "", "?", None)
    )
    return START_OVER + (f", or install {' and '.join(back)} to continue it" if back else "")


def _mismatch_reason(
    state: Mapping[str, Any],
    path: Path,
    differences: list[tuple[str, str, str]],
    then: Mapping[str, Mapping[str, str]],
    now: Mapping[str, Mapping[str, str]],
) -> str:
    """One line: which checkpoint, and per difference what made it and what the run is now."""
    run_id = state.get("run_id")
    who = f"checkpoint of run {str(run_id)[:8]}" if run_id else "checkpoint"
    sentences = []
    for kind, held, current in differences:
        by = f"by {plugin_label(then[kind])} " if kind in then else ""
        sentences.append(f"{by}with {held}, but {plugin_label(now[kind])} {current}")
    where = f"({path}, after epoch {state.get('epoch')})"
    return f"{who} {where} was made " + "; and ".join(sentences)


def check_resumable(
    state: Mapping[str, Any],
    path: Path,
    config: RunConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> list[str]:
    """Check that checkpoint ``state`` (from :func:`load`) can continue the run built now.

    The saved model entries are compared with ``model`` (:func:`model_differences`) and the
    layout of the saved optimizer state, read from its tensors, with the layout of
    ``optimizer`` as just built (:func:`layout_differences`); checkpoints of format 1, which
    carry no record, are checked the same way. Returns the plugin version changes that left
    the layout as it was (e.g. ``["layout-flip 0.1.0 -> layout-flip 0.1.1"]``), for a note.

    Raises CheckpointMismatch, saying in one line what differs and how to start over, when the
    checkpoint cannot continue the run; UnknownNameError for a plugin name nobody registered.
    """
    then, now = recorded_plugins(state), plugin_record(config)
    differences = [("architecture", *d) for d in model_differences(state.get("model"), model)]
    saved = state_layout(state.get("optimizer") or {}, optimizer)
    built = state_layout(optimizer.state_dict(), optimizer)
    differences += [("optimizer", *d) for d in layout_differences(saved, built)]
    if differences:
        raise CheckpointMismatch(
            _mismatch_reason(state, path, differences, then, now),
            run_id=state.get("run_id"),
            epoch=state.get("epoch"),
            remedy=_remedy(then, now),
        )
    return version_changes(then, now)
