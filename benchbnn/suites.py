"""Benchmark suites: TOML files that fix a comparison protocol, checked before anything trains.

A suite names a dataset, one or more architectures, the budget (epochs, batch size, seeds) and a
list of entries, each an optimizer with a label, hyperparameters and schedules. Everything is
validated when the file loads; a mistake is reported with the file, the line and the key, so
that a typo never surfaces an hour into a run. :meth:`Suite.run_configs` expands a suite into
the :class:`benchbnn.config.RunConfig` records that ``benchbnn compare`` trains and
``benchbnn leaderboard`` looks up.

File format (every key but ``dataset``, ``arch``/``archs`` and ``entries`` is optional)::

    name = "quick"                 # kebab-case; defaults to the file name
    description = "..."
    dataset = "digits"
    arch = "bnn-mlp"               # or archs = ["xnornet", "birealnet18"]
    epochs = 8
    batch_size = 64
    seeds = 3                      # a count (seeds 0..2) or a list [0, 1, 2]
    subset = 1000                  # training images used (None: all)
    val_fraction = 0.0             # > 0 holds out a validation split from training
    l2 = 0.0
    baseline = "bop"               # an entry label (default: the first entry)
    target_accuracy = 80.0         # percent, for epochs and seconds to target
    [arch_options]                 # options of the architecture(s)
    [dataset_options]
    [per_arch.birealnet18]         # epochs, batch_size, l2, arch_options for one architecture
    [paper]                        # reported values, per entry label (and architecture)
    source = "..."
    [paper.bop]  train_top1 = 96.7, top1 = 91.0
    [tune.bop2ndorder]             # narrowed search spaces, read by ``benchbnn tune``
    [[entries]]
    label = "bop"
    optimizer = "bop"
    note = "..."
    [entries.hparams]
    [entries.schedules]            # name = "polynomial:1e-5:1e-8" or a table
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchbnn.config import RunConfig
from benchbnn.errors import BenchbnnError, did_you_mean

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: Metrics a ``[paper]`` table may report: training and evaluation (validation or test) accuracy.
PAPER_METRICS = ("train_top1", "train_top5", "top1", "top5")

_TOP_KEYS = (
    "name", "description", "dataset", "arch", "archs", "arch_options", "epochs", "batch_size",
    "seeds", "subset", "val_fraction", "l2", "dataset_options", "baseline", "target_accuracy",
    "per_arch", "paper", "tune", "entries",
)
_ENTRY_KEYS = ("label", "optimizer", "note", "hparams", "schedules")
_PER_ARCH_KEYS = ("epochs", "batch_size", "l2", "arch_options")
#: Keys that :meth:`Suite.override` accepts.
OVERRIDE_KEYS = (
    "epochs", "batch_size", "seeds", "subset", "val_fraction", "l2", "arch_options",
    "dataset_options", "target_accuracy",
)

Path_ = tuple[str | int, ...]


class SuiteError(BenchbnnError):
    """A suite file that is malformed or refers to something that does not exist."""


@dataclass(frozen=True)
class SuiteEntry:
    """One competitor: an optimizer with its hyperparameters and schedules, under a label."""

    label: str
    optimizer: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    schedules: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Suite:
    """A validated suite. Treat the mappings as read-only; use :meth:`override` to change it."""

    name: str
    description: str
    dataset: str
    archs: tuple[str, ...]
    arch_options: Mapping[str, Any]
    epochs: int
    batch_size: int
    seeds: tuple[int, ...]
    subset: int | None
    val_fraction: float
    dataset_options: Mapping[str, Any]
    target_accuracy: float | None
    baseline: str
    entries: tuple[SuiteEntry, ...]
    tune: Mapping[str, Any] = field(default_factory=dict)
    paper: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    l2: float = 0.0
    per_arch: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    # --- the protocol per architecture ------------------------------------------------------

    def epochs_for(self, arch: str) -> int:
        return int(self.per_arch.get(arch, {}).get("epochs", self.epochs))

    def batch_size_for(self, arch: str) -> int:
        return int(self.per_arch.get(arch, {}).get("batch_size", self.batch_size))

    def l2_for(self, arch: str) -> float:
        return float(self.per_arch.get(arch, {}).get("l2", self.l2))

    def arch_options_for(self, arch: str) -> dict[str, Any]:
        return {**self.arch_options, **self.per_arch.get(arch, {}).get("arch_options", {})}

    def entry(self, label: str) -> SuiteEntry:
        for entry in self.entries:
            if entry.label == label:
                return entry
        raise BenchbnnError(
            f"suite {self.name!r} has no entry {label!r}; entries: "
            f"{', '.join(e.label for e in self.entries)}"
        )

    @property
    def eval_split(self) -> str:
        """Where the 'validation' column comes from: the held-out split, or the test split."""
        return "val" if self.val_fraction > 0 else "test"

    # --- changing the protocol --------------------------------------------------------------

    def override(self, overrides: Mapping[str, Any] | None) -> Suite:
        """A copy with budget keys replaced (e.g. ``{"epochs": 1, "subset": 20}``).

        ``arch_options`` and ``dataset_options`` are merged into the suite's; a budget key given
        here also replaces the per-architecture value of that key. Values are validated like the
        file's.
        """
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
        if unknown:
            raise BenchbnnError(
                f"cannot override {unknown[0]!r} of suite {self.name!r}"
                f"{_did_you_mean(unknown[0], OVERRIDE_KEYS)} Overridable: {', '.join(OVERRIDE_KEYS)}."
            )
        checker = _Checker(f"overrides of suite {self.name!r}", None, "")
        data = dict(overrides)
        changes: dict[str, Any] = {}
        per_arch = {arch: dict(table) for arch, table in self.per_arch.items()}
        for key in ("epochs", "batch_size"):
            if data.get(key) is not None:
                changes[key] = checker.positive_int(data[key], (key,))
                for table in per_arch.values():
                    table.pop(key, None)
        if "l2" in data:
            changes["l2"] = checker.number(data["l2"], ("l2",), low=0.0)
            for table in per_arch.values():
                table.pop("l2", None)
        if data.get("seeds") is not None:
            changes["seeds"] = checker.seeds(data["seeds"], ("seeds",))
        if "subset" in data:
            changes["subset"] = (
                None if data["subset"] is None else checker.positive_int(data["subset"], ("subset",))
            )
        if data.get("val_fraction") is not None:
            changes["val_fraction"] = checker.fraction(data["val_fraction"], ("val_fraction",))
        if "target_accuracy" in data:
            changes["target_accuracy"] = (
                None if data["target_accuracy"] is None
                else checker.number(data["target_accuracy"], ("target_accuracy",), 0.0, 100.0)
            )
        if data.get("arch_options"):
            merged = {**self.arch_options, **checker.table(data["arch_options"], ("arch_options",))}
            checker.arch_options(self.archs, merged, ("arch_options",))
            changes["arch_options"] = merged
            for table in per_arch.values():
                table.pop("arch_options", None)
        if data.get("dataset_options"):
            merged = {
                **self.dataset_options,
                **checker.table(data["dataset_options"], ("dataset_options",)),
            }
            checker.dataset_options(self.dataset, merged, ("dataset_options",))
            changes["dataset_options"] = merged
        changes["per_arch"] = {arch: table for arch, table in per_arch.items() if table}
        return replace(self, **changes)

    def select(self, optimizers: Sequence[str] | str | None) -> Suite:
        """A copy whose entries are filtered or extended by optimizer names or labels.

        Each name selects the entries whose label or optimizer it is; a registered optimizer that
        no entry uses gets a new entry with its default hyperparameters (label = its name). A name
        written ``+name`` adds without filtering, so ``+myopt`` ranks a plugin optimizer against
        every entry of the suite. The baseline entry is always kept.
        """
        if optimizers is None:
            return self
        names = [n.strip() for n in _split_names(optimizers) if n.strip()]
        if not names:
            return self
        from benchbnn.plugins import get_optimizer

        additive = all(n.startswith("+") for n in names)
        chosen: list[SuiteEntry] = list(self.entries) if additive else []
        for raw in names:
            name = raw.lstrip("+")
            matches = [e for e in self.entries if name in (e.label, e.optimizer)]
            if not matches:
                get_optimizer(name)  # unknown names raise with close matches
                matches = [SuiteEntry(label=name, optimizer=name, note="added with --optimizers")]
            chosen += [m for m in matches if m not in chosen]
        if not any(e.label == self.baseline for e in chosen):
            chosen.insert(0, self.entry(self.baseline))
        order = {e.label: i for i, e in enumerate(self.entries)}
        chosen.sort(key=lambda e: order.get(e.label, len(order)))
        return replace(self, entries=tuple(chosen))

    def with_entry_hparams(self, label: str, hparams: Mapping[str, Any]) -> Suite:
        """A copy whose entry ``label`` uses ``hparams`` (fixed values replace its schedules)."""
        entries = []
        for entry in self.entries:
            if entry.label == label:
                checked = _canonical_hparams(entry.optimizer, hparams)
                entry = replace(
                    entry,
                    hparams={**entry.hparams, **checked},
                    schedules={k: v for k, v in entry.schedules.items() if k not in checked},
                )
            entries.append(entry)
        return replace(self, entries=tuple(entries))

    # --- expansion ----------------------------------------------------------------------------

    def run_configs(
        self,
        seeds: int | Sequence[int] | None = None,
        epochs: int | None = None,
        optimizers: Sequence[str] | str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> list[tuple[SuiteEntry, str, RunConfig]]:
        """Every run of the suite: (entry, architecture, config), in entry, arch, seed order.

        ``seeds`` as a count takes the suite's first seeds (continuing with the next integers
        when it asks for more); as a sequence it replaces them. ``epochs`` overrides the budget,
        ``optimizers`` filters or extends the entries (see :meth:`select`), ``overrides`` changes
        other protocol keys (see :meth:`override`).
        """
        suite = self.expanded(seeds, epochs, optimizers, overrides)
        plan = []
        for entry in suite.entries:
            for arch in suite.archs:
                for seed in suite.seeds:
                    config = RunConfig(
                        dataset=suite.dataset,
                        arch=arch,
                        optimizer=entry.optimizer,
                        hparams=dict(entry.hparams),
                        schedules={k: dict(v) for k, v in entry.schedules.items()},
                        arch_options=suite.arch_options_for(arch),
                        dataset_options=dict(suite.dataset_options),
                        epochs=suite.epochs_for(arch),
                        batch_size=suite.batch_size_for(arch),
                        seed=seed,
                        subset=suite.subset,
                        val_fraction=suite.val_fraction,
                        l2=suite.l2_for(arch),
                    )
                    plan.append((entry, arch, config))
        return plan

    def expanded(
        self,
        seeds: int | Sequence[int] | None = None,
        epochs: int | None = None,
        optimizers: Sequence[str] | str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Suite:
        """The suite with the same changes :meth:`run_configs` applies (for describing it)."""
        suite = self.override(overrides)
        if epochs is not None:
            suite = suite.override({"epochs": epochs})
        if seeds is not None:
            suite = suite.override({"seeds": _expand_seeds(suite.seeds, seeds)})
        return suite.select(optimizers)


def _split_names(optimizers: Sequence[str] | str) -> list[str]:
    if isinstance(optimizers, str):
        return optimizers.split(",")
    return [part for item in optimizers for part in str(item).split(",")]


def _expand_seeds(current: tuple[int, ...], seeds: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, bool):
        raise BenchbnnError(f"seeds must be a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise BenchbnnError(f"--seeds must be at least 1, got {seeds}")
        chosen = list(current[:seeds])
        candidate = max(current, default=-1) + 1
        while len(chosen) < seeds:
            chosen.append(candidate)
            candidate += 1
        return tuple(chosen)
    return tuple(seeds)


# --- loading ------------------------------------------------------------------------------------


def load_suite(name_or_path: str | Path) -> Suite:
    """A built-in or plugin suite by name, or a suite file by path; validated."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return load_suite_file(path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        raise SuiteError(f"suite file {text} does not exist")
    from benchbnn.plugins import get_suite

    spec = get_suite(text)
    suite = load_suite_file(Path(spec.path))
    if suite.name != spec.name:
        raise SuiteError(
            f"suite file {spec.path} is registered as {spec.name!r} but names itself {suite.name!r}"
        )
    return suite


def load_suite_file(path: str | Path) -> Suite:
    """Parse and validate one suite file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"cannot read suite file {path}: {exc.strerror or exc}") from None
    return parse_suite(text, path)


def parse_suite(text: str, path: str | Path | None = None) -> Suite:
    """Validate suite TOML ``text`` (``path`` is named in errors and kept on the suite)."""
    source = str(path) if path is not None else "<suite>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(_syntax_message(source, exc)) from None
    default_name = Path(path).stem if path is not None else ""
    return _Checker(source, _LineIndex(text), default_name).suite(
        data, Path(path).resolve() if path is not None else None
    )


def _syntax_message(source: str, exc: Exception) -> str:
    message = str(exc)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if match:
        reason = message[: match.start()].strip()
        return (
            f"suite {source}, line {match.group(1)}, column {match.group(2)}: "
            f"invalid TOML: {reason}"
        )
    return f"suite {source}: invalid TOML: {message}"


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    return "." + did_you_mean(name, candidates)


def _format_key(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            part_text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += f".{part_text}" if out else part_text
    return out


class _LineIndex:
    """Where each key of a TOML text is written (tomllib reports positions only for syntax)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_\-.\"' ]+?)\s*\]\]?\s*(#.*)?$")
    _ASSIGN = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")

    def __init__(self, text: str):
        self.lines: dict[Path_, int] = {}
        arrays: dict[tuple[str, ...], int] = {}
        current: Path_ = ()
        in_string = False
        for number, line in enumerate(text.splitlines(), start=1):
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                was_in = in_string
                in_string = not in_string
                if was_in:
                    continue
            elif in_string:
                continue
            header = self._HEADER.match(line)
            if header and not self._ASSIGN.match(line):
                keys = tuple(_split_key(header.group(2)))
                if header.group(1) == "[[":
                    arrays[keys] = arrays.get(keys, 0) + 1
                current = self._indexed(keys, arrays)
                self.lines.setdefault(current, number)
                continue
            assign = self._ASSIGN.match(line)
            if assign:
                self.lines.setdefault(current + tuple(_split_key(assign.group(1))), number)

    @staticmethod
    def _indexed(keys: tuple[str, ...], arrays: dict[tuple[str, ...], int]) -> Path_:
        path: list[str | int] = []
        for i, key in enumerate(keys):
            path.append(key)
            count = arrays.get(keys[: i + 1])
            if count:
                path.append(count - 1)
        return tuple(path)

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path`` or of its nearest written ancestor."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def _split_key(text: str) -> list[str]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", text)
    return [a or b or c for a, b, c in parts]


def _canonical_hparams(optimizer: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Values converted to each hyperparameter's type, so equal settings hash equally."""
    from benchbnn.plugins import get_optimizer

    spec = get_optimizer(optimizer)
    spec.resolve(**hparams)  # raises on unknown names or bad values
    return {name: spec.hparam(name).coerce(value, f"optimizer {optimizer!r}")
            for name, value in sorted(hparams.items())}


class _Checker:
    """Validates parsed suite data, raising :class:`SuiteError` with file, line and key."""

    def __init__(self, source: str, index: _LineIndex | None, default_name: str):
        self.source = source
        self.index = index
        self.default_name = default_name

    def fail(self, path: Path_, message: str) -> SuiteError:
        line = self.index.line_of(path) if self.index and path else None
        where = f"suite {self.source}"
        if line is not None:
            where += f", line {line}"
        if path:
            where += f", key {_format_key(path)}"
        return SuiteError(f"{where}: {message}")

    def registry_error(self, path: Path_, exc: BenchbnnError) -> SuiteError:
        return self.fail(path, str(exc))

    # --- scalar checks ----------------------------------------------------------------------

    def string(self, value: Any, path: Path_, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            raise self.fail(path, f"must be a non-empty string, got {value!r}")
        return value

    def positive_int(self, value: Any, path: Path_) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(path, f"must be a positive integer, got {value!r}")
        return value

    def number(
        self, value: Any, path: Path_, low: float | None = None, high: float | None = None
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(path, f"must be a number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(path, f"must lie in [{low}, {high}], got {value!r}")
        return float(value)

    def fraction(self, value: Any, path: Path_) -> float:
        number = self.number(value, path)
        if not 0.0 <= number < 1.0:
            raise self.fail(path, f"must lie in [0, 1), got {value!r}")
        return number

    def table(self, value: Any, path: Path_) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a table, got {value!r}")
        return dict(value)

    def seeds(self, value: Any, path: Path_) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise self.fail(path, f"a seed count must be at least 1, got {value}")
            return tuple(range(value))
        if isinstance(value, (list, tuple)) and value:
            for i, seed in enumerate(value):
                if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                    raise self.fail(path + (i,), f"seeds must be non-negative integers, got {seed!r}")
            if len(set(value)) != len(value):
                raise self.fail(path, f"seeds must be distinct, got {list(value)}")
            return tuple(value)
        raise self.fail(path, f"must be a seed count or a non-empty list of seeds, got {value!r}")

    def keys(self, data: Mapping[str, Any], allowed: Sequence[str], path: Path_) -> None:
        for key in data:
            if key not in allowed:
                raise self.fail(
                    path + (key,),
                    f"unknown key {key!r}{_did_you_mean(key, allowed)} "
                    f"Valid keys: {', '.join(allowed)}.",
                )

    # --- references to plugins ----------------------------------------------------------------

    def plugin(self, kind: str, name: Any, path: Path_) -> Any:
        from benchbnn import plugins

        name = self.string(name, path)
        getter = {
            "optimizer": plugins.get_optimizer,
            "architecture": plugins.get_architecture,
            "dataset": plugins.get_dataset,
        }[kind]
        try:
            return getter(name)
        except BenchbnnError as exc:
            raise self.registry_error(path, exc) from None

    def arch_options(self, archs: Sequence[str], options: Mapping[str, Any], path: Path_) -> None:
        from benchbnn.plugins import get_architecture

        for arch in archs:
            spec = get_architecture(arch)
            for key, value in options.items():
                if key not in spec.options:
                    raise self.fail(
                        path + (key,),
                        f"architecture {arch!r} has no option {key!r}"
                        f"{_did_you_mean(key, spec.options)} "
                        f"Options: {', '.join(sorted(spec.options)) or 'none'}."
                        + (" Use [per_arch.NAME.arch_options] for one architecture."
                           if len(archs) > 1 else ""),
                    )
                self.like(value, spec.options[key], path + (key,))

    def dataset_options(self, dataset: str, options: Mapping[str, Any], path: Path_) -> None:
        from benchbnn.plugins import get_dataset

        spec = get_dataset(dataset)
        for key, value in options.items():
            try:
                spec.resolve_options({key: value})
            except BenchbnnError as exc:
                raise self.fail(path + (key,), str(exc)) from None

    def like(self, value: Any, default: Any, path: Path_) -> None:
        """``value`` must have the type of the option's default (numbers mix; None is free)."""
        if default is None or value is None:
            return
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple))
        else:
            ok = True
        if not ok:
            raise self.fail(
                path, f"must be of type {type(default).__name__} like its default {default!r}, "
                f"got {value!r}"
            )

    # --- the whole file ---------------------------------------------------------------------

    def suite(self, data: Mapping[str, Any], path: Path | None) -> Suite:
        self.keys(data, _TOP_KEYS, ())
        name = self.string(data.get("name", self.default_name), ("name",))
        from benchbnn.specs import check_name

        try:
            check_name(name, "suite")
        except BenchbnnError as exc:
            raise self.fail(("name",), str(exc)) from None
        description = self.string(data.get("description", ""), ("description",), allow_empty=True)
        if "dataset" not in data:
            raise self.fail((), "missing key 'dataset' (the dataset every run uses)")
        dataset = self.plugin("dataset", data["dataset"], ("dataset",)).name
        archs = self.archs(data)
        arch_options = self.table(data.get("arch_options", {}), ("arch_options",))
        self.arch_options(archs, arch_options, ("arch_options",))
        dataset_options = self.table(data.get("dataset_options", {}), ("dataset_options",))
        self.dataset_options(dataset, dataset_options, ("dataset_options",))
        entries = self.entries(data)
        labels = [e.label for e in entries]
        baseline = data.get("baseline", labels[0])
        self.string(baseline, ("baseline",))
        if baseline not in labels:
            raise self.fail(
                ("baseline",),
                f"baseline {baseline!r} is not an entry label{_did_you_mean(baseline, labels)} "
                f"Labels: {', '.join(labels)}.",
            )
        target = data.get("target_accuracy")
        return Suite(
            name=name,
            description=description,
            dataset=dataset,
            archs=archs,
            arch_options=arch_options,
            epochs=self.positive_int(data.get("epochs", 10), ("epochs",)),
            batch_size=self.positive_int(data.get("batch_size", 100), ("batch_size",)),
            seeds=self.seeds(data.get("seeds", 1), ("seeds",)),
            subset=None if data.get("subset") is None else self.positive_int(data["subset"], ("subset",)),
            val_fraction=self.fraction(data.get("val_fraction", 0.0), ("val_fraction",)),
            dataset_options=dataset_options,
            target_accuracy=None if target is None
            else self.number(target, ("target_accuracy",), 0.0, 100.0),
            baseline=baseline,
            entries=entries,
            tune=self.tune(data.get("tune", {})),
            paper=self.paper(data.get("paper", {}), labels, archs),
            path=path,
            l2=self.number(data.get("l2", 0.0), ("l2",), low=0.0),
            per_arch=self.per_arch(data.get("per_arch", {}), archs),
        )

    def archs(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        if "arch" in data and "archs" in data:
            raise self.fail(("archs",), "give either 'arch' (one) or 'archs' (a list), not both")
        if "arch" in data:
            return (self.plugin("architecture", data["arch"], ("arch",)).name,)
        if "archs" not in data:
            raise self.fail((), "missing key 'arch' (or 'archs', a list of architectures)")
        archs = data["archs"]
        if not isinstance(archs, list) or not archs:
            raise self.fail(("archs",), f"must be a non-empty list of architectures, got {archs!r}")
        names = tuple(self.plugin("architecture", a, ("archs", i)).name for i, a in enumerate(archs))
        if len(set(names)) != len(names):
            raise self.fail(("archs",), f"lists an architecture twice: {list(names)}")
        return names

    def per_arch(self, value: Any, archs: Sequence[str]) -> dict[str, dict[str, Any]]:
        tables = self.table(value, ("per_arch",))
        out = {}
        for arch, table in tables.items():
            path: Path_ = ("per_arch", arch)
            if arch not in archs:
                raise self.fail(
                    path, f"{arch!r} is not one of the suite's architectures ({', '.join(archs)})"
                )
            table = self.table(table, path)
            self.keys(table, _PER_ARCH_KEYS, path)
            checked: dict[str, Any] = {}
            for key in ("epochs", "batch_size"):
                if key in table:
                    checked[key] = self.positive_int(table[key], path + (key,))
            if "l2" in table:
                checked["l2"] = self.number(table["l2"], path + ("l2",), low=0.0)
            if "arch_options" in table:
                options = self.table(table["arch_options"], path + ("arch_options",))
                self.arch_options([arch], options, path + ("arch_options",))
                checked["arch_options"] = options
            out[arch] = checked
        return out

    def entries(self, data: Mapping[str, Any]) -> tuple[SuiteEntry, ...]:
        raw = data.get("entries")
        if raw is None:
            raise self.fail((), "missing [[entries]] (at least one optimizer to compare)")
        if not isinstance(raw, list) or not raw:
            raise self.fail(("entries",), "must be a non-empty array of tables ([[entries]])")
        entries: list[SuiteEntry] = []
        for i, item in enumerate(raw):
            path: Path_ = ("entries", i)
            item = self.table(item, path)
            self.keys(item, _ENTRY_KEYS, path)
            if "optimizer" not in item:
                raise self.fail(path, "entry has no 'optimizer'")
            spec = self.plugin("optimizer", item["optimizer"], path + ("optimizer",))
            label = self.string(item.get("label", spec.name), path + ("label",))
            if any(e.label == label for e in entries):
                raise self.fail(path + ("label",), f"label {label!r} is used by two entries")
            hparams = self.hparams(spec, item.get("hparams", {}), path + ("hparams",))
            schedules = self.schedules(spec, item.get("schedules", {}), path + ("schedules",))
            note = self.string(item.get("note", ""), path + ("note",), allow_empty=True)
            entries.append(SuiteEntry(label, spec.name, hparams, schedules, note))
        return tuple(entries)

    def hparams(self, spec: Any, value: Any, path: Path_) -> dict[str, Any]:
        table = self.table(value, path)
        out = {}
        for key in sorted(table):
            try:
                out.update(_canonical_hparams(spec.name, {key: table[key]}))
            except BenchbnnError as exc:
                raise self.fail(path + (key,), str(exc)) from None
        return out

    def schedules(self, spec: Any, value: Any, path: Path_) -> dict[str, dict[str, Any]]:
        table = self.table(value, path)
        if not table:
            return {}
        from benchbnn.schedules import validate_schedules

        out = {}
        for key in sorted(table):
            try:
                out[key] = validate_schedules(spec, {key: table[key]})[key].to_dict()
            except BenchbnnError as exc:
                raise self.fail(path + (key,), str(exc)) from None
            except (TypeError, ValueError) as exc:
                raise self.fail(path + (key,), f"invalid schedule: {exc}") from None
        return out

    def tune(self, value: Any) -> dict[str, Any]:
        """Kept raw for ``benchbnn tune``; only the optimizer and hyperparameter names are checked."""
        tables = self.table(value, ("tune",))
        for optimizer, table in tables.items():
            path: Path_ = ("tune", optimizer)
            spec = self.plugin("optimizer", optimizer, path)
            table = self.table(table, path)
            names = [h.name for h in spec.hparams]
            for key in table:
                if key not in names:
                    raise self.fail(
                        path + (key,),
                        f"optimizer {optimizer!r} has no hyperparameter {key!r}"
                        f"{_did_you_mean(key, names)} Valid names: {', '.join(sorted(names))}.",
                    )
        return dict(tables)

    def paper(self, value: Any, labels: Sequence[str], archs: Sequence[str]) -> dict[str, Any]:
        tables = self.table(value, ("paper",))
        out: dict[str, Any] = {}
        for label, table in tables.items():
            path: Path_ = ("paper", label)
            if label == "source":
                out["source"] = self.string(table, path)
                continue
            if label not in labels:
                raise self.fail(
                    path, f"{label!r} is not an entry label{_did_you_mean(label, labels)} "
                    f"Labels: {', '.join(labels)} (or 'source')."
                )
            table = self.table(table, path)
            if len(archs) == 1 and all(k in PAPER_METRICS for k in table):
                out[label] = {archs[0]: self.metrics(table, path)}
                continue
            per_arch = {}
            for arch, metrics in table.items():
                if arch not in archs:
                    raise self.fail(
                        path + (arch,),
                        f"expected a metric ({', '.join(PAPER_METRICS)}) or one of the suite's "
                        f"architectures ({', '.join(archs)}), got {arch!r}",
                    )
                per_arch[arch] = self.metrics(self.table(metrics, path + (arch,)), path + (arch,))
            out[label] = per_arch
        return out

    def metrics(self, table: Mapping[str, Any], path: Path_) -> dict[str, float]:
        self.keys(table, PAPER_METRICS, path)
        return {k: self.number(v, path + (k,), 0.0, 100.0) for k, v in table.items()}


# --- tuned hyperparameters ----------------------------------------------------------------------


@dataclass(frozen=True)
class TunedEntry:
    """Which trial's hyperparameters an entry now uses."""

    label: str
    optimizer: str
    hparams: Mapping[str, Any]
    study_name: str
    trial_number: int
    value: float | None

    def describe(self) -> str:
        value = "-" if self.value is None else f"{self.value:.4g}"
        settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in sorted(self.hparams.items()))
        return (
            f"entry {self.label}: tuned hyperparameters from study {self.study_name!r} trial "
            f"#{self.trial_number} (value {value}): {settings or 'none'}"
        )


def apply_tuned(
    suite: Suite, storage: str | None = None, study: str | None = None
) -> tuple[Suite, list[TunedEntry]]:
    """The suite with every entry's hyperparameters replaced by its study's best trial.

    Uses ``benchbnn.tuning.best_trial_hparams`` (a study of the entry, else of its optimizer);
    an entry that was never tuned is an error that says which ``benchbnn tune`` command to run.
    Select the entries first (:meth:`Suite.select`) to tune only some.
    """
    import inspect

    from benchbnn.tuning import best_trial_hparams

    accepts_entry = "entry" in inspect.signature(best_trial_hparams).parameters
    used = []
    for entry in suite.entries:
        kwargs: dict[str, Any] = {"storage": storage, "study": study}
        if accepts_entry:  # a study of this very entry wins over one of its optimizer
            kwargs["entry"] = entry.label
        found = best_trial_hparams(suite, entry.optimizer, **kwargs)
        suite = suite.with_entry_hparams(entry.label, found.hparams)
        used.append(TunedEntry(
            entry.label, entry.optimizer, dict(found.hparams), str(found.study_name),
            int(found.trial_number), None if found.value is None else float(found.value),
        ))
    return suite, used
