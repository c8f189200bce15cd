"""``benchbnn compare [SUITE]``: train what a suite is missing, then write its leaderboard."""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchbnn.cli._common import add_device_arguments, add_suite_argument, add_tracking_uri_argument
from benchbnn.core.errors import BenchbnnError

NAME = "compare"
HELP = (
    "run a benchmark suite (default: quick), reusing finished runs from the tracking store, "
    "and write its leaderboard"
)
ORDER = 30


def seeds_value(text: str) -> int | tuple[int, ...]:
    """``3`` (a count) or ``0,1,5`` (these seeds)."""
    try:
        if "," in text:
            return tuple(int(part) for part in text.split(",") if part.strip())
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a seed count or a comma-separated list of seeds, got {text!r}"
        ) from None


def override_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (numbers, lists, objects)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments that choose the runs (shared with ``benchbnn leaderboard``)."""
    add_suite_argument(parser)
    parser.add_argument(
        "--seeds",
        type=seeds_value,
        metavar="N|LIST",
        help="number of seeds (the suite's first N) or a list like 0,1,2",
    )
    parser.add_argument("--epochs", type=int, metavar="N", help="override the suite's epochs")
    parser.add_argument(
        "--subset", type=int, metavar="N", help="train on N images of the training split"
    )
    parser.add_argument(
        "--optimizers",
        metavar="A,B",
        help="keep only these entries (labels or optimizer names; the baseline stays); an "
        "optimizer the suite lacks is added with its defaults; '+name' adds without filtering",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        type=override_value,
        metavar="KEY=VALUE",
        help="change another protocol key (batch_size, val_fraction, l2, target_accuracy, "
        "arch_options, dataset_options; VALUE as JSON), e.g. --override 'arch_options={\"width\": 0.25}'",
    )
    add_tracking_uri_argument(parser)
    parser.add_argument(
        "--experiment", default=None, metavar="NAME", help="MLflow experiment (default: benchbnn)"
    )
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default: leaderboards/<suite>/)"
    )
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="use each entry's best hyperparameters from its 'benchbnn tune' study",
    )
    parser.add_argument(
        "--storage", metavar="URL", help="Optuna storage of the studies (with --tuned)"
    )
    parser.add_argument("--study", metavar="NAME", help="Optuna study name (with --tuned)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument(
        "--index",
        action="store_true",
        help="also rewrite README.md, the index of every suite, in the output folder's parent",
    )


def protocol_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol keyword arguments of ``compare`` and ``leaderboard``, with the suite loaded.

    With ``--tuned`` the suite is resolved here, above the benchmark layer: every entry that
    takes part gets its study's best trial (:func:`benchbnn.tune.tuned.tuned_suite`).
    """
    from benchbnn.bench.suite_file import load_suite

    if (args.storage or args.study) and not args.tuned:
        raise BenchbnnError("--storage and --study only apply with --tuned")
    overrides = dict(args.override)
    if args.subset is not None:
        overrides["subset"] = args.subset
    original = load_suite(args.suite)
    kwargs: dict[str, Any] = {
        "suite": original,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "optimizers": args.optimizers,
        "overrides": overrides or None,
        "tracking_uri": args.tracking_uri,
        "out": args.out,
        "plots": not args.no_plots,
        "index": args.index,
    }
    if args.tuned:
        from benchbnn.tune.tuned import tuned_suite

        kwargs["suite"], kwargs["tuned"] = tuned_suite(
            original, args.optimizers, storage=args.storage, study=args.study
        )
        kwargs.update(original=original, study=args.study)
    if args.experiment:
        kwargs["experiment"] = args.experiment
    return kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_protocol_arguments(parser)
    add_device_arguments(parser)
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="where run checkpoints live (default: ./.benchbnn/checkpoints)",
    )
    parser.add_argument(
        "--data-note",
        metavar="TEXT",
        help="which copy of the data this is, recorded with every run trained "
        "and named in the leaderboard (e.g. 'CIFAR-10 (JPEG copy)')",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="train again the runs recorded as failed instead of showing them",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary lines")


def print_results(written: Any) -> None:
    """The paper-layout table, as in leaderboard.md."""
    from benchbnn.bench.tables import main_table, markdown_table

    print()
    print("\n".join(markdown_table(*main_table(written.leaderboard))))


def main(args: argparse.Namespace) -> int:
    from benchbnn.bench.compare import compare

    result = compare(
        data_dir=args.data_dir,
        device=args.device,
        checkpoint_dir=args.checkpoint_dir,
        retry_failed=args.retry_failed,
        data_note=args.data_note,
        quiet=args.quiet,
        **protocol_kwargs(args),
    )
    print_results(result.written)
    return 0
