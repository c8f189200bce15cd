"""Leaderboards: tables and plots like the paper's, computed from tracked runs only.

Data flows one way: :func:`collect_records` reads the runs of a suite from the MLflow store (by
configuration hash), :func:`build` turns plain :class:`RunRecord` values into a
:class:`Leaderboard` (seed statistics, paired differences, time to target), and :func:`write`
renders it as Markdown, CSV, LaTeX and JSON (:mod:`benchbnn.tables`) plus two plots
(:mod:`benchbnn.plots`). Rendering sorts everything, formats
every float with a fixed precision and writes no timestamps, so the same runs always give
byte-identical tables: ``benchbnn leaderboard SUITE`` reproduces what ``benchbnn compare SUITE``
wrote, without training.

Layouts follow the paper: one architecture gives Table 1's (entry, training accuracy,
validation accuracy); several give Table 2's (entry x architecture, top-1 and top-5).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchbnn.config import TAG_CONFIG_HASH, TAG_FAILURE
from benchbnn.paths import writable_dir
from benchbnn.stats import PairedDifference, Summary, paired_difference, summarize, time_to_target
from benchbnn.suites import Suite, SuiteEntry

#: Tag that compare sets on every run it trains: CPU model, cores, torch version, device.
TAG_HARDWARE = "benchbnn.hardware"
#: Tag that ``compare --data-note`` sets: which copy of the data the run read.
TAG_DATA_NOTE = "benchbnn.data_note"
#: Statuses that count as a result. Anything else (RUNNING, KILLED) is an unfinished run.
FINISHED, FAILED, MISSING = "FINISHED", "FAILED", "MISSING"
OUTPUT_FILES = ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.json")
PLOT_FILES = ("curves.png", "flips.png")
#: Per-epoch metrics a leaderboard reads from each run.
HISTORY_METRICS = (
    "train_top1", "train_top5", "val_top1", "val_top5", "test_top1", "test_top5",
    "epoch_time_s", "flip_log_ratio",
)
STEP_FLIP_METRIC = "step_flip_log_ratio"


# --- records: what a leaderboard needs from one run ---------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One planned run as found in the tracking store (status MISSING when it is not there)."""

    label: str
    optimizer: str
    arch: str
    seed: int
    config_hash: str
    status: str = MISSING
    run_id: str | None = None
    failure: str | None = None
    history: tuple[Mapping[str, float], ...] = ()
    run_metrics: Mapping[str, float] = field(default_factory=dict)
    hardware: str = ""
    data_note: str = ""
    step_flips: tuple[tuple[int, float], ...] = ()

    @property
    def finished(self) -> bool:
        return self.status == FINISHED and bool(self.history)

    def final(self, metric: str) -> float | None:
        """The metric's value at the last epoch that logged it."""
        for row in reversed(self.history):
            value = row.get(metric)
            if value is not None:
                return float(value)
        return None

    def outcome(self) -> str:
        """How a run that gave no result ended, in a few words."""
        if self.status == MISSING:
            return "not run"
        if self.status == FAILED:
            return self.failure or "failed"
        epochs = len(self.history)
        return f"{self.status.lower()} after {epochs} epoch{'s' if epochs != 1 else ''}"


# --- the leaderboard model --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One entry on one architecture, summarized over its seeds."""

    entry: SuiteEntry
    arch: str
    records: tuple[RunRecord, ...]
    train_top1: Summary | None
    train_top5: Summary | None
    eval_top1: Summary | None
    eval_top5: Summary | None
    difference: PairedDifference | None
    is_baseline: bool
    epoch_time: Summary | None
    state_bytes: float | None
    target_epochs: Summary | None
    target_seconds: Summary | None
    target_reached: int
    paper: Mapping[str, float]

    @property
    def finished(self) -> int:
        return sum(r.finished for r in self.records)

    @property
    def unfinished(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.records if not r.finished)


@dataclass(frozen=True)
class Leaderboard:
    """Everything the renderers print, already computed and sorted."""

    suite: Suite
    rows: tuple[Row, ...]
    hardware: tuple[str, ...]
    command: str
    changes: tuple[str, ...] = ()
    data_notes: tuple[str, ...] = ()

    @property
    def layout(self) -> str:
        return "table1" if len(self.suite.archs) == 1 else "table2"

    @property
    def eval_name(self) -> str:
        """What the 'validation' column is measured on."""
        if self.suite.val_fraction > 0:
            return f"validation ({self.suite.val_fraction:g} of the training split held out)"
        return "test split"

    @property
    def records(self) -> tuple[RunRecord, ...]:
        return tuple(r for row in self.rows for r in row.records)

    def row(self, label: str, arch: str) -> Row:
        for row in self.rows:
            if row.entry.label == label and row.arch == arch:
                return row
        raise KeyError((label, arch))


def build(
    suite: Suite,
    plan: Sequence[tuple[SuiteEntry, str, Any]],
    records: Iterable[RunRecord],
    command: str = "",
    changes: Sequence[str] = (),
) -> Leaderboard:
    """The leaderboard of ``plan`` (from :meth:`Suite.run_configs`) given the runs found.

    ``suite`` must be the suite as expanded for the plan (:meth:`Suite.expanded`); ``changes``
    says how that differs from the suite file (:func:`benchbnn.tables.protocol_changes`). Planned runs
    without a record count as MISSING, so nothing is silently dropped.
    """
    found = {(r.label, r.arch, r.seed): r for r in records}
    metric = f"{suite.eval_split}_top"
    rows = []
    for entry in suite.entries:
        for arch in suite.archs:
            runs = tuple(
                found.get(
                    (entry.label, arch, config.seed),
                    RunRecord(entry.label, entry.optimizer, arch, config.seed, config.config_hash()),
                )
                for e, a, config in plan
                if e.label == entry.label and a == arch
            )
            rows.append(_row(suite, entry, arch, runs, metric))
    baseline = {row.arch: row for row in rows if row.entry.label == suite.baseline}
    rows = [_with_difference(row, baseline.get(row.arch), metric) for row in rows]
    runs = [r for row in rows for r in row.records]
    hardware = tuple(sorted({r.hardware for r in runs if r.hardware}))
    notes = tuple(sorted({r.data_note for r in runs if r.data_note}))
    return Leaderboard(suite, tuple(rows), hardware, command, tuple(changes), notes)


def _row(suite: Suite, entry: SuiteEntry, arch: str, runs: tuple[RunRecord, ...], metric: str) -> Row:
    done = [r for r in runs if r.finished]
    times = [
        summarize(row.get("epoch_time_s") for row in r.history) for r in done
    ]
    state = [r.run_metrics.get("state_bytes_per_binary_weight") for r in done]
    state = [s for s in state if s is not None]
    reached = []
    if suite.target_accuracy is not None:
        for r in done:
            hit = time_to_target(r.history, metric + "1", suite.target_accuracy)
            if hit is not None:
                reached.append(hit)
    return Row(
        entry=entry,
        arch=arch,
        records=runs,
        train_top1=summarize(r.final("train_top1") for r in done),
        train_top5=summarize(r.final("train_top5") for r in done),
        eval_top1=summarize(r.final(metric + "1") for r in done),
        eval_top5=summarize(r.final(metric + "5") for r in done),
        difference=None,
        is_baseline=entry.label == suite.baseline,
        epoch_time=summarize(t.mean for t in times if t is not None),
        state_bytes=state[0] if state else None,
        target_epochs=summarize(h.epoch for h in reached),
        target_seconds=summarize(h.seconds for h in reached),
        target_reached=len(reached),
        paper=dict(suite.paper.get(entry.label, {}).get(arch, {})),
    )


def _with_difference(row: Row, baseline: Row | None, metric: str) -> Row:
    if baseline is None or row.is_baseline:
        return row
    ours = {r.seed: r.final(metric + "1") for r in row.records if r.finished}
    theirs = {r.seed: r.final(metric + "1") for r in baseline.records if r.finished}
    from dataclasses import replace

    return replace(row, difference=paired_difference(ours, theirs))


# --- writing ----------------------------------------------------------------------------------


def write(lb: Leaderboard, out: str | Path, plots: bool = True) -> list[Path]:
    """Write the four tables (and plots) into ``out``; returns the paths written."""
    from benchbnn.plots import plot_curves, plot_flips
    from benchbnn.tables import render_csv, render_json, render_latex, render_markdown

    out = writable_dir(out, "the leaderboard", "--out")
    written = []
    for name, render in zip(OUTPUT_FILES, (render_markdown, render_csv, render_latex, render_json)):
        path = out / name
        path.write_text(render(lb), encoding="utf-8")
        written.append(path)
    if plots:
        written.append(plot_curves(lb, out / PLOT_FILES[0]))
        written.append(plot_flips(lb, out / PLOT_FILES[1]))
    return written


# --- reading tracked runs ---------------------------------------------------------------------


def _preference(run: Any) -> tuple[int, int]:
    """Which of several runs with one configuration hash stands for it.

    A finished run first (the earliest, so later duplicates never change a table), then a
    failed one with its reason, then the most recent unfinished one.
    """
    status = run.info.status
    start = int(run.info.start_time or 0)
    if status == FINISHED:
        return (0, start)
    if status == FAILED:
        return (1, start)
    return (2, -start)


def find_runs(client: Any, experiment_id: str, config_hash: str) -> list[Any]:
    """Every run of ``config_hash`` in the experiment, the preferred one first."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_CONFIG_HASH}` = '{config_hash}'",
        max_results=1000,
    )
    return sorted(runs, key=_preference)


def _history(client: Any, run_id: str) -> tuple[dict[str, float], ...]:
    by_epoch: dict[int, dict[str, float]] = {}
    for metric in HISTORY_METRICS:
        for m in client.get_metric_history(run_id, metric):
            if m.step >= 1:
                by_epoch.setdefault(int(m.step), {"epoch": int(m.step)})[metric] = float(m.value)
    return tuple(by_epoch[e] for e in sorted(by_epoch))


def hardware_of(tags: Mapping[str, str]) -> str:
    """The hardware line of one run: compare's hardware tag, torch version and device."""
    from benchbnn.config import TAG_DEVICE, TAG_TORCH_VERSION, TAG_WORLD_SIZE

    parts = [tags[TAG_HARDWARE]] if tags.get(TAG_HARDWARE) else []
    if tags.get(TAG_TORCH_VERSION):
        parts.append(f"torch {tags[TAG_TORCH_VERSION]}")
    if tags.get(TAG_DEVICE):
        world = tags.get(TAG_WORLD_SIZE, "1")
        parts.append(f"device {tags[TAG_DEVICE]}" + (f" x {world}" if world not in ("", "1") else ""))
    return ", ".join(parts)


def record_of(client: Any, run: Any, entry: SuiteEntry, arch: str, seed: int) -> RunRecord:
    """A :class:`RunRecord` from an MLflow run."""
    tags = run.data.tags
    run_id = run.info.run_id
    steps = tuple(
        (int(m.step), float(m.value))
        for m in sorted(client.get_metric_history(run_id, STEP_FLIP_METRIC), key=lambda m: m.step)
    )
    from benchbnn.config import RUN_METRICS

    return RunRecord(
        label=entry.label,
        optimizer=entry.optimizer,
        arch=arch,
        seed=seed,
        config_hash=tags.get(TAG_CONFIG_HASH, ""),
        status=run.info.status,
        run_id=run_id,
        failure=tags.get(TAG_FAILURE),
        history=_history(client, run_id),
        run_metrics={k: float(v) for k, v in run.data.metrics.items() if k in RUN_METRICS},
        hardware=hardware_of(tags),
        data_note=tags.get(TAG_DATA_NOTE, ""),
        step_flips=steps,
    )


def collect_records(
    plan: Sequence[tuple[SuiteEntry, str, Any]],
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> list[RunRecord]:
    """The tracked run standing for each planned configuration (MISSING ones left out)."""
    from benchbnn.config import DEFAULT_EXPERIMENT
    from benchbnn.tracking import client_for, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if _missing_sqlite_file(uri):  # nothing tracked there; do not create an empty store
        return []
    client = client_for(uri)
    found = _get_experiment(client, experiment or DEFAULT_EXPERIMENT, uri)
    if found is None:
        return []
    records = []
    for entry, arch, config in plan:
        runs = find_runs(client, found, config.config_hash())
        if runs:
            records.append(record_of(client, runs[0], entry, arch, config.seed))
    return records


def _missing_sqlite_file(uri: str) -> bool:
    if not uri.startswith("sqlite:///"):
        return False
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return path not in ("", ":memory:") and not Path(path).exists()


def _get_experiment(client: Any, name: str, uri: str) -> str | None:
    from benchbnn.errors import BenchbnnError

    try:
        found = client.get_experiment_by_name(name)
    except Exception as exc:  # noqa: BLE001 - any store failure gets the same advice
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchbnnError(
            f"cannot read tracking store {uri}: {first}; pass --tracking-uri with the store "
            f"that holds the runs"
        ) from None
    return None if found is None else found.experiment_id



# --- the index of all suites ------------------------------------------------------------------

def may_write_index(root: str | Path) -> bool:
    """An index goes into a ``leaderboards`` folder, or over an index benchbnn wrote before."""
    from benchbnn.tables import INDEX_FILE, INDEX_MARKER

    path = Path(root) / INDEX_FILE
    if path.is_file():
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.readline().strip() == INDEX_MARKER
    return Path(root).resolve().name == "leaderboards"


def write_index(root: str | Path, defined: Mapping[str, str] | None = None) -> Path:
    """Regenerate ``root/README.md`` from every ``root/*/leaderboard.json``.

    ``defined`` maps suite names to descriptions of suites to list even without results
    (default: every installed suite).
    """
    from benchbnn.tables import INDEX_FILE, render_index

    root = Path(root)
    results = {}
    for path in sorted(root.glob("*/leaderboard.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        results[data["suite"]] = data
    if defined is None:
        from benchbnn.plugins import get_registry

        registry = get_registry()
        defined = {name: registry.get("suite", name).description for name in registry.names("suite")}
    path = root / INDEX_FILE
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(render_index(results, defined), encoding="utf-8")
    return path


# --- the whole command ------------------------------------------------------------------------


def command_line(
    verb: str,
    suite: Suite,
    seeds: int | Sequence[int] | None = None,
    epochs: int | None = None,
    optimizers: Sequence[str] | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    tuned: bool = False,
    study: str | None = None,
) -> str:
    """The command that reproduces a protocol (stored in the files, so no paths or URIs)."""
    parts = ["benchbnn", verb, suite.name if suite.path is None or _is_registered(suite) else
             suite.path.name]
    if seeds is not None:
        parts += ["--seeds", str(seeds) if isinstance(seeds, int) else ",".join(map(str, seeds))]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    for key, value in sorted((overrides or {}).items()):
        if key == "subset":
            parts += ["--subset", str(value)]
        else:
            parts += ["--override", f"{key}={json.dumps(value, sort_keys=True, separators=(',', ':'))}"]
    if optimizers:
        names = optimizers if isinstance(optimizers, str) else ",".join(optimizers)
        parts += ["--optimizers", names]
    if tuned:
        parts += ["--tuned"] + (["--study", study] if study else [])
    return " ".join(_quote(p) for p in parts)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _is_registered(suite: Suite) -> bool:
    from benchbnn.plugins import get_registry

    registry = get_registry()
    if suite.name not in registry.names("suite"):
        return False
    return Path(registry.get("suite", suite.name).path).resolve() == suite.path


@dataclass(frozen=True)
class Written:
    """What :func:`leaderboard` produced."""

    leaderboard: Leaderboard
    paths: tuple[Path, ...]
    missing: int


def default_out(suite: Suite) -> Path:
    """``leaderboards/<suite>/`` relative to the working directory."""
    return Path("leaderboards") / suite.name


def leaderboard(
    suite: Suite | str,
    *,
    seeds: int | Sequence[int] | None = None,
    epochs: int | None = None,
    optimizers: Sequence[str] | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    out: str | Path | None = None,
    tuned: bool = False,
    storage: str | None = None,
    study: str | None = None,
    plots: bool = True,
    index: bool = True,
) -> Written:
    """Regenerate a suite's leaderboard files from the tracking store alone (no training).

    The protocol arguments must be those the runs were trained with (as given to ``compare``);
    planned runs that are not in the store are shown as not run. Finding none is an error.
    """
    from benchbnn.suites import apply_tuned, load_suite

    original = load_suite(suite) if isinstance(suite, (str, Path)) else suite
    base = original
    if tuned:  # only the entries that take part need a study
        base = apply_tuned(original.select(optimizers), storage=storage, study=study)[0]
    return write_from_store(
        base, seeds=seeds, epochs=epochs, optimizers=optimizers, overrides=overrides,
        tracking_uri=tracking_uri, experiment=experiment, out=out, tuned=tuned, study=study,
        plots=plots, index=index, require_runs=True, original=original,
    )


def write_from_store(
    suite: Suite,
    *,
    seeds: int | Sequence[int] | None = None,
    epochs: int | None = None,
    optimizers: Sequence[str] | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    out: str | Path | None = None,
    tuned: bool = False,
    study: str | None = None,
    plots: bool = True,
    index: bool = True,
    require_runs: bool = False,
    original: Suite | None = None,
) -> Written:
    """Look the suite's runs up and write its files (``suite`` already carries tuned values;
    ``tuned``/``study`` only go into the regenerate command; ``original`` is the suite before
    tuning, for describing the changes)."""
    from benchbnn.errors import BenchbnnError
    from benchbnn.tables import protocol_changes

    plan = suite.run_configs(seeds=seeds, epochs=epochs, optimizers=optimizers, overrides=overrides)
    expanded = suite.expanded(seeds=seeds, epochs=epochs, optimizers=optimizers, overrides=overrides)
    records = collect_records(plan, tracking_uri, experiment)
    if require_runs and not records:
        from benchbnn.tracking import resolve_tracking_uri

        raise BenchbnnError(
            f"no tracked runs of suite {suite.name!r} with this protocol in "
            f"{resolve_tracking_uri(tracking_uri)}; run `benchbnn compare {suite.name}` first, or "
            f"pass the --tracking-uri and the protocol options (--seeds, --epochs, ...) it used"
        )
    command = command_line("leaderboard", suite, seeds, epochs, optimizers, overrides, tuned, study)
    lb = build(expanded, plan, records, command, protocol_changes(original or suite, expanded))
    target = Path(out) if out is not None else default_out(suite)
    paths = write(lb, target, plots=plots)
    if index and may_write_index(target.parent):
        paths.append(write_index(target.parent))
    return Written(lb, tuple(paths), len(plan) - len(records))
