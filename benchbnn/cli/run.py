"""``benchbnn run``: train and evaluate one configuration, tracked in MLflow.

Exit status 0 when the run finished, 1 when it failed (diverged or crashed), 2 for bad input
(nothing started), 130 when interrupted. ``--resume`` continues from the last checkpoint of the
same configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.names import DEFAULT_EXPERIMENT

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
    budget.add_argument("--epochs", type=int, default=10, help="epochs to train (default 10)")
    budget.add_argument("--batch-size", type=int, default=100, help="batch size (default 100)")
    budget.add_argument("--seed", type=int, default=0, help="seed of all randomness (default 0)")
    budget.add_argument(
        "--subset",
        type=int,
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
        "--log-every",
        type=int,
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


def _guess(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def option_value(text: str, default: Any) -> Any:
    """A command-line option value in the type of the option's default (lists: "64,64")."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise BenchbnnError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if isinstance(default, (int, float)):
        try:
            number = float(text)
        except ValueError:
            raise BenchbnnError(f"expected a number, got {text!r}") from None
        return int(number) if isinstance(default, int) and number.is_integer() else number
    if isinstance(default, (list, tuple)):
        items = [t.strip() for t in text.strip("()[] ").replace("x", ",").split(",") if t.strip()]
        sample = default[0] if default else None
        return [option_value(t, sample) if sample is not None else _guess(t) for t in items]
    if isinstance(default, str):
        return text
    return _guess(text)


def _options(assignments: Sequence[str], flag: str, defaults: dict[str, Any]) -> dict[str, Any]:
    options = {}
    for text in assignments:
        key, value = split_assignment(text, flag)
        try:
            options[key] = option_value(value, defaults.get(key))
        except BenchbnnError as exc:
            raise BenchbnnError(f"{flag} {key}: {exc}") from None
    return options


def build_config(args: argparse.Namespace) -> RunConfig:
    """The canonical RunConfig the command line describes (errors are BenchbnnError)."""
    from benchbnn.core.plugins import get_architecture, get_dataset
    from benchbnn.optim.schedules import parse_schedule
    from benchbnn.train.engine import canonical_config

    hparams = dict(split_assignment(t, "--set") for t in args.hparams)
    schedules = {}
    for text in args.schedules:
        key, spec = split_assignment(text, "--schedule")
        schedules[key] = dict(parse_schedule(spec).to_dict())
    arch_options = _options(
        args.arch_options, "--arch-option", dict(get_architecture(args.arch).options)
    )
    dataset_options = _options(
        args.dataset_options, "--dataset-option", dict(get_dataset(args.dataset).options)
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
    from benchbnn.train.engine import DEFAULT_LOG_EVERY, train

    config = build_config(args)
    result = train(
        config,
        data_dir=args.data_dir,
        device=args.device,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        resume=args.resume,
        quiet=args.quiet,
        checkpoint_dir=args.checkpoint_dir,
        download=args.download,
        log_every=args.log_every if args.log_every is not None else DEFAULT_LOG_EVERY,
    )
    if result.status != "FINISHED":
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
            print(f"benchbnn: failed: {result.error}", file=sys.stderr)
        return 1
    return 0
