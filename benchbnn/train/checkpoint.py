"""Per-epoch checkpoints that let a killed run continue bit-identically.

A checkpoint holds everything the rest of the run depends on: model and optimizer state (PBop's
generator included), the step counter (schedules are a pure function of it), the epoch (the data
order is a pure function of seed and epoch), the random number generators, the history so far
and the MLflow run id. It is written to a temporary file and renamed over the previous one, so a
kill at any moment leaves either the old or the new checkpoint, never a torn file.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchbnn.core.errors import BenchbnnError
from benchbnn.core.paths import writable_dir

FORMAT_VERSION = 1
FILENAME = "last.pt"
SUMMARY = "last.json"


def default_dir(config_hash: str, root: str | Path | None = None) -> Path:
    """``<cwd>/.benchbnn/checkpoints/<config_hash>`` (or under ``root``)."""
    base = Path(root) if root is not None else Path.cwd() / ".benchbnn" / "checkpoints"
    return base / config_hash


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
            "keys": torch.from_numpy(keys.astype(np.int64)),
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
    summary = {k: state.get(k) for k in ("config_hash", "epoch", "step", "run_id")}
    _write_atomically(directory / SUMMARY, lambda fh: fh.write(json.dumps(summary).encode()))
    return target


def load(directory: Path, config_hash: str) -> dict[str, Any] | None:
    """The last checkpoint in ``directory`` (None if there is none), checked against the config."""
    path = directory / FILENAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchbnnError(
            f"checkpoint {path} cannot be read ({exc.__class__.__name__}: {exc}); delete it to "
            f"start over"
        ) from None
    if state.get("format") != FORMAT_VERSION:
        raise BenchbnnError(
            f"checkpoint {path} has format {state.get('format')!r}, this benchbnn writes "
            f"{FORMAT_VERSION}; delete it to start over"
        )
    if state.get("config_hash") != config_hash:
        raise BenchbnnError(
            f"checkpoint {path} belongs to configuration {state.get('config_hash')}, not "
            f"{config_hash}; use another --checkpoint-dir"
        )
    return state


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
