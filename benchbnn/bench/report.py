"""Writing a leaderboard's files: the four tables, the plots and the index of all suites.

Rendering sorts everything, formats every float with a fixed precision and writes no timestamps,
so the same runs always give byte-identical files: ``benchbnn leaderboard SUITE`` reproduces
what ``benchbnn compare SUITE`` wrote, without training.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchbnn.bench.plots import plot_curves, plot_flips
from benchbnn.bench.results import FIXED, Leaderboard, RulesetInfo, build
from benchbnn.bench.suite_file import load_suite
from benchbnn.bench.suites import Suite
from benchbnn.bench.tables import (
    INDEX_FILE,
    INDEX_MARKER,
    protocol_changes,
    render_claims_csv,
    render_csv,
    render_index,
    render_json,
    render_latex,
    render_markdown,
)
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.names import ARTIFACT_CONFIG
from benchbnn.core.paths import writable_dir
from benchbnn.core.plugins import get_registry
from benchbnn.train.runs import RunRecord, collect_records
from benchbnn.train.tracking import client_for, resolve_tracking_uri

OUTPUT_FILES = ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.json")
PLOT_FILES = ("curves.png", "flips.png")
#: Written beside the tables only for suites that declare claims (benchbnn.bench.claims).
CLAIMS_FILE = "claims.csv"


def write(lb: Leaderboard, out: str | Path, plots: bool = True) -> list[Path]:
    """Write the four tables (and plots) into ``out``; returns the paths written."""
    out = writable_dir(out, "the leaderboard", "--out")
    written = []
    for name, render in zip(OUTPUT_FILES, (render_markdown, render_csv, render_latex, render_json)):
        path = out / name
        path.write_text(render(lb), encoding="utf-8")
        written.append(path)
    if lb.suite.claims:
        path = out / CLAIMS_FILE
        path.write_text(render_claims_csv(lb), encoding="utf-8")
        written.append(path)
    if plots:
        written.append(plot_curves(lb, out / PLOT_FILES[0]))
        written.append(plot_flips(lb, out / PLOT_FILES[1]))
    return written


def check_index_location(root: str | Path) -> None:
    """Raise BenchbnnError when ``root/README.md`` exists and benchbnn did not write it.

    An index is only written where it was asked for (``--index``); it never replaces a README
    of the user's own.
    """
    path = Path(root) / INDEX_FILE
    if path.is_file():
        with path.open(encoding="utf-8", errors="replace") as handle:
            if handle.readline().strip() != INDEX_MARKER:
                raise BenchbnnError(
                    f"{path} exists and was not written by benchbnn; the index of all suites "
                    f"goes beside the suites' folders: choose another --out, or drop --index"
                )


def write_index(root: str | Path, defined: Mapping[str, str] | None = None) -> Path:
    """Regenerate ``root/README.md`` from every ``root/*/leaderboard.json``.

    ``defined`` maps suite names to descriptions of suites to list even without results
    (default: every installed suite).
    """
    root = Path(root)
    results = {}
    for path in sorted(root.glob("*/leaderboard.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        results[data["suite"]] = data
    if defined is None:
        registry = get_registry()
        defined = {
            name: registry.get("suite", name).description for name in registry.names("suite")
        }
    path = root / INDEX_FILE
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(render_index(results, defined), encoding="utf-8")
    return path


def command_line(
    verb: str,
    suite: Suite,
    seeds: int | Sequence[int] | None = None,
    epochs: int | None = None,
    optimizers: Sequence[str] | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    tuned: bool = False,
    study: str | None = None,
    ruleset: RulesetInfo | None = None,
) -> str:
    """The command that reproduces a protocol (stored in the files, so no paths or URIs)."""
    parts = [
        "benchbnn",
        verb,
        suite.name if suite.path is None or _is_registered(suite) else suite.path.name,
    ]
    if seeds is not None:
        parts += ["--seeds", str(seeds) if isinstance(seeds, int) else ",".join(map(str, seeds))]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    for key, value in sorted((overrides or {}).items()):
        if key == "subset":
            parts += ["--subset", str(value)]
        else:
            parts += [
                "--override",
                f"{key}={json.dumps(value, sort_keys=True, separators=(',', ':'))}",
            ]
    if optimizers:
        names = optimizers if isinstance(optimizers, str) else ",".join(optimizers)
        parts += ["--optimizers", names]
    if tuned:
        parts += ["--tuned"] + (["--study", study] if study else [])
    if ruleset is not None and ruleset.name != "fixed":
        parts += ["--ruleset", ruleset.name]
        trials = {t for b in ruleset.budgets for t in b.trials}
        studies = {len(b.studies) for b in ruleset.budgets if b.studies}
        if len(trials) == 1:
            parts += ["--trials", str(trials.pop())]
        if len(studies) == 1:
            parts += ["--studies", str(studies.pop())]
    return " ".join(_quote(p) for p in parts)


def steps_per_epoch_of(
    records: Iterable[RunRecord], tracking_uri: str | None = None
) -> dict[str, int]:
    """Run id -> optimizer steps per epoch of each finished run: its ``benchbnn.steps_per_epoch``
    tag, or for runs tracked before the tag existed, the ``steps_per_epoch`` of its
    ``config.json`` artifact. Runs with neither (an artifact store that is gone) are left out:
    their steps to the target show as not measured."""
    finished = [r for r in records if r.finished and r.run_id]
    found: dict[str, int] = {
        r.run_id: r.steps_per_epoch for r in finished if r.run_id and r.steps_per_epoch
    }
    wanted = [r.run_id for r in finished if r.run_id and r.run_id not in found]
    if not wanted:
        return found
    client = client_for(resolve_tracking_uri(tracking_uri))
    with _no_progress_bars(), tempfile.TemporaryDirectory(prefix="benchbnn-steps-") as tmp:
        for run_id in wanted:
            try:
                path = client.download_artifacts(run_id, ARTIFACT_CONFIG, tmp)
                value = json.loads(Path(path).read_text(encoding="utf-8"))["steps_per_epoch"]
            except Exception:  # no artifact (an old or foreign run): steps not measured
                continue
            if isinstance(value, int) and value > 0:
                found[run_id] = value
    return found


def _quote(text: str) -> str:
    return shlex.quote(text)


def _is_registered(suite: Suite) -> bool:
    registry = get_registry()
    if suite.name not in registry.names("suite"):
        return False
    return Path(registry.get("suite", suite.name).path).resolve() == suite.path


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow's artifact downloads without their progress bars on stderr (restored after)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


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
    original: Suite | None = None,
    study: str | None = None,
    plots: bool = True,
    index: bool = False,
    ruleset: RulesetInfo | None = None,
) -> Written:
    """Regenerate a suite's leaderboard files from the tracking store alone (no training).

    The protocol arguments must be those the runs were trained with (as given to ``compare``);
    planned runs that are not in the store are shown as not run. Finding none is an error. A
    tuned suite comes resolved (:func:`benchbnn.tune.tuned.tuned_suite`) with ``tuned`` set and
    ``original`` the suite before tuning. ``index`` also rewrites the index of every suite
    (``README.md``) in the output folder's parent. ``ruleset`` (from
    :func:`benchbnn.tune.rulesets.apply_ruleset`) is stated with every entry's budget.
    """
    base = load_suite(suite) if isinstance(suite, (str, Path)) else suite
    return write_from_store(
        base,
        seeds=seeds,
        epochs=epochs,
        optimizers=optimizers,
        overrides=overrides,
        tracking_uri=tracking_uri,
        experiment=experiment,
        out=out,
        tuned=tuned,
        study=study,
        plots=plots,
        index=index,
        require_runs=True,
        original=original or base,
        ruleset=ruleset,
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
    index: bool = False,
    require_runs: bool = False,
    original: Suite | None = None,
    environment: str | None = None,
    any_environment: bool = True,
    ruleset: RulesetInfo | None = None,
) -> Written:
    """Look the suite's runs up and write its files (``suite`` already carries tuned values;
    ``tuned``/``study`` only go into the regenerate command; ``original`` is the suite before
    tuning, for describing the changes). With ``environment`` (compare's), only runs of that
    environment are shown unless ``any_environment``, which prefers them (see
    :func:`~benchbnn.train.runs.collect_records`)."""
    plan = suite.run_configs(seeds=seeds, epochs=epochs, optimizers=optimizers, overrides=overrides)
    expanded = suite.expanded(
        seeds=seeds, epochs=epochs, optimizers=optimizers, overrides=overrides
    )
    records = collect_records(plan, tracking_uri, experiment, environment, any_environment)
    if require_runs and not records:
        raise BenchbnnError(
            f"no tracked runs of suite {suite.name!r} with this protocol in "
            f"{resolve_tracking_uri(tracking_uri)}; run `benchbnn compare {suite.name}` first, or "
            f"pass the --tracking-uri and the protocol options (--seeds, --epochs, ...) it used"
        )
    command = command_line(
        "leaderboard", suite, seeds, epochs, optimizers, overrides, tuned, study, ruleset
    )
    steps = steps_per_epoch_of(records, tracking_uri) if expanded.target_accuracy else {}
    if ruleset is None and not tuned:  # the suite as written
        ruleset = FIXED
    lb = build(
        expanded,
        plan,
        records,
        command,
        protocol_changes(original or suite, expanded),
        steps_per_epoch=steps,
        ruleset=ruleset,
    )
    target = Path(out) if out is not None else default_out(suite)
    paths = write(lb, target, plots=plots)
    if index:
        check_index_location(target.parent)
        paths.append(write_index(target.parent))
    return Written(lb, tuple(paths), len(plan) - len(records))
