"""The ``benchbnn`` command line.

Each subcommand lives in its own module of this package and exposes ``NAME``, ``HELP``,
``ORDER`` (its place in ``--help``), ``add_arguments(parser)`` and ``main(args) -> int``; the
dispatcher finds them by listing the package, so adding a command touches no shared file.

Exit status: 0 success, 2 bad input (one line on stderr, nothing started), 1 a failure while
running, 130 interrupted. Bad input is the same in every command: a number outside its declared
range (``type=`` :func:`benchbnn.core.limits.argument`) and a ``-p MODULE`` that cannot be loaded
(except for commands that set ``REPORTS_PLUGIN_FAILURES``, such as ``plugins``, which list it)
are refused like any other BenchbnnError.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from benchbnn.core.errors import BenchbnnError, RunFailed, RunStopped


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors in benchbnn's format (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"benchbnn: error: {message} (see '{self.prog} --help')\n")


def _commands() -> list[ModuleType]:
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "add_arguments") and hasattr(module, "main"):
            modules.append(module)
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


def build_parser() -> argparse.ArgumentParser:
    from benchbnn import __version__

    parser = _Parser(
        prog="benchbnn",
        description="Benchmark optimizers for binarized neural networks.",
    )
    parser.add_argument("--version", action="version", version=f"benchbnn {__version__}")
    parser.add_argument(
        "-p",
        dest="plugin_modules",
        action="append",
        default=[],
        metavar="MODULE",
        help="load MODULE as a plugin too (repeatable); see also BENCHBNN_PLUGINS",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _commands():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(
            _handler=module.main,
            _reports_plugin_failures=getattr(module, "REPORTS_PLUGIN_FAILURES", False),
        )
    return parser


def _bad_input(exc: BenchbnnError) -> int:
    """One line on stderr for bad input; the exit status 2."""
    print(f"benchbnn: error: {exc}", file=sys.stderr)
    return 2


def _load_plugin_modules(args: argparse.Namespace) -> None:
    """Load the ``-p`` modules. A module that cannot be loaded is a PluginError for every command
    but those that list plugin failures (``REPORTS_PLUGIN_FAILURES``, i.e. ``plugins``)."""
    from benchbnn.core.plugins import add_plugin_modules, check_plugin_modules

    add_plugin_modules(args.plugin_modules)
    if not args._reports_plugin_failures:
        check_plugin_modules(args.plugin_modules)


def _quiet_cuda_home_warning() -> None:
    """Drop torch's "No CUDA runtime is found, using CUDA_HOME=..." log line.

    torch.compile's CPU code generation imports ``torch.utils.cpp_extension``, which logs it
    when a CUDA toolkit is installed but no CUDA device or driver is usable (torch checks
    ``torch.cuda.is_available()`` itself before logging). benchbnn builds no CUDA extension, so
    there the line only alarms. A filter on that one message: the module's other warnings stay,
    and torch is not imported here (``--help`` must not load it).
    """
    import logging

    logger = logging.getLogger("torch.utils.cpp_extension")
    if _keep_record not in logger.filters:
        logger.addFilter(_keep_record)


def _keep_record(record: Any) -> bool:
    return not str(record.msg).startswith("No CUDA runtime is found")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:  # a number outside its declared range (benchbnn.core.limits) raises here
        args = parser.parse_args(argv)
    except BenchbnnError as exc:
        return _bad_input(exc)
    if not getattr(args, "_handler", None):
        parser.print_help()
        return 2
    _quiet_cuda_home_warning()
    try:
        if args.plugin_modules:
            _load_plugin_modules(args)
        return int(args._handler(args) or 0)
    except BenchbnnError as exc:
        return _bad_input(exc)
    except RunFailed as exc:
        print(f"benchbnn: failed: {exc}", file=sys.stderr)
        return 1
    except RunStopped as exc:  # a plugin stopped the run on purpose; it is tracked as such
        print(f"benchbnn: {exc.record()}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("benchbnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of our output went away (``benchbnn describe X | head``): stop quietly.

    Standard output is pointed at the null device so that the interpreter's final flush does
    not raise a second BrokenPipeError; the exit status is the shell's for SIGPIPE (128 + 13).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
