"""The README's quickstart, run in its order in a fresh copy of the repository.

``benchbnn compare`` (the main job) then the tests: the committed results must still regenerate
byte for byte and ``git status`` must be clean, so that a newcomer's first two commands never
dirty the checkout or break its own tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def quickstart_commands() -> list[str]:
    """The commands of the README's quickstart block, comments stripped."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Quickstart\s+```bash\n(.*?)```", text, re.S)
    assert block, "the README has a ## Quickstart section with a bash block"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def _fresh_clone(tmp_path: Path) -> Path:
    """The repository's files (committed and new, not ignored) in a new git repository."""
    files = _git("ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=REPO)
    clone = tmp_path / "clone"
    for name in filter(None, files.split("\0")):
        source = REPO / name
        if source.is_file():
            target = clone / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    _git("init", "-q", cwd=clone)
    _git("add", "-A", cwd=clone)
    _git("commit", "-q", "-m", "clone", cwd=clone)
    return clone


def test_the_quickstart_names_the_main_job_and_the_tests():
    commands = quickstart_commands()
    assert commands[0].startswith("pip install -e")
    assert commands[1:] == ["benchbnn compare", "pytest"]


@pytest.mark.slow
def test_quickstart_in_order_leaves_tests_passing_and_the_checkout_clean(tmp_path):
    clone = _fresh_clone(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BENCHBNN_"))}
    env["BENCHBNN_CACHE_DIR"] = str(tmp_path / "cache")
    env["HOME"] = str(tmp_path / "home")
    # The main job exactly as written (the package is already installed in this environment).
    compare = subprocess.run(
        [sys.executable, "-m", "benchbnn", "compare"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert compare.returncode == 0, compare.stderr[-2000:]
    assert (clone / "leaderboards" / "quick" / "leaderboard.md").is_file()
    # The tests that a user's compare could break: the committed results still regenerate.
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_committed_leaderboards.py"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-2000:]
    assert _git("status", "--porcelain", "--untracked-files=all", cwd=clone) == ""
