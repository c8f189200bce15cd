"""Rulesets: what an entry of a suite may change, and with which tuning budget (docs/rulesets.md).

A ruleset fixes the architecture, data, batch size, epochs and evaluation of a suite and says how
each entry's optimizer hyperparameters are chosen (benchbnn issue 17):

* ``fixed`` (v1): the suite's hyperparameters as written (the papers' protocols);
* ``defaults`` (v1): every optimizer at its declared defaults for the hyperparameters it
  declares searchable; what is not searchable (a variant switch such as Bop2ndOrder's
  ``unbiased``) stays as the entry writes it;
* ``external`` (v1): every entry gets ``K`` independent Optuna studies (default 3) of ``N``
  trials each over its optimizer's declared search space (narrowed by the suite's
  ``[tune.O]`` table, the same for every entry of O), with the same sampler (TPE, study ``k``
  seeded with ``k``) and no pruning, so every trial costs a full run. A study's result is its
  best trial's validation top-1; the entry takes the setting of the *median* study (the studies
  sorted by that value, ties by study index; the lower middle one when K is even). The final
  runs use the suite's seeds and report the test split.

With workers (``compare --workers N``, or ``--workers 0`` and ``benchbnn worker`` elsewhere),
the studies that are missing or short of ``N`` trials are queued as *study jobs* in the work
queue (:mod:`benchbnn.train.workqueue`), one job per study, and run by the workers
(:func:`run_study_job`, registered by ``benchbnn worker``) with the same sampler and seed as in
the compare process, so a study's trials follow one another as they would there. Compare waits
for them, then reads the median studies. A worker killed in a study job loses the job (a stopped
heartbeat, a dead process id) and it is queued again; the trial it was running is failed and
queued again by Optuna, uncounted.

This is the "external tuning" ruleset of AlgoPerf (Dahl et al. 2023, "Benchmarking Neural
Network Training Algorithms", Sec. 4; Kasimbeg et al. 2025), whose submissions likewise get a
fixed number of tuning trials per workload, repeated in independent studies whose median is
scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from benchbnn.bench.results import FIXED, Budget, RulesetInfo
from benchbnn.bench.suites import Suite, SuiteEntry
from benchbnn.core import limits
from benchbnn.core.errors import BenchbnnError, RunFailed
from benchbnn.core.names import DEFAULT_EXPERIMENT
from benchbnn.core.plugins import get_optimizer
from benchbnn.core.values import Number
from benchbnn.train.storage import DEFAULT_HEARTBEAT_S, is_url
from benchbnn.train.tracking import resolve_tracking_uri
from benchbnn.tune.search_space import search_space
from benchbnn.tune.studies import (
    STORAGE_ENV,
    check_study_name,
    count_trials,
    default_storage,
    open_storage,
    quiet_optuna,
    redact,
)
from benchbnn.tune.tuning import TunedParams, best_of, check_tune_inputs, tune


@dataclass(frozen=True)
class Ruleset:
    """A named, versioned ruleset (docs/rulesets.md describes each)."""

    name: str
    version: int
    summary: str


RULESETS: dict[str, Ruleset] = {
    "fixed": Ruleset("fixed", FIXED.version, "the suite's hyperparameters as written"),
    "external": Ruleset(
        "external", 1, "equal tuning budgets: K studies of N trials each, the median study"
    ),
    "defaults": Ruleset("defaults", 1, "every optimizer at its declared defaults"),
}
DEFAULT_STUDIES = 3
#: Independent studies per entry under ``external``.
STUDIES = Number(int, low=1, high=99)
#: The sampler every external study uses (study k seeded with k) and its pruner.
EXTERNAL_SAMPLER = "tpe"
EXTERNAL_PRUNER = "none"


#: The kind of a queued study job (:mod:`benchbnn.bench.worker` runs it through
#: :func:`run_study_job`) and its layout's version. Run jobs are version 1, so a worker of a
#: release without study jobs refuses one with its "another release" message.
STUDY_KIND = "study"
STUDY_JOB_VERSION = 2
#: The prefix of a study's claim key in the run ledger (a worker holds it while it runs the
#: study, so two workers never run one study at once).
STUDY_CLAIM_PREFIX = "benchbnn.claim.study."
#: What a study job passes on to :func:`benchbnn.tune.tuning.tune` from compare's options.
STUDY_OPTIONS = ("data_dir", "device", "tracking_uri", "experiment", "out", "quiet", "heartbeat")


def get_ruleset(name: str) -> Ruleset:
    """The ruleset called ``name``; BenchbnnError naming the choices otherwise."""
    if name not in RULESETS:
        raise BenchbnnError(f"unknown ruleset {name!r}; choose one of {', '.join(RULESETS)}")
    return RULESETS[name]


def external_study_names(suite: Suite, entry: SuiteEntry, studies: int) -> list[str]:
    """``<suite>-<entry>-external-<k>`` for k = 0..studies-1 (one file name each)."""
    return [check_study_name(f"{suite.name}-{entry.label}-external-{k}") for k in range(studies)]


def median_index(values: Sequence[float]) -> int:
    """Index of the median of ``values``: sorted by (value, index), the lower middle one.

    ``[90.0, 95.0, 92.0]`` -> 2 (92.0); ``[3.0, 1.0, 2.0, 4.0]`` -> 2 (2.0). Raises ValueError
    for an empty sequence.
    """
    if not values:
        raise ValueError("the median of no studies")
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return order[(len(values) - 1) // 2]


def defaults_suite(suite: Suite) -> tuple[Suite, RulesetInfo]:
    """The suite with every entry's searchable hyperparameters (and their schedules) removed,
    so each optimizer runs at its declared defaults for them."""
    entries = []
    for entry in suite.entries:
        space = search_space(get_optimizer(entry.optimizer))
        entries.append(
            dataclasses.replace(
                entry,
                hparams={k: v for k, v in entry.hparams.items() if k not in space.params},
                schedules={k: v for k, v in entry.schedules.items() if k not in space.params},
            )
        )
    used = dataclasses.replace(suite, entries=tuple(entries))
    return used, RulesetInfo("defaults", RULESETS["defaults"].version)


def load_best(storage: str, name: str) -> tuple[TunedParams, int]:
    """The best complete trial of study ``name`` in ``storage`` and its counted trials.

    Raises BenchbnnError when the study does not exist or has no complete trial.
    """
    with quiet_optuna():
        store = open_storage(storage, heartbeat=None, create=False)
        try:
            study = optuna.load_study(study_name=name, storage=store)
        except KeyError:
            raise BenchbnnError(
                f"no study {name!r} in {redact(storage)}; run 'benchbnn compare SUITE "
                f"--ruleset external --trials N' to create it"
            ) from None
        best = best_of(study, storage)
        done = count_trials(study.get_trials(deepcopy=False)).done
    if best is None:
        raise BenchbnnError(
            f"study {name!r} in {redact(storage)} has no complete trial ({done} counted, all "
            f"pruned or diverged); run more trials with a larger --trials"
        )
    return best, done


def counted_trials(storage: str, names: Sequence[str]) -> list[int]:
    """The counted trials (complete, pruned, diverged) of each study of ``names`` in
    ``storage``; 0 for a study (or a journal file) that does not exist yet. Raises
    BenchbnnError for a storage that cannot be opened."""
    if not is_url(storage) and not Path(storage).is_file():
        return [0] * len(names)
    with quiet_optuna():
        store = open_storage(storage, heartbeat=None, create=False)
        counts = []
        for name in names:
            try:
                study = optuna.load_study(study_name=name, storage=store)
            except KeyError:
                counts.append(0)
                continue
            counts.append(count_trials(study.get_trials(deepcopy=False)).done)
    return counts


def _run_study(
    suite: Suite,
    entry: SuiteEntry,
    name: str,
    k: int,
    trials: int,
    storage: str,
    say: Callable[[str], None] | None,
    **tune_options: Any,
) -> None:
    """Run external study ``name`` (study ``k`` of ``entry``) until it has ``trials`` counted
    trials: TPE seeded with ``k``, no pruning. The one call both the compare process and a
    worker make (:func:`benchbnn.tune.tuning.tune`, which raises what it raises)."""
    tune(
        suite,
        entry.optimizer,
        trials=trials,
        sampler=EXTERNAL_SAMPLER,
        pruner=EXTERNAL_PRUNER,
        storage=storage,
        study=name,
        entry=entry.label,
        sampler_seed=k,
        log=say,
        **tune_options,
    )


def external_suite(
    suite: Suite,
    trials: int,
    studies: int = DEFAULT_STUDIES,
    *,
    storage: str | None = None,
    run: bool = True,
    say: Callable[[str], None] | None = None,
    workers: int | None = None,
    queue: str | None = None,
    **tune_options: Any,
) -> tuple[Suite, RulesetInfo]:
    """The suite with every entry set to the best trial of its median study.

    With ``run``, the studies that are missing or short of ``trials`` counted trials are run
    first (:func:`benchbnn.tune.tuning.tune`; ``tune_options`` such as ``data_dir``,
    ``tracking_uri``, ``experiment``, ``device``, ``out``, ``quiet``, ``heartbeat`` are passed
    on): in this process one after the other (``workers`` None), else queued as study jobs in
    the work queue of ledger storage ``queue`` (None: the ledger beside the tracking store) for
    ``workers`` local ``benchbnn worker`` processes (0: workers started elsewhere), waiting until
    they are done (:func:`queue_studies`). Without ``run`` the studies must exist.
    Raises BenchbnnError for counts outside their ranges, an optimizer with nothing to tune, a
    missing study (without ``run``); RunFailed when a queued study ends short of ``trials``.
    """
    limits.within(limits.TRIALS, trials, "--trials")
    limits.within(STUDIES, studies, "--studies")
    url = storage or default_storage(tune_options.get("out"))
    if run and workers is not None:
        queue_studies(suite, trials, studies, url, workers, queue=queue, say=say, **tune_options)
        run = False
    budgets = []
    for entry in suite.entries:
        names = external_study_names(suite, entry, studies)
        found = []
        for k, name in enumerate(names):
            if run:
                _run_study(suite, entry, name, k, trials, url, say, **tune_options)
            found.append(load_best(url, name))
        chosen = median_index([best.value for best, _ in found])
        suite = suite.with_entry_hparams(entry.label, found[chosen][0].hparams)
        budgets.append(
            Budget(entry.label, tuple(done for _, done in found), tuple(names), names[chosen])
        )
    info = RulesetInfo(
        "external", RULESETS["external"].version, tuple(budgets), sampler=EXTERNAL_SAMPLER
    )
    return suite, info


# --- studies on the work queue ------------------------------------------------------------------


def study_key(storage: str, name: str) -> str:
    """The claim key of study ``name`` of ``storage`` in the run ledger: the prefix, 12 hex
    digits of SHA-256 of the storage (an absolute path for a journal file, the URL without its
    password otherwise) and the study name."""
    where = redact(storage) if is_url(storage) else str(Path(storage).resolve())
    return f"{STUDY_CLAIM_PREFIX}{hashlib.sha256(where.encode()).hexdigest()[:12]}.{name}"


def _plain(value: Any) -> Any:
    """``value`` as JSON data: mappings as dicts, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: The fields of a suite a study reads (its protocol, entries and search space, through
#: :func:`benchbnn.tune.tuning.build_protocol`): what a study job carries. The suite a worker
#: rebuilds has every other field (the paper's numbers, claims, the file's path, ...) at its
#: default; they never change a study.
STUDY_SUITE_FIELDS = (
    "name",
    "description",
    "dataset",
    "archs",
    "arch_options",
    "epochs",
    "batch_size",
    "seeds",
    "subset",
    "val_fraction",
    "dataset_options",
    "target_accuracy",
    "baseline",
    "entries",
    "tune",
    "l2",
    "per_arch",
)


def suite_data(suite: Suite) -> dict[str, Any]:
    """The fields of ``suite`` a study reads (:data:`STUDY_SUITE_FIELDS`) as JSON data;
    :func:`suite_of_data` reads them back."""
    data = {name: _plain(getattr(suite, name)) for name in STUDY_SUITE_FIELDS}
    data["entries"] = [
        {f.name: _plain(getattr(e, f.name)) for f in dataclasses.fields(e)} for e in suite.entries
    ]
    return data


def suite_of_data(data: Mapping[str, Any]) -> Suite:
    """The suite :func:`suite_data` wrote (tuples where the suite keeps tuples; the fields a
    study does not read at their defaults). Raises BenchbnnError for data that is no suite
    of this release."""
    try:
        fields = {name: data[name] for name in STUDY_SUITE_FIELDS}
        fields["archs"] = tuple(fields["archs"])
        fields["seeds"] = tuple(fields["seeds"])
        fields["entries"] = tuple(SuiteEntry(**entry) for entry in fields["entries"])
        return Suite(**fields)
    except (KeyError, TypeError) as exc:
        raise BenchbnnError(
            f"a queued study job holds a suite this release cannot read ({exc}); run "
            f"'benchbnn worker' of the release that queued it"
        ) from None


def study_job(
    suite: Suite,
    entry: SuiteEntry,
    k: int,
    trials: int,
    storage: str,
    options: Mapping[str, Any],
    threads: int | None = None,
) -> dict[str, Any]:
    """The queued job that runs study ``k`` of ``entry`` (:func:`external_study_names`) in
    ``storage`` up to ``trials`` counted trials: JSON, everything a worker needs.

    ``options`` are those of :data:`STUDY_OPTIONS` (the tracking URI is kept without its
    password, as a storage URL is; paths are made absolute); ``threads``: the worker's torch
    CPU threads (None: its own).
    """
    name = external_study_names(suite, entry, k + 1)[k]
    data_dir, out = options.get("data_dir"), options.get("out")
    return {
        "version": STUDY_JOB_VERSION,
        "kind": STUDY_KIND,
        "key": study_key(storage, name),
        "name": name,
        "suite": suite_data(suite),
        "entry": entry.label,
        "optimizer": entry.optimizer,
        "sampler_seed": k,
        "trials": trials,
        "storage": redact(storage) if is_url(storage) else str(Path(storage).resolve()),
        "tracking_uri": redact(resolve_tracking_uri(options.get("tracking_uri"))),
        "experiment": options.get("experiment") or DEFAULT_EXPERIMENT,
        "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir else None,
        "device": options.get("device"),
        "out": str(Path(out).resolve()) if out else None,
        "quiet": bool(options.get("quiet")),
        "heartbeat": options.get("heartbeat") or DEFAULT_HEARTBEAT_S,
        "threads": threads,
    }


def _job_storage(job: Mapping[str, Any], worker_storage: str | None) -> str:
    """The study storage of ``job``: as queued, or (when its password was left out) the
    worker's own ``--storage`` or $BENCHBNN_TUNE_STORAGE, whichever is the same storage.
    Raises BenchbnnError when neither is."""
    queued = str(job["storage"])
    if "***" not in queued:
        return queued
    for candidate in (worker_storage, os.environ.get(STORAGE_ENV)):
        if candidate and redact(candidate) == queued:
            return candidate
    raise BenchbnnError(
        f"the queued study {job['name']!r} lives in {queued}, whose password is not kept in the "
        f"queue; give the full URL with --storage (the same storage) or ${STORAGE_ENV}"
    )


def run_study_job(job: Mapping[str, Any], options: Any, say: Callable[[str], None]) -> None:
    """Run a queued study job (:func:`study_job`) in this process until its study has the
    job's counted trials; a study that has them already ends at once. ``options`` are the
    worker's overrides (:class:`benchbnn.bench.worker.WorkerOptions`: tracking URI, data
    directory, device, quiet, storage). Raises BenchbnnError for a job of another release or
    what :func:`benchbnn.tune.tuning.tune` raises.
    """
    from benchbnn.bench.worker import job_tracking_uri

    if job.get("version") != STUDY_JOB_VERSION:
        raise BenchbnnError(
            f"a queued study job of another benchbnn release (job version {job.get('version')}, "
            f"this worker reads {STUDY_JOB_VERSION}); run workers of the release that queued it"
        )
    suite = suite_of_data(job["suite"])
    _run_study(
        suite,
        suite.entry(str(job["entry"])),
        str(job["name"]),
        int(job["sampler_seed"]),
        int(job["trials"]),
        _job_storage(job, getattr(options, "storage", None)),
        say,
        data_dir=options.data_dir or job.get("data_dir"),
        device=options.device or job.get("device"),
        tracking_uri=job_tracking_uri(job, options),
        experiment=str(job["experiment"]),
        out=job.get("out"),
        quiet=bool(options.quiet or job.get("quiet")),
        heartbeat=int(job["heartbeat"]),
    )


def queue_studies(
    suite: Suite,
    trials: int,
    studies: int,
    storage: str,
    workers: int,
    *,
    queue: str | None = None,
    say: Callable[[str], None] | None = None,
    **tune_options: Any,
) -> int:
    """Queue a study job for every external study of ``suite`` in ``storage`` short of
    ``trials`` counted trials, in the work queue of ledger storage ``queue`` (None: beside the
    tracking store), and wait until they are done, run by ``workers`` local worker processes
    (0: by workers started elsewhere). Returns how many were queued (0: nothing to do, nothing
    opened but the studies' storage).

    ``tune_options`` are those of :data:`STUDY_OPTIONS`. Raises BenchbnnError for what
    :func:`benchbnn.tune.tuning.tune` would refuse (checked before anything is queued) and a
    queue storage that cannot be opened; RunFailed when a study ends short of ``trials``
    (its job failed, see the workers' output) or local workers keep failing.
    """
    from benchbnn.bench.compare import run_queued, worker_share
    from benchbnn.train.ledger import open_ledger

    unknown = set(tune_options) - set(STUDY_OPTIONS)
    if unknown:
        raise TypeError(f"options a study job cannot pass on: {', '.join(sorted(unknown))}")
    say = say or print
    short = _short_studies(suite, trials, studies, storage)
    if not short:
        return 0
    for entry in {e.label: e for e, _k, _name in short}.values():
        check_tune_inputs(
            suite,
            entry.optimizer,
            entry=entry.label,
            sampler=EXTERNAL_SAMPLER,
            pruner=EXTERNAL_PRUNER,
            data_dir=tune_options.get("data_dir"),
        )
    device = tune_options.get("device")
    threads = worker_share(device, workers).threads if workers else None
    jobs = [study_job(suite, e, k, trials, storage, tune_options, threads) for e, k, _ in short]
    uri = resolve_tracking_uri(tune_options.get("tracking_uri"))
    heartbeat = tune_options.get("heartbeat")
    ledger = open_ledger(queue, uri, heartbeat or DEFAULT_HEARTBEAT_S)
    try:
        run_queued(
            jobs,
            ledger,
            say,
            workers,
            tracking_uri=uri,
            heartbeat=heartbeat,
            device=device,
            what="studies",
        )
    finally:
        ledger.close()
    _check_done([name for _e, _k, name in short], trials, storage)
    return len(jobs)


def _short_studies(
    suite: Suite, trials: int, studies: int, storage: str
) -> list[tuple[SuiteEntry, int, str]]:
    """(entry, k, name) of every external study with fewer than ``trials`` counted trials."""
    wanted = [
        (entry, k, name)
        for entry in suite.entries
        for k, name in enumerate(external_study_names(suite, entry, studies))
    ]
    counts = counted_trials(storage, [name for _e, _k, name in wanted])
    return [study for study, done in zip(wanted, counts) if done < trials]


def _check_done(names: Sequence[str], trials: int, storage: str) -> None:
    """Raise RunFailed naming the studies of ``names`` still short of ``trials``."""
    counts = counted_trials(storage, names)
    short = [f"{name} ({done})" for name, done in zip(names, counts) if done < trials]
    if short:
        raise RunFailed(
            f"{len(short)} queued studies ended short of {trials} counted trials: "
            f"{', '.join(short)}; see the workers' output, then run the same compare again"
        )


def apply_ruleset(
    suite: Suite,
    name: str,
    *,
    trials: int | None = None,
    studies: int | None = None,
    storage: str | None = None,
    run: bool = True,
    say: Callable[[str], None] | None = None,
    workers: int | None = None,
    queue: str | None = None,
    **tune_options: Any,
) -> tuple[Suite, RulesetInfo]:
    """The suite as ruleset ``name`` sets its entries, and the ruleset's record.

    Select the entries first (:meth:`Suite.select`). ``workers`` and ``queue`` say where the
    external studies run (:func:`external_suite`). Raises BenchbnnError for an unknown
    ruleset, ``--trials``/``--studies`` given to a ruleset that does not tune, or ``external``
    without ``--trials``.
    """
    rules = get_ruleset(name)
    if rules.name != "external":
        if trials is not None or studies is not None:
            raise BenchbnnError(
                f"--trials and --studies only apply with --ruleset external, not {rules.name!r}"
            )
        if rules.name == "defaults":
            return defaults_suite(suite)
        return suite, FIXED
    if trials is None:
        raise BenchbnnError(
            "--ruleset external needs the number of trials every entry gets: add --trials N"
        )
    return external_suite(
        suite,
        trials,
        DEFAULT_STUDIES if studies is None else studies,
        storage=storage,
        run=run,
        say=say,
        workers=workers,
        queue=queue,
        **tune_options,
    )
