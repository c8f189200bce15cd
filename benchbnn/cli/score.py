"""``benchbnn score BENCHMARK``: performance profiles of optimizers across a benchmark's suites."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchbnn.cli._common import add_device_arguments, add_tracking_uri_argument
from benchbnn.core import limits

NAME = "score"
HELP = (
    "score optimizers across a benchmark's suites (the workloads) under its ruleset: "
    "performance profiles of time to result, their integral, seed intervals"
)
ORDER = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "benchmark",
        help="a built-in benchmark (cpu, paper) or a *.benchmark.toml file",
    )
    add_tracking_uri_argument(parser)
    parser.add_argument(
        "--experiment", default=None, metavar="NAME", help="MLflow experiment (default: benchbnn)"
    )
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default: leaderboards/<benchmark>/)"
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage of the studies under ruleset external (default: "
        "tuning/optuna.journal)",
    )
    add_device_arguments(parser)
    parser.add_argument(
        "--train",
        action="store_true",
        help="first run what is missing (studies and final runs of every workload, as "
        "'benchbnn compare SUITE --ruleset R' does); default: score the tracking store as is",
    )
    parser.add_argument(
        "--workers",
        type=limits.argument(limits.WORKERS, "--workers"),
        metavar="N",
        help="with --train: run the missing external studies (one job per study) and train the "
        "final runs with N local 'benchbnn worker' processes (0: queue them for workers started "
        "elsewhere and wait)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument("--quiet", action="store_true", help="print only the summary lines")


def _workload(args: argparse.Namespace, bench: Any, spec: Any, out: Path) -> dict[str, Any]:
    """One workload's suite, resolved by the ruleset (and trained with ``--train``)."""
    from benchbnn.bench.benchmarks import collect_workloads
    from benchbnn.bench.compare import check_data, compare
    from benchbnn.bench.suite_file import load_suite
    from benchbnn.core.errors import BenchbnnError
    from benchbnn.tune.rulesets import apply_ruleset

    suite = load_suite(bench.suite_ref(spec)).override(dict(spec.overrides) or None)
    if spec.optional:
        try:
            check_data(suite, Path(args.data_dir).expanduser() if args.data_dir else None)
        except BenchbnnError:
            return {"skipped": suite.name}
    options: dict[str, Any] = {}
    if args.train:
        options = {
            "data_dir": args.data_dir,
            "device": args.device,
            "tracking_uri": args.tracking_uri,
            "quiet": args.quiet,
        }
        if args.workers is not None:  # external studies go on the queue, as with compare
            options["workers"] = args.workers
    suite, info = apply_ruleset(
        suite,
        bench.ruleset,
        trials=bench.trials,
        studies=bench.studies,
        storage=args.storage,
        run=args.train,
        **options,
    )
    if args.train:
        compare(
            suite,
            data_dir=args.data_dir,
            device=args.device,
            tracking_uri=args.tracking_uri,
            out=out / suite.name,
            quiet=args.quiet,
            workers=args.workers,
            ruleset=info,
            plots=not args.no_plots,
            **({"experiment": args.experiment} if args.experiment else {}),
        )
    found, missing, load = collect_workloads(
        suite, spec, bench.measure, args.tracking_uri, args.experiment
    )
    on_test = [w.name for w in found] if suite.val_fraction == 0 else []
    loaded = [(suite.name, load[0], load[1])] if load is not None and load[0] > load[1] else []
    return {
        "workloads": found,
        "ruleset": info,
        "missing": missing,
        "on_test": on_test,
        "loaded": loaded,
    }


def main(args: argparse.Namespace) -> int:
    from benchbnn.bench.benchmarks import (
        build_scoreboard,
        load_benchmark,
        render_markdown,
        write_scoreboard,
    )

    bench = load_benchmark(args.benchmark)
    out = Path(args.out) if args.out else Path("leaderboards") / bench.name
    workloads, rulesets, skipped, on_test, loaded, missing = [], [], [], [], [], 0
    for spec in bench.workloads:
        got = _workload(args, bench, spec, out)
        if "skipped" in got:
            skipped.append(got["skipped"])
            continue
        workloads += got["workloads"]
        rulesets.append(got["ruleset"])
        on_test += got["on_test"]
        loaded += got["loaded"]
        missing += got["missing"]
    board = build_scoreboard(
        bench, workloads, rulesets, skipped, missing, on_test=on_test, loaded=loaded
    )
    paths = write_scoreboard(board, out, plots=not args.no_plots)
    print(f"scores written to {paths[0].parent}")
    print()
    print(render_markdown(board))
    return 0
