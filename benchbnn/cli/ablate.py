"""``benchbnn ablate``: the paper's one-hyperparameter-at-a-time sweep (Bop2ndOrder paper,
Fig. 3)."""

from __future__ import annotations

import argparse

from benchbnn.cli._common import add_device_arguments, add_suite_argument, add_tracking_uri_argument
from benchbnn.core import limits

NAME = "ablate"
HELP = "sweep each hyperparameter by powers of ten around a base point (the paper's ablation)"
ORDER = 55

EPILOG = """\
From each suite entry's hyperparameters (the optimizer's defaults where the entry sets none), every
log-scale hyperparameter of the optimizer's search space (narrowed by the suite's [tune.OPTIMIZER]
table, or the ones named by --hparams) is multiplied by 10^f for each f in --factors while the
others stay fixed. Swept hyperparameters are constants (an entry's schedule of one is replaced by
its base value; one that follows a default schedule of its optimizer is scheduled constant:V),
so all sweeps of an entry share one base-point run. Runs the tracking store
already holds are reused by configuration hash (as compare does); only missing ones are trained,
and an interrupted sweep resumes. Factors start with a minus: write --factors=-2,-1,1,2.

Writes to OUT (default leaderboards/SUITE/ablation/): HPARAM.png per hyperparameter (final
accuracy, last-epoch pi_t and mean pi_t against the value, log x axis), robustness.md and
robustness.csv (min, max, range and std of final accuracy per entry and hyperparameter and over
the whole sweep), robustness.png and ablation.csv (every point).

The paper's Fig. 3 (gamma, sigma and tau, two decades down and up, from tau 1e-6, gamma 1e-7,
sigma 1e-3; BinaryNet, CIFAR-10, 100 epochs):
  benchbnn ablate cifar10-base-point --hparams gamma,sigma,threshold --data-dir DIR
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_suite_argument(parser)
    parser.add_argument(
        "--optimizers",
        metavar="O[,O...]",
        help="entries to sweep, by label or optimizer (default: every entry)",
    )
    parser.add_argument(
        "--hparams",
        metavar="H[,H...]",
        help="hyperparameters to sweep (default: the log-scale search space)",
    )
    parser.add_argument(
        "--factors",
        default=None,
        metavar="F[,F...]",
        help="powers of ten around the base value; write --factors=-1,1 "
        "(with =: the value starts with a minus) (default: the suite's [ablation] table, "
        "else -2,-1,1,2)",
    )
    parser.add_argument(
        "--seeds",
        type=limits.argument(limits.SEED_COUNT, "--seeds"),
        metavar="K",
        help="seeds per point (default: the suite's)",
    )
    parser.add_argument(
        "--epochs",
        type=limits.argument(limits.EPOCHS, "--epochs"),
        metavar="N",
        help="override the suite's epochs",
    )
    parser.add_argument("--arch", metavar="A", help="architecture (default: the suite's first)")
    add_device_arguments(parser)
    add_tracking_uri_argument(parser)
    parser.add_argument(
        "--out", metavar="DIR", help="output directory (default: leaderboards/SUITE/ablation)"
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="train diverged points again instead of reporting them as diverged",
    )
    parser.add_argument("--quiet", action="store_true", help="no training progress")


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def main(args: argparse.Namespace) -> int:
    from benchbnn.tune.ablation import ablate

    result = ablate(
        args.suite,
        optimizers=_names(args.optimizers),
        hparams=_names(args.hparams),
        factors=args.factors,
        seeds=args.seeds,
        epochs=args.epochs,
        arch=args.arch,
        data_dir=args.data_dir,
        tracking_uri=args.tracking_uri,
        out=args.out,
        device=args.device,
        quiet=args.quiet,
        retry_failed=args.retry_failed,
    )
    for s in result.spreads:
        if s.hparam == "all" and s.minimum is not None:
            print(
                f"{s.label}: final accuracy {s.minimum:.2f}-{s.maximum:.2f}% over {s.points} "
                f"points (range {s.range:.2f}, std {s.std:.2f})"
            )
    return 0
