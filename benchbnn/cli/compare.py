"""``benchbnn compare [SUITE]``: train what a suite is missing, then write its leaderboard."""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchbnn.cli._common import (
    add_device_arguments,
    add_execution_arguments,
    add_suite_argument,
    add_tracking_uri_argument,
)
from benchbnn.core import limits
from benchbnn.core.errors import BenchbnnError, HyperparameterError
from benchbnn.core.values import Nullable, Number, ValueType, convert

NAME = "compare"
HELP = (
    "run a benchmark suite (default: quick), reusing finished runs from the tracking store, "
    "and write its leaderboard"
)
ORDER = 30


def seeds_value(text: str) -> int | tuple[int, ...]:
    """``3`` (a count) or ``0,1,5`` (these seeds), within their declared ranges
    (:data:`~benchbnn.core.limits.SEED_COUNT`, :func:`~benchbnn.core.limits.seed_list`).

    Raises argparse.ArgumentTypeError for text that is neither, BenchbnnError for a count or a
    seed out of range.
    """
    try:
        if "," in text:
            seeds = tuple(int(part) for part in text.split(",") if part.strip())
        else:
            return limits.within(limits.SEED_COUNT, int(text), "--seeds")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a seed count or a comma-separated list of seeds, got {text!r}"
        ) from None
    return limits.seed_list(seeds, "--seeds")


#: Declared types of the scalar protocol keys that ``--override`` reads as text (the ranges
#: :meth:`benchbnn.bench.suites.Suite.override` checks); ``seeds`` reads like ``--seeds``, and
#: the structured keys (``arch_options``, ``dataset_options``) take JSON objects whose values
#: the suite converts to each option's declared type.
OVERRIDE_TYPES: dict[str, ValueType] = {
    "epochs": Number(int, low=1, high=limits.MAX_EPOCHS),
    "batch_size": Number(int, low=1, high=limits.MAX_BATCH_SIZE),
    "subset": Nullable(Number(int, low=1, high=limits.MAX_SUBSET)),
    "val_fraction": Number(float, low=0.0, high=1.0, high_open=True),
    "l2": Number(float, low=0.0),
    "target_accuracy": Nullable(Number(float, low=0.0, high=100.0)),
}


def override_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: VALUE read by the key's declared type (:data:`OVERRIDE_TYPES`), as a seed
    count or list for ``seeds``, else as JSON when it is JSON (objects for ``arch_options``),
    else kept as text for :meth:`~benchbnn.bench.suites.Suite.override` to refuse.

    Raises argparse.ArgumentTypeError for text without ``=`` or a value that does not fit.
    """
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key in OVERRIDE_TYPES:
        try:
            return key, convert(value, OVERRIDE_TYPES[key], f"protocol key {key!r}")
        except HyperparameterError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if key == "seeds":
        return key, seeds_value(value)
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, parsed


#: The rulesets of :mod:`benchbnn.tune.rulesets` (named here so that --help imports no optuna).
RULESET_NAMES = ("fixed", "external", "defaults")
#: Independent studies per entry under ``--ruleset external``.
STUDIES = Number(int, low=1, high=99)

#: What ``--storage`` is for ``leaderboard`` (studies only) and for ``compare`` (also its queue).
STUDIES_STORAGE_HELP = "Optuna storage of the studies (with --tuned)"
COMPARE_STORAGE_HELP = (
    "Optuna storage of the run ledger and work queue: a journal file path or a postgresql:// "
    "URL shared by every machine (default: .benchbnn/ledger.journal beside the tracking "
    "store); with --tuned also that of the studies (a SQLite one only holds the studies)"
)


def add_protocol_arguments(
    parser: argparse.ArgumentParser, storage_help: str = STUDIES_STORAGE_HELP
) -> None:
    """Arguments that choose the runs (shared with ``benchbnn leaderboard``)."""
    add_suite_argument(parser)
    parser.add_argument(
        "--seeds",
        type=seeds_value,
        metavar="N|LIST",
        help="number of seeds (the suite's first N) or a list like 0,1,2",
    )
    parser.add_argument(
        "--epochs",
        type=limits.argument(limits.EPOCHS, "--epochs"),
        metavar="N",
        help="override the suite's epochs",
    )
    parser.add_argument(
        "--subset",
        type=limits.argument(limits.SUBSET, "--subset"),
        metavar="N",
        help="train on N images of the training split",
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
        "subset, seeds; arch_options and dataset_options as JSON), "
        "e.g. --override 'arch_options={\"width\": 0.25}'",
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
        help="use each entry's best hyperparameters from its 'benchbnn tune' study (every "
        "entry, the baseline included, needs one: tuned and hand-set entries are not compared)",
    )
    parser.add_argument("--storage", metavar="URL", help=storage_help)
    parser.add_argument("--study", metavar="NAME", help="Optuna study name (with --tuned)")
    parser.add_argument(
        "--ruleset",
        choices=RULESET_NAMES,
        default="fixed",
        help="how entries' hyperparameters are chosen (docs/rulesets.md): fixed (the suite's, "
        "default), external (equal tuning budgets: --studies studies of --trials trials per "
        "entry, the median study's best trial), defaults (each optimizer's declared defaults)",
    )
    parser.add_argument(
        "--trials",
        type=limits.argument(limits.TRIALS, "--trials"),
        metavar="N",
        help="trials per study under --ruleset external (required there)",
    )
    parser.add_argument(
        "--studies",
        type=limits.argument(STUDIES, "--studies"),
        metavar="K",
        help="independent studies per entry under --ruleset external (default 3)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument(
        "--index",
        action="store_true",
        help="also rewrite README.md, the index of every suite, in the output folder's parent",
    )


def protocol_kwargs(
    args: argparse.Namespace, storage_alone: bool = False, run_studies: bool = False
) -> dict[str, Any]:
    """The protocol keyword arguments of ``compare`` and ``leaderboard``, with the suite loaded.

    With ``--tuned`` the suite is resolved here, above the benchmark layer: every entry that
    takes part gets its study's best trial (:func:`benchbnn.tune.tuned.tuned_suite`). With a
    ``--ruleset`` the same happens through :func:`benchbnn.tune.rulesets.apply_ruleset`;
    ``run_studies`` (compare) runs the external studies that are missing first.
    ``storage_alone``: ``--storage`` has a use without ``--tuned`` (compare's ledger and queue).
    Raises BenchbnnError for ``--study`` (or ``--storage``) without ``--tuned``, and for
    ``--tuned`` with a ruleset other than ``fixed``.
    """
    from benchbnn.bench.suite_file import load_suite

    if args.tuned and args.ruleset != "fixed":
        raise BenchbnnError(
            f"--tuned and --ruleset {args.ruleset} both choose the hyperparameters; drop one"
        )
    if args.study and not args.tuned:
        raise BenchbnnError("--study only applies with --tuned")
    if args.storage and not args.tuned and not storage_alone and args.ruleset != "external":
        raise BenchbnnError("--storage only applies with --tuned or --ruleset external")
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
    else:
        kwargs.update(_ruleset_kwargs(args, original, run_studies))
    if args.experiment:
        kwargs["experiment"] = args.experiment
    return kwargs


def _ruleset_kwargs(args: argparse.Namespace, original: Any, run_studies: bool) -> dict[str, Any]:
    """The suite as ``--ruleset`` sets it (studies run first with ``run_studies``: with
    ``--workers``, queued for the workers in compare's ledger storage)."""
    from benchbnn.tune.rulesets import apply_ruleset

    options: dict[str, Any] = {}
    if run_studies:
        options = {
            "data_dir": getattr(args, "data_dir", None),
            "device": getattr(args, "device", None),
            "tracking_uri": args.tracking_uri,
            "quiet": getattr(args, "quiet", False),
        }
        if args.experiment:
            options["experiment"] = args.experiment
        if getattr(args, "heartbeat", None) is not None:
            options["heartbeat"] = args.heartbeat
        if getattr(args, "workers", None) is not None:
            options.update(workers=args.workers, queue=ledger_storage(args))
    studies_storage = args.storage if args.ruleset == "external" else None
    suite, info = apply_ruleset(
        original.select(args.optimizers),
        args.ruleset,
        trials=args.trials,
        studies=args.studies,
        storage=studies_storage,
        run=run_studies,
        **options,
    )
    return {"suite": suite, "ruleset": info, "original": original}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_protocol_arguments(parser, storage_help=COMPARE_STORAGE_HELP)
    add_device_arguments(parser)
    parser.add_argument(
        "--workers",
        type=limits.argument(limits.WORKERS, "--workers"),
        metavar="N",
        help="train the missing runs (and run the missing --ruleset external studies, one "
        "job per study) with N local 'benchbnn worker' processes, each with its "
        "share of the machine (a GPU each when there are several, else cores // N CPU "
        "threads); 0: queue them in --storage for workers started elsewhere and wait "
        "(default: train here, one at a time)",
    )
    parser.add_argument(
        "--heartbeat",
        type=limits.argument(limits.HEARTBEAT_S, "--heartbeat"),
        metavar="SECONDS",
        help="heartbeat interval on a database --storage; a process silent for three "
        "intervals loses its claims (default 30; the same for every process sharing it)",
    )
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
    parser.add_argument(
        "--reuse-any-environment",
        action="store_true",
        help="also reuse runs made in another numerical environment (device type, torch "
        "version, CPU threads, world size); the leaderboard then says they mix",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the checkpoints of finished runs (default: deleted once a run finishes)",
    )
    add_execution_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="print only the summary lines")


def print_results(written: Any) -> None:
    """The paper-layout table, as in leaderboard.md."""
    from benchbnn.bench.tables import main_table, markdown_table

    print()
    print("\n".join(markdown_table(*main_table(written.leaderboard))))


def ledger_storage(args: argparse.Namespace) -> str | None:
    """The storage of compare's run ledger and queue: ``--storage``, except a SQLite storage
    given with ``--tuned`` (it holds the studies, and SQLite is no safe queue): then the
    default ledger beside the tracking store."""
    from benchbnn.core.urls import scheme_of

    studies = args.tuned or args.ruleset == "external"
    if studies and args.storage and scheme_of(args.storage) == "sqlite":
        return None
    return args.storage


def main(args: argparse.Namespace) -> int:
    from benchbnn.bench.compare import compare

    result = compare(
        data_dir=args.data_dir,
        device=args.device,
        checkpoint_dir=args.checkpoint_dir,
        retry_failed=args.retry_failed,
        reuse_any_environment=args.reuse_any_environment,
        keep_checkpoints=args.keep_checkpoints,
        compile=args.compile,
        precision=args.precision,
        binary_kernel=args.binary_kernel,
        data_note=args.data_note,
        quiet=args.quiet,
        workers=args.workers,
        storage=ledger_storage(args),
        heartbeat=args.heartbeat,
        **protocol_kwargs(args, storage_alone=True, run_studies=True),
    )
    print_results(result.written)
    return 0
