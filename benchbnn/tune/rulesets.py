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

This is the "external tuning" ruleset of AlgoPerf (Dahl et al. 2023, "Benchmarking Neural
Network Training Algorithms", Sec. 4; Kasimbeg et al. 2025), whose submissions likewise get a
fixed number of tuning trials per workload, repeated in independent studies whose median is
scored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from benchbnn.bench.results import FIXED, Budget, RulesetInfo
from benchbnn.bench.suites import Suite, SuiteEntry
from benchbnn.core import limits
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.plugins import get_optimizer
from benchbnn.core.values import Number
from benchbnn.tune.search_space import search_space
from benchbnn.tune.studies import (
    check_study_name,
    count_trials,
    default_storage,
    open_storage,
    quiet_optuna,
    redact,
)
from benchbnn.tune.tuning import TunedParams, best_of, tune


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


def external_suite(
    suite: Suite,
    trials: int,
    studies: int = DEFAULT_STUDIES,
    *,
    storage: str | None = None,
    run: bool = True,
    say: Callable[[str], None] | None = None,
    **tune_options: Any,
) -> tuple[Suite, RulesetInfo]:
    """The suite with every entry set to the best trial of its median study.

    With ``run``, the studies that are missing or short of ``trials`` counted trials are run
    first (:func:`benchbnn.tune.tuning.tune`; ``tune_options`` such as ``data_dir``,
    ``tracking_uri``, ``device``, ``out``, ``quiet`` are passed on); without, they must exist.
    Raises BenchbnnError for counts outside their ranges, an optimizer with nothing to tune, a
    missing study (without ``run``).
    """
    limits.within(limits.TRIALS, trials, "--trials")
    limits.within(STUDIES, studies, "--studies")
    url = storage or default_storage(tune_options.get("out"))
    budgets = []
    for entry in suite.entries:
        names = external_study_names(suite, entry, studies)
        found = []
        for k, name in enumerate(names):
            if run:
                tune(
                    suite,
                    entry.optimizer,
                    trials=trials,
                    sampler=EXTERNAL_SAMPLER,
                    pruner=EXTERNAL_PRUNER,
                    storage=url,
                    study=name,
                    entry=entry.label,
                    sampler_seed=k,
                    log=say,
                    **tune_options,
                )
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


def apply_ruleset(
    suite: Suite,
    name: str,
    *,
    trials: int | None = None,
    studies: int | None = None,
    storage: str | None = None,
    run: bool = True,
    say: Callable[[str], None] | None = None,
    **tune_options: Any,
) -> tuple[Suite, RulesetInfo]:
    """The suite as ruleset ``name`` sets its entries, and the ruleset's record.

    Select the entries first (:meth:`Suite.select`). Raises BenchbnnError for an unknown
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
        **tune_options,
    )
