"""Arguments several suite commands (``compare``, ``leaderboard``, ``tune``, ``ablate``) share,
so that they read and mean the same everywhere. Not a command: the dispatcher skips ``_`` modules.
"""

from __future__ import annotations

import argparse

from benchbnn.core.names import DEFAULT_SUITE


def add_suite_argument(parser: argparse.ArgumentParser) -> None:
    """The optional positional SUITE (default: quick)."""
    parser.add_argument(
        "suite",
        nargs="?",
        default=DEFAULT_SUITE,
        help="a built-in suite name (see 'benchbnn plugins') or a suite TOML file (default: quick)",
    )


def add_tracking_uri_argument(parser: argparse.ArgumentParser) -> None:
    """Where the MLflow runs are recorded and looked up."""
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Where training reads its data and which device it runs on."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="dataset folder, for datasets that are not embedded or generated",
    )
    parser.add_argument(
        "--device",
        metavar="DEV",
        help="torch device, e.g. cpu or cuda:0 (default: cuda if available)",
    )
