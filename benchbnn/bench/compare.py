"""``benchbnn compare``: run a suite, reusing every run the tracking store already holds.

A suite expands into run configurations (:meth:`benchbnn.bench.suites.Suite.run_configs`). Each is
looked up in the MLflow store by its identity (:func:`benchbnn.train.runs.find_config_runs`): a
finished run is reused and a run that failed because of itself (diverged, invalid: a result in
itself) is shown as failed, so nothing is recomputed; a run that failed because of its
environment (killed, out of memory, I/O errors) or is unfinished is resumed from its checkpoint,
so an interrupted compare continues where it stopped (a checkpoint that cannot continue the run,
e.g. one made before a plugin release changed its optimizer state layout, is reported and the
run starts over in a new MLflow run), or trained again when it has none; only what is missing is
trained, through :func:`benchbnn.train.engine.train`, each run under its configuration's claim
in the run ledger (:mod:`benchbnn.train.ledger`) and planned again from the store once claimed
(:func:`train_claimed`), so that no two processes train one configuration: in this process,
or on local or remote ``benchbnn worker`` processes fed by a work queue
(:mod:`benchbnn.train.workqueue`, :mod:`benchbnn.bench.worker`). The leaderboard is then
written from the store alone, as ``benchbnn leaderboard`` writes it, once every run is settled.

Only runs of compare's own numerical environment (device type, torch version, CPU threads,
world size: :mod:`benchbnn.train.identity`) are reused, unless ``reuse_any_environment``; runs
of an unknown environment (tracked before environments were recorded) count as another one.
Compare says how many results it found in each environment, and a leaderboard whose runs mix
environments says so. Before planning, RUNNING runs whose owner process on this host is gone
are ended KILLED (:func:`benchbnn.train.runs.reap_dead_runs`); a run still RUNNING in a live
process of this host is left to it. A RUNNING run owned by another host cannot be checked
without a heartbeat: it is treated as unfinished, as before (resumed or trained here).

Everything that can be wrong with the input (the suite, the data directory, the tracking
location, hyperparameters) is checked before the first run starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from benchbnn.bench.report import Written, check_index_location, default_out, write_from_store
from benchbnn.bench.results import RulesetInfo
from benchbnn.bench.suite_file import load_suite
from benchbnn.bench.suites import Suite, SuiteEntry
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.machine import cpu_model, usable_cores
from benchbnn.core.names import (
    DEFAULT_EXPERIMENT,
    DEFAULT_SUITE,
    FINISHED,
    RUNNING,
    TAG_DATA_NOTE,
    TAG_ENTRY,
    TAG_FAILURE,
    TAG_HARDWARE,
    TAG_PID,
    TAG_SUITE,
)
from benchbnn.core.paths import check_writable_dir, writable_dir
from benchbnn.core.plugins import get_dataset
from benchbnn.core.urls import redact
from benchbnn.train.checkpoint import FILENAME, SUMMARY, CheckpointMismatch, default_dir
from benchbnn.train.engine import canonical_config, train, train_or_start_over
from benchbnn.train.identity import current_environment, environment_of, is_result, owner_state
from benchbnn.train.runs import find_config_runs, in_environment, reap_dead_runs
from benchbnn.train.tracking import (
    check_tracking_location,
    client_for,
    is_new_local_store,
    resolve_tracking_uri,
)

#: What compare does with a planned run (BUSY: it is RUNNING in a live process of this host).
REUSE, RECORDED_FAILURE, RESUME, TRAIN = "reuse", "failed", "resume", "train"
BUSY = "busy"
#: Added to the "tracking store:" line when the store does not exist yet.
NEW_STORE_NOTE = " (new: nothing was tracked there before, so no run can be reused)"


class TunedRecord(Protocol):
    """A tuned entry as compare reports it (:class:`benchbnn.tune.tuned.TunedEntry`)."""

    label: str

    def describe(self) -> str: ...


@dataclass(frozen=True)
class PlannedRun:
    """One run of the suite and what compare does with it.

    ``environment`` is the environment line of the run reused (or shown as failed);
    ``environments`` those in which the store holds a result of this configuration.
    """

    entry: SuiteEntry
    arch: str
    config: RunConfig
    action: str
    run_id: str | None = None
    reason: str = ""
    environment: str = ""
    environments: tuple[str, ...] = ()

    def describe(self) -> str:
        what = f"{self.entry.label} / {self.arch} / seed {self.config.seed}"
        run = f" (run {self.run_id[:8]})" if self.run_id else ""
        verb = {
            REUSE: "reuse   ",
            RECORDED_FAILURE: "failed  ",
            RESUME: "resume  ",
            TRAIN: "train   ",
            BUSY: "running ",
        }[self.action]
        detail = f": {self.reason}" if self.reason else ""
        return f"  {verb}{what}{run}{detail}"


@dataclass(frozen=True)
class CompareResult:
    """What a compare did: the plan, the runs it trained and the files it wrote."""

    suite: Suite
    plan: tuple[PlannedRun, ...]
    results: tuple[Any, ...]
    written: Written
    tuned: tuple[TunedRecord, ...] = ()

    @property
    def trained(self) -> int:
        return len(self.results)

    @property
    def reused(self) -> int:
        return sum(p.action in (REUSE, RECORDED_FAILURE) for p in self.plan)


# --- checks before anything trains ------------------------------------------------------------


def check_data(suite: Suite, data_dir: str | Path | None) -> None:
    """Fail now, naming the suite, if its dataset cannot be loaded from ``data_dir``.

    Embedded and generated datasets need nothing; a dataset that lives on disk is opened
    (both splits) so that a wrong or empty folder is reported before the first run starts.
    """

    spec = get_dataset(suite.dataset)
    if not spec.needs_data_dir:
        return
    if data_dir is None:
        raise BenchbnnError(
            f"suite {suite.name!r} uses dataset {suite.dataset!r}, which needs a data directory: "
            f"pass --data-dir DIR pointing at a copy of it"
        )
    root = Path(data_dir)
    if not root.exists():
        raise BenchbnnError(
            f"suite {suite.name!r}: data directory {root} does not exist; pass --data-dir with "
            f"the folder that holds {suite.dataset!r}"
        )
    for split in ("train", "test"):
        if split not in spec.splits:
            continue
        try:
            dataset = spec.load(
                root=root, split=split, augment=False, **dict(suite.dataset_options)
            )
            size = len(dataset)
        except BenchbnnError as exc:
            raise BenchbnnError(f"suite {suite.name!r}: {exc}") from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise BenchbnnError(
                f"suite {suite.name!r}: cannot load the {split} split of {suite.dataset!r} from "
                f"{root}: {exc}"
            ) from None
        if size == 0:
            raise BenchbnnError(
                f"suite {suite.name!r}: the {split} split of {suite.dataset!r} in {root} is empty"
            )


def check_configs(plan: Sequence[tuple[SuiteEntry, str, RunConfig]]) -> None:
    """Every configuration as the engine will resolve it, so no bad one waits behind others."""

    for entry, arch, config in plan:
        try:
            canonical_config(config)
        except BenchbnnError as exc:
            raise BenchbnnError(f"entry {entry.label!r} on {arch}: {exc}") from None


def hardware_description(device: str | None = None) -> str:
    """CPU model, usable cores and torch threads, plus the GPU model when training on CUDA."""
    import torch

    cores = usable_cores()
    threads = torch.get_num_threads()
    text = f"{cpu_model()}, {cores} cores, {threads} torch thread{'s' if threads != 1 else ''}"
    cuda = str(device).startswith("cuda") if device is not None else torch.cuda.is_available()
    if cuda and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device or 'cuda'))}"
    return text


# --- planning ---------------------------------------------------------------------------------


def plan_runs(
    plan: Sequence[tuple[SuiteEntry, str, RunConfig]],
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    retry_failed: bool = False,
    checkpoint_dir: str | Path | None = None,
    *,
    environment: str | None = None,
    reuse_any_environment: bool = False,
    device: str | None = None,
) -> list[PlannedRun]:
    """Decide for each run: reuse it, show it as failed, resume it, train it, or leave it to
    the live process of this host that is training it (BUSY).

    Results (finished runs, and runs that failed because of themselves) are reused only from
    ``environment`` (default: this process's on ``device``,
    :func:`~benchbnn.train.identity.current_environment`), or from any environment with
    ``reuse_any_environment`` (those of ``environment`` first). Runs that failed because of
    their environment are never results: they are resumed from their checkpoint, when it was
    made in ``environment``, else trained again. RUNNING runs whose owner on this host is gone
    are ended KILLED first (:func:`~benchbnn.train.runs.reap_dead_runs`). Raises BenchbnnError
    when the store cannot be read.
    """
    env = environment or current_environment(device).key()
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            reap_dead_runs(client, found.experiment_id)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchbnnError(
            f"cannot open tracking store {redact(uri)}: {first}; pass --tracking-uri with a "
            f"reachable, "
            f"writable MLflow store"
        ) from None
    planned = []
    for entry, arch, config in plan:
        runs = find_config_runs(client, found.experiment_id, config) if found else []
        planned.append(
            _plan_one(
                entry, arch, config, runs, env, reuse_any_environment, retry_failed, checkpoint_dir
            )
        )
    return planned


def _plan_one(
    entry: SuiteEntry,
    arch: str,
    config: RunConfig,
    runs: Sequence[Any],
    environment: str,
    any_environment: bool,
    retry_failed: bool,
    checkpoint_dir: str | Path | None,
) -> PlannedRun:
    """What compare does with one configuration, given all its tracked ``runs`` (see
    :func:`plan_runs`)."""
    results = tuple(sorted({environment_of(r.data.tags) for r in runs if _is_result(r)}))

    def planned(
        action: str, run_id: str | None = None, reason: str = "", where: str = ""
    ) -> PlannedRun:
        return PlannedRun(entry, arch, config, action, run_id, reason, where, results)

    eligible = in_environment(runs, environment, any_environment)
    best = eligible[0] if eligible and _is_result(eligible[0]) else None
    if best is not None:
        where = environment_of(best.data.tags)
        note = "" if where == environment else f"made in another environment: {where}"
        if best.info.status == FINISHED:
            return planned(REUSE, best.info.run_id, note, where)
        if retry_failed:  # from scratch: its checkpoint holds the diverged state
            return planned(TRAIN, reason="retrying a failed run")
        reason = best.data.tags.get(TAG_FAILURE, "failed").splitlines()[0][:120]
        reason += f" ({note})" if note else ""
        return planned(RECORDED_FAILURE, best.info.run_id, reason, where)
    live = [r for r in runs if r.info.status == RUNNING and owner_state(r.data.tags)]
    if live:
        pid = live[0].data.tags.get(TAG_PID, "?")
        return planned(BUSY, live[0].info.run_id, f"running in process {pid} on this host")
    here = [r for r in runs if environment_of(r.data.tags) == environment]
    latest = here[0].info.run_id if here else None  # the newest unfinished one of this env
    directory = default_dir(config.config_hash(), checkpoint_dir)
    if (directory / FILENAME).is_file():
        owner = _checkpoint_run(directory, runs)
        if owner is None or environment_of(owner.data.tags) == environment:
            run_id = owner.info.run_id if owner is not None else latest
            return planned(RESUME, run_id, "from its last checkpoint")
        where = environment_of(owner.data.tags)
        return planned(
            TRAIN, reason=f"its checkpoint was made in another environment ({where}); starting over"
        )
    return planned(TRAIN)


def _is_result(run: Any) -> bool:
    return is_result(run.info.status, run.data.tags)


def _checkpoint_run(directory: Path, runs: Sequence[Any]) -> Any | None:
    """The tracked run among ``runs`` whose checkpoint is in ``directory`` (None if unknown)."""
    try:
        run_id = json.loads((directory / SUMMARY).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return next((r for r in runs if r.info.run_id == run_id), None)


def _summary_line(suite: Suite, planned: Sequence[PlannedRun]) -> str:
    counts = {
        a: sum(p.action == a for p in planned) for a in (REUSE, RECORDED_FAILURE, RESUME, TRAIN)
    }
    shape = (
        f"{len(suite.entries)} entries x {len(suite.archs)} architecture"
        f"{'s' if len(suite.archs) != 1 else ''} x {len(suite.seeds)} seeds"
    )
    busy = sum(p.action == BUSY for p in planned)
    return (
        f"suite {suite.name}: {len(planned)} runs ({shape}); reusing {counts[REUSE]} finished"
        f" and {counts[RECORDED_FAILURE]} failed, resuming {counts[RESUME]}, "
        f"training {counts[TRAIN]}"
        + (f", leaving {busy} to the processes running them" if busy else "")
    )


def environment_lines(
    planned: Sequence[PlannedRun], environment: str, reuse_any_environment: bool
) -> list[str]:
    """What compare says about environments: its own, how many planned runs have a result in
    it, and in each other environment (with whether those are reused)."""
    n = len(planned)
    here = sum(environment in p.environments for p in planned)
    lines = [f"environment: {environment}; results of {here} of the {n} runs found in it"]
    others: dict[str, int] = {}
    for p in planned:
        for env in p.environments:
            if env != environment:
                others[env] = others.get(env, 0) + 1
    for env, count in sorted(others.items()):
        used = sum(p.environment == env and p.action in (REUSE, RECORDED_FAILURE) for p in planned)
        what = (
            f"{used} reused (--reuse-any-environment)"
            if reuse_any_environment
            else "not reused: pass --reuse-any-environment to reuse them"
        )
        lines.append(f"  results of {count} of the runs found in {env}; {what}")
    return lines


# --- the command ------------------------------------------------------------------------------


def compare(
    suite: Suite | str | Path = DEFAULT_SUITE,
    *,
    seeds: int | Sequence[int] | None = None,
    epochs: int | None = None,
    optimizers: Sequence[str] | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    data_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    out: str | Path | None = None,
    device: str | None = None,
    tuned: Sequence[TunedRecord] = (),
    original: Suite | None = None,
    study: str | None = None,
    retry_failed: bool = False,
    checkpoint_dir: str | Path | None = None,
    data_note: str | None = None,
    quiet: bool = False,
    plugins: Iterable[Any] = (),
    plots: bool = True,
    index: bool = False,
    echo: Callable[[str], None] | None = print,
    reuse_any_environment: bool = False,
    keep_checkpoints: bool = False,
    workers: int | None = None,
    storage: str | None = None,
    heartbeat: int | None = None,
    ruleset: RulesetInfo | None = None,
    compile: str = "auto",
    precision: str = "fp32",
    binary_kernel: str = "auto",
) -> CompareResult:
    """Train what is missing of a suite, then write its leaderboard from the tracking store.

    ``seeds``, ``epochs``, ``optimizers`` and ``overrides`` change the protocol as in
    :meth:`Suite.run_configs`. A tuned suite comes resolved
    (:func:`benchbnn.tune.tuned.tuned_suite`): ``tuned`` holds its records (each printed and
    kept in the result) and ``original`` the suite before tuning, whose differences the
    leaderboard lists; ``study`` goes into the command line the leaderboard prints.
    ``data_note`` (e.g. "CIFAR-10 (JPEG copy)") is recorded with every run trained, and the
    leaderboard names it. ``index`` also rewrites the index of every suite (``README.md``) in
    the output folder's parent. ``echo`` receives the progress lines (None: silent).

    Runs are reused only from this process's numerical environment unless
    ``reuse_any_environment`` (see :func:`plan_runs`); the leaderboard shows the runs compare
    used and says when they mix environments. A finished run's checkpoint is deleted unless
    ``keep_checkpoints``.

    Every missing run is trained under its configuration's claim in the ledger ``storage``
    (:mod:`benchbnn.train.ledger`; default: the journal beside the tracking store), so compares,
    workers, ``run`` and ``tune`` processes sharing it never train one configuration twice at
    once; a run another process holds is waited for. ``workers`` None trains in this process;
    N > 0 queues the runs in ``storage`` (:mod:`benchbnn.train.workqueue`) for N local
    ``benchbnn worker`` processes, each with its share of the machine (:func:`worker_share`,
    whose environment compare then plans in); 0 queues them for workers started elsewhere
    (``benchbnn worker --storage``) and waits until every run is settled. ``heartbeat`` is the
    heartbeat interval on a database storage (every process sharing it must use the same).
    ``compile``, ``precision`` and ``binary_kernel`` are how the runs trained here run their
    model (:func:`benchbnn.train.engine.train`; recorded as tags, not part of a configuration).
    ``ruleset`` (resolved above this layer, :func:`benchbnn.tune.rulesets.apply_ruleset`, with
    ``suite`` already carrying its settings) is stated in the leaderboard with every budget.
    Raises BenchbnnError for bad input (nothing started), e.g. a SQLite ``storage`` (not a safe
    queue) or lifecycle ``plugins`` with workers (they cannot be sent to another process).
    """
    say = echo or (lambda _line: None)
    base = load_suite(suite) if isinstance(suite, (str, Path)) else suite
    for record in tuned:
        say(record.describe())
    plan = base.run_configs(seeds=seeds, epochs=epochs, optimizers=optimizers, overrides=overrides)
    expanded = base.expanded(seeds=seeds, epochs=epochs, optimizers=optimizers, overrides=overrides)
    check_configs(plan)
    data_root = Path(data_dir).expanduser() if data_dir is not None else None
    check_data(expanded, data_root)

    if checkpoint_dir is not None:  # before the tracking store and the leaderboard are made
        check_writable_dir(checkpoint_dir, "checkpoints", "--checkpoint-dir")
    uri = resolve_tracking_uri(tracking_uri)
    new_store = is_new_local_store(uri)  # before the check, which makes a folder store's folder
    check_tracking_location(uri)
    _check_training_inputs(uri, storage, workers, plugins)

    target = Path(out) if out is not None else default_out(expanded)
    writable_dir(target, "the leaderboard", "--out")
    if index:
        check_index_location(target.parent)
    environment = training_environment(device, workers, precision)
    planned = plan_runs(
        plan,
        uri,
        experiment,
        retry_failed,
        checkpoint_dir,
        environment=environment,
        reuse_any_environment=reuse_any_environment,
    )
    say(_summary_line(expanded, planned))
    for line in environment_lines(planned, environment, reuse_any_environment):
        say(line)
    # a mistyped --tracking-uri would otherwise train everything again without a word
    say(f"tracking store: {redact(uri)}{NEW_STORE_NOTE if new_store else ''}")
    if not quiet:
        for p in planned:
            say(p.describe())
    tags = {TAG_SUITE: expanded.name, TAG_HARDWARE: hardware_description(device)}
    if data_note:
        tags[TAG_DATA_NOTE] = data_note
    training = Training(
        suite=expanded.name,
        uri=uri,
        experiment=experiment,
        environment=environment,
        tags=tags,
        data_dir=data_root,
        device=device,
        checkpoint_dir=checkpoint_dir,
        quiet=quiet,
        plugins=tuple(plugins),
        keep_checkpoints=keep_checkpoints,
        retry_failed=retry_failed,
        reuse_any_environment=reuse_any_environment,
        storage=storage,
        heartbeat=heartbeat,
        compile=compile,
        precision=precision,
        binary_kernel=binary_kernel,
    )
    trained = _train_missing(planned, training, say, workers)
    written = write_from_store(
        base,
        seeds=seeds,
        epochs=epochs,
        optimizers=optimizers,
        overrides=overrides,
        tracking_uri=uri,
        experiment=experiment,
        out=out,
        tuned=bool(tuned),
        study=study,
        plots=plots,
        index=index,
        original=original or base,
        environment=environment,
        any_environment=reuse_any_environment or trained.mixed,
        ruleset=ruleset,
    )
    say(f"leaderboard written to {written.paths[0].parent}")
    return CompareResult(expanded, tuple(planned), tuple(trained.results), written, tuple(tuned))


def _start_over_announcer(
    prefix: str, say: Callable[[str], None]
) -> Callable[[CheckpointMismatch], None]:
    """What compare prints when a run it planned to resume starts over instead."""

    def announce(mismatch: CheckpointMismatch) -> None:
        say(f"{prefix}: {mismatch.reason}; starting over from epoch 1 in a new MLflow run")

    return announce


def _check_training_inputs(
    uri: str, storage: str | None, workers: int | None, plugins: Iterable[Any]
) -> None:
    """Refuse, before anything starts, a ledger storage that cannot hold claims and a queue
    (:func:`benchbnn.train.storage.check_queue_storage`), a negative worker count, and
    lifecycle plugins with workers. Raises BenchbnnError."""
    from benchbnn.train.ledger import default_ledger
    from benchbnn.train.storage import check_queue_storage

    check_queue_storage(storage or default_ledger(uri))
    if workers is not None and workers < 0:
        raise BenchbnnError(f"--workers must be 0 or more, got {workers}")
    if workers is not None and tuple(plugins):
        raise BenchbnnError(
            "lifecycle plugins cannot be sent to worker processes; train in this process "
            "(workers=None) or load them in the workers as plugin modules (-p MODULE)"
        )


# --- training: under per-configuration claims, here or on worker processes ----------------------

#: Seconds between two looks at the ledger or the queue while other processes train.
WAIT_POLL_S = 2.0
#: The version of the jobs compare queues for ``benchbnn worker`` (see :func:`job_of`).
JOB_VERSION = 1
#: What :func:`train_claimed` did with a planned run: trained it; found it done meanwhile
#: (a result is in the store); found another live process holding its claim; left it to a
#: live process that trains it without claims.
TRAINED, DONE, HELD, LEFT = "trained", "done", "held", "left"


@dataclass(frozen=True)
class Training:
    """Where and how compare's missing runs are trained (the same for all of them).

    ``environment`` is the numerical environment results are reused from: that of the
    processes that train. ``storage`` holds the ledger of claims and the work queue (None: the
    journal beside the tracking store, :func:`benchbnn.train.ledger.default_ledger`);
    ``heartbeat`` is the heartbeat interval on a database storage in seconds (None: the
    default, :data:`benchbnn.train.storage.DEFAULT_HEARTBEAT_S`).
    """

    suite: str
    uri: str
    experiment: str
    environment: str
    tags: Mapping[str, str]
    data_dir: Path | None = None
    device: str | None = None
    checkpoint_dir: str | Path | None = None
    quiet: bool = False
    plugins: tuple[Any, ...] = ()
    keep_checkpoints: bool = False
    retry_failed: bool = False
    reuse_any_environment: bool = False
    storage: str | None = None
    heartbeat: int | None = None
    compile: str = "auto"
    precision: str = "fp32"
    binary_kernel: str = "auto"

    def key(self, config: RunConfig) -> str:
        """The claim key of ``config`` in this store and experiment."""
        from benchbnn.train.ledger import claim_key

        return claim_key(self.uri, self.experiment, config.config_hash())

    def name(self, p: PlannedRun) -> str:
        return f"{self.suite}/{p.entry.label}/{p.arch}/seed{p.config.seed}"


@dataclass(frozen=True)
class Settled:
    """What :func:`train_claimed` did (``what``), with the new plan, the result of a run it
    trained, or the holder of a claim it found taken."""

    what: str
    plan: PlannedRun | None = None
    result: Any = None
    owner: Any = None


@dataclass(frozen=True)
class StoredRun:
    """A run a worker process trained, as the tracking store holds it after compare waited."""

    status: str
    run_id: str | None
    config_hash: str
    environment: str = ""
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == FINISHED


@dataclass(frozen=True)
class Trained:
    """What the training part of compare returns: the runs trained, and whether some of their
    results were made in another environment than compare planned in (remote workers)."""

    results: list[Any]
    mixed: bool = False


def train_claimed(
    p: PlannedRun,
    training: Training,
    ledger: Any,
    holder: Any,
    say: Callable[[str], None],
    prefix: str = "",
    key: str | None = None,
) -> Settled:
    """Train planned run ``p`` if this process can claim its configuration in ``ledger``.

    Another live process holds the claim: HELD (with its holder), nothing done. Claimed: the
    run is planned again from the store while the claim is held (:func:`plan_runs`), so what
    was finished (or failed by itself) meanwhile is DONE and never trained twice, a run
    RUNNING in a live process of this host that takes no claims is LEFT to it, and anything
    else is trained, resumed from its checkpoint when the new plan says so, and TRAINED. The
    claim ends with the run. ``key`` is the claim key (default: ``training.key(p.config)``).
    Raises what :func:`~benchbnn.train.engine.train` raises (the claim released first),
    including :class:`~benchbnn.train.ledger.ClaimLost` when another process took the claim
    over during training.
    """
    from benchbnn.core.names import RESULT_FAILURE_CLASSES

    claim = ledger.try_claim(key or training.key(p.config), holder)
    if not claim.owned:
        return Settled(HELD, p, owner=claim.owner)
    with claim:
        (fresh,) = plan_runs(
            [(p.entry, p.arch, p.config)],
            training.uri,
            training.experiment,
            training.retry_failed,
            training.checkpoint_dir,
            environment=training.environment,
            reuse_any_environment=training.reuse_any_environment,
        )
        if fresh.action in (REUSE, RECORDED_FAILURE):
            claim.finish(True)
            return Settled(DONE, fresh)
        if fresh.action == BUSY:
            return Settled(LEFT, fresh)
        name = training.name(fresh)
        say(f"{prefix}{'resuming' if fresh.action == RESUME else 'training'} {name}")
        result = _train_one(fresh, training, claim, f"{prefix}{name}", say)
        claim.finish(result.status == FINISHED or result.failure_class in RESULT_FAILURE_CLASSES)
        if result.status != FINISHED:
            reason = (result.error or result.status).splitlines()[0]
            say(f"{prefix}{name}: {result.status} ({reason}); shown as such in the leaderboard")
        return Settled(TRAINED, fresh, result)


def _train_one(
    p: PlannedRun, training: Training, claim: Any, label: str, say: Callable[[str], None]
) -> Any:
    """Train (or resume) ``p`` in this process under ``claim`` (its guard stops a run whose
    claim another process took over)."""
    options: dict[str, Any] = dict(
        data_dir=training.data_dir,
        device=training.device,
        tracking_uri=training.uri,
        experiment=training.experiment,
        quiet=training.quiet,
        checkpoint_dir=default_dir(p.config.config_hash(), training.checkpoint_dir)
        if training.checkpoint_dir is not None
        else None,
        plugins=(*training.plugins, claim.guard()),
        tags={**training.tags, TAG_ENTRY: p.entry.label},
        run_name=training.name(p),
        keep_checkpoint=training.keep_checkpoints,
        compile=training.compile,
        precision=training.precision,
        binary_kernel=training.binary_kernel,
    )
    if p.action == RESUME:
        announce = _start_over_announcer(label, say)
        return train_or_start_over(p.config, on_start_over=announce, **options)
    return train(p.config, **options)


def _train_missing(
    planned: Sequence[PlannedRun],
    training: Training,
    say: Callable[[str], None],
    workers: int | None = None,
) -> Trained:
    """Train what ``planned`` misses under per-configuration claims: in this process
    (``workers`` None), or through a work queue on ``workers`` local ``benchbnn worker``
    processes (0: on workers started elsewhere), waiting until every run is settled.

    Runs planned BUSY whose claim a live process holds are waited for as well. Raises
    BenchbnnError when the ledger cannot be opened, RunFailed when local workers keep
    failing, and what training raises.
    """
    from benchbnn.train.ledger import open_ledger
    from benchbnn.train.storage import DEFAULT_HEARTBEAT_S

    ledger = open_ledger(training.storage, training.uri, training.heartbeat or DEFAULT_HEARTBEAT_S)
    try:
        if workers is None:
            return Trained(_train_here(planned, training, ledger, say))
        return _train_on_workers(planned, training, ledger, say, workers)
    finally:
        ledger.close()


def _held_elsewhere(planned: Sequence[PlannedRun], training: Training, ledger: Any) -> list:
    """The runs planned BUSY whose claim a live process holds (they are waited for)."""
    busy = [p for p in planned if p.action == BUSY]
    return [p for p in busy if ledger.holder_of(training.key(p.config)) is not None]


def _train_here(
    planned: Sequence[PlannedRun], training: Training, ledger: Any, say: Callable[[str], None]
) -> list[Any]:
    """Train the missing runs in this process, one at a time; a run another process holds is
    passed over and tried again (its holder may fail) until it is settled. A run whose claim
    another process took over while this one trained it (this process looked dead) is left to
    that process and waited for."""
    import time

    from benchbnn.train.ledger import ClaimLost, this_holder

    holder = this_holder("compare", ledger.heartbeat_s)
    todo = [p for p in planned if p.action in (RESUME, TRAIN)]
    total = len(todo)
    todo += _held_elsewhere(planned, training, ledger)
    results: list[Any] = []
    told: set[str] = set()
    while todo:
        progressed = False
        for p in list(todo):
            prefix = f"[{len(results) + 1}/{max(total, len(results) + 1)}] "
            name = training.name(p)
            try:
                settled = train_claimed(p, training, ledger, holder, say, prefix)
            except ClaimLost as exc:
                say(f"  {name}: {exc}")
                settled = Settled(HELD, p)
            if settled.what == HELD:
                if name not in told:
                    who = settled.owner.describe() if settled.owner else "another process"
                    say(f"  {name}: being trained by {who}; waiting for it")
                    told.add(name)
                continue
            todo.remove(p)
            progressed = True
            if settled.what == TRAINED:
                results.append(settled.result)
            elif settled.what == DONE and p.action != BUSY:
                say(f"  {name}: settled meanwhile by another process; reused")
            elif settled.what == LEFT and settled.plan is not None:
                say(settled.plan.describe())
        if todo and not progressed:
            time.sleep(WAIT_POLL_S)
    return results


# --- the worker path --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerShare:
    """What each of N local workers gets: its device (None: the engine's default) and CPU
    threads, and the numerical environment their runs will have."""

    devices: tuple[str | None, ...]
    threads: int
    environment: Any

    def describe(self) -> str:
        where = sorted({d or "default device" for d in self.devices})
        plural = "s" if self.threads != 1 else ""
        return f"{', '.join(where)}, {self.threads} CPU thread{plural} each"


def worker_share(device: str | None, workers: int, precision: str = "fp32") -> WorkerShare:
    """Split this machine between ``workers`` local workers.

    With several GPUs (``torch.cuda.device_count() > 1``) and no device chosen (or plain
    ``cuda``), worker i gets ``cuda:i`` (round-robin); otherwise every worker uses ``device``.
    The usable cores are split evenly: ``max(1, cores // workers)`` torch threads each
    (recorded with every run as part of its environment).
    """
    import dataclasses

    import torch

    from benchbnn.train.identity import current_environment

    n = max(1, workers)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    threads = max(1, cores // n)
    gpus = torch.cuda.device_count()
    if gpus > 1 and device in (None, "cuda"):
        devices: tuple[str | None, ...] = tuple(f"cuda:{i % gpus}" for i in range(n))
    else:
        devices = (device,) * n
    env = current_environment(devices[0], precision=precision)
    if env.device_type == "cpu":
        env = dataclasses.replace(env, cpu_threads=threads, world_size=1)
    return WorkerShare(devices, threads, env)


def training_environment(device: str | None, workers: int | None, precision: str = "fp32") -> str:
    """The environment compare plans in: that of its local workers with ``workers`` > 0
    (:func:`worker_share`), else its own (in this process, or the best guess for remote
    workers, whose results in other environments the leaderboard then shows as mixed)."""
    from benchbnn.train.identity import current_environment

    if workers:
        return worker_share(device, workers, precision).environment.key()
    return current_environment(device, precision=precision).key()


def job_of(p: PlannedRun, training: Training, threads: int | None = None) -> dict[str, Any]:
    """The queued job of planned run ``p``: JSON, everything a worker needs to train it.

    The tracking URI is stored without its password (a worker with ``--tracking-uri`` or
    ``MLFLOW_TRACKING_URI`` supplies it); paths are absolute.
    """
    return {
        "version": JOB_VERSION,
        "key": training.key(p.config),
        "suite": training.suite,
        "entry": {"label": p.entry.label, "optimizer": p.entry.optimizer},
        "arch": p.arch,
        "config": p.config.to_dict(),
        "tracking_uri": redact(training.uri),
        "experiment": training.experiment,
        "environment": training.environment,
        "threads": threads,
        "data_dir": str(Path(training.data_dir).resolve()) if training.data_dir else None,
        "checkpoint_dir": str(Path(training.checkpoint_dir).resolve())
        if training.checkpoint_dir is not None
        else None,
        "tags": dict(training.tags),
        "retry_failed": training.retry_failed,
        "reuse_any_environment": training.reuse_any_environment,
        "keep_checkpoints": training.keep_checkpoints,
        "compile": training.compile,
        "precision": training.precision,
        "binary_kernel": training.binary_kernel,
    }


def _train_on_workers(
    planned: Sequence[PlannedRun],
    training: Training,
    ledger: Any,
    say: Callable[[str], None],
    workers: int,
) -> Trained:
    """Queue the missing runs in the ledger's storage and wait until all are settled, trained
    by ``workers`` local worker processes (started here) and any others on the storage."""
    todo = [p for p in planned if p.action in (RESUME, TRAIN)]
    share = worker_share(training.device, workers) if workers else None
    jobs = [job_of(p, training, share.threads if share else None) for p in todo]
    keys = {training.key(p.config) for p in _held_elsewhere(planned, training, ledger)}
    run_queued(
        jobs,
        ledger,
        say,
        workers,
        tracking_uri=training.uri,
        heartbeat=training.heartbeat,
        device=training.device,
        keys=keys,
    )
    return _stored(todo, training)


def run_queued(
    jobs: Sequence[Mapping[str, Any]],
    ledger: Any,
    say: Callable[[str], None],
    workers: int,
    *,
    tracking_uri: str,
    heartbeat: int | None = None,
    device: str | None = None,
    keys: Iterable[str] = (),
    what: str = "runs",
) -> None:
    """Queue ``jobs`` (each with a claim ``key``) in ``ledger``'s work queue and wait until
    every one is settled (and every claim of ``keys`` is free): worked on by ``workers`` local
    ``benchbnn worker`` processes started here (:func:`worker_share` of ``device``; 0: only by
    workers started elsewhere on the same storage), which are stopped before this returns.

    ``what`` names the jobs in the progress lines ("runs", "studies"). Raises RunFailed when
    local workers keep failing, what the storage raises, and KeyboardInterrupt (the local
    workers stopped first).
    """
    from benchbnn.train.pool import LocalWorkers
    from benchbnn.train.workqueue import WorkQueue, wait_until_settled

    queue = WorkQueue(ledger)
    share = worker_share(device, workers) if workers else None
    waited = {str(job["key"]) for job in jobs} | set(keys)
    pool = None
    if jobs:
        queue.put(jobs)
        where = ledger.describe()
        if share is not None:
            say(
                f"queued {len(jobs)} {what} in {where} for {workers} local workers "
                f"({share.describe()})"
            )
            commands = _worker_commands(heartbeat, ledger, share, min(workers, len(jobs)))
            pool = LocalWorkers(commands, env={"MLFLOW_TRACKING_URI": tracking_uri}, say=say)
            pool.start()
        else:
            say(
                f"queued {len(jobs)} {what} in {where}; start 'benchbnn worker --storage "
                f"{where}' on the machines that work on them"
            )
    # wait_until_settled names what it waits for "runs"
    try:
        wait_until_settled(
            queue,
            waited,
            poll_s=WAIT_POLL_S,
            on_poll=pool.check if pool else None,
            say=say,
            noun=what,
        )
    except BaseException:
        if pool is not None:
            pool.stop(grace_s=1.0)
        raise
    if pool is not None:
        pool.stop()


def _worker_commands(
    heartbeat: int | None, ledger: Any, share: WorkerShare, n: int
) -> list[list[str]]:
    """The command lines of ``n`` local workers (plugin modules loaded with ``-p`` passed on)."""
    import sys

    from benchbnn.core import plugins

    storage = ledger.url if "://" in ledger.url else str(Path(ledger.url).resolve())
    modules = list(getattr(plugins, "_extra_modules", []))
    base = [sys.executable, "-m", "benchbnn", *[a for m in modules for a in ("-p", m)], "worker"]
    base += ["--storage", storage, "--threads", str(share.threads), "--quiet"]
    if heartbeat:
        base += ["--heartbeat", str(heartbeat)]
    return [base + (["--device", d] if d else []) for d in share.devices[:n]]


def _stored(todo: Sequence[PlannedRun], training: Training) -> Trained:
    """The runs standing for ``todo`` in the store once workers settled them (any
    environment, compare's own first), and whether any was made in another environment."""
    rows = [(p.entry, p.arch, p.config) for p in todo]
    now = plan_runs(
        rows,
        training.uri,
        training.experiment,
        False,
        training.checkpoint_dir,
        environment=training.environment,
        reuse_any_environment=True,
    )
    status = {REUSE: FINISHED, RECORDED_FAILURE: "FAILED"}
    results = [
        StoredRun(
            status.get(p.action, "UNFINISHED"),
            p.run_id,
            p.config.config_hash(),
            p.environment,
            p.reason or None,
        )
        for p in now
    ]
    mixed = any(p.environment and p.environment != training.environment for p in now)
    return Trained(results, mixed)
