"""Locations a user names are checked before anything starts, with one clear line (exit 2).

``/proc`` is used because permission bits cannot stand in for it: tests often run as root, and
root passes every permission check on an ordinary read-only directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchbnn.cli import main as cli_main

pytestmark = pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")

RUN = [
    "run",
    "--dataset",
    "digits",
    "--arch",
    "bnn-mlp",
    "--arch-option",
    "hidden=16",
    "--optimizer",
    "bop",
    "--epochs",
    "1",
    "--quiet",
]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (RUN + ["--tracking-uri", "sqlite:////proc/benchbnn-nope/mlflow.db"], "--tracking-uri"),
        (RUN + ["--checkpoint-dir", "/proc/benchbnn-nope"], "--checkpoint-dir"),
        (["compare", "--epochs", "1", "--seeds", "1", "--out", "/proc/benchbnn-nope"], "--out"),
    ],
    ids=["tracking-uri", "checkpoint-dir", "compare-out"],
)
def test_unwritable_location_is_bad_input_and_nothing_starts(
    argv, flag, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    if "--tracking-uri" not in argv:
        argv = argv + ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/proc/benchbnn-nope" in err[0] and flag in err[0]
    assert not (tmp_path / ".benchbnn").exists()  # no checkpoint written: nothing started
