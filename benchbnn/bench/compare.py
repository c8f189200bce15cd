"""``benchbnn compare``: run a suite, reusing every run the tracking store already holds.

A suite expands into run configurations (:meth:`benchbnn.bench.suites.Suite.run_configs`). Each is
looked up in the MLflow store by its configuration hash: a finished run is reused and a failed
one (diverged: a result in itself) is shown as failed, so nothing is recomputed; an unfinished
run with a checkpoint is resumed, so an interrupted compare continues where it stopped; only
what is missing is trained, in this process, through :func:`benchbnn.train.engine.train`. The
leaderboard is then written from the store alone, exactly as ``benchbnn leaderboard`` writes it.

Everything that can be wrong with the input (the suite, the data directory, the tracking
location, hyperparameters) is checked before the first run starts.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from benchbnn.bench.report import Written, check_index_location, default_out, write_from_store
from benchbnn.bench.suite_file import load_suite
from benchbnn.bench.suites import Suite, SuiteEntry
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.names import (
    DEFAULT_EXPERIMENT,
    FAILED,
    FINISHED,
    TAG_DATA_NOTE,
    TAG_ENTRY,
    TAG_FAILURE,
    TAG_HARDWARE,
    TAG_SUITE,
)
from benchbnn.core.paths import writable_dir
from benchbnn.core.plugins import get_dataset
from benchbnn.train.checkpoint import FILENAME, default_dir
from benchbnn.train.engine import canonical_config, train
from benchbnn.train.runs import find_runs
from benchbnn.train.tracking import check_tracking_location, client_for, resolve_tracking_uri

#: What compare does with a planned run.
REUSE, RECORDED_FAILURE, RESUME, TRAIN = "reuse", "failed", "resume", "train"


class TunedRecord(Protocol):
    """A tuned entry as compare reports it (:class:`benchbnn.tune.tuned.TunedEntry`)."""

    label: str

    def describe(self) -> str: ...


@dataclass(frozen=True)
class PlannedRun:
    """One run of the suite and what compare does with it."""

    entry: SuiteEntry
    arch: str
    config: RunConfig
    action: str
    run_id: str | None = None
    reason: str = ""

    def describe(self) -> str:
        what = f"{self.entry.label} / {self.arch} / seed {self.config.seed}"
        run = f" (run {self.run_id[:8]})" if self.run_id else ""
        verb = {
            REUSE: "reuse   ",
            RECORDED_FAILURE: "failed  ",
            RESUME: "resume  ",
            TRAIN: "train   ",
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

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    text = f"{_cpu_model()}, {cores} cores, {threads} torch thread{'s' if threads != 1 else ''}"
    cuda = str(device).startswith("cuda") if device is not None else torch.cuda.is_available()
    if cuda and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device or 'cuda'))}"
    return text


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# --- planning ---------------------------------------------------------------------------------


def plan_runs(
    plan: Sequence[tuple[SuiteEntry, str, RunConfig]],
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    retry_failed: bool = False,
    checkpoint_dir: str | Path | None = None,
) -> list[PlannedRun]:
    """Decide for each run: reuse it, show it as failed, resume it, or train it."""

    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    try:
        found = client.get_experiment_by_name(experiment)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchbnnError(
            f"cannot open tracking store {uri}: {first}; pass --tracking-uri with a reachable, "
            f"writable MLflow store"
        ) from None
    planned = []
    for entry, arch, config in plan:
        config_hash = config.config_hash()
        runs = find_runs(client, found.experiment_id, config_hash) if found else []
        best = runs[0] if runs else None
        status = best.info.status if best else None
        if status == FINISHED:
            planned.append(PlannedRun(entry, arch, config, REUSE, best.info.run_id))
            continue
        if status == FAILED:
            if retry_failed:  # from scratch: its checkpoint holds the diverged state
                planned.append(
                    PlannedRun(entry, arch, config, TRAIN, reason="retrying a failed run")
                )
                continue
            reason = best.data.tags.get(TAG_FAILURE, "failed")
            planned.append(
                PlannedRun(
                    entry,
                    arch,
                    config,
                    RECORDED_FAILURE,
                    best.info.run_id,
                    reason.splitlines()[0][:120],
                )
            )
            continue
        checkpoint = default_dir(config_hash, checkpoint_dir) / FILENAME
        if checkpoint.is_file():
            planned.append(
                PlannedRun(
                    entry,
                    arch,
                    config,
                    RESUME,
                    best.info.run_id if best else None,
                    "from its last checkpoint",
                )
            )
        else:
            planned.append(PlannedRun(entry, arch, config, TRAIN))
    return planned


def _summary_line(suite: Suite, planned: Sequence[PlannedRun]) -> str:
    counts = {
        a: sum(p.action == a for p in planned) for a in (REUSE, RECORDED_FAILURE, RESUME, TRAIN)
    }
    shape = (
        f"{len(suite.entries)} entries x {len(suite.archs)} architecture"
        f"{'s' if len(suite.archs) != 1 else ''} x {len(suite.seeds)} seeds"
    )
    return (
        f"suite {suite.name}: {len(planned)} runs ({shape}); reusing {counts[REUSE]} finished"
        f" and {counts[RECORDED_FAILURE]} failed, resuming {counts[RESUME]}, "
        f"training {counts[TRAIN]}"
    )


# --- the command ------------------------------------------------------------------------------


def compare(
    suite: Suite | str | Path = "quick",
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
) -> CompareResult:
    """Train what is missing of a suite, then write its leaderboard from the tracking store.

    ``seeds``, ``epochs``, ``optimizers`` and ``overrides`` change the protocol as in
    :meth:`Suite.run_configs`. A tuned suite comes resolved (:func:`benchbnn.tune.tuned.tuned_suite`):
    ``tuned`` holds its records (each printed and kept in the result) and ``original`` the suite
    before tuning, whose differences the leaderboard lists; ``study`` goes into the command line
    the leaderboard prints. ``data_note`` (e.g. "CIFAR-10 (JPEG copy)") is recorded with
    every run trained, and the leaderboard names it. ``index`` also rewrites the index of every
    suite (``README.md``) in the output folder's parent. ``echo`` receives the progress lines
    (None: silent).
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

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_location(uri)

    target = Path(out) if out is not None else default_out(expanded)
    writable_dir(target, "the leaderboard", "--out")
    if index:
        check_index_location(target.parent)
    planned = plan_runs(plan, uri, experiment, retry_failed, checkpoint_dir)
    say(_summary_line(expanded, planned))
    if not quiet:
        for p in planned:
            say(p.describe())
    tags = {TAG_SUITE: expanded.name, TAG_HARDWARE: hardware_description(device)}
    if data_note:
        tags[TAG_DATA_NOTE] = data_note
    results = _train_missing(
        expanded,
        planned,
        data_root,
        uri,
        experiment,
        device,
        checkpoint_dir,
        quiet,
        tuple(plugins),
        tags,
        say,
    )
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
    )
    say(f"leaderboard written to {written.paths[0].parent}")
    return CompareResult(expanded, tuple(planned), tuple(results), written, tuple(tuned))


def _train_missing(
    suite: Suite,
    planned: Sequence[PlannedRun],
    data_dir: Path | None,
    uri: str,
    experiment: str,
    device: str | None,
    checkpoint_dir: str | Path | None,
    quiet: bool,
    plugins: tuple[Any, ...],
    tags: Mapping[str, str],
    say: Callable[[str], None],
) -> list[Any]:

    todo = [p for p in planned if p.action in (RESUME, TRAIN)]
    results = []
    for i, p in enumerate(todo, start=1):
        name = f"{suite.name}/{p.entry.label}/{p.arch}/seed{p.config.seed}"
        say(f"[{i}/{len(todo)}] {'resuming' if p.action == RESUME else 'training'} {name}")
        result = train(
            p.config,
            data_dir=data_dir,
            device=device,
            tracking_uri=uri,
            experiment=experiment,
            resume=p.action == RESUME,
            quiet=quiet,
            checkpoint_dir=default_dir(p.config.config_hash(), checkpoint_dir)
            if checkpoint_dir is not None
            else None,
            plugins=plugins,
            tags={**tags, TAG_ENTRY: p.entry.label},
            run_name=name,
        )
        if result.status != FINISHED:
            reason = (result.error or result.status).splitlines()[0]
            say(
                f"[{i}/{len(todo)}] {name}: {result.status} ({reason}); shown as such in the leaderboard"
            )
        results.append(result)
    return results
