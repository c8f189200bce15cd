"""Search spaces: what an Optuna study explores for one optimizer.

They come from the optimizer plugin (``HParam.search`` and ``HParam.log``: a range, searched
log-uniformly when ``log``; booleans over both values) and can be narrowed by a suite's
``[tune.<optimizer>]`` table. The grid sampler and the ablation use powers of ten on log ranges.

A plugin's range may depend on the run (``HParam.search`` a callable of a
:class:`~benchbnn.core.specs.RunContext`): :func:`search_space` resolves it when given the run's
context (the tuner builds one from the study's base configuration), and otherwise leaves the
parameter without a range (``depends_on_run``), which names can be listed from but not sampled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from benchbnn.core.errors import HyperparameterError, did_you_mean
from benchbnn.core.specs import HParam, OptimizerSpec, RunContext


@dataclass(frozen=True)
class SearchParam:
    """How one hyperparameter is searched: a numeric range (log or linear) or both booleans.

    ``grid`` holds explicit grid values (from a suite); otherwise the grid sampler uses powers
    of ten inside a log range, five evenly spaced points inside a linear float range, and every
    integer (at most ten, else five evenly spaced) inside an integer range.
    """

    name: str
    kind: str  # "float", "int" or "bool"
    low: float | None = None
    high: float | None = None
    log: bool = False
    grid: tuple[Any, ...] | None = None
    depends_on_run: bool = False

    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a numeric parameter; ValueError for a boolean one or one whose
        range depends on a run that was not given."""
        if self.low is None or self.high is None:
            why = "depends on the run (none given)" if self.depends_on_run else "has no range"
            raise ValueError(f"search parameter {self.name!r} ({self.kind}) {why}")
        return self.low, self.high

    def suggest(self, trial: Any) -> Any:
        if self.kind == "bool":
            return trial.suggest_categorical(self.name, [False, True])
        low, high = self.bounds()
        if self.kind == "int":
            return trial.suggest_int(self.name, int(low), int(high), log=self.log)
        return trial.suggest_float(self.name, low, high, log=self.log)

    def grid_values(self) -> list[Any]:
        if self.grid is not None:
            return list(self.grid)
        if self.kind == "bool":
            return [False, True]
        low, high = self.bounds()
        if self.kind == "int":
            first, last = int(low), int(high)
            if last - first < 10:
                return list(range(first, last + 1))
            return sorted({round(first + (last - first) * i / 4) for i in range(5)})
        if self.log:
            return powers_of_ten(low, high)
        return [float(f"{low + (high - low) * i / 4:.6g}") for i in range(5)]

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.kind}
        if self.kind != "bool":
            data.update(low=self.low, high=self.high, log=self.log)
        if self.depends_on_run:
            data["depends_on_run"] = True
        if self.grid is not None:
            data["grid"] = list(self.grid)
        return data


def powers_of_ten(low: float, high: float) -> list[float]:
    """The powers of ten inside ``[low, high]`` (both ends when none lies inside)."""
    first = math.ceil(math.log10(low) - 1e-9)
    last = math.floor(math.log10(high) + 1e-9)
    values = [float(f"1e{k}") for k in range(first, last + 1)]
    values = [v for v in values if low <= v <= high]
    return values or sorted({low, high})


@dataclass(frozen=True)
class SearchSpace:
    """What a study searches (``params``) and what the suite pins to one value (``fixed``)."""

    optimizer: str
    params: Mapping[str, SearchParam]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "params": {name: self.params[name].as_dict() for name in sorted(self.params)},
            "fixed": {name: self.fixed[name] for name in sorted(self.fixed)},
        }

    def grid(self) -> dict[str, list[Any]]:
        return {name: p.grid_values() for name, p in sorted(self.params.items())}

    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid().values())

    def sample(self, trial: Any) -> dict[str, Any]:
        return {name: self.params[name].suggest(trial) for name in sorted(self.params)}


def _from_hparam(h: HParam, context: RunContext | None, owner: str) -> SearchParam:
    """The declared search of ``h``; a range that depends on the run is resolved from
    ``context`` (left without a range when it is None). Raises HyperparameterError for a
    computed range that is empty or leaves the valid range."""
    if h.kind is bool:
        return SearchParam(h.name, "bool")
    if h.search_depends_on_run and context is None:
        return SearchParam(h.name, h.kind.__name__, log=bool(h.log), depends_on_run=True)
    low, high = h.resolved_search(context, owner) or (None, None)
    return SearchParam(
        h.name,
        h.kind.__name__,
        None if low is None else float(low),
        None if high is None else float(high),
        bool(h.log),
        depends_on_run=h.search_depends_on_run,
    )


def search_space(
    spec: OptimizerSpec,
    narrowed: Mapping[str, Any] | None = None,
    source: str = "",
    context: RunContext | None = None,
) -> SearchSpace:
    """The plugin's declared search space, narrowed by a suite's ``[tune.<optimizer>]`` table.

    ``context`` (the run a study tunes, see :class:`~benchbnn.core.specs.RunContext`) resolves
    the ranges a plugin computes from the run; without it they stay unresolved
    (``SearchParam.depends_on_run``, no range) unless the table replaces them.

    Table values: ``[low, high]`` (a range inside the hyperparameter's valid range; log scale as
    the plugin declares), ``{low = .., high = .., log = ..}``, ``{grid = [..]}``, a single value
    (the hyperparameter is pinned to it and not searched; for a boolean, ``false`` is such a
    value), or ``false`` for a number (not searched: the entry's value or the default stays).
    A hyperparameter the plugin does not search by default can be added the same way.
    """
    where = source or f"the tune table of optimizer {spec.name!r}"
    owner = f"optimizer {spec.name!r}"
    params = {
        name: _from_hparam(h, context, owner)
        for name, h in spec.search_space.items()
        if name not in (narrowed or {})
    }
    fixed: dict[str, Any] = {}
    table = {h.name: h for h in spec.hparams}
    for name, value in (narrowed or {}).items():
        if name not in table:
            raise HyperparameterError(
                f"{where} names {name!r}, which is not a hyperparameter of optimizer "
                f"{spec.name!r}.{did_you_mean(name, table)} "
                f"Valid names: {', '.join(sorted(table))}."
            )
        if value is False and table[name].kind is not bool:
            params.pop(name, None)
            continue
        narrowed_param = _narrow(table[name], value, where)
        if isinstance(narrowed_param, SearchParam):
            params[name] = narrowed_param
        else:
            params.pop(name, None)
            fixed[name] = narrowed_param
    for name, param in params.items():
        _check_grid(table[name], param, where)
    return SearchSpace(spec.name, params, fixed)


def _check_grid(h: HParam, param: SearchParam, where: str) -> None:
    """Every value the grid sampler would try lies in ``h``'s valid range (open ends too).

    The ends of a range are checked when it is read; this covers the points computed between
    them (rounded to 6 significant digits on linear ranges). Raises HyperparameterError.
    """
    if param.kind == "bool" or (param.depends_on_run and param.low is None):
        return
    for value in param.grid_values():
        if value not in h.valid_range:
            raise HyperparameterError(
                f"{where}, {h.name!r}: the grid reaches {value!r}, outside its valid range "
                f"{h.valid_range}"
            )


def _narrow(h: HParam, value: Any, where: str) -> SearchParam | Any:
    """One table entry as a SearchParam, or the single value it pins the hyperparameter to."""
    owner = f"{where}, {h.name!r}"
    if isinstance(value, Mapping):
        unknown = set(value) - {"low", "high", "log", "grid"}
        if unknown:
            raise HyperparameterError(
                f"{owner}: unknown key(s) {sorted(unknown)}; use low, high, log or grid"
            )
        if "grid" in value:
            grid = [h.coerce(v, owner) for v in value["grid"]]
            if not grid:
                raise HyperparameterError(f"{owner}: grid is empty")
            low = value.get("low", min(grid)) if h.kind is not bool else None
            high = value.get("high", max(grid)) if h.kind is not bool else None
            rng = (
                _range_param(h, low, high, value.get("log", h.log), owner)
                if h.kind is not bool
                else SearchParam(h.name, "bool")
            )
            return replace(rng, grid=tuple(grid))
        if "low" not in value or "high" not in value:
            raise HyperparameterError(f"{owner}: give both low and high (or a grid)")
        return _range_param(h, value["low"], value["high"], value.get("log", h.log), owner)
    if isinstance(value, (list, tuple)):
        if h.kind is bool:
            values = sorted({h.coerce(v, owner) for v in value})
            return SearchParam(h.name, "bool") if len(values) == 2 else values[0]
        if len(value) != 2:
            raise HyperparameterError(
                f"{owner}: a range is [low, high], got {list(value)!r} "
                f"(use {{grid = [...]}} for a list of values)"
            )
        return _range_param(h, value[0], value[1], h.log, owner)
    return h.coerce(value, owner)


def _range_param(h: HParam, low: Any, high: Any, log: Any, owner: str) -> SearchParam:
    if h.kind not in (int, float):
        raise HyperparameterError(f"{owner}: a {h.kind.__name__} hyperparameter has no range")
    low, high = h.coerce(low, owner), h.coerce(high, owner)
    if not low < high:
        raise HyperparameterError(f"{owner}: the range [{low}, {high}] is empty (need low < high)")
    if log and low <= 0:
        raise HyperparameterError(
            f"{owner}: a log-scale range must be positive, got [{low}, {high}]"
        )
    return SearchParam(h.name, h.kind.__name__, float(low), float(high), bool(log))
