"""Shared helpers of the tuning and ablation tests: a tiny suite and a fast fresh MLflow store.

Creating an MLflow SQLite store runs its schema migrations (10+ s on a busy machine); tests copy
a store migrated once per test process instead, so each test still gets its own empty store.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

#: Digits through a one-hidden-layer BNN MLP: a trial takes about a second on a CPU.
TINY_SUITE = """\
name = "{name}"
description = "tiny tuning test suite"
dataset = "digits"
arch = "bnn-mlp"
epochs = {epochs}
batch_size = 64
seeds = 1
{extra}
[arch_options]
hidden = [32]

[tune.bop2ndorder]
{tune}

[[entries]]
label = "bop2ndorder"
optimizer = "bop2ndorder"
[entries.hparams]
threshold = 1e-6
gamma = 1e-5
sigma = 1e-3
lr = 0.01

[[entries]]
label = "bop"
optimizer = "bop"
"""

DEFAULT_TUNE = """\
gamma = [1e-6, 1e-4]
sigma = [1e-3, 1e-2]
threshold = 1e-6
lr = false
"""


def write_suite(
    directory: Path, name: str = "tiny", epochs: int = 2, tune: str = DEFAULT_TUNE, extra: str = ""
) -> Path:
    path = Path(directory) / f"{name}.toml"
    path.write_text(TINY_SUITE.format(name=name, epochs=epochs, tune=tune, extra=extra))
    return path


@lru_cache(maxsize=1)
def _template() -> Path:
    from benchbnn.train.tracking import client_for

    directory = Path(tempfile.mkdtemp(prefix="benchbnn-mlflow-template-"))
    atexit.register(shutil.rmtree, directory, True)
    path = directory / "mlflow.db"
    client_for(f"sqlite:///{path}").search_experiments()  # runs the migrations
    return path


def fresh_tracking_uri(directory: Path) -> str:
    """An empty, already migrated MLflow store in ``directory``."""
    target = Path(directory) / "mlflow.db"
    shutil.copyfile(_template(), target)
    return f"sqlite:///{target}"


def one_torch_thread():
    """Generator for a module fixture: tiny models train several times faster on one thread
    when other processes share the cores (intra-op threads then mostly wait for each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
