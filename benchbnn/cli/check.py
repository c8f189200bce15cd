"""``benchbnn check [OPTIMIZER...]``: run the optimizer conformance kit (see
:mod:`benchbnn.optim.conformance`) and report every property as passed, failed or skipped."""

from __future__ import annotations

import argparse

NAME = "check"
HELP = (
    "run the conformance kit on every installed optimizer (or the named ones): binary weights "
    "stay +-1, flip counts, state_dict round trip, reference/foreach/compiled agreement, "
    "determinism, hyperparameter ranges and schedules, low-precision weights, two "
    "data-parallel processes; print each property passed, failed (with a reproducer) or "
    "skipped (with the reason); exit 1 on a failure"
)
ORDER = 65

#: Kept here as well as in benchbnn.optim.conformance so that --help does not import torch.
PROPERTIES = (
    "binary-weights",
    "flip-count",
    "state-dict",
    "foreach",
    "compiled",
    "determinism",
    "hparam-ranges",
    "dtypes",
    "data-parallel",
)
MAX_STEPS = 1000


def steps_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 2 <= value <= MAX_STEPS:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of steps from 2 to {MAX_STEPS}, got {text!r}"
        )
    return value


def seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 2**31-1, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "optimizers",
        nargs="*",
        metavar="OPTIMIZER",
        help="optimizers to check (default: every installed one, built-in or third-party)",
    )
    parser.add_argument(
        "--property",
        dest="properties",
        action="append",
        choices=PROPERTIES,
        metavar="NAME",
        help=f"check only this property (repeatable; default: all of {', '.join(PROPERTIES)})",
    )
    parser.add_argument(
        "--steps",
        type=steps_value,
        default=60,
        metavar="N",
        help="optimizer steps per run (default: 60)",
    )
    parser.add_argument(
        "--seed",
        type=seed_value,
        default=0,
        metavar="N",
        help="seed of the gradients, weights and optimizers (default: 0)",
    )


def main(args: argparse.Namespace) -> int:
    import time

    from benchbnn.core.errors import BenchbnnError
    from benchbnn.core.plugins import get_optimizer, list_optimizers
    from benchbnn.optim.conformance import check_optimizer

    names = list(args.optimizers) or list(list_optimizers())
    for name in names:
        get_optimizer(name)  # an unknown name stops here, with a did-you-mean (exit status 2)
    if len(set(names)) != len(names):
        raise BenchbnnError("an optimizer is named twice")
    properties = list(dict.fromkeys(args.properties or PROPERTIES))
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed: list[str] = []
    for name in names:
        start = time.perf_counter()
        results = check_optimizer(
            name,
            properties,
            seed=args.seed,
            steps=args.steps,
            progress=lambda r: print(r.report(), flush=True),
        )
        for r in results:
            counts[r.status] += 1
            if r.status == "failed":
                failed.append(f"{r.optimizer}: {r.prop}")
        print(f"{name}: checked in {time.perf_counter() - start:.1f} s", flush=True)
    print()
    print(
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"({len(names)} optimizers)"
    )
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0
