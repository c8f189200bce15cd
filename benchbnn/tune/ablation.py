"""The paper's hyperparameter ablation (Bop2ndOrder paper, Fig. 3): one hyperparameter at a time.

From a base point (a suite entry's hyperparameters, the optimizer's defaults where the entry sets
none), each log-scale hyperparameter of the optimizer's search space (as narrowed by the suite's
``[tune.<optimizer>]`` table) is moved by powers of ten, by default two down and two up, while the
others stay fixed. Every point is an ordinary run configuration: runs the tracking store already
holds are reused by configuration hash exactly as ``benchbnn compare`` reuses them (a diverged
run is a result and is not retrained), and only what is missing is trained. A swept value
replaces the entry's schedule of that hyperparameter: every swept hyperparameter stays constant at
its base value while the others move (so all sweeps of an entry share one base-point run). One
that follows a default schedule of its optimizer is scheduled as a constant (``constant:V``), so
that the default does not overwrite the swept value; the sweep moves values, not schedules.

Results come from the tracking store only, so they can be regenerated. ``write_ablation``
produces, in ``leaderboards/<suite>/ablation/``:

- ``<hparam>.png`` for each hyperparameter: final accuracy, the last epoch's pi_t and the mean
  pi_t over training against the value (log x axis), one line per suite entry;
- ``robustness.md`` / ``robustness.csv``: per entry and hyperparameter (and over the whole
  sweep), the spread of final accuracy: min, max, range, standard deviation;
- ``robustness.png``: that spread per entry; ``ablation.csv``: every point.

Accuracy is the suite's evaluation split (validation when the suite holds one out, else test),
as in the leaderboard. Files are byte-for-byte reproducible from the same runs.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchbnn.bench.compare import RESUME, TRAIN, check_configs, check_data, plan_runs
from benchbnn.bench.suite_file import load_suite
from benchbnn.bench.suites import scaled as suite_scaled
from benchbnn.core import limits
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.figures import new_figure, save_png
from benchbnn.core.formatting import fixed
from benchbnn.core.names import (
    DEFAULT_EXPERIMENT,
    DEFAULT_SUITE,
    TAG_ABLATION,
    TAG_ENTRY,
    TAG_SUITE,
)
from benchbnn.core.paths import check_writable_dir
from benchbnn.core.plugins import get_optimizer
from benchbnn.train.engine import train
from benchbnn.train.runs import collect_records
from benchbnn.train.tracking import check_tracking_location, resolve_tracking_uri
from benchbnn.tune.tuning import search_space

DEFAULT_FACTORS = (-2, -1, 1, 2)
PI_METRIC = "flip_log_ratio"


@dataclass(frozen=True)
class AblationPoint:
    """One value of one hyperparameter of one entry; ``factor`` is its power of ten from the
    base value (0: the base point). ``configs`` has one run configuration per seed."""

    label: str
    optimizer: str
    hparam: str
    factor: int
    value: float
    base: float
    configs: tuple[RunConfig, ...]


@dataclass(frozen=True)
class PointResult:
    """What the tracked runs of a point measured (means over the seeds that finished)."""

    point: AblationPoint
    accuracy: float | None
    accuracy_std: float | None
    final_pi: float | None
    mean_pi: float | None
    finished: int
    failed: int
    missing: int


def parse_factors(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"-2,-1,1,2"`` -> (-2, -1, 1, 2); powers of ten, whole numbers, 0 is always added.

    Raises BenchbnnError for an item that is no whole number, one beyond
    :data:`~benchbnn.core.limits.FACTOR` (at most 12 decades either way), or no non-zero one.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    factors = []
    for item in items:
        try:
            factor = int(str(item).strip())
        except ValueError:
            raise BenchbnnError(
                f"--factors takes whole powers of ten separated by commas (e.g. -2,-1,1,2), "
                f"got {item!r}"
            ) from None
        factors.append(limits.within(limits.FACTOR, factor, "each of --factors"))
    if not any(factors):
        raise BenchbnnError("--factors needs at least one non-zero power of ten, e.g. -2,-1,1,2")
    return tuple(sorted(set(factors)))


def scaled(base: float, factor: int) -> float:
    """``base * 10**factor`` rounded to 12 significant digits: 1e-6 and -2 give exactly 1e-8
    (the rule of a suite's ``[ablation]`` points, so both plan the same runs)."""
    return suite_scaled(base, factor)


def _ablated_names(spec: Any, suite: Any, hparams: Sequence[str] | None) -> list[str]:

    space = search_space(
        spec, suite.tune.get(spec.name), source=f"suite {suite.name!r}, table [tune.{spec.name}]"
    )
    log_scale = [n for n, p in sorted(space.params.items()) if p.kind == "float" and p.log]
    if hparams is None:
        return log_scale
    declared = {h.name for h in spec.hparams if h.kind is float}
    return [n for n in hparams if n in declared]


def _entries(suite: Any, optimizers: Sequence[str] | None) -> list[Any]:
    """The entries to sweep: by label, else by optimizer name. Entries an ``[ablation]`` table
    generated (its points) are never swept again."""
    table = getattr(suite, "ablation", None)
    generated = {p.label for p in table.points} if table is not None else set()
    entries = [e for e in suite.entries if e.label not in generated]
    if not optimizers:
        return entries
    labels = {e.label for e in entries}
    chosen = [
        e
        for e in entries
        if e.label in optimizers or (e.optimizer in optimizers and e.optimizer not in labels)
    ]
    missing = [n for n in optimizers if not any(n in (e.label, e.optimizer) for e in entries)]
    if missing:
        raise BenchbnnError(
            f"suite {suite.name!r} has no entry or optimizer {missing[0]!r}; entries: "
            f"{', '.join(e.label for e in suite.entries)}"
        )
    return chosen


def plan_ablation(
    suite: Any,
    *,
    optimizers: Sequence[str] | None = None,
    hparams: Sequence[str] | None = None,
    factors: Sequence[int] = DEFAULT_FACTORS,
    seeds: int | Sequence[int] | None = None,
    epochs: int | None = None,
    arch: str | None = None,
) -> list[AblationPoint]:
    """Every point of the sweep, base points included (one per entry and hyperparameter)."""

    arch = arch or suite.archs[0]
    if arch not in suite.archs:
        raise BenchbnnError(
            f"suite {suite.name!r} has no architecture {arch!r}; its architectures: "
            f"{', '.join(suite.archs)}"
        )
    factors = sorted({0, *factors})
    points: list[AblationPoint] = []
    for entry in _entries(suite, optimizers):
        spec = get_optimizer(entry.optimizer)
        names = _ablated_names(spec, suite, hparams)
        plan = suite.run_configs(seeds=seeds, epochs=epochs, optimizers=[entry.label])
        rows = [c for e, a, c in plan if e.label == entry.label and a == arch]
        # Every swept hyperparameter is written out at its base value, so the base point is one
        # configuration (one hash) shared by all sweeps of the entry; a swept one is constant.
        bases = {n: float(rows[0].hparams.get(n, spec.hparam(n).default)) for n in names}
        for name, base in bases.items():
            if base <= 0:
                raise BenchbnnError(
                    f"entry {entry.label!r}: {name} = {base} cannot be moved by powers of ten; "
                    f"give it a positive value in the suite"
                )
        for name in names:
            for factor in factors:
                value = scaled(bases[name], factor)
                try:
                    spec.hparam(name).coerce(value)
                except BenchbnnError:
                    continue  # outside the valid range: left out of the sweep
                point = {**bases, name: value}
                configs = tuple(
                    replace(
                        c,
                        hparams={**c.hparams, **point},
                        schedules={
                            **{k: v for k, v in c.schedules.items() if k not in bases},
                            **_held_constant(spec, point),
                        },
                    )
                    for c in rows
                )
                points.append(
                    AblationPoint(
                        entry.label, entry.optimizer, name, factor, value, bases[name], configs
                    )
                )
    swept = {p.hparam for p in points}
    unknown = [n for n in (hparams or ()) if n not in swept]
    if unknown:
        raise BenchbnnError(
            f"no chosen entry has a real-valued hyperparameter {unknown[0]!r} to sweep; "
            f"swept: {', '.join(sorted(swept)) or 'none'}"
        )
    if not points:
        raise BenchbnnError(
            f"nothing to sweep in suite {suite.name!r}: no entry has a log-scale hyperparameter "
            f"in its search space"
        )
    _check_points(suite, points, arch)
    return points


def _held_constant(spec: Any, values: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Constant schedules for the swept hyperparameters that follow a default schedule of
    ``spec`` (which would otherwise overwrite the swept value from the first step)."""
    defaults = getattr(spec, "default_schedules", None) or {}
    return {
        k: {"schedule": "constant", "value": float(v)} for k, v in values.items() if k in defaults
    }


def _check_points(suite: Any, points: Sequence[AblationPoint], arch: str) -> None:
    """Every run of the sweep as the engine checks it before training (each value against its
    valid range, the schedules kept over the sweep's epochs), so that no bad point waits
    behind the others. Raises BenchbnnError naming the entry."""
    entries = {e.label: e for e in suite.entries}
    check_configs([(entries[p.label], arch, c) for p in points for c in p.configs])


def _unique_runs(
    suite: Any, points: Iterable[AblationPoint], arch: str
) -> list[tuple[Any, str, RunConfig]]:
    entries = {e.label: e for e in suite.entries}
    seen: dict[str, tuple[Any, str, RunConfig]] = {}
    for p in points:
        for config in p.configs:
            seen.setdefault(config.config_hash(), (entries[p.label], arch, config))
    return list(seen.values())


def _tag_of(points: Sequence[AblationPoint], config_hash: str) -> str:
    names = sorted(
        {
            f"{p.hparam}={p.value!r}"
            for p in points
            if p.factor != 0 and any(c.config_hash() == config_hash for c in p.configs)
        }
    )
    return ",".join(names) or "base"


def run_ablation(
    suite: Any,
    points: Sequence[AblationPoint],
    *,
    arch: str | None = None,
    data_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    device: str | None = None,
    quiet: bool = False,
    retry_failed: bool = False,
    say: Callable[[str], None] = print,
) -> list[Any]:
    """Train the points' runs the tracking store does not hold yet (compare's reuse rules)."""

    arch = arch or suite.archs[0]
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_location(uri)
    data_root = Path(data_dir).expanduser() if data_dir is not None else None
    check_data(suite, data_root)
    planned = plan_runs(
        _unique_runs(suite, points, arch), uri, experiment, retry_failed, device=device
    )
    todo = [p for p in planned if p.action in (RESUME, TRAIN)]
    say(
        f"ablation of suite {suite.name}: {len(points)} points, {len(planned)} runs; "
        f"reusing {len(planned) - len(todo)}, training {len(todo)}"
    )
    results = []
    for i, p in enumerate(todo, start=1):
        tag = _tag_of(points, p.config.config_hash())
        name = f"{suite.name}/ablation/{p.entry.label}/{tag}/seed{p.config.seed}"
        say(f"[{i}/{len(todo)}] {'resuming' if p.action == RESUME else 'training'} {name}")
        result = train(
            p.config,
            data_dir=data_root,
            device=device,
            tracking_uri=uri,
            experiment=experiment,
            resume=p.action == RESUME,
            quiet=quiet,
            run_name=name,
            tags={TAG_SUITE: suite.name, TAG_ENTRY: p.entry.label, TAG_ABLATION: tag},
        )
        if result.status != "FINISHED":
            reason = (result.error or result.status).splitlines()[0]
            say(f"[{i}/{len(todo)}] {name}: {result.status} ({reason})")
        results.append(result)
    return results


# --- results --------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def collect_ablation(
    suite: Any,
    points: Sequence[AblationPoint],
    *,
    arch: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> list[PointResult]:
    """Each point's measurements, read back from the tracking store."""

    arch = arch or suite.archs[0]
    records = {
        r.config_hash: r
        for r in collect_records(_unique_runs(suite, points, arch), tracking_uri, experiment)
    }
    metric = f"{suite.eval_split}_top1"
    results = []
    for p in points:
        # a run tracked before identity schema 2 is tagged with the hash as written
        found = [
            records.get(c.config_hash()) or records.get(c.legacy_config_hash()) for c in p.configs
        ]
        done = [r for r in found if r is not None and r.finished]
        accuracies = [a for a in (r.final(metric) for r in done) if a is not None]
        pis = [
            [row[PI_METRIC] for row in r.history if row.get(PI_METRIC) is not None] for r in done
        ]
        results.append(
            PointResult(
                point=p,
                accuracy=_mean(accuracies),
                accuracy_std=statistics.stdev(accuracies) if len(accuracies) > 1 else None,
                final_pi=_mean([pi[-1] for pi in pis if pi]),
                mean_pi=_mean([sum(pi) / len(pi) for pi in pis if pi]),
                finished=len(done),
                failed=sum(1 for r in found if r is not None and not r.finished),
                missing=sum(1 for r in found if r is None),
            )
        )
    return results


@dataclass(frozen=True)
class Spread:
    """The spread of final accuracy over a set of ablation points."""

    label: str
    hparam: str  # "all" for the whole sweep of the entry
    points: int
    minimum: float | None
    maximum: float | None
    std: float | None
    base: float | None
    diverged: int

    @property
    def range(self) -> float | None:
        if self.minimum is None or self.maximum is None:
            return None
        return self.maximum - self.minimum


def robustness(results: Sequence[PointResult]) -> list[Spread]:
    """Per entry: the spread for each hyperparameter, then over all its distinct points."""
    spreads = []
    labels = list(dict.fromkeys(r.point.label for r in results))
    for label in labels:
        mine = [r for r in results if r.point.label == label]
        names = list(dict.fromkeys(r.point.hparam for r in mine))
        groups = [(n, [r for r in mine if r.point.hparam == n]) for n in names]
        distinct = {(r.point.hparam if r.point.factor else "", r.point.factor): r for r in mine}
        groups.append(("all", list(distinct.values())))
        for name, group in groups:
            values = [r.accuracy for r in group if r.accuracy is not None]
            base = next((r.accuracy for r in group if r.point.factor == 0), None)
            spreads.append(
                Spread(
                    label,
                    name,
                    len(group),
                    min(values, default=None),
                    max(values, default=None),
                    statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None),
                    base,
                    sum(1 for r in group if r.failed and r.finished == 0),
                )
            )
    return spreads


def render_robustness_markdown(
    suite: Any, spreads: Sequence[Spread], metric: str, factors: Sequence[int]
) -> str:
    lines = [
        f"# Ablation robustness: {suite.name}",
        "",
        f"Final {metric} (%) over each sweep: every hyperparameter moved by powers of ten "
        f"({', '.join(f'{f:+d}' for f in sorted(factors) if f)}) from the entry's base point, "
        f"the others fixed. A smaller range means a more robust optimizer.",
        "",
        "| Entry | Hyperparameter | Points | Base | Min | Max | Range | Std | Diverged |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in spreads:
        lines.append(
            f"| {s.label} | {s.hparam} | {s.points} | {fixed(s.base)} | {fixed(s.minimum)} | "
            f"{fixed(s.maximum)} | {fixed(s.range)} | {fixed(s.std)} | {s.diverged} |"
        )
    return "\n".join(lines) + "\n"


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _n(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render_robustness_csv(spreads: Sequence[Spread]) -> str:
    return _csv(
        ["entry", "hparam", "points", "base", "min", "max", "range", "std", "diverged"],
        (
            [
                s.label,
                s.hparam,
                s.points,
                _n(s.base),
                _n(s.minimum),
                _n(s.maximum),
                _n(s.range),
                _n(s.std),
                s.diverged,
            ]
            for s in spreads
        ),
    )


def render_points_csv(results: Sequence[PointResult]) -> str:
    return _csv(
        [
            "entry",
            "optimizer",
            "hparam",
            "factor",
            "value",
            "base_value",
            "accuracy",
            "accuracy_std",
            "final_pi",
            "mean_pi",
            "finished",
            "failed",
            "missing",
        ],
        (
            [
                r.point.label,
                r.point.optimizer,
                r.point.hparam,
                r.point.factor,
                repr(r.point.value),
                repr(r.point.base),
                _n(r.accuracy),
                _n(r.accuracy_std),
                _n(r.final_pi),
                _n(r.mean_pi),
                r.finished,
                r.failed,
                r.missing,
            ]
            for r in results
        ),
    )


# --- figures ----------------------------------------------------------------------------------


def plot_hparam(results: Sequence[PointResult], hparam: str, metric: str, path: Path) -> Path:
    """Accuracy, final pi_t and mean pi_t against the value of ``hparam``, one line per entry."""
    panels = [
        ("accuracy", f"final {metric} (%)"),
        ("final_pi", "pi_t, last epoch"),
        ("mean_pi", "mean pi_t over training"),
    ]
    fig = new_figure(13, 3.8)
    axes = fig.subplots(1, 3)
    mine = [r for r in results if r.point.hparam == hparam]
    for label in dict.fromkeys(r.point.label for r in mine):
        rows = sorted((r for r in mine if r.point.label == label), key=lambda r: r.point.value)
        for ax, (field_name, _ylabel) in zip(axes, panels):
            xs = [r.point.value for r in rows if getattr(r, field_name) is not None]
            ys = [getattr(r, field_name) for r in rows if getattr(r, field_name) is not None]
            if not xs:
                continue
            errors = [r.accuracy_std or 0.0 for r in rows if getattr(r, field_name) is not None]
            if field_name == "accuracy" and any(errors):
                line = ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label).lines[0]
            else:
                (line,) = ax.plot(xs, ys, marker="o", label=label)
            base = [
                (r.point.value, getattr(r, field_name))
                for r in rows
                if r.point.factor == 0 and getattr(r, field_name) is not None
            ]
            if base:
                ax.plot(
                    *zip(*base), marker="*", markersize=13, color=line.get_color(), linestyle=""
                )
    for ax, (_field_name, ylabel) in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_xlabel(hparam)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(handles, labels, fontsize=8)
    fig.suptitle(f"{hparam}: powers of ten around the base point (star)")
    return save_png(fig, path)


def plot_robustness(
    spreads: Sequence[Spread], results: Sequence[PointResult], metric: str, path: Path
) -> Path:
    """Per entry, every point's final accuracy and the min-max range of the sweep."""
    overall = [s for s in spreads if s.hparam == "all"]
    fig = new_figure(7, 1.2 + 0.6 * max(1, len(overall)))
    ax = fig.subplots()
    for i, s in enumerate(overall):
        distinct: dict[tuple[str, int], float] = {
            (r.point.hparam if r.point.factor else "", r.point.factor): r.accuracy
            for r in results
            if r.point.label == s.label and r.accuracy is not None
        }
        values = [distinct[k] for k in sorted(distinct)]
        if s.minimum is not None and s.maximum is not None:
            ax.plot([s.minimum, s.maximum], [i, i], linewidth=6, alpha=0.35, color=f"C{i % 10}")
        ax.plot(values, [i] * len(values), "o", color=f"C{i % 10}")
    ax.set_yticks(range(len(overall)), [s.label for s in overall])
    ax.set_ylim(-0.7, len(overall) - 0.3)
    ax.set_xlabel(f"final {metric} (%) over the ablation sweep")
    ax.grid(True, axis="x", alpha=0.3)
    return save_png(fig, path)


def default_out(suite: Any) -> Path:
    """``leaderboards/<suite>/ablation/`` relative to the working directory."""
    return Path("leaderboards") / suite.name / "ablation"


def write_ablation(
    suite: Any,
    results: Sequence[PointResult],
    out: str | Path | None = None,
    factors: Sequence[int] = DEFAULT_FACTORS,
) -> list[Path]:
    """Plots, robustness table and point table (see the module docstring)."""
    out_dir = Path(out) if out is not None else default_out(suite)
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = f"{suite.eval_split}_top1"
    spreads = robustness(results)
    written = []
    texts = (
        ("robustness.md", render_robustness_markdown(suite, spreads, metric, factors)),
        ("robustness.csv", render_robustness_csv(spreads)),
        ("ablation.csv", render_points_csv(results)),
    )
    for name, text in texts:
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    for hparam in sorted({r.point.hparam for r in results}):
        written.append(plot_hparam(results, hparam, metric, out_dir / f"{hparam}.png"))
    written.append(plot_robustness(spreads, results, metric, out_dir / "robustness.png"))
    return written


@dataclass(frozen=True)
class AblationResult:
    points: tuple[PointResult, ...]
    spreads: tuple[Spread, ...]
    paths: tuple[Path, ...]
    trained: int


def ablate(
    suite: Any = DEFAULT_SUITE,
    *,
    optimizers: Sequence[str] | None = None,
    hparams: Sequence[str] | None = None,
    factors: Sequence[int] | str | None = None,
    seeds: int | Sequence[int] | None = None,
    epochs: int | None = None,
    arch: str | None = None,
    data_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    out: str | Path | None = None,
    device: str | None = None,
    quiet: bool = False,
    retry_failed: bool = False,
    say: Callable[[str], None] | None = print,
) -> AblationResult:
    """Plan the sweep, train what is missing, write the figures and tables.

    ``optimizers``, ``hparams`` and ``factors`` left as None come from the suite's
    ``[ablation]`` table when it has one (whose points the suite's own entries already are, so
    ``benchbnn compare`` and this share runs), else every entry, the log-scale search space and
    :data:`DEFAULT_FACTORS`. Raises BenchbnnError before anything trains for bad input,
    including an ``out`` that is not a writable directory.
    """

    echo = say or (lambda _line: None)
    suite_obj = load_suite(suite) if isinstance(suite, (str, Path)) else suite
    table = suite_obj.ablation
    if table is not None:
        optimizers = list(table.entries) if optimizers is None else optimizers
        hparams = list(table.hparams) if hparams is None else hparams
        factors = table.factors if factors is None else factors
    factors = parse_factors(DEFAULT_FACTORS if factors is None else factors)
    # where the figures go is checked now, not after the sweep has trained
    check_writable_dir(out if out is not None else default_out(suite_obj), "the ablation", "--out")
    if seeds is not None:
        suite_obj = suite_obj.expanded(seeds=seeds)
    if epochs is not None:
        suite_obj = suite_obj.expanded(epochs=epochs)
    points = plan_ablation(
        suite_obj, optimizers=optimizers, hparams=hparams, factors=factors, arch=arch
    )
    trained = run_ablation(
        suite_obj,
        points,
        arch=arch,
        data_dir=data_dir,
        tracking_uri=tracking_uri,
        experiment=experiment,
        device=device,
        quiet=quiet,
        retry_failed=retry_failed,
        say=echo,
    )
    results = collect_ablation(
        suite_obj, points, arch=arch, tracking_uri=tracking_uri, experiment=experiment
    )
    paths = write_ablation(suite_obj, results, out, factors)
    echo(f"ablation written to {paths[0].parent}")
    return AblationResult(tuple(results), tuple(robustness(results)), tuple(paths), len(trained))
