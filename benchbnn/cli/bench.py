"""``benchbnn bench [OPTIMIZER...]``: optimizer step times against a memory-bandwidth floor."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from benchbnn.core import limits
from benchbnn.core.errors import BenchbnnError, HyperparameterError
from benchbnn.core.values import Number

NAME = "bench"
HELP = (
    "time one step of every installed optimizer (or the named ones) per implementation over "
    "BinaryNet's binary weights, next to the memory-bandwidth floor, and write "
    "leaderboards/bench/"
)
ORDER = 60

#: Kept here as well as in benchbnn.optim.timing so that --help does not import torch.
IMPLEMENTATIONS = ("reference", "foreach", "compiled")
WEIGHTS = ("binarynet", "small")


def implementations_value(text: str) -> tuple[str, ...]:
    """``reference,compiled`` -> the implementations, each checked."""
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [c for c in chosen if c not in IMPLEMENTATIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(IMPLEMENTATIONS)}, got {text!r}"
        )
    return tuple(dict.fromkeys(chosen))


def bounded(declared: Number) -> Callable[[str], int]:
    """An argparse ``type=`` reading a count by its declaration in :mod:`benchbnn.core.limits`.

    Text that does not fit raises argparse.ArgumentTypeError saying what the value must be
    (argparse's one line, exit status 2).
    """

    def read(text: str) -> int:
        try:
            return int(declared.parse(text, "value"))
        except HyperparameterError:
            raise argparse.ArgumentTypeError(declared.shortfall(text)) from None

    return read


positive_int = bounded(limits.BENCH_REPEATS)
count_value = bounded(limits.BENCH_WARMUP)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "optimizers",
        nargs="*",
        metavar="OPTIMIZER",
        help="optimizers to time (default: every installed one, built-in or third-party); one "
        "that needs a closure is stepped with a closure that only sets the gradients (its "
        "row says so: the forward and backward passes are not included)",
    )
    parser.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="binarynet",
        help="binarynet: BinaryNet's nine binary weight tensors, 10,352,000 weights (default); "
        "small: the same layers at 1/16 of the width (41,240 weights, fits in cache: a smoke test)",
    )
    parser.add_argument(
        "--implementations",
        type=implementations_value,
        default=IMPLEMENTATIONS,
        metavar="A,B",
        help="which implementations to time (default: reference,foreach,compiled)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=20,
        metavar="N",
        help="timed steps per implementation; the median is reported (default: 20)",
    )
    parser.add_argument(
        "--warmup",
        type=count_value,
        default=3,
        metavar="N",
        help="untimed steps per implementation first (at least one runs; default: 3)",
    )
    parser.add_argument(
        "--floor-mib",
        type=bounded(limits.FLOOR_MIB),
        metavar="N",
        help="size of each of the floor's two arrays in MiB (default: the larger of 2048 and 4x "
        "the last-level cache, from sysfs or lscpu, else 512 MiB assumed; 64 with --weights "
        "small)",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: leaderboards/bench/)")


def main(args: argparse.Namespace) -> int:
    from benchbnn.bench.step_times import DEFAULT_OUT, table_lines, write
    from benchbnn.core.paths import writable_dir
    from benchbnn.core.plugins import get_optimizer
    from benchbnn.optim.timing import bench_optimizers

    for name in args.optimizers:
        get_optimizer(name)  # an unknown name stops here, with a did-you-mean (exit status 2)
    if len(set(args.optimizers)) != len(args.optimizers):
        raise BenchbnnError("an optimizer is named twice")
    out = writable_dir(args.out or DEFAULT_OUT, "the benchmark", "--out")
    result = bench_optimizers(
        args.optimizers or None,
        weights=args.weights,
        repeats=args.repeats,
        warmup=args.warmup,
        implementations=args.implementations,
        floor_bytes=args.floor_mib * 2**20 if args.floor_mib else None,
        progress=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True),
    )
    data = result.to_data()
    paths = write(data, out)
    before, after = (f"{x[0]:.2f}" if x else "?" for x in (data["load_before"], data["load_after"]))
    print("\n".join(table_lines(data)))
    print()
    print(
        f"{data['machine']['cpu']}, {data['machine']['usable_cores']} cores, "
        f"{data['machine']['threads']} torch threads; 1-minute load average {before} before, "
        f"{after} after"
        + (" (above the core count: other processes shared the machine)" if data["loaded"] else "")
    )
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
