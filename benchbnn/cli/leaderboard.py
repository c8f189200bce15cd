"""``benchbnn leaderboard [SUITE]``: rewrite a suite's tables and plots from tracked runs only."""

from __future__ import annotations

import argparse
import sys

from benchbnn.cli.compare import add_protocol_arguments, print_results, protocol_kwargs

NAME = "leaderboard"
HELP = (
    "regenerate a suite's leaderboard (Markdown, CSV, LaTeX, JSON, plots) from the tracking "
    "store, without training"
)
ORDER = 31


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_protocol_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from benchbnn.bench.report import leaderboard

    kwargs = protocol_kwargs(args)
    kwargs["tuned"] = bool(kwargs.get("tuned"))
    written = leaderboard(**kwargs)
    if written.missing:
        print(
            f"benchbnn: warning: {written.missing} planned run(s) are not in the tracking store; "
            f"they are shown as not run",
            file=sys.stderr,
        )
    print(f"leaderboard written to {written.paths[0].parent}")
    print_results(written)
    return 0
