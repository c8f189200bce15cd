"""``benchbnn tune``: an Optuna study over one optimizer's hyperparameters on a suite's protocol."""

from __future__ import annotations

import argparse

from benchbnn.cli._common import add_device_arguments, add_suite_argument, add_tracking_uri_argument
from benchbnn.core import limits

NAME = "tune"
HELP = "tune an optimizer's hyperparameters on a suite's protocol (Optuna, validation split)"
ORDER = 50

# Kept equal to benchbnn.tune.tuning's (not imported here: building the parser must stay cheap).
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "hyperband", "none")
DEFAULT_TRIALS = 20
DEFAULT_HEARTBEAT_S = 30
TPE_STARTUP_TRIALS = 10

EPILOG = """\
The study searches the hyperparameters the optimizer's plugin declares searchable, narrowed by
the suite's [tune.OPTIMIZER] table, on the suite's dataset, architecture, epochs and batch size,
starting from the hyperparameters and schedules of the suite entry that uses the optimizer. A
tuned hyperparameter that follows a schedule (the entry's or the optimizer's default) keeps it:
the sampled value is its START and its other values (END, min, max) scale with it; a step or
exponential schedule keeps its factor and period. Where that cannot work (a schedule starting
at 0, or one that would leave the valid range), trials hold it constant and one line says so;
best.json lists both (schedules_tuned, schedules_held_constant) and the schedules the best trial
followed (schedules). A search range that depends on the run (a plugin's callable search) is
computed from the protocol's data before the study starts. Each trial trains with a
validation split held out of the training data (the suite's val_fraction, else 0.1) and is
scored by its final validation top-1 (the mean over --seeds seeds); the first seed reports
every epoch so the pruner can stop hopeless trials. The test split is never used to select.

--trials counts trials that ended: complete, pruned, or failed because training diverged (such
a trial is recorded FAIL with the reason in its user attribute benchbnn.failure, and the study
goes on). Running the same command again continues the same study up to the new total; a
different search space or protocol under the same study name is refused (choose another --study).

Storage: default a journal file TUNE_DIR/optuna.journal (TUNE_DIR is --out, default tuning/),
safe for several processes on this machine; or any Optuna storage URL, e.g.
postgresql://user:password@host/db to share one study between workers on several machines:
start the same command on each machine. On a database storage workers send heartbeats; the
trial of a worker that dies becomes FAIL and is run again by another worker (on the journal
file, the same happens to a worker process on this machine that is gone).
The best configuration is printed, written to TUNE_DIR/STUDY/best.json and set as tags
(benchbnn.best.*) of the study's parent MLflow run; every trial is a nested run.
'benchbnn compare SUITE --tuned' trains each entry with its study's best trial.

Watch a study live:  optuna-dashboard tuning/optuna.journal   (or the --storage URL)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_suite_argument(parser)
    parser.add_argument("--optimizer", required=True, metavar="O", help="the optimizer to tune")
    parser.add_argument(
        "--trials",
        type=limits.argument(limits.TRIALS, "--trials"),
        metavar="N",
        help=f"total trials the study should have (default {DEFAULT_TRIALS}; grid: the grid size)",
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="tpe (multivariate, constant liar), grid (powers of ten on log "
        "ranges) or random (default: tpe)",
    )
    parser.add_argument(
        "--pruner",
        choices=PRUNERS,
        default="median",
        help="stop hopeless trials early: median (below the median of earlier "
        "trials at the same epoch, after 3 trials and the first quarter of "
        "the epochs), hyperband (reduction factor 3) or none "
        "(default: median)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: a journal file path or a database URL "
        "(default: $BENCHBNN_TUNE_STORAGE, else TUNE_DIR/optuna.journal)",
    )
    parser.add_argument(
        "--study", metavar="NAME", help="study name (default: SUITE-OPTIMIZER[-ENTRY])"
    )
    parser.add_argument(
        "--seeds",
        type=limits.argument(limits.SEED_COUNT, "--seeds"),
        default=1,
        metavar="K",
        help="score each trial by the mean over K seeds (default 1)",
    )
    parser.add_argument(
        "--epochs",
        type=limits.argument(limits.EPOCHS, "--epochs"),
        metavar="N",
        help="override the suite's epochs",
    )
    parser.add_argument(
        "--entry",
        metavar="LABEL",
        help="the suite entry whose base point to start from (needed when "
        "several entries use the optimizer)",
    )
    parser.add_argument("--arch", metavar="A", help="architecture (default: the suite's first)")
    add_device_arguments(parser)
    add_tracking_uri_argument(parser)
    parser.add_argument(
        "--out",
        metavar="TUNE_DIR",
        help="directory for the default storage and best.json (default: tuning)",
    )
    parser.add_argument(
        "--sampler-seed",
        type=limits.argument(limits.SEED, "--sampler-seed"),
        default=0,
        metavar="S",
        help="seed of the sampler; each trial draws from (S, trial number), so "
        "workers never repeat each other (default 0)",
    )
    parser.add_argument(
        "--startup-trials",
        type=limits.argument(limits.STARTUP_TRIALS, "--startup-trials"),
        default=TPE_STARTUP_TRIALS,
        metavar="N",
        help=f"random trials before TPE models the results (default {TPE_STARTUP_TRIALS})",
    )
    parser.add_argument(
        "--heartbeat",
        type=limits.argument(limits.HEARTBEAT_S, "--heartbeat"),
        default=DEFAULT_HEARTBEAT_S,
        metavar="SECONDS",
        help="heartbeat interval on database storages; a trial silent for three "
        f"intervals is failed and retried (default {DEFAULT_HEARTBEAT_S})",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the checkpoints of trials' finished runs (default: deleted)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no per-epoch training progress: one summary line per trial run and the final result",
    )


def main(args: argparse.Namespace) -> int:
    from benchbnn.tune.tuning import tune

    result = tune(
        args.suite,
        args.optimizer,
        trials=args.trials,
        sampler=args.sampler,
        pruner=args.pruner,
        storage=args.storage,
        study=args.study,
        seeds=args.seeds,
        epochs=args.epochs,
        entry=args.entry,
        arch=args.arch,
        data_dir=args.data_dir,
        tracking_uri=args.tracking_uri,
        out=args.out,
        device=args.device,
        quiet=args.quiet,
        sampler_seed=args.sampler_seed,
        heartbeat=args.heartbeat,
        startup_trials=args.startup_trials,
        keep_checkpoints=args.keep_checkpoints,
    )
    c = result.counts
    print(
        f"study {result.study_name!r}: {c.done}/{result.target} trials counted "
        f"({c.complete} complete, {c.pruned} pruned, {c.failed} diverged); "
        f"{result.trials_run} run by this worker"
    )
    if result.best is not None:
        print(f"best: {result.best.describe()}")
        if result.best_path is not None:
            print(f"best configuration: {result.best_path}")
    return 0
