"""Arguments several suite commands (``compare``, ``leaderboard``, ``tune``, ``ablate``) share,
so that they read and mean the same everywhere. Not a command: the dispatcher skips ``_`` modules.
"""

from __future__ import annotations

import argparse

from benchbnn.core.names import BINARY_KERNELS, COMPILE_MODES, DEFAULT_SUITE, PRECISIONS


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


def add_execution_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, inherited_from: str | None = None
) -> None:
    """How the model runs (``run``, ``compare``, ``worker``): recorded on every run as tags,
    not part of a run's configuration. With ``inherited_from`` (e.g. "the compare that queued
    the job") both default to None: the value comes from there."""
    default_from = f"as {inherited_from} asked" if inherited_from else None
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None if inherited_from else "auto",
        help="compile the model with torch.compile: auto (convolutional networks on CPU and "
        "CUDA), on, or off (eager); recorded as the tag benchbnn.compile, not part of the "
        f"configuration (default: {default_from or 'auto'})",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None if inherited_from else "fp32",
        help="arithmetic of the forward and backward passes: fp32 or bf16 autocast (CUDA, or a "
        "CPU with native bfloat16; weights, binary weights and optimizer state stay float32; "
        "bf16 runs are a separate numerical environment) "
        f"(default: {default_from or 'fp32'})",
    )
    parser.add_argument(
        "--binary-kernel",
        choices=BINARY_KERNELS,
        default=None if inherited_from else "auto",
        help="forward pass of binary convolutions whose input and weight are exactly +-1 "
        "(fp32, CPU): int8 (exact integer arithmetic, bit-identical results: XNOR-popcount on "
        "x86-64 CPUs with AVX2 or AVX512-VPOPCNTDQ, else oneDNN's int8 convolution), float, or "
        "auto (int8 on x86-64 CPUs with AVX2 or VNNI instructions); recorded as the tag "
        "benchbnn.binary_kernel, not part of the "
        f"configuration (default: {default_from or 'auto'})",
    )
