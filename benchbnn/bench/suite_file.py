"""Suite files: TOML parsed and checked against the installed plugins before anything trains.

A suite names a dataset, one or more architectures, the budget (epochs, batch size, seeds) and a
list of entries, each an optimizer with a label, hyperparameters and schedules. Everything is
validated when the file loads; a mistake is reported with the file, the line and the key, so
that a typo never surfaces an hour into a run. :meth:`Suite.run_configs` expands a suite into
the :class:`benchbnn.core.config.RunConfig` records that ``benchbnn compare`` trains and
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
    [ablation]                     # adds an entry per point, labelled bop@gamma-1 etc.
    entries = ["bop"]              # base entries (their swept hyperparameters constant)
    hparams = ["gamma", "threshold"]
    factors = [-1, 1]              # powers of ten
    [[claims]]                     # the paper's claims the leaderboard tests
    kind = "accuracy"              # or "convergence" (measure = "epochs"|"seconds"), "robustness"
    a = "bop2ndorder"              # the entry claimed better
    b = "bop"
    paper = "Table 1 (section 5.2): ..."
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchbnn.bench.suite_checks import (
    Path_,
    SuiteError,
    ValueChecker,
    _canonical_hparams,
    _did_you_mean,
)
from benchbnn.bench.suites import (
    _ABLATION_KEYS,
    _CLAIM_KEYS,
    _ENTRY_KEYS,
    _PER_ARCH_KEYS,
    _TOP_KEYS,
    CLAIM_KINDS,
    CONVERGENCE_MEASURES,
    PAPER_METRICS,
    SWEEP_MARK,
    Ablation,
    Claim,
    Suite,
    SuiteEntry,
    SweepPoint,
    scaled,
)
from benchbnn.core import limits
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.paths import check_file_name
from benchbnn.core.plugins import get_optimizer, get_suite
from benchbnn.core.specs import check_name
from benchbnn.optim.schedules import validate_schedules

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# --- loading ------------------------------------------------------------------------------------


def load_suite(name_or_path: str | Path) -> Suite:
    """A built-in or plugin suite by name, or a suite file by path; validated.

    Raises SuiteError for a path that does not exist, is a directory or no regular file, or
    holds no UTF-8 TOML suite (see :func:`load_suite_file`); UnknownNameError for a name no
    plugin registered.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return load_suite_file(path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        if path.is_dir():
            raise SuiteError(
                f"suite {text} is a directory; pass a suite TOML file in it or a built-in "
                f"suite name (see 'benchbnn plugins')"
            )
        if path.exists():
            raise SuiteError(f"suite {text} is not a regular file; pass a suite TOML file")
        raise SuiteError(f"suite file {text} does not exist")

    spec = get_suite(text)
    suite = load_suite_file(Path(spec.path))
    if suite.name != spec.name:
        raise SuiteError(
            f"suite file {spec.path} is registered as {spec.name!r} but names itself {suite.name!r}"
        )
    return suite


def load_suite_file(path: str | Path) -> Suite:
    """Parse and validate one suite file.

    Raises SuiteError for a file that cannot be read (a directory included), is not UTF-8 text
    (binary data), is not TOML, or is not a valid suite.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"cannot read suite file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SuiteError(
            f"suite file {path} is not UTF-8 text (byte {exc.start} is "
            f"0x{exc.object[exc.start : exc.start + 1].hex()}); a suite is a TOML text file: "
            f"pass the right file, or save it as UTF-8"
        ) from None
    return parse_suite(text, path)


def parse_suite(text: str, path: str | Path | None = None) -> Suite:
    """Validate suite TOML ``text`` (``path`` is named in errors and kept on the suite)."""
    source = str(path) if path is not None else "<suite>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(_syntax_message(source, exc)) from None
    default_name = Path(path).stem if path is not None else ""
    return _SuiteReader(source, _LineIndex(text), default_name).suite(
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


class _LineIndex:
    """Where each key of a TOML text is written (tomllib reports positions only for syntax)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_\-.\"' ]+?)\s*\]\]?\s*(#.*)?$")
    _ASSIGN = re.compile(
        r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
    )

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


class _SuiteReader(ValueChecker):
    """Turns parsed suite TOML into a :class:`Suite`, checking every key."""

    def suite(self, data: Mapping[str, Any], path: Path | None) -> Suite:
        self.keys(data, _TOP_KEYS, ())
        name = self.string(data.get("name", self.default_name), ("name",))

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
        dataset_options = self.table(data.get("dataset_options", {}), ("dataset_options",))
        entries = self.entries(data, archs)
        ablation = self.ablation(data.get("ablation"), entries)
        if ablation is not None:
            entries = entries + self.sweep_entries(ablation, entries)
        # option values converted to their declared types, as the command line converts them
        arch_options = self.arch_options(archs, arch_options, ("arch_options",))
        dataset_options = self.dataset_options(dataset, dataset_options, ("dataset_options",))
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
        suite = Suite(
            name=name,
            description=description,
            dataset=dataset,
            archs=archs,
            arch_options=arch_options,
            epochs=self.positive_int(data.get("epochs", 10), ("epochs",)),
            batch_size=self.positive_int(data.get("batch_size", 100), ("batch_size",)),
            seeds=self.seeds(data.get("seeds", 1), ("seeds",)),
            subset=None
            if data.get("subset") is None
            else self.positive_int(data["subset"], ("subset",)),
            val_fraction=self.fraction(data.get("val_fraction", 0.0), ("val_fraction",)),
            dataset_options=dataset_options,
            target_accuracy=None
            if target is None
            else self.number(target, ("target_accuracy",), 0.0, 100.0),
            baseline=baseline,
            entries=entries,
            tune=self.tune(data.get("tune", {})),
            paper=self.paper(data.get("paper", {}), labels, archs),
            path=path,
            l2=self.number(data.get("l2", 0.0), ("l2",), low=0.0),
            per_arch=self.per_arch(data.get("per_arch", {}), archs),
            claims=self.claims(data.get("claims", []), labels, ablation),
            ablation=ablation,
        )
        self.schedule_ranges(suite)
        return suite

    def schedule_ranges(self, suite: Suite) -> None:
        """Every entry's schedules over the suite's own epochs (per architecture).

        The steps per epoch are not known until the data are, so this checks the start of every
        epoch (and each schedule's START and END); the engine checks every step before training.
        Raises SuiteError naming the schedule's line.
        """
        lengths = sorted({suite.epochs_for(arch) for arch in suite.archs})
        for i, entry in enumerate(suite.entries):
            spec = self.plugin("optimizer", entry.optimizer, ("entries", i, "optimizer"))
            for key, schedule in entry.schedules.items():
                for epochs in lengths:
                    try:
                        validate_schedules(spec, {key: schedule}, epochs=epochs)
                    except BenchbnnError as exc:
                        raise self.fail(("entries", i, "schedules", key), str(exc)) from None

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
        names = tuple(
            self.plugin("architecture", a, ("archs", i)).name for i, a in enumerate(archs)
        )
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
                checked["arch_options"] = self.arch_options(
                    [arch], options, path + ("arch_options",)
                )
            out[arch] = checked
        return out

    def entries(self, data: Mapping[str, Any], archs: Sequence[str]) -> tuple[SuiteEntry, ...]:
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
            try:  # a label names the entry's tuning study and its folder (tuning/STUDY/)
                check_file_name(label, "label", "choose a label without them")
            except BenchbnnError as exc:
                raise self.fail(path + ("label",), str(exc)) from None
            if any(e.label == label for e in entries):
                raise self.fail(path + ("label",), f"label {label!r} is used by two entries")
            if SWEEP_MARK in label:
                raise self.fail(
                    path + ("label",),
                    f"label {label!r} contains {SWEEP_MARK!r}, which marks the entries an "
                    f"[ablation] table generates; choose a label without it",
                )
            hparams = self.hparams(spec, item.get("hparams", {}), path + ("hparams",))
            schedules = self.schedules(spec, item.get("schedules", {}), path + ("schedules",))
            note = self.string(item.get("note", ""), path + ("note",), allow_empty=True)
            options = self.table(item.get("arch_options", {}), path + ("arch_options",))
            options = self.arch_options(archs, options, path + ("arch_options",))
            entries.append(SuiteEntry(label, spec.name, hparams, schedules, note, options))
        return tuple(entries)

    def ablation(self, value: Any, entries: Sequence[SuiteEntry]) -> Ablation | None:
        """The ``[ablation]`` table, checked against the entries (None when absent).

        Each base entry must exist; each hyperparameter must be a real-valued one of at least
        one base entry's optimizer, held constant by every entry that has it (a positive value,
        no schedule); factors are whole non-zero powers of ten within
        :data:`~benchbnn.core.limits.FACTOR`. Raises SuiteError naming the key.
        """
        if value is None:
            return None
        path: Path_ = ("ablation",)
        table = self.table(value, path)
        self.keys(table, _ABLATION_KEYS, path)
        for key in _ABLATION_KEYS:
            if key not in table:
                raise self.fail(path, f"missing key {key!r} (see docs/protocols.md, 'Claims')")
        names = self.string_list(table["entries"], path + ("entries",))
        by_label = {e.label: e for e in entries}
        for i, name in enumerate(names):
            if name not in by_label:
                raise self.fail(
                    path + ("entries", i),
                    f"{name!r} is not an entry label{_did_you_mean(name, by_label)} "
                    f"Labels: {', '.join(by_label)}.",
                )
        hparams = self.string_list(table["hparams"], path + ("hparams",))
        factors = self.factors(table["factors"], path + ("factors",))
        points = []
        for j, name in enumerate(hparams):
            users = [by_label[n] for n in names if self._sweepable(by_label[n], name)]
            if not users:
                raise self.fail(
                    path + ("hparams", j),
                    f"no entry of the sweep ({', '.join(names)}) has a real-valued "
                    f"hyperparameter {name!r}",
                )
            for entry in users:
                self._check_constant(entry, name, path + ("hparams", j))
        for name in names:
            for hparam in hparams:
                if self._sweepable(by_label[name], hparam):
                    points += [SweepPoint(name, hparam, f) for f in factors]
        return Ablation(tuple(names), tuple(hparams), factors, tuple(points))

    def string_list(self, value: Any, path: Path_) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(path, f"must be a non-empty list of names, got {value!r}")
        items = tuple(self.string(v, path + (i,)) for i, v in enumerate(value))
        if len(set(items)) != len(items):
            raise self.fail(path, f"lists a name twice: {list(items)}")
        return items

    def factors(self, value: Any, path: Path_) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(path, f"must be a non-empty list of powers of ten, got {value!r}")
        out = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int) or item == 0:
                raise self.fail(
                    path + (i,), f"must be a whole non-zero power of ten (e.g. -1), got {item!r}"
                )
            try:
                out.append(limits.within(limits.FACTOR, item, "each factor"))
            except BenchbnnError as exc:
                raise self.fail(path + (i,), str(exc)) from None
        return tuple(sorted(set(out)))

    @staticmethod
    def _sweepable(entry: SuiteEntry, hparam: str) -> bool:
        spec = get_optimizer(entry.optimizer)
        return any(h.name == hparam and h.kind is float for h in spec.hparams)

    def _check_constant(self, entry: SuiteEntry, hparam: str, path: Path_) -> None:
        spec = get_optimizer(entry.optimizer)
        if hparam in entry.schedules or hparam in (getattr(spec, "default_schedules", None) or {}):
            raise self.fail(
                path,
                f"entry {entry.label!r} schedules {hparam!r}; the sweep moves constants (the "
                f"paper's Fig. 3 protocol): give {hparam} a constant value in that entry",
            )
        if self._base_value(entry, hparam) <= 0:
            raise self.fail(
                path,
                f"entry {entry.label!r} has {hparam} = {self._base_value(entry, hparam)}, which "
                f"powers of ten cannot move; give it a positive value",
            )

    @staticmethod
    def _base_value(entry: SuiteEntry, hparam: str) -> float:
        spec = get_optimizer(entry.optimizer)
        return float(entry.hparams.get(hparam, spec.hparam(hparam).default))

    def sweep_entries(
        self, ablation: Ablation, entries: Sequence[SuiteEntry]
    ) -> tuple[SuiteEntry, ...]:
        """One entry per sweep point, in base-entry, hyperparameter, factor order.

        Every swept hyperparameter the optimizer has is written out at its base value and the
        point's one is multiplied by its power of ten (the configuration
        ``benchbnn ablate`` trains for the same point, so either command reuses the other's
        runs). A value outside the hyperparameter's valid range is refused.
        """
        by_label = {e.label: e for e in entries}
        out = []
        for point in ablation.points:
            base = by_label[point.base]
            swept = [h for h in ablation.hparams if self._sweepable(base, h)]
            values = {h: self._base_value(base, h) for h in swept}
            values[point.hparam] = scaled(values[point.hparam], point.factor)
            path: Path_ = ("ablation", "factors")
            try:
                hparams = _canonical_hparams(base.optimizer, {**base.hparams, **values})
            except BenchbnnError as exc:
                raise self.fail(path, f"sweep point {point.label}: {exc}") from None
            note = f"{point.base} with {point.hparam} x 1e{point.factor:+d} (the sweep)"
            out.append(replace(base, label=point.label, hparams=hparams, note=note))
        return tuple(out)

    def claims(
        self, value: Any, labels: Sequence[str], ablation: Ablation | None
    ) -> tuple[Claim, ...]:
        """The ``[[claims]]`` array, each checked: a known kind, two different entry labels,
        a paraphrase of the paper, a measure only for convergence, an ``[ablation]`` sweep of
        both entries for robustness. Raises SuiteError naming the key."""
        if not isinstance(value, list):
            raise self.fail(("claims",), "must be an array of tables ([[claims]])")
        out = []
        for i, item in enumerate(value):
            path: Path_ = ("claims", i)
            item = self.table(item, path)
            self.keys(item, _CLAIM_KEYS, path)
            for key in ("kind", "a", "b", "paper"):
                if key not in item:
                    raise self.fail(path, f"claim has no {key!r} (see docs/protocols.md, 'Claims')")
            kind = self.string(item["kind"], path + ("kind",))
            if kind not in CLAIM_KINDS:
                raise self.fail(
                    path + ("kind",),
                    f"unknown claim kind {kind!r}{_did_you_mean(kind, CLAIM_KINDS)} "
                    f"Kinds: {', '.join(CLAIM_KINDS)}.",
                )
            a, b = (self._claim_entry(item[k], labels, path + (k,)) for k in ("a", "b"))
            if a == b:
                raise self.fail(path + ("b",), f"a claim compares two entries; both are {a!r}")
            measure = self._measure(kind, item.get("measure"), path + ("measure",))
            if kind == "robustness":
                self._swept(ablation, (a, b), path)
            paper = self.string(item["paper"], path + ("paper",))
            out.append(Claim(kind, a, b, paper, measure))
        return tuple(out)

    def _claim_entry(self, value: Any, labels: Sequence[str], path: Path_) -> str:
        label = self.string(value, path)
        if label not in labels:
            raise self.fail(
                path,
                f"{label!r} is not an entry label{_did_you_mean(label, labels)} "
                f"Labels: {', '.join(labels)}.",
            )
        return label

    def _measure(self, kind: str, value: Any, path: Path_) -> str:
        if value is None:
            return "epochs"
        if kind != "convergence":
            raise self.fail(path, f"only a convergence claim has a measure, not a {kind} claim")
        measure = self.string(value, path)
        if measure not in CONVERGENCE_MEASURES:
            raise self.fail(
                path, f"measure must be one of {', '.join(CONVERGENCE_MEASURES)}, got {measure!r}"
            )
        return measure

    def _swept(self, ablation: Ablation | None, labels: Sequence[str], path: Path_) -> None:
        swept = ablation.entries if ablation is not None else ()
        for label in labels:
            if label not in swept:
                raise self.fail(
                    path,
                    f"a robustness claim compares sweeps: add {label!r} to the entries of the "
                    f"suite's [ablation] table",
                )
        assert ablation is not None  # both labels are swept
        common = set(ablation.points_of(labels[0])) & set(ablation.points_of(labels[1]))
        if not common:
            raise self.fail(
                path,
                f"entries {labels[0]!r} and {labels[1]!r} share no swept hyperparameter, so "
                f"their sweeps cannot be compared",
            )

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
        """Kept raw for ``benchbnn tune``; only the optimizer and hyperparameter names are
        checked."""
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
                    path,
                    f"{label!r} is not an entry label{_did_you_mean(label, labels)} "
                    f"Labels: {', '.join(labels)} (or 'source').",
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
