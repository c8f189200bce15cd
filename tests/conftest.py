"""Shared fixtures: an isolated plugin registry and the development datasets folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import benchbnn.core.plugins

# The tests train tiny models, for which one intra-op thread is fastest, and several tests run
# worker subprocesses (torchrun, tuning workers) beside the test process: without this, the
# threads of all of them oversubscribe two cores many times over. Subprocesses inherit the
# environment variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

#: Fixtures of tests/pg.py (a PostgreSQL server started for the session) for every module.
pytest_plugins = ["pg"]

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def clean_registry():
    """Undo in-process plugin registrations made by a test."""
    before = list(benchbnn.core.plugins._extra_objects)
    yield
    benchbnn.core.plugins._extra_objects[:] = before
    benchbnn.core.plugins.reset_registry()


@pytest.fixture
def shared_datasets() -> Path:
    """``../shared/datasets`` beside the project; skipped only where that folder is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} is not present")
    return SHARED_DATASETS
