"""Helpers shared by the engine, tracking and ``benchbnn run`` tests.

``fresh_store`` hands every test its own SQLite MLflow store: the tables are created once per
test process (MLflow's migrations take seconds) and the empty database file is copied.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

import benchbnn
from benchbnn.core.config import RunConfig
from benchbnn.core.names import EPOCH_METRICS

#: a BNN MLP with one hidden layer of 32 units on the embedded 8x8 digits: a run takes ~1 s
TINY_ARCH = {"hidden": [32]}
#: metrics that depend on the machine's speed or load, not on the computation
TIMINGS = (
    "epoch_time_s",
    "images_per_s",
    "forward_backward_s",
    "optimizer_step_s",
    "load_average",
)


#: BinaryNet at width 0.125 on 16x16 synthetic images: 130 training images in batches of 32
#: (4 steps, the partial fifth batch dropped), 300 test images (evaluated as 256 + 44) and a
#: validation split of 26 (one partial batch): three evaluation shapes besides the training one
TINY_BINARYNET: dict[str, Any] = {
    "dataset": "synthetic",
    "arch": "binarynet",
    "optimizer": "bop",
    "arch_options": {"width": 0.125},
    "dataset_options": {"size": 16, "train_size": 156, "test_size": 300},
    "val_fraction": 1 / 6,
    "batch_size": 32,
    "epochs": 3,
}


def tiny_config(**overrides: Any) -> RunConfig:
    fields = {
        "dataset": "digits",
        "arch": "bnn-mlp",
        "optimizer": "bop2ndorder",
        "arch_options": TINY_ARCH,
        "epochs": 2,
        "batch_size": 64,
        "seed": 0,
    }
    return RunConfig(**{**fields, **overrides})


@lru_cache(maxsize=1)
def _template() -> Path:
    from benchbnn.train.tracking import client_for

    folder = Path(tempfile.mkdtemp(prefix="benchbnn-mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    client_for(f"sqlite:///{path}").search_experiments()  # creates and migrates the tables
    return path


def fresh_store(folder: Path) -> str:
    """An empty MLflow SQLite store in ``folder``, as a tracking URI."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "mlflow.db"
    shutil.copyfile(_template(), target)
    return f"sqlite:///{target}"


def computed(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's history without the timing metrics (what must repeat exactly)."""
    return [{k: v for k, v in entry.items() if k not in TIMINGS} for entry in history]


def assert_has_epoch_metrics(entry: dict[str, Any], val: bool = False) -> None:
    expected = set(EPOCH_METRICS) if val else {m for m in EPOCH_METRICS if not m.startswith("val_")}
    missing = expected - set(entry)
    assert not missing, f"missing metrics {sorted(missing)}"


def nan_optimizer(binary_params, real_params, lr=0.01):
    """Bop whose every step poisons the weights: the loss becomes NaN, the run diverges."""
    optimizer = benchbnn.get_optimizer("bop").build(binary_params, real_params, lr=lr)
    step = optimizer.step

    def poisoned(closure=None):
        result = step(closure)
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.fill_(float("nan"))
        return result

    optimizer.step = poisoned
    return optimizer


class NanPlugin:
    """Registers ``nan-opt`` (:func:`nan_optimizer`)."""

    @benchbnn.hookimpl
    def benchbnn_optimizers(self):
        return [
            benchbnn.OptimizerSpec(
                name="nan-opt",
                factory=nan_optimizer,
                hparams=(benchbnn.HParam("lr", 0.01, 0.0, 1.0),),
                description="a test optimizer that diverges",
            )
        ]


#: A suite file of two optimizers (Bop and latent-weight Adam) on 200 digits, ~1 s per run.
TWO_OPTIMIZER_SUITE = """\
name = "{name}"
description = "Two optimizers on a few digits, for tests."
dataset = "digits"
arch = "bnn-mlp"
epochs = {epochs}
batch_size = 50
seeds = {seeds}
subset = 200
target_accuracy = 20.0

[arch_options]
hidden = [32]

[[entries]]
label = "bop"
optimizer = "bop"
[entries.hparams]
gamma = 1e-3
threshold = 1e-6

[[entries]]
label = "adam-latent"
optimizer = "adam-latent"
"""


def two_optimizer_suite(name: str, epochs: int = 1, seeds: int = 2) -> str:
    """The text of :data:`TWO_OPTIMIZER_SUITE` named ``name``."""
    return TWO_OPTIMIZER_SUITE.format(name=name, epochs=epochs, seeds=seeds)


def write_two_optimizer_suite(path: Path, name: str, epochs: int = 1, seeds: int = 2) -> Path:
    """Write :func:`two_optimizer_suite` to ``path`` and return it."""
    path.write_text(two_optimizer_suite(name, epochs, seeds))
    return path
