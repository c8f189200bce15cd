"""Benchmark suites: the comparison protocol a suite file fixes, as a validated model.

A :class:`Suite` names a dataset, one or more architectures, the budget (epochs, batch size,
seeds) and its entries (:class:`SuiteEntry`: an optimizer with a label, hyperparameters and
schedules). :meth:`Suite.run_configs` expands it into the
:class:`~benchbnn.core.config.RunConfig` records that ``benchbnn compare`` trains and
``benchbnn leaderboard`` looks up. Suites are read from files by :mod:`benchbnn.bench.suite_file`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchbnn.bench.suite_checks import ValueChecker, _canonical_hparams, _did_you_mean
from benchbnn.core import limits
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.plugins import get_optimizer

#: Metrics a ``[paper]`` table may report: training and evaluation (validation or test) accuracy.
PAPER_METRICS = ("train_top1", "train_top5", "top1", "top5")

_TOP_KEYS = (
    "name",
    "description",
    "dataset",
    "arch",
    "archs",
    "arch_options",
    "epochs",
    "batch_size",
    "seeds",
    "subset",
    "val_fraction",
    "l2",
    "dataset_options",
    "baseline",
    "target_accuracy",
    "per_arch",
    "paper",
    "tune",
    "entries",
    "claims",
    "ablation",
)
_ENTRY_KEYS = ("label", "optimizer", "note", "hparams", "schedules", "arch_options")
_PER_ARCH_KEYS = ("epochs", "batch_size", "l2", "arch_options")
_CLAIM_KEYS = ("kind", "a", "b", "paper", "measure")
_ABLATION_KEYS = ("entries", "hparams", "factors")
#: What a ``[[claims]]`` item may assert (docs/protocols.md, "Claims"): A's final top-1 on the
#: evaluation split exceeds B's; A reaches the suite's target accuracy sooner than B; A's
#: accuracy changes less than B's over the suite's ``[ablation]`` sweep.
CLAIM_KINDS = ("accuracy", "convergence", "robustness")
#: How a convergence claim counts time to the target: epochs or wall seconds (training plus
#: evaluation, as the leaderboard's time-to-target columns).
CONVERGENCE_MEASURES = ("epochs", "seconds")
#: Joins a swept entry's base label to its point: ``bop@gamma-1`` is entry ``bop`` with
#: ``gamma`` multiplied by 10^-1.
SWEEP_MARK = "@"
#: Keys that :meth:`Suite.override` accepts.
OVERRIDE_KEYS = (
    "epochs",
    "batch_size",
    "seeds",
    "subset",
    "val_fraction",
    "l2",
    "arch_options",
    "dataset_options",
    "target_accuracy",
)


@dataclass(frozen=True)
class SuiteEntry:
    """One competitor: an optimizer with its hyperparameters and schedules, under a label.

    ``arch_options`` are architecture options of this entry alone (e.g. ``norm = "layer"`` for
    the paper's Fig. 2, which compares normalizations with one optimizer): they are merged over
    the suite's (and per-architecture) options, so they win over ``--arch-option`` overrides too.
    """

    label: str
    optimizer: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    schedules: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    arch_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """One of a paper's claims, as a comparison of two entries (``[[claims]]`` in a suite).

    ``kind`` is one of :data:`CLAIM_KINDS`; ``a`` is the entry the paper says is better and
    ``b`` the one it is compared with (entry labels); ``paper`` paraphrases the sentence of the
    paper the claim stands for, with its section; ``measure`` (convergence only) is one of
    :data:`CONVERGENCE_MEASURES`.
    """

    kind: str
    a: str
    b: str
    paper: str
    measure: str = "epochs"


@dataclass(frozen=True)
class SweepPoint:
    """One generated entry of an ``[ablation]`` sweep: ``hparam`` of entry ``base`` times
    ``10**factor``."""

    base: str
    hparam: str
    factor: int

    @property
    def label(self) -> str:
        """``base@hparam+1``: the generated entry's label."""
        return f"{self.base}{SWEEP_MARK}{self.hparam}{self.factor:+d}"


@dataclass(frozen=True)
class Ablation:
    """A suite's ``[ablation]`` table: the Fig. 3 protocol of the Bop2ndOrder paper (section
    5.1.2), each of ``hparams`` of each of ``entries`` moved by each power of ten in ``factors``
    while the others stay at the entry's values. Loading the suite adds one entry per point
    (:attr:`points`), so ``benchbnn compare`` trains the sweep like any entries."""

    entries: tuple[str, ...]
    hparams: tuple[str, ...]
    factors: tuple[int, ...]
    points: tuple[SweepPoint, ...] = ()

    def points_of(self, label: str) -> dict[tuple[str, int], SweepPoint]:
        """The sweep points of base entry ``label``, by (hyperparameter, factor)."""
        return {(p.hparam, p.factor): p for p in self.points if p.base == label}


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
    #: the paper's claims this suite tests (empty: the leaderboard has no Claims section)
    claims: tuple[Claim, ...] = ()
    #: the one-hyperparameter-at-a-time sweep whose points are entries of the suite
    ablation: Ablation | None = None

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
        """The split the accuracy columns, the differences to the baseline and the ranks
        measure: always ``test``, at the final epoch (a held-out validation split selects and
        times, :attr:`target_split`; it is never reported as the result)."""
        return "test"

    @property
    def target_split(self) -> str:
        """The split time to the target accuracy is measured on: ``val`` when the suite holds
        one out (``val_fraction`` > 0), else ``test``."""
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
                f"{_did_you_mean(unknown[0], OVERRIDE_KEYS)} "
                f"Overridable: {', '.join(OVERRIDE_KEYS)}."
            )
        checker = ValueChecker(f"overrides of suite {self.name!r}", None, "")
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
                None
                if data["subset"] is None
                else checker.positive_int(data["subset"], ("subset",))
            )
        if data.get("val_fraction") is not None:
            changes["val_fraction"] = checker.fraction(data["val_fraction"], ("val_fraction",))
        if "target_accuracy" in data:
            changes["target_accuracy"] = (
                None
                if data["target_accuracy"] is None
                else checker.number(data["target_accuracy"], ("target_accuracy",), 0.0, 100.0)
            )
        if data.get("arch_options"):
            merged = {**self.arch_options, **checker.table(data["arch_options"], ("arch_options",))}
            changes["arch_options"] = checker.arch_options(self.archs, merged, ("arch_options",))
            for table in per_arch.values():
                table.pop("arch_options", None)
        if data.get("dataset_options"):
            merged = {
                **self.dataset_options,
                **checker.table(data["dataset_options"], ("dataset_options",)),
            }
            changes["dataset_options"] = checker.dataset_options(
                self.dataset, merged, ("dataset_options",)
            )
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
                        arch_options={**suite.arch_options_for(arch), **entry.arch_options},
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


def scaled(base: float, factor: int) -> float:
    """``base * 10**factor`` rounded to 12 significant digits: 1e-6 and -2 give exactly 1e-8
    (the value an ``[ablation]`` point and ``benchbnn ablate`` write, so their runs hash
    equally)."""
    return float(f"{base * 10.0**factor:.12g}")


def _split_names(optimizers: Sequence[str] | str) -> list[str]:
    if isinstance(optimizers, str):
        return optimizers.split(",")
    return [part for item in optimizers for part in str(item).split(",")]


def _expand_seeds(current: tuple[int, ...], seeds: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, bool):
        raise BenchbnnError(f"seeds must be a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        limits.within(limits.SEED_COUNT, seeds, "--seeds")  # 1 to MAX_SEEDS, before the loop
        chosen = list(current[:seeds])
        candidate = max(current, default=-1) + 1
        while len(chosen) < seeds:
            chosen.append(candidate)
            candidate += 1
        return tuple(chosen)
    return tuple(seeds)
