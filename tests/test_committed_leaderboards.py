"""The committed results are exactly what the committed tracking store gives.

``results/runs.db`` is the MLflow store of the real runs behind every suite folder under
``results/`` (one with a ``leaderboard.md``). Regenerating from it must reproduce every table
byte for byte, so no committed figure can drift from the runs it claims to summarize.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchbnn.cli import main as cli_main

RESULTS = Path(__file__).resolve().parents[1] / "results"
TABLES = ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.json")
COMMITTED = sorted(d.name for d in RESULTS.iterdir() if (d / "leaderboard.md").is_file())


def test_quick_is_committed():
    assert "quick" in COMMITTED


@pytest.mark.slow
@pytest.mark.parametrize("suite", COMMITTED)
def test_committed_leaderboard_regenerates_byte_for_byte(suite, tmp_path, capsys):
    store = tmp_path / "runs.db"
    shutil.copy(RESULTS / "runs.db", store)
    out = tmp_path / suite
    assert (
        cli_main(["leaderboard", suite, "--tracking-uri", f"sqlite:///{store}", "--out", str(out)])
        == 0
    )
    capsys.readouterr()
    for name in TABLES:
        assert (out / name).read_bytes() == (RESULTS / suite / name).read_bytes(), name
