"""``benchbnn worker``: train runs that ``benchbnn compare`` queued, on this machine."""

from __future__ import annotations

import argparse

from benchbnn.cli._common import add_execution_arguments
from benchbnn.core import limits

NAME = "worker"
HELP = (
    "take runs and tuning studies queued by 'benchbnn compare' from a shared storage and work "
    "on them, until the queue is empty"
)
ORDER = 35

# Kept equal to benchbnn.train.storage's (not imported here: building the parser stays cheap).
DEFAULT_HEARTBEAT_S = 30

EPILOG = """\
'benchbnn compare SUITE --storage URL --workers 0' queues the suite's missing runs in URL and
waits; start 'benchbnn worker --storage URL' on any number of machines to train them. URL is a
journal file (one machine; the default is the ledger beside the tracking store) or a
PostgreSQL / MySQL database (several machines). Each run is trained exactly once: a worker
claims a run's configuration before training it, and a configuration another live process
holds is left to it. A worker killed mid-run loses its claim after three missed heartbeats
(or at once on this machine); its run is then resumed by another worker from its last
checkpoint when --checkpoint-dir is on a filesystem every machine shares, else trained again.

'benchbnn compare SUITE --ruleset external --trials N --workers 0' queues the tuning studies
that are missing or short of N trials the same way (one job per study, run here with 'benchbnn
tune' as compare would run it), waits for them, then queues the final runs.

The tracking URI, data directory and checkpoint directory default to those the compare queued
with; give them here when this machine reaches them under other names. Every process sharing
a database storage must use the same --heartbeat.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the Optuna storage compare queued into: a journal file path or a postgresql:// "
        "or mysql:// URL (default: the ledger beside the tracking store)",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI as this machine reaches it (default: the one each job was "
        "queued with)",
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", help="dataset folder on this machine (default: the job's)"
    )
    parser.add_argument(
        "--device",
        metavar="DEV",
        help="torch device, e.g. cpu or cuda:1 (default: cuda if available)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="where run checkpoints live (default: the job's, else ./.benchbnn/checkpoints); "
        "share it between machines to resume a run another machine started",
    )
    parser.add_argument(
        "--threads",
        type=limits.argument(limits.THREADS, "--threads"),
        metavar="N",
        help="torch CPU threads (default: the share the queuing compare chose, else torch's)",
    )
    parser.add_argument(
        "--heartbeat",
        type=limits.argument(limits.HEARTBEAT_S, "--heartbeat"),
        default=DEFAULT_HEARTBEAT_S,
        metavar="SECONDS",
        help="heartbeat interval on a database storage; a worker silent for three intervals "
        f"loses its job and claim (default {DEFAULT_HEARTBEAT_S})",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="keep polling for new jobs once the queue is empty (stop with Ctrl-C)",
    )
    add_execution_arguments(parser, inherited_from="the compare that queued the job")
    parser.add_argument("--quiet", action="store_true", help="one line per run")


def main(args: argparse.Namespace) -> int:
    from benchbnn.bench.worker import WorkerOptions, work
    from benchbnn.tune.rulesets import STUDY_KIND, run_study_job

    options = WorkerOptions(
        tracking_uri=args.tracking_uri,
        data_dir=args.data_dir,
        checkpoint_dir=args.checkpoint_dir,
        device=args.device,
        threads=args.threads,
        quiet=args.quiet,
        compile=args.compile,
        precision=args.precision,
        binary_kernel=args.binary_kernel,
        storage=args.storage,
    )
    runners = {STUDY_KIND: run_study_job}  # the tuning layer's jobs, run from above bench
    work(args.storage, options, wait=args.wait, heartbeat=args.heartbeat, runners=runners)
    return 0
