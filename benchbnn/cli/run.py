"""``benchbnn run``: train and evaluate one configuration, tracked in MLflow.

Exit status 0 when the run finished, 1 when it failed (diverged or crashed), 2 for bad input
(nothing started), 130 when interrupted. ``--resume`` continues from the last checkpoint of the
same configuration, ``--restart`` discards it; with neither, an existing checkpoint is bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchbnn.cli._common import add_execution_arguments
from benchbnn.core import limits
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.names import DEFAULT_EXPERIMENT, TAG_FAILURE

NAME = "run"
HELP = "train and evaluate one configuration (dataset, architecture, optimizer), tracked in MLflow"
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to train")
    what.add_argument("--dataset", required=True, help="dataset name (see 'benchbnn plugins')")
    what.add_argument("--arch", required=True, help="architecture name")
    what.add_argument("--optimizer", required=True, help="optimizer name")
    what.add_argument(
        "--set",
        dest="hparams",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="optimizer hyperparameter, e.g. --set gamma=1e-7 (repeatable)",
    )
    what.add_argument(
        "--schedule",
        dest="schedules",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="schedule a hyperparameter per step, e.g. "
        "--schedule threshold=polynomial:1e-5:1e-8 (repeatable)",
    )
    what.add_argument(
        "--arch-option",
        dest="arch_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture option, e.g. width=0.25 (repeatable)",
    )
    what.add_argument(
        "--dataset-option",
        dest="dataset_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option (repeatable)",
    )
    budget = parser.add_argument_group("budget and data")
    budget.add_argument(
        "--epochs",
        type=limits.argument(limits.EPOCHS, "--epochs"),
        default=10,
        help="epochs to train (default 10)",
    )
    budget.add_argument(
        "--batch-size",
        type=limits.argument(limits.BATCH_SIZE, "--batch-size"),
        default=100,
        help="batch size (default 100)",
    )
    budget.add_argument(
        "--seed",
        type=limits.argument(limits.SEED, "--seed"),
        default=0,
        help="seed of all randomness (default 0)",
    )
    budget.add_argument(
        "--subset",
        type=limits.argument(limits.SUBSET, "--subset"),
        default=None,
        metavar="N",
        help="train on N training images, class-balanced and the same for every seed",
    )
    budget.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction of the training split for validation",
    )
    budget.add_argument(
        "--l2",
        type=float,
        default=0.0,
        help="L2 regularization of the full-precision conv/linear weights",
    )
    budget.add_argument("--data-dir", default=None, metavar="DIR", help="where the dataset lives")
    budget.add_argument(
        "--download",
        action="store_true",
        help="download the dataset if the plugin can and it is missing",
    )
    where = parser.add_argument_group("where it runs and is recorded")
    where.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    add_execution_arguments(where)
    where.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db in the working directory)",
    )
    where.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"MLflow experiment (default {DEFAULT_EXPERIMENT!r})",
    )
    where.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="checkpoint directory (default .benchbnn/checkpoints/<config hash>)",
    )
    where.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint of this configuration",
    )
    where.add_argument(
        "--restart",
        action="store_true",
        help="discard this configuration's checkpoint and train from epoch 1 (without --resume "
        "or --restart, an existing checkpoint stops the command before it trains)",
    )
    where.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the checkpoint once the run has finished (default: deleted then)",
    )
    where.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="the run ledger this configuration is claimed in, so that no other process trains "
        "it at the same time: a journal file or a postgresql:// URL (default: "
        ".benchbnn/ledger.journal beside the tracking store); while another live process "
        "holds it, run waits and then reports that process's result",
    )
    where.add_argument(
        "--log-every",
        type=limits.argument(limits.LOG_EVERY, "--log-every"),
        default=None,
        metavar="STEPS",
        help="record the per-step flip ratio every STEPS steps (default 10)",
    )
    where.add_argument("--quiet", action="store_true", help="print only the summary line")


def split_assignment(text: str, flag: str) -> tuple[str, str]:
    """``"key=value"`` -> ``("key", "value")``, or a clear error naming the flag."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise BenchbnnError(f"{flag} expects KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def read_assignments(
    assignments: Sequence[str],
    flag: str,
    convert: Callable[[Mapping[str, str]], Mapping[str, Any]],
) -> dict[str, Any]:
    """``KEY=VALUE`` texts read by ``convert``, a spec's converter to its declared types.

    ``convert`` gets ``{key: text}`` and returns the value (e.g.
    :meth:`~benchbnn.core.specs.ArchitectureSpec.coerce_options`), so every value is read by
    the declared type of its option (:mod:`benchbnn.core.values`), never guessed. Raises
    BenchbnnError naming the flag and the assignment for text without ``=``, an unknown name
    or a value that does not fit.
    """
    values: dict[str, Any] = {}
    for text in assignments:
        key, value = split_assignment(text, flag)
        try:
            values.update(convert({key: value}))
        except BenchbnnError as exc:
            raise BenchbnnError(f"{flag} {key}={value}: {exc}") from None
    return values


def hparam_converter(optimizer: str) -> Callable[[Mapping[str, str]], dict[str, Any]]:
    """The converter of ``optimizer``'s hyperparameters for :func:`read_assignments`.

    The returned function raises HyperparameterError for an unknown name or a bad value.
    """
    from benchbnn.core.plugins import get_optimizer

    spec = get_optimizer(optimizer)

    def convert(given: Mapping[str, str]) -> dict[str, Any]:
        resolved = spec.resolve(**given)
        return {key: resolved[key] for key in given}

    return convert


def build_config(args: argparse.Namespace) -> RunConfig:
    """The canonical RunConfig the command line describes (errors are BenchbnnError)."""
    from benchbnn.core.plugins import get_architecture, get_dataset
    from benchbnn.optim.schedules import parse_schedule
    from benchbnn.train.engine import canonical_config

    hparams = read_assignments(args.hparams, "--set", hparam_converter(args.optimizer))
    schedules = {}
    for text in args.schedules:
        key, spec = split_assignment(text, "--schedule")
        schedules[key] = dict(parse_schedule(spec).to_dict())
    arch_options = read_assignments(
        args.arch_options, "--arch-option", get_architecture(args.arch).coerce_options
    )
    dataset_options = read_assignments(
        args.dataset_options, "--dataset-option", get_dataset(args.dataset).coerce_options
    )
    config = RunConfig(
        dataset=args.dataset,
        arch=args.arch,
        optimizer=args.optimizer,
        hparams=hparams,
        schedules=schedules,
        arch_options=arch_options,
        dataset_options=dataset_options,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        subset=args.subset,
        val_fraction=args.val_fraction,
        l2=args.l2,
    )
    return canonical_config(config)


def main(args: argparse.Namespace) -> int:
    from benchbnn.core.paths import check_writable_dir
    from benchbnn.train.engine import DEFAULT_LOG_EVERY, train

    config = build_config(args)
    if args.checkpoint_dir:  # before the tracking store is created
        check_writable_dir(args.checkpoint_dir, "checkpoints", "--checkpoint-dir")
    if args.resume and args.restart:
        raise BenchbnnError("--resume and --restart exclude each other: pass one of them")
    distributed = os.environ.get("WORLD_SIZE", "1") not in ("", "1")
    options: dict[str, Any] = dict(
        data_dir=args.data_dir,
        device=args.device,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        resume=args.resume,
        quiet=args.quiet,
        checkpoint_dir=args.checkpoint_dir,
        download=args.download,
        log_every=args.log_every if args.log_every is not None else DEFAULT_LOG_EVERY,
        keep_checkpoint=args.keep_checkpoints,
        compile=args.compile,
        precision=args.precision,
        binary_kernel=args.binary_kernel,
    )
    if distributed:  # torchrun ranks take no claim
        result = train(config, **options)
    else:
        outcome = _train_claimed(config, args, options, train)
        if isinstance(outcome, int):
            return outcome
        result = outcome
    if result.status != "FINISHED":
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
            print(f"benchbnn: failed: {result.error}", file=sys.stderr)
        return 1
    return 0


def _check_checkpoint(config: RunConfig, args: argparse.Namespace) -> None:
    """Refuse to start over on top of a checkpoint unless told which to do (BenchbnnError).

    A run without ``--resume`` writes its own checkpoint over the one of the same configuration
    at its first epoch: a repeated command would silently lose the epochs already trained.
    Checked once the configuration's claim is held (a finished run is reported instead), and
    not under torchrun, where every rank must take the same path.
    """
    if args.resume or args.restart:
        return
    from benchbnn.train import checkpoint

    what = config.config_hash()
    folder = checkpoint.run_dir(what, args.checkpoint_dir)
    epoch = checkpoint.saved_epoch(folder, what)
    if epoch is not None:
        raise BenchbnnError(
            f"a checkpoint of this configuration (epoch {epoch} of {config.epochs}) is in "
            f"{folder}: pass --resume to continue it, or --restart to discard it and train "
            f"from epoch 1"
        )


def _train_claimed(
    config: RunConfig, args: argparse.Namespace, options: dict[str, Any], train: Callable
) -> Any:
    """Train ``config`` holding its claim in the run ledger (``--storage``).

    While another live process holds the configuration, wait, saying who; when that process
    left a result (in this environment), report it and return the exit status (0 finished,
    1 failed) instead of training it a second time. Otherwise return the RunResult. Raises
    BenchbnnError when the ledger cannot be opened, and what ``train`` raises.
    """
    from benchbnn.train.exclusive import exclusively

    what = config.config_hash()

    def waiting(holder: Any) -> None:
        print(
            f"benchbnn: configuration {what} is being trained by {holder.describe()}; "
            f"waiting for it",
            file=sys.stderr,
        )

    with exclusively(
        config,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        storage=args.storage,
        device=args.device,
        precision=args.precision,
        on_wait=waiting,
    ) as held:
        if held.done is not None:
            run = held.done
            held.claim.finish(True)
            who = held.waited_for.describe() if held.waited_for else "another process"
            print(f"{run.info.status} run {run.info.run_id} of configuration {what} ({who})")
            if run.info.status != "FINISHED":
                reason = run.data.tags.get(TAG_FAILURE, run.info.status)
                print(f"benchbnn: failed: {reason}", file=sys.stderr)
                return 1
            return 0
        _check_checkpoint(config, args)
        result = train(config, plugins=[held.claim.guard()], **options)
        held.end(result)
    return result
