"""Shared fixtures: an isolated plugin registry and the development datasets folder."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchbnn.plugins

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def clean_registry():
    """Undo in-process plugin registrations made by a test."""
    before = list(benchbnn.plugins._extra_objects)
    yield
    benchbnn.plugins._extra_objects[:] = before
    benchbnn.plugins.reset_registry()


@pytest.fixture
def shared_datasets() -> Path:
    """``../shared/datasets`` beside the project; skipped only where that folder is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} is not present")
    return SHARED_DATASETS
