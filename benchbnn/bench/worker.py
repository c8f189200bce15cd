"""``benchbnn worker``: take compare's queued runs from a storage and train them, one at a time.

A worker opens the ledger storage (a journal file, or PostgreSQL / MySQL shared by several
machines), takes a job from its work queue (:mod:`benchbnn.train.workqueue`), claims the job's
configuration (:mod:`benchbnn.train.ledger`) and trains it with
:func:`benchbnn.bench.compare.train_claimed`: planned again from the tracking store under the
claim, so a run finished meanwhile is not trained twice and an interrupted one resumes from its
checkpoint (when the checkpoint directory is shared between machines; else it starts over). A
job whose configuration another live process holds is ended as a duplicate (the compare that
queued it waits for that process instead).

Jobs of another kind than a run (a job's ``kind``; a run job has none) are run by the runner
that the caller registers for that kind (``runners``): the command line registers the tuning
layer's study jobs (:func:`benchbnn.tune.rulesets.run_study_job`), so this layer never names the
layers above it. Such a job is worked on under the claim of its ``key`` in the ledger, like a
run's configuration, so two workers never work on one at once.

It goes on until no job is waiting or being worked on by anyone (so a job that comes back from a
dead worker is still taken), or with ``wait`` for ever. Interrupted (Ctrl-C, SIGTERM), it puts
its job back in the queue and releases the claim; killed, its job comes back by itself (a
stopped heartbeat on a database, a dead process id on this machine).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchbnn.bench.compare import (
    DONE,
    HELD,
    JOB_VERSION,
    LEFT,
    TRAIN,
    TRAINED,
    PlannedRun,
    Training,
    hardware_description,
    train_claimed,
)
from benchbnn.bench.suites import SuiteEntry
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError, RunFailed
from benchbnn.core.names import TAG_HARDWARE
from benchbnn.train.identity import current_environment
from benchbnn.train.ledger import ClaimLost, Ledger, default_ledger, this_holder
from benchbnn.train.storage import DEFAULT_HEARTBEAT_S
from benchbnn.train.tracking import resolve_tracking_uri
from benchbnn.train.workqueue import DUPLICATE, SETTLED, WorkQueue

#: Seconds between two looks at an empty queue.
POLL_S = 2.0
#: The kind of a job that trains one planned run (jobs without a ``kind`` are runs).
RUN_KIND = "run"


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker brings to every job, overriding the job's own where given: the tracking
    URI (else the job's; a job whose URI had a password needs this or $MLFLOW_TRACKING_URI),
    the data and checkpoint directories, the device, the torch CPU threads (else the job's
    share, else torch's default), and how the model runs (else as the compare that queued the
    job asked; jobs of older releases: "auto" and "fp32")."""

    tracking_uri: str | None = None
    data_dir: str | None = None
    checkpoint_dir: str | None = None
    device: str | None = None
    threads: int | None = None
    quiet: bool = False
    #: how the model runs (``benchbnn.train.engine.train``); None: as the job says
    compile: str | None = None
    precision: str | None = None
    binary_kernel: str | None = None
    #: the storage this worker takes jobs from, as given (a study job whose storage URL lost
    #: its password in the queue uses it when it is the same storage)
    storage: str | None = None


#: Runs a job of another kind than a run: ``runner(job, options, say)``, where ``options``
#: are this worker's overrides and ``say`` prints one line. It raises RunFailed for a job
#: that failed by itself (reported, the worker goes on), BenchbnnError for a job this worker
#: cannot run (put back, the worker stops), KeyboardInterrupt when interrupted (put back).
JobRunner = Callable[[Mapping[str, Any], "WorkerOptions", Callable[[str], None]], None]


@dataclass
class WorkerReport:
    """What a worker did: jobs it trained, found settled, or found held by another process,
    and the jobs of other kinds it ran (``ran``: count per kind)."""

    trained: int = 0
    settled: int = 0
    duplicates: int = 0
    failed: int = 0
    ran: dict[str, int] = field(default_factory=dict)


def planned_of(job: Mapping[str, Any]) -> PlannedRun:
    """The planned run a queued job describes. Raises BenchbnnError for a job of another
    benchbnn release."""
    if job.get("version") != JOB_VERSION:
        raise BenchbnnError(
            f"a queued job of another benchbnn release (job version {job.get('version')}, this "
            f"worker reads {JOB_VERSION}); run workers of the release that queued it"
        )
    entry = SuiteEntry(label=str(job["entry"]["label"]), optimizer=str(job["entry"]["optimizer"]))
    config = RunConfig.from_dict(job["config"])
    return PlannedRun(entry=entry, arch=str(job["arch"]), config=config, action=TRAIN)


def job_tracking_uri(job: Mapping[str, Any], options: WorkerOptions) -> str:
    """The tracking URI a worker uses for ``job``: its own ``--tracking-uri``, else the job's
    (resolved). Raises BenchbnnError when the job's URI had a password (kept in the queue as
    ``***``) and neither ``--tracking-uri`` nor $MLFLOW_TRACKING_URI gives it here."""
    uri = options.tracking_uri
    if uri is None and "***" in str(job["tracking_uri"]):
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise BenchbnnError(
                f"the queued job tracks to {job['tracking_uri']}, whose password is not kept in "
                f"the queue; pass --tracking-uri with the full URI"
            )
    return resolve_tracking_uri(uri or str(job["tracking_uri"]))


def training_of(job: Mapping[str, Any], options: WorkerOptions) -> Training:
    """How this worker trains ``job``: the job's settings, this worker's overrides, and the
    numerical environment of this process (results are reused only from it, unless the job
    says any environment). Raises BenchbnnError when the job's tracking URI had a password and
    none is given here."""
    uri = job_tracking_uri(job, options)
    checkpoints = options.checkpoint_dir or job.get("checkpoint_dir")
    data_dir = options.data_dir or job.get("data_dir")
    tags = {**dict(job.get("tags", {})), TAG_HARDWARE: hardware_description(options.device)}
    precision = options.precision or str(job.get("precision", "fp32"))
    return Training(
        suite=str(job["suite"]),
        uri=uri,
        experiment=str(job["experiment"]),
        environment=current_environment(options.device, precision=precision).key(),
        tags=tags,
        data_dir=Path(data_dir).expanduser() if data_dir else None,
        device=options.device,
        checkpoint_dir=checkpoints,
        quiet=options.quiet,
        keep_checkpoints=bool(job.get("keep_checkpoints")),
        retry_failed=bool(job.get("retry_failed")),
        reuse_any_environment=bool(job.get("reuse_any_environment")),
        compile=options.compile or str(job.get("compile", "auto")),
        precision=precision,
        binary_kernel=options.binary_kernel or str(job.get("binary_kernel", "auto")),
    )


def work(
    storage: str | None = None,
    options: WorkerOptions | None = None,
    *,
    wait: bool = False,
    heartbeat: int = DEFAULT_HEARTBEAT_S,
    poll_s: float = POLL_S,
    echo: Callable[[str], None] | None = print,
    runners: Mapping[str, JobRunner] | None = None,
) -> WorkerReport:
    """Take and train queued jobs from ``storage`` (default: the ledger beside the tracking
    store) until the queue is empty, or with ``wait`` until interrupted. Jobs of another kind
    than a run are run by ``runners[kind]`` under the claim of their ``key``.

    Raises BenchbnnError for a storage that cannot hold a queue or cannot be opened, and for a
    job this worker cannot train (its data directory is missing here, say; the job is put
    back first), including a job of a kind no runner is given for; KeyboardInterrupt when
    interrupted (the job put back, its claim released). A run that fails is reported and the
    worker goes on.
    """
    import torch

    options = options or WorkerOptions()
    say = echo or (lambda _line: None)
    where = storage or default_ledger(resolve_tracking_uri(options.tracking_uri))
    ledger = Ledger.open(where, heartbeat)
    queue = WorkQueue(ledger)
    holder = this_holder("worker", ledger.heartbeat_s)
    default_threads = torch.get_num_threads()
    prefix = f"[worker {holder.pid}] "
    report = WorkerReport()
    said_waiting = False
    try:
        say(f"{prefix}taking jobs from {ledger.describe()}")
        while True:
            taken = queue.take(holder)
            if taken is None:
                queue.reap()
                if queue.waiting():
                    continue
                if not (wait or queue.pending()):
                    break
                if not said_waiting:
                    say(f"{prefix}no job waiting; polling every {poll_s:g} s")
                    said_waiting = True
                time.sleep(poll_s)
                continue
            said_waiting = False
            threads = options.threads or taken.job.get("threads") or default_threads
            torch.set_num_threads(int(threads))
            kind = str(taken.job.get("kind", RUN_KIND))
            if kind == RUN_KIND:
                value = _run_job(taken, queue, ledger, holder, options, report, prefix, say)
            else:
                runner = _runner_of(kind, dict(runners or {}), taken, queue)
                value = _run_other(taken, runner, queue, ledger, holder, options, report, say)
            if value is not None:
                queue.finish(taken, value)
    finally:
        ledger.close()
    say(
        f"{prefix}done: {report.trained} trained, {report.settled} already settled, "
        f"{report.duplicates} held by other processes, {report.failed} failed"
        + "".join(f", {count} {kind} jobs" for kind, count in sorted(report.ran.items()))
    )
    return report


def _runner_of(
    kind: str, runners: Mapping[str, JobRunner], taken: Any, queue: WorkQueue
) -> JobRunner:
    """The runner of ``kind``; else the job is put back and BenchbnnError raised."""
    if kind in runners:
        return runners[kind]
    queue.put_back(taken)
    known = ", ".join([RUN_KIND, *sorted(runners)])
    raise BenchbnnError(
        f"a queued job of kind {kind!r}, which this worker cannot run (it runs: {known}); run "
        f"'benchbnn worker' of the release that queued it"
    )


def _run_other(
    taken: Any,
    runner: JobRunner,
    queue: WorkQueue,
    ledger: Ledger,
    holder: Any,
    options: WorkerOptions,
    report: WorkerReport,
    say: Callable[[str], None],
    claim: Any | None = None,
) -> float:
    """Run a job of another kind than a run under the claim of its ``key`` (``claim``: made
    already when the job was taken, else made here): DUPLICATE when another live process holds
    the claim (the process that queued the job waits for it), else SETTLED once ``runner``
    returned or failed by itself (RunFailed, reported). Raises what :func:`work` raises, the
    job put back first."""
    job, kind = taken.job, str(taken.job["kind"])
    prefix = f"[worker {holder.pid}] "
    try:
        claim = claim or ledger.try_claim(str(job["key"]), holder)
        if not claim.owned:
            who = claim.owner.describe() if claim.owner else "another process"
            say(f"{prefix}{kind} job {job.get('name', job['key'])}: held by {who}; left to it")
            report.duplicates += 1
            return DUPLICATE
        with claim:
            runner(job, options, lambda line: say(f"{prefix}{line}"))
            claim.finish(True)
    except RunFailed as exc:
        report.failed += 1
        say(f"{prefix}{kind} job {job.get('name', job['key'])} failed: {exc}")
        return SETTLED
    except BaseException:
        queue.put_back(taken)
        raise
    report.ran[kind] = report.ran.get(kind, 0) + 1
    return SETTLED


def _run_job(
    taken: Any,
    queue: WorkQueue,
    ledger: Ledger,
    holder: Any,
    options: WorkerOptions,
    report: WorkerReport,
    prefix: str,
    say: Callable[[str], None],
) -> float | None:
    """Train one taken job under its claim; returns the value its queue trial ends with, or
    None when the job must not be ended here (its claim was taken over: a reaper queued it
    again). Raises what :func:`work` raises, the job put back first."""
    job = taken.job
    try:
        planned = planned_of(job)
        training = training_of(job, options)
        settled = train_claimed(planned, training, ledger, holder, say, prefix, key=job["key"])
    except ClaimLost as exc:
        say(f"{prefix}{exc}")
        queue.release(taken)
        return None
    except RunFailed as exc:
        report.failed += 1
        say(f"{prefix}{job.get('suite')}/{job['entry']['label']} failed: {exc}")
        return SETTLED
    except BaseException:
        queue.put_back(taken)
        raise
    name = training.name(planned)
    if settled.what == HELD:
        who = settled.owner.describe() if settled.owner else "another process"
        say(f"{prefix}{name}: held by {who}; left to it")
        report.duplicates += 1
        return DUPLICATE
    if settled.what == TRAINED:  # the engine printed the run's summary line
        report.trained += 1
    elif settled.what in (DONE, LEFT):
        report.settled += 1
        say(f"{prefix}{name}: {settled.plan.describe().strip() if settled.plan else 'settled'}")
    return SETTLED
