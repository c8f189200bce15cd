"""Benchmarks: several suites (the workloads) under one ruleset, scored by performance profiles.

A benchmark file is TOML::

    name = "cpu"                   # kebab-case; defaults to the file name before .benchmark
    description = "..."
    ruleset = "fixed"              # fixed | external | defaults (docs/rulesets.md)
    trials = 8                     # external only: trials per study ...
    studies = 3                    # ... and independent studies per entry (default 3)
    measure = "seconds"            # time to result in: seconds | steps | epochs
    [[workloads]]
    suite = "bench-digits"         # a suite name or a path relative to this file
    [[workloads]]
    suite = "bench-mnist"
    optional = true                # scored only when --data-dir holds its dataset
    overrides = { val_fraction = 0.1 }          # protocol keys changed (as compare --override)
    labels = { bop2ndorder = "bop2ndorder-biased" }  # the suite's entry label -> the benchmark's

Built-in benchmarks are ``<name>.benchmark.toml`` files beside the built-in suite files
(``plugins/suites/``); :func:`load_benchmark` finds them by name in the folder of every installed
suite. ``benchbnn score BENCHMARK`` writes ``leaderboards/<benchmark>/``.

Optimizers are matched across workloads by **entry label** (the suites of one benchmark use the
same labels, or a workload's ``labels`` table renames its entries; an optimizer name alone is
ambiguous, e.g. Bop2ndOrder biased and unbiased). An entry absent from a workload counts as never
reaching its target there, and the table says so. Each suite with several architectures gives
one workload per architecture. Time to result is measured on the validation split (the test
split when a suite holds none, said in the table); accuracy is the test split's top-1 at the
final epoch, median over seeds.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchbnn.bench.profiles import (
    RESAMPLES,
    TAU_MAX,
    Resampled,
    Workload,
    profile,
    ratios,
    resample_scores,
    taus,
)
from benchbnn.bench.report import steps_per_epoch_of
from benchbnn.bench.results import LOAD_AVERAGE, RulesetInfo, cores_of
from benchbnn.bench.stats import epoch_max, time_to_target
from benchbnn.bench.suites import Suite
from benchbnn.bench.tables import significant
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.formatting import fixed
from benchbnn.core.machine import usable_cores
from benchbnn.core.names import FAILED, FAILURE_RUN
from benchbnn.core.paths import writable_dir
from benchbnn.core.plugins import get_registry
from benchbnn.train.runs import RunRecord, collect_records

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SUFFIX = ".benchmark.toml"
MEASURES = ("seconds", "steps", "epochs")
RULESET_NAMES = ("fixed", "external", "defaults")
_KEYS = {"name", "description", "ruleset", "trials", "studies", "measure", "workloads"}
#: The tau values the profile table prints (the plot draws a fine grid).
TABLE_TAUS = (1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload of a benchmark: a suite, and whether it needs data that may be absent."""

    suite: str
    optional: bool = False
    overrides: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    """A parsed benchmark file."""

    name: str
    description: str
    ruleset: str
    measure: str
    workloads: tuple[WorkloadSpec, ...]
    trials: int | None = None
    studies: int | None = None
    path: Path | None = None

    def suite_ref(self, spec: WorkloadSpec) -> str:
        """The suite as ``load_suite`` takes it: a name, or a path relative to this file."""
        if self.path is not None and spec.suite.endswith(".toml"):
            return str((self.path.parent / spec.suite).resolve())
        return spec.suite


def _fail(source: str, message: str) -> BenchbnnError:
    return BenchbnnError(f"benchmark {source}: {message}")


def parse_benchmark(text: str, path: Path | None = None) -> Benchmark:
    """Validate benchmark TOML ``text``; BenchbnnError naming the file, key and fix."""
    source = str(path) if path is not None else "<benchmark>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, f"is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise _fail(source, f"unknown key {unknown[0]!r}; keys: {', '.join(sorted(_KEYS))}")
    default = path.name[: -len(SUFFIX)] if path is not None and path.name.endswith(SUFFIX) else ""
    name = str(data.get("name", default))
    if not name:
        raise _fail(source, 'has no name; add name = "..."')
    ruleset = str(data.get("ruleset", "fixed"))
    if ruleset not in RULESET_NAMES:
        raise _fail(source, f"ruleset {ruleset!r} is unknown; use {', '.join(RULESET_NAMES)}")
    measure = str(data.get("measure", "seconds"))
    if measure not in MEASURES:
        raise _fail(source, f"measure {measure!r} is unknown; use {', '.join(MEASURES)}")
    trials, studies = data.get("trials"), data.get("studies")
    for key, value in (("trials", trials), ("studies", studies)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise _fail(source, f"{key} must be a positive integer, got {value!r}")
    if ruleset == "external" and trials is None:
        raise _fail(source, "ruleset 'external' needs trials = N (trials per study)")
    if ruleset != "external" and (trials is not None or studies is not None):
        raise _fail(source, f"trials and studies only apply to ruleset 'external', not {ruleset!r}")
    return Benchmark(
        name=name,
        description=" ".join(str(data.get("description", "")).split()),
        ruleset=ruleset,
        measure=measure,
        workloads=_workloads(source, data.get("workloads")),
        trials=trials,
        studies=studies,
        path=path.resolve() if path is not None else None,
    )


def _workloads(source: str, raw: Any) -> tuple[WorkloadSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(source, 'needs at least one [[workloads]] table with suite = "NAME"')
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("suite"), str):
            raise _fail(source, f'workload {i + 1} needs suite = "NAME" (a suite name or file)')
        extra = sorted(set(item) - {"suite", "optional", "overrides", "labels"})
        if extra:
            raise _fail(
                source,
                f"workload {i + 1}: unknown key {extra[0]!r} (suite, optional, overrides, labels)",
            )
        overrides, labels = item.get("overrides", {}), item.get("labels", {})
        if not isinstance(overrides, dict) or not isinstance(labels, dict):
            raise _fail(source, f"workload {i + 1}: overrides and labels must be tables")
        if not all(isinstance(v, str) for v in labels.values()):
            raise _fail(source, f"workload {i + 1}: labels maps entry labels to text labels")
        out.append(
            WorkloadSpec(item["suite"], bool(item.get("optional", False)), overrides, labels)
        )
    names = [w.suite for w in out]
    if len(set(names)) != len(names):
        raise _fail(source, "names a suite twice in [[workloads]]; list each once")
    return tuple(out)


def builtin_benchmarks() -> dict[str, Path]:
    """Benchmark name -> file, over the folders of every installed suite."""
    registry = get_registry()
    folders = {
        Path(registry.get("suite", n).path).resolve().parent for n in registry.names("suite")
    }
    found: dict[str, Path] = {}
    for folder in sorted(folders):
        for path in sorted(folder.glob("*" + SUFFIX)):
            found.setdefault(path.name[: -len(SUFFIX)], path)
    return found


def load_benchmark(name_or_path: str | Path) -> Benchmark:
    """A benchmark file by path, or a built-in benchmark by name (see the module docstring).

    Raises BenchbnnError for a missing file, an unknown name (listing the known ones) or an
    invalid file.
    """
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        text = str(name_or_path)
        if text.endswith(".toml") or "/" in text:
            raise BenchmarkNotFound(f"benchmark file {text} does not exist")
        known = builtin_benchmarks()
        if text not in known:
            raise BenchmarkNotFound(
                f"no benchmark {text!r}; built-in: {', '.join(sorted(known)) or 'none'} "
                f"(or pass a *{SUFFIX} file)"
            )
        path = known[text]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchbnnError(f"cannot read benchmark file {path}: {exc}") from None
    return parse_benchmark(text, path)


class BenchmarkNotFound(BenchbnnError):
    """No benchmark file or built-in benchmark of that name."""


# --- from runs to workloads -------------------------------------------------------------------


def run_time(record: RunRecord, suite: Suite, measure: str, steps: int | None) -> float | None:
    """One run's time to result in ``measure``: ``inf`` when it finished (or failed because of
    itself) without reaching the target, None when it gives no result (not run, unfinished,
    failed because of its environment) or its time was not measured."""
    assert suite.target_accuracy is not None
    if record.status == FAILED and record.failure_class == FAILURE_RUN:
        return math.inf
    if not record.finished:
        return None
    metric = f"{suite.target_split}_top1"
    hit = time_to_target(record.history, metric, suite.target_accuracy, steps_per_epoch=steps)
    if hit is None:
        return math.inf
    value = {"seconds": hit.seconds, "steps": hit.steps, "epochs": hit.epoch}[measure]
    return None if value is None else float(value)


def workloads_of(
    suite: Suite,
    records: Sequence[RunRecord],
    measure: str,
    steps_per_epoch: Mapping[str, int],
    labels: Mapping[str, str] | None = None,
) -> list[Workload]:
    """One :class:`Workload` per architecture of ``suite`` from its runs' records, entries
    renamed by ``labels`` (the suite's label -> the benchmark's).

    Raises BenchbnnError when the suite declares no target accuracy (no time to result).
    """
    if suite.target_accuracy is None:
        raise BenchbnnError(
            f"suite {suite.name!r} declares no target_accuracy, so it has no time to result; "
            f"add target_accuracy = P to the suite (a validation top-1 in percent)"
        )
    out = []
    for arch in suite.archs:
        times: dict[str, list[float]] = {}
        accs: dict[str, list[float]] = {}
        for r in records:
            if r.arch != arch:
                continue
            label = (labels or {}).get(r.label, r.label)
            t = run_time(r, suite, measure, steps_per_epoch.get(r.run_id or ""))
            if t is not None:
                times.setdefault(label, []).append(t)
            acc = r.final("test_top1") if r.finished else None
            if acc is not None:
                accs.setdefault(label, []).append(acc)
        name = suite.name if len(suite.archs) == 1 else f"{suite.name}/{arch}"
        out.append(Workload(name, times, accs))
    return out


def max_load(records: Sequence[RunRecord]) -> tuple[float, int] | None:
    """The largest load average the finished runs recorded while timed, and the usable cores
    of the machine (from the runs' hardware lines, else this machine's); None: not recorded."""
    done = [r for r in records if r.finished]
    loads = [v for v in (epoch_max(r.history, LOAD_AVERAGE) for r in done) if v is not None]
    if not loads:
        return None
    cores = [c for c in (cores_of(r.hardware) for r in done) if c is not None]
    return max(loads), min(cores) if cores else usable_cores()


def collect_workloads(
    suite: Suite,
    spec: WorkloadSpec,
    measure: str,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> tuple[list[Workload], int, tuple[float, int] | None]:
    """The workloads of a (ruleset-resolved, overridden) suite from the tracking store, how
    many planned runs were not found there, and the load they were timed under
    (:func:`max_load`)."""
    plan = suite.run_configs()
    records = collect_records(plan, tracking_uri, experiment)
    steps = steps_per_epoch_of(records, tracking_uri) if measure == "steps" else {}
    found = workloads_of(suite, records, measure, steps, spec.labels)
    return found, len(plan) - len(records), max_load(records)


# --- the score board ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreBoard:
    """Everything ``score.md``, ``.csv`` and ``.json`` print, computed."""

    benchmark: Benchmark
    workloads: tuple[Workload, ...]
    labels: tuple[str, ...]
    resampled: Resampled
    ratios: Mapping[str, Sequence[float]]
    rulesets: tuple[RulesetInfo, ...] = ()
    skipped: tuple[str, ...] = ()
    missing_runs: int = 0
    #: workloads whose suite holds out no validation split: time to result on the test split
    on_test: tuple[str, ...] = ()
    #: (workload, largest load average, usable cores) of workloads timed under load
    loaded: tuple[tuple[str, float, int], ...] = ()

    @property
    def refusal(self) -> str | None:
        """Why the optimizers are not ranked (budgets differ in some workload), or None."""
        reasons = [r.refusal() for r in self.rulesets]
        return next((r for r in reasons if r), None)

    def gaps(self) -> list[str]:
        """``label on workload`` for every label without a single timed run there."""
        return [
            f"{label} on {w.name}"
            for w in self.workloads
            for label in self.labels
            if not w.times.get(label)
        ]


def build_scoreboard(
    benchmark: Benchmark,
    workloads: Sequence[Workload],
    rulesets: Sequence[RulesetInfo] = (),
    skipped: Sequence[str] = (),
    missing_runs: int = 0,
    resamples: int = RESAMPLES,
    on_test: Sequence[str] = (),
    loaded: Sequence[tuple[str, float, int]] = (),
) -> ScoreBoard:
    """Scores of every optimizer label found in any workload (first-seen order).

    Raises BenchbnnError when there is no workload or no label (nothing was run).
    """
    if not workloads:
        raise BenchbnnError(
            f"benchmark {benchmark.name!r} has no workload to score (all skipped: "
            f"{', '.join(skipped) or 'none'}); pass --data-dir for optional ones"
        )
    labels: list[str] = []
    for w in workloads:
        for label in [*w.times, *w.accuracies]:
            if label not in labels:
                labels.append(label)
    if not labels:
        raise BenchbnnError(
            f"no runs of benchmark {benchmark.name!r} in the tracking store; run "
            f"'benchbnn score {benchmark.name} --train' (or 'benchbnn compare SUITE "
            f"--ruleset {benchmark.ruleset}' for every workload) first"
        )
    return ScoreBoard(
        benchmark,
        tuple(workloads),
        tuple(labels),
        resample_scores(workloads, labels, resamples),
        ratios(workloads, labels),
        tuple(rulesets),
        tuple(skipped),
        missing_runs,
        tuple(on_test),
        tuple(loaded),
    )


def _median(values: Sequence[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _resolution(board: ScoreBoard) -> dict[str, str]:
    """Per label: whether its score is resolved from the next one down the ranking."""
    order = [s.label for s in board.resampled.scores]
    out = {}
    for a, b in itertools.pairwise(order):
        out[a] = "yes" if board.resampled.resolved[(a, b)] else f"no (from {b})"
    if order:
        out[order[-1]] = "-"
    return out


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{fixed(low, 3)}, {fixed(high, 3)}]"


def render_markdown(board: ScoreBoard) -> str:
    """``score.md``: the ranking with intervals, the profile table, per-workload medians."""
    b = board.benchmark
    out = [f"# Benchmark: {b.name}", ""]
    if b.description:
        out += [b.description, ""]
    rules = board.rulesets[0] if board.rulesets else None
    version = f" v{rules.version}" if rules else ""
    out += [
        f"- Ruleset: {b.ruleset}{version}"
        + (f", {b.trials} trials x {b.studies or 3} studies per entry" if b.trials else "")
        + " (see docs/rulesets.md).",
        f"- Workloads: {', '.join(w.name for w in board.workloads)}"
        + (f"; skipped (no data): {', '.join(board.skipped)}" if board.skipped else "")
        + ".",
        f"- Time to result: {b.measure} to each suite's target (validation split), median "
        "over seeds; never reached counts as infinite"
        + (
            f" (on the test split for {', '.join(board.on_test)}: no validation split held out)"
            if board.on_test
            else ""
        )
        + ".",
        f"- Score: the performance profile's integral over tau in [1, {TAU_MAX:g}], divided by "
        f"{TAU_MAX - 1:g} (1: fastest everywhere); 95% intervals from {RESAMPLES} resamples "
        "of the seeds.",
    ]
    if board.loaded and b.measure == "seconds":
        parts = ", ".join(f"{w} (load {fixed(x, 1)} on {c} cores)" for w, x, c in board.loaded)
        out.append(
            f"- Timed under load (1-minute load average above the usable cores): {parts}; "
            "the seconds are not clean measurements."
        )
    if board.missing_runs:
        out.append(f"- {board.missing_runs} planned run(s) are not in the tracking store.")
    gaps = board.gaps()
    if gaps:
        out.append(
            "- Without a timed run (scored as never reaching the target): " + ", ".join(gaps) + "."
        )
    if board.refusal:
        out.append(f"- **{board.refusal}.**")
    out += ["", "## Scores", ""]
    header = ["Rank", "Optimizer", "Score", "95% interval", "Resolved from next"]
    header += [f"{w.name} median test top-1 (%)" for w in board.workloads]
    resolved = _resolution(board)
    rows = []
    for rank, s in enumerate(board.resampled.scores, start=1):
        rows.append(
            [
                "-" if board.refusal else str(rank),
                s.label,
                fixed(s.score, 3),
                _interval(s.low, s.high),
                resolved[s.label],
            ]
            + [fixed(_median(w.accuracies.get(s.label)), 2) for w in board.workloads]
        )
    out += _md_table(header, rows)
    out += ["", "## Performance profiles", ""]
    profile_rows = [
        [label] + [fixed(v, 2) for v in profile(board.ratios[label], TABLE_TAUS)]
        for label in board.labels
    ]
    out += _md_table(["Optimizer"] + [f"tau = {t:g}" for t in TABLE_TAUS], profile_rows)
    out += ["", f"## Time to result ({b.measure}, median over seeds)", ""]
    time_rows = [
        [label]
        + [_time_cell(w.times.get(label), r) for w, r in zip(board.workloads, board.ratios[label])]
        for label in board.labels
    ]
    out += _md_table(["Optimizer"] + [w.name for w in board.workloads], time_rows)
    out += [
        "",
        "Cells: median time (ratio to the fastest); `not reached`: the median run never "
        "reached the target; `no runs`: nothing was timed.",
    ]
    return "\n".join(out) + "\n"


def _time_cell(times: Sequence[float] | None, ratio: float) -> str:
    if not times:
        return "no runs"
    median = statistics.median(times)
    if not math.isfinite(median):
        return "not reached"
    return f"{significant(median)} ({fixed(ratio, 2)}x)"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(r) for r in rows)]


def to_data(board: ScoreBoard) -> dict[str, Any]:
    """``score.json``: the whole board as plain data (infinite times as null)."""
    b = board.benchmark

    def finite(x: float) -> float | None:
        return round(x, 6) if math.isfinite(x) else None

    return {
        "benchmark": b.name,
        "description": b.description,
        "ruleset": b.ruleset,
        "ruleset_version": board.rulesets[0].version if board.rulesets else None,
        "trials": b.trials,
        "studies": b.studies,
        "measure": b.measure,
        "tau_max": TAU_MAX,
        "workloads": [w.name for w in board.workloads],
        "skipped": list(board.skipped),
        "target_on_test_split": list(board.on_test),
        "timed_under_load": [
            {"workload": w, "load_average": x, "cores": c} for w, x, c in board.loaded
        ],
        "ranked": board.refusal is None,
        "refusal": board.refusal,
        "scores": [
            {
                "optimizer": s.label,
                "score": finite(s.score),
                "low": None if s.low is None else finite(s.low),
                "high": None if s.high is None else finite(s.high),
                "ratios": [finite(r) for r in board.ratios[s.label]],
                "profile": {
                    f"{t:g}": v
                    for t, v in zip(TABLE_TAUS, profile(board.ratios[s.label], TABLE_TAUS))
                },
                "median_test_top1": {
                    w.name: _median(w.accuracies.get(s.label)) for w in board.workloads
                },
                "times": {
                    w.name: [finite(t) for t in w.times.get(s.label, ())] for w in board.workloads
                },
            }
            for s in board.resampled.scores
        ],
        "resolved": {f"{a} vs {c}": v for (a, c), v in sorted(board.resampled.resolved.items())},
    }


CSV_COLUMNS = ("benchmark", "ruleset", "optimizer", "rank", "score", "low", "high", "resolved")


def render_csv(board: ScoreBoard) -> str:
    """``score.csv``: one row per optimizer (rank empty when not ranked)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    resolved = _resolution(board)
    for rank, s in enumerate(board.resampled.scores, start=1):
        writer.writerow(
            {
                "benchmark": board.benchmark.name,
                "ruleset": board.benchmark.ruleset,
                "optimizer": s.label,
                "rank": "" if board.refusal else str(rank),
                "score": fixed(s.score, 6),
                "low": fixed(s.low, 6, missing=""),
                "high": fixed(s.high, 6, missing=""),
                "resolved": resolved[s.label],
            }
        )
    return buffer.getvalue()


def plot_profiles(board: ScoreBoard, path: Path) -> Path:
    """``profiles.png``: every optimizer's profile as a step curve over tau in [1, TAU_MAX]."""
    from benchbnn.core.figures import colors, new_figure, save_png

    fig = new_figure(6.4, 4.4)
    ax = fig.subplots()
    grid = taus(301)
    palette = colors(len(board.labels))
    for color, label in zip(palette, board.labels):
        ax.step(grid, profile(board.ratios[label], grid), where="post", label=label, color=color)
    ax.set_xlabel("tau (time to result / fastest)")
    ax.set_ylabel("fraction of workloads")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{board.benchmark.name}: performance profiles ({board.benchmark.measure})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    save_png(fig, path)
    return path


def write_scoreboard(board: ScoreBoard, out: str | Path, plots: bool = True) -> list[Path]:
    """Write ``score.md``, ``score.csv``, ``score.json`` (and ``profiles.png``) into ``out``."""
    folder = writable_dir(out, "the benchmark scores", "--out")
    written = []
    for name, text in (
        ("score.md", render_markdown(board)),
        ("score.csv", render_csv(board)),
        ("score.json", json.dumps(to_data(board), indent=2, sort_keys=True) + "\n"),
    ):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if plots:
        written.append(plot_profiles(board, folder / "profiles.png"))
    return written
