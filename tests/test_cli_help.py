"""The command line's help: complete in the README, and fast (no torch) for every command.

The README's ``## Commands`` block lists every command with every flag; ``--help`` must agree
with it both ways, so that neither documents an option the other lacks.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchbnn.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _help_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        max(a.option_strings, key=len)
        for a in parser._actions
        if a.option_strings and "--help" not in a.option_strings
    }


def readme_commands() -> dict[str, set[str]]:
    """Command name -> the flags the README's Commands block lists for it."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Commands\s+```\n(.*?)```", text, re.S)
    assert block, "the README has a ## Commands section with a code block"
    commands: dict[str, set[str]] = {}
    current = None
    for line in block.group(1).splitlines():
        words = line.split()
        if words[:1] == ["benchbnn"] and len(words) > 1:
            current = words[1]
            commands[current] = set()
        if current is not None:
            commands[current] |= set(re.findall(r"(--[a-z][a-z0-9-]*)", line.split("#", 1)[0]))
    return commands


COMMANDS = sorted(_subparsers())


def test_every_command_is_in_the_readme():
    assert sorted(readme_commands()) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_and_help_list_the_same_flags(command):
    listed = readme_commands().get(command, set())
    actual = _help_flags(_subparsers()[command])
    assert listed - actual == set(), f"the README lists flags `{command} --help` lacks"
    assert actual - listed == set(), f"`{command} --help` has flags the README does not list"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_answers_without_importing_torch(command):
    args = ["--help"] if command is None else [command, "--help"]
    code = (
        "import sys\n"
        "from benchbnn.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules)\n"
        "print('HEAVY:' + ','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: benchbnn" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY:", done.stdout.splitlines()[-1]


def test_a_closed_pipe_ends_the_output_quietly():
    """A reader that goes away (`benchbnn describe X | head -1`) ends the command with the
    shell's SIGPIPE status and no traceback, also at the interpreter's final flush."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import benchbnn.cli.describe as describe\n"
        "from benchbnn.cli import main\n"
        "def closed(args):\n"
        "    print('x' * 1000)\n"
        "    raise BrokenPipeError(32, 'Broken pipe')\n"
        "describe.main = closed\n"
        "sys.exit(main(['describe', 'binarynet']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_torchs_cuda_home_line_is_dropped_and_its_other_warnings_kept(caplog):
    import logging

    from benchbnn import cli

    cli._quiet_cuda_home_warning()
    cli._quiet_cuda_home_warning()  # once per process is enough, twice changes nothing
    logger = logging.getLogger("torch.utils.cpp_extension")
    assert logger.filters.count(cli._keep_record) == 1
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]
