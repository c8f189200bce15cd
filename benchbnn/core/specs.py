"""The frozen records that plugins return from their registration hooks.

A plugin describes what it offers as data (names, defaults, valid ranges, search spaces) and a
factory that builds the real object. The host validates every record once, when plugins load,
so that a mistake in a plugin is reported with the plugin's name instead of surfacing mid-run.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from benchbnn.core.errors import BenchbnnError, HyperparameterError, PluginError, did_you_mean
from benchbnn.core.values import (
    Number,
    ValueType,
    convert,
    declare,
    declared_type,
    option_label,
    quote,
)

_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def check_name(name: str, kind: str) -> None:
    """Plugin names are lower-case kebab-case so that they read the same in TOML, CLI and URLs."""
    if not isinstance(name, str) or not _KEBAB.match(name):
        raise PluginError(
            f"{kind} name {name!r} is not lower-case kebab-case (letters, digits and single dashes)"
        )


@dataclass(frozen=True)
class ValueRange:
    """An interval of real numbers that every value of a hyperparameter must lie in.

    ``low``/``high`` are the ends (None: unbounded on that side); an end is included unless
    ``low_open``/``high_open`` excludes it, so ``ValueRange(0.0, 1.0, low_open=True)`` is
    ``(0, 1]``. NaN and infinities are never inside: a value for which an update rule is
    undefined is outside every range.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: object) -> bool:
        """True when the number ``value`` lies in the interval (False for NaN and +-inf)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):
            return False
        value = cast(float, value)  # a real number (checked above); ints stay exact
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (
            value > self.high or (self.high_open and value == self.high)
        )

    def __str__(self) -> str:
        """``[0.0, 1.0]``, ``(0.0, 1.0]``, ``[0.0, inf)``: brackets include, parentheses exclude."""
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        return f"{left}{low}, {high}{right}"


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default, the range a value must lie in, and how to search it.

    ``low``/``high`` bound every value a user may set or a schedule may reach (inclusive unless
    ``low_open``/``high_open``: ``low=0.0, low_open=True`` declares a value that must be
    positive, for a rule that divides by it). ``search`` is the range an Optuna study explores
    by default (``log=True`` samples it log-uniformly); ``None`` means the hyperparameter is not
    tuned. ``search`` may also depend on the run: a callable ``(context) -> (low, high)``
    given the run's :class:`RunContext` (training-set size, steps per epoch, total steps, world
    size), e.g. a range in units of ``1 / context.train_size``; the tuner resolves it from the
    study's base configuration before the study starts (:meth:`resolved_search`). Booleans are
    searched over ``(False, True)`` when ``search`` is set to any truthy value. ``static=True``
    says that the value cannot change during a run (the optimizer reads it once, or it acts
    somewhere the engine cannot follow a schedule): scheduling it is refused. Only real-valued
    hyperparameters can follow a schedule in any case.
    """

    name: str
    default: Any
    low: float | None = None
    high: float | None = None
    search: tuple[float, float] | Callable[[RunContext], tuple[float, float]] | None = None
    log: bool = False
    help: str = ""
    low_open: bool = False
    high_open: bool = False
    static: bool = False

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def schedulable(self) -> bool:
        """True for real-valued hyperparameters not declared ``static``."""
        return self.kind is float and not self.static

    @property
    def valid_range(self) -> ValueRange:
        """The interval every value (set, searched or scheduled) must lie in."""
        return ValueRange(self.low, self.high, self.low_open, self.high_open)

    @property
    def value_type(self) -> ValueType:
        """The declared type: the default's, bounded by the valid range for numbers.

        Raises PluginError for a default whose type declares nothing (None, a table).
        """
        declared = declared_type(self.default)
        if isinstance(declared, Number):
            declared = replace(
                declared,
                low=self.low,
                high=self.high,
                low_open=self.low_open,
                high_open=self.high_open,
            )
        return declared

    def coerce(self, value: Any, owner: str = "") -> Any:
        """``value`` (command-line text or a typed value) converted to :attr:`value_type`.

        Raises HyperparameterError naming the hyperparameter, ``owner``, the value and the
        accepted form (see :mod:`benchbnn.core.values`).
        """
        label = f"hyperparameter {self.name!r}" + (f" of {owner}" if owner else "")
        return convert(value, self.value_type, label)

    def check_range(self, value: float, owner: str = "") -> None:
        """Raise HyperparameterError unless ``value`` lies in :attr:`valid_range`."""
        where = f" of {owner}" if owner else ""
        if value not in self.valid_range:
            raise HyperparameterError(
                f"hyperparameter {self.name!r}{where} = {value!r} is outside its valid range "
                f"{self.valid_range}"
            )

    @property
    def search_depends_on_run(self) -> bool:
        """True when ``search`` is computed from the run (a callable of a RunContext)."""
        return callable(self.search)

    def resolved_search(
        self, context: RunContext | None, owner: str = ""
    ) -> tuple[float, float] | None:
        """The search range as ``(low, high)`` for the run ``context`` describes (None: not
        searched). A declared range comes back as it is; a callable one is called with
        ``context`` and its answer checked as a declared range is at plugin load (two numbers,
        ``low < high``, both in the valid range, positive on a log scale).

        Raises HyperparameterError naming the hyperparameter, ``owner`` and what was wrong,
        also when the range depends on the run and ``context`` is None.
        """
        label = f"search range of {self.name!r}" + (f" of {owner}" if owner else "")
        if not callable(self.search):
            return None if not self.search else (self.search[0], self.search[1])
        if context is None:
            raise HyperparameterError(
                f"the {label} depends on the run (training-set size, steps); it is resolved "
                f"from a run configuration, which was not given"
            )
        try:
            found = self.search(context)
            low, high = (float(v) for v in found)
        except (TypeError, ValueError) as exc:
            raise HyperparameterError(
                f"the {label} must be computed as two numbers (low, high); the plugin's function "
                f"failed or returned something else: {exc}"
            ) from None
        problem = _search_problem(self, low, high)
        if problem:
            raise HyperparameterError(f"the {label}, computed as ({low!r}, {high!r}), {problem}")
        return low, high

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind.__name__,
            "default": self.default,
            "low": self.low,
            "high": self.high,
            "low_open": self.low_open,
            "high_open": self.high_open,
            "search": (
                "depends on the run"
                if callable(self.search)
                else list(self.search)
                if isinstance(self.search, tuple)
                else self.search
            ),
            "log": self.log,
            "static": self.static,
            "help": self.help,
        }


def _search_problem(h: HParam, low: float, high: float) -> str:
    """What is wrong with ``(low, high)`` as ``h``'s search range, or "" when nothing is."""
    if not low < high:
        return "is empty (need low < high)"
    if low not in h.valid_range or high not in h.valid_range:
        return f"leaves its valid range {h.valid_range}"
    if h.log and low <= 0:
        return "must be positive on a log scale"
    return ""


def _accepted_keywords(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``factory`` accepts, or None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def resolve_hparams(
    owner: str, hparams: Iterable[HParam], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Defaults updated with ``overrides``, every value checked for name, type and range."""
    table = {h.name: h for h in hparams}
    resolved = {name: h.default for name, h in table.items()}
    for key, value in overrides.items():
        if key not in table:
            raise HyperparameterError(
                f"{owner} has no hyperparameter {key!r}.{did_you_mean(key, table)} "
                f"Valid names: {', '.join(sorted(table)) or 'none'}."
            )
        resolved[key] = table[key].coerce(value, owner)
    return resolved


#: How binary layers use an optimizer's binary weights while training (its ``forward``):
#:
#: * ``"sign"``: the weights are exactly +-1 (set so when the optimizer is built) and the layers
#:   use them as they are (Bop and the other flip rules);
#: * ``"latent"``: real-valued latent weights; the layers use their sign, with a straight-through
#:   gradient (adam-latent);
#: * ``"identity"``: real values the layers use as they are, e.g. continuous weights in (-1, 1)
#:   or relaxed samples. Evaluating them would evaluate a real-valued network, so such an
#:   optimizer must provide evaluation weights (``evaluation_weights()``).
FORWARD_MODES = ("sign", "latent", "identity")

#: Keywords of an optimizer's constructor that are not hyperparameters; no hyperparameter may
#: take these names.
RESERVED_NAMES = (
    "binary_params",
    "real_params",
    "implementation",
    "context",
    "binary",
    "real",
    "options",
)


@dataclass(frozen=True)
class RunContext:
    """What the run knows about itself when it builds the optimizer (frozen).

    The engine passes it as ``context=`` to an optimizer factory that has a parameter named
    ``context`` (every :class:`~benchbnn.optim.BinaryOptimizer` has; it is then
    ``optimizer.context``). Built outside the engine (``spec.build(...)`` without ``context=``),
    an optimizer gets None and must either work without it or say what it lacks.

    * ``train_size``: training images of the run, all ranks together (after ``subset`` and the
      validation split);
    * ``steps_per_epoch``, ``total_steps``: optimizer steps per epoch and in the whole run;
    * ``world_size``: data-parallel ranks (1 without torchrun);
    * ``device``: the ``torch.device`` the run trains on;
    * ``seed``: the run's seed, the same on every rank (seed an optimizer's generators from it
      and every rank draws alike).
    """

    train_size: int
    steps_per_epoch: int
    total_steps: int
    world_size: int
    device: Any
    seed: int


#: Reads an optimizer's default schedules: ``(owner, hparams, declared) -> {name: data}``,
#: raising PluginError. Schedules are a layer above (:mod:`benchbnn.optim.schedules`), which
#: registers its reader when it is imported (:func:`register_schedule_reader`).
ScheduleReader = Callable[[str, tuple["HParam", ...], Mapping[str, Any]], dict[str, Any]]
_SCHEDULE_READERS: list[ScheduleReader] = []


def register_schedule_reader(reader: ScheduleReader) -> None:
    """Install the function that parses and checks default schedules (one; the last wins)."""
    _SCHEDULE_READERS[:] = [reader]


def _read_schedules(
    owner: str, hparams: tuple[HParam, ...], declared: Mapping[str, Any]
) -> dict[str, Any]:
    """``declared`` default schedules as data, through the registered reader.

    Raises PluginError (from the reader), or BenchbnnError when no reader is installed (nothing
    imported :mod:`benchbnn.optim.schedules`: ``import benchbnn.optim.schedules`` first).
    """
    if not declared:
        return {}
    if not _SCHEDULE_READERS:
        raise BenchbnnError(
            f"{owner} declares default schedules, which need benchbnn.optim.schedules; import "
            f"it before computing a run's identity"
        )
    return _SCHEDULE_READERS[0](owner, hparams, declared)


def _accepts_context(factory: Callable[..., Any]) -> bool:
    """True when ``factory`` has a parameter named ``context`` (``**kwargs`` does not count)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("context")
    return param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def _declared(factory: Any, attribute: str, kind: type) -> Any:
    """The factory's own class-level declaration ``attribute`` when it is a ``kind``, else None."""
    value = getattr(factory, attribute, None) if isinstance(factory, type) else None
    return value if isinstance(value, kind) else None


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer plugin: ``factory(binary_params, real_params, **hparams)`` -> Optimizer.

    The usual way to make one is from the optimizer's class, which declares everything once:
    ``OptimizerSpec.from_class(MyOpt)`` (also ``benchbnn.optimizer_spec(MyOpt)``). Written out
    field by field (the older spelling, still accepted):

    ``forward`` is how binary layers use the binary weights while training, one of
    :data:`FORWARD_MODES` (``"sign"``, ``"latent"``, ``"identity"``). ``latent_weights`` is its
    older spelling: True means ``"latent"`` and False ``"sign"``; after construction it reads
    ``forward == "latent"`` (the layers binarize in the forward pass). When neither is given,
    the factory's own ``forward`` (a class attribute) is used, else ``"sign"``.

    ``ste_window`` names the real-valued hyperparameter that is also the straight-through
    window of the binary layers (their ``clip``: gradients pass where ``|x| <= clip``), for a
    latent-weight optimizer whose clamp and window are one value. The engine keeps every binary
    layer's window equal to that hyperparameter's value at every step, scheduled or not; its
    valid range must exclude 0 and negative values. None (the default): the layers keep the
    window of 1.

    ``needs_closure``: the optimizer's ``step`` must be given a closure (the engine then calls
    ``optimizer.step(closure)``; see ``BinaryOptimizer.needs_closure``). None: the factory's own
    declaration, else False.

    ``divergence_advice``: what to change when a run of this optimizer diverges, shown after
    "training diverged: ..." (empty: the factory's declaration, else :meth:`divergence_hint`'s
    generic advice naming the hyperparameters).

    ``default_schedules`` maps hyperparameter names to the schedules a run follows when its
    configuration gives none for them (compact strings such as ``"cosine:1e-4:1e-16"`` or
    schedule data; empty: the factory's own ``default_schedules``, else none). They are checked
    when the plugin loads (schedulable names; START and END in the valid range) and are part of
    every run's identity (:func:`benchbnn.core.config.resolved_identity`); a configuration
    replaces one by giving a schedule of that hyperparameter (``constant:V`` holds it fixed).

    ``rule_version`` counts changes of the rule's numbers (1 for the first; the factory's
    ``rule_version`` with :meth:`from_class`): an optimizer whose update now computes other
    numbers from the same hyperparameters (a new random stream, another arithmetic) raises it,
    and versions above 1 are part of every run's identity, so a store never reuses a run of
    the old rule as a result of the new one. Runs of version 1 keep their hashes.

    Contradictions (``latent_weights`` against ``forward``, a spec against its class's
    declaration, ``"identity"`` without evaluation weights) are refused by :meth:`validate`.
    """

    name: str
    factory: Callable[..., Any]
    hparams: tuple[HParam, ...]
    description: str = ""
    latent_weights: bool | None = None
    reference: str = ""
    ste_window: str | None = None
    forward: str | None = None
    needs_closure: bool | None = None
    divergence_advice: str = ""
    default_schedules: Mapping[str, Any] = field(default_factory=dict, hash=False)
    rule_version: int = 1

    def __post_init__(self) -> None:
        forward, conflict = self.forward, ""
        if forward is None:
            if self.latent_weights is None:
                forward = _declared(self.factory, "forward", str) or "sign"
            else:
                forward = "latent" if self.latent_weights else "sign"
        elif self.latent_weights is not None and bool(self.latent_weights) != (forward == "latent"):
            conflict = (
                f"latent_weights={bool(self.latent_weights)} contradicts forward={forward!r}; "
                f"drop latent_weights (forward replaces it)"
            )
        object.__setattr__(self, "forward", forward)
        object.__setattr__(self, "latent_weights", forward == "latent")
        object.__setattr__(self, "_conflict", conflict)
        if self.needs_closure is None:
            object.__setattr__(
                self, "needs_closure", bool(_declared(self.factory, "needs_closure", bool))
            )
        if not self.divergence_advice:
            advice = _declared(self.factory, "divergence_advice", str) or ""
            object.__setattr__(self, "divergence_advice", advice)
        declared = self.default_schedules or (
            getattr(self.factory, "default_schedules", None)
            if isinstance(self.factory, type)
            else None
        )
        if isinstance(declared, Mapping):
            declared = MappingProxyType(dict(declared))
        object.__setattr__(self, "default_schedules", declared or MappingProxyType({}))

    @classmethod
    def from_class(cls, optimizer_class: type, **overrides: Any) -> OptimizerSpec:
        """The spec of an optimizer class, every field read from its declaration.

        ``optimizer_class`` is a :class:`~benchbnn.optim.BinaryOptimizer` subclass (or any class
        with the same attributes): ``name``, ``hparams`` (for a BinaryOptimizer, derived from
        ``rule_hparams``, ``option_hparams`` and ``real_hparams``), ``description`` (default:
        the first line of its docstring), ``reference``, ``forward``, ``ste_window``,
        ``needs_closure``, ``divergence_advice`` and ``default_schedules`` (e.g.
        ``{"lr": "cosine:1e-4:1e-16"}``); the class itself is the factory.
        ``overrides`` replace fields (e.g. ``name=`` to list a variant under another name).
        Raises PluginError for a class without a name or a hyperparameter table.
        """
        owner = getattr(optimizer_class, "__qualname__", repr(optimizer_class))
        if not isinstance(optimizer_class, type):
            raise PluginError(
                f"optimizer_spec() takes an optimizer class, got {optimizer_class!r}; pass the "
                f"class itself (a benchbnn.optim.BinaryOptimizer subclass)"
            )
        name = overrides.pop("name", None) or getattr(optimizer_class, "name", "")
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"optimizer class {owner} declares no name; add name = 'my-optimizer' "
                f"(lower-case kebab-case) to the class"
            )
        hparams = getattr(optimizer_class, "hparams", None)
        if not isinstance(hparams, tuple):
            raise PluginError(
                f"optimizer class {owner} has no hyperparameter table (hparams); subclass "
                f"benchbnn.optim.BinaryOptimizer and declare rule_hparams"
            )
        description = getattr(optimizer_class, "description", "") or ""
        if not description:
            description = (inspect.getdoc(optimizer_class) or "").strip().split("\n")[0]
        fields: dict[str, Any] = {
            "name": name,
            "factory": optimizer_class,
            "hparams": hparams,
            "description": description,
            "reference": getattr(optimizer_class, "reference", "") or "",
            "forward": _declared(optimizer_class, "forward", str) or "sign",
            "ste_window": getattr(optimizer_class, "ste_window", None),
            "needs_closure": bool(_declared(optimizer_class, "needs_closure", bool)),
            "divergence_advice": _declared(optimizer_class, "divergence_advice", str) or "",
            "default_schedules": getattr(optimizer_class, "default_schedules", None) or {},
            "rule_version": getattr(optimizer_class, "rule_version", 1),
        }
        return cls(**{**fields, **overrides})

    @property
    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hparams}

    @property
    def search_space(self) -> dict[str, HParam]:
        return {h.name: h for h in self.hparams if h.search}

    def hparam(self, name: str) -> HParam:
        return {h.name: h for h in self.hparams}[name]

    def default_schedule_data(self) -> dict[str, Any]:
        """The default schedules as schedule data (``{name: {"schedule": .., ...}}``); empty
        for an optimizer without any. Raises PluginError for a bad declaration."""
        return _read_schedules(f"optimizer {self.name!r}", self.hparams, self.default_schedules)

    def resolve(self, **overrides: Any) -> dict[str, Any]:
        return resolve_hparams(f"optimizer {self.name!r}", self.hparams, overrides)

    def build(
        self,
        binary_params: Iterable[Any],
        real_params: Iterable[Any] = (),
        *,
        context: RunContext | None = None,
        **hparams: Any,
    ):
        """Build the optimizer for these parameters; unknown or bad hyperparameters raise.

        ``context`` (a :class:`RunContext`; the engine passes one) reaches a factory that has a
        parameter named ``context``; other factories never see it.
        """
        kwargs = self.resolve(**hparams)
        if context is not None and _accepts_context(self.factory):
            kwargs["context"] = context
        return self.factory(list(binary_params), list(real_params), **kwargs)

    def divergence_hint(self) -> str:
        """What to change when a run of this optimizer diverges: its ``divergence_advice``, or
        a generic advice naming its real-valued hyperparameters."""
        if self.divergence_advice:
            return self.divergence_advice
        names = [h.name for h in self.hparams if h.schedulable] or [h.name for h in self.hparams]
        listed = f" (its hyperparameters: {', '.join(names)})" if names else ""
        return (
            f"lower the step sizes or rates of optimizer {self.name!r}{listed}, or schedule "
            f"them down"
        )

    def validate(self) -> None:
        check_name(self.name, "optimizer")
        owner = f"optimizer {self.name!r}"
        if not callable(self.factory):
            raise PluginError(f"{owner}: factory is not callable")
        if (
            isinstance(self.rule_version, bool)
            or not isinstance(self.rule_version, int)
            or self.rule_version < 1
        ):
            raise PluginError(
                f"{owner}: rule_version must be a whole number >= 1, got {self.rule_version!r}; "
                f"start at 1 and add 1 whenever the rule computes other numbers"
            )
        for h in self.hparams:
            if getattr(h, "name", None) == "context":
                raise PluginError(
                    f"{owner}: a hyperparameter may not be called 'context' (spec.build passes "
                    f"the run's context under that name); rename it"
                )
        _validate_hparams(owner, self.hparams, self.factory, skip=2)
        self._validate_ste_window()
        if getattr(self, "_conflict", ""):
            raise PluginError(f"{owner}: {self._conflict}")  # type: ignore[attr-defined]
        check_forward(
            owner,
            self.forward,
            self.ste_window,
            bool(getattr(self.factory, "provides_evaluation_weights", False)),
        )
        if not isinstance(self.needs_closure, bool):
            raise PluginError(f"{owner}: needs_closure must be True or False")
        self._validate_class_agreement()
        self._validate_default_schedules()

    def _validate_default_schedules(self) -> None:
        """``default_schedules`` is a table of schedulable hyperparameters whose declared values
        lie in their valid ranges (checked by the schedule reader when one is installed).

        Raises PluginError naming the optimizer and the fix.
        """
        owner = f"optimizer {self.name!r}"
        declared = self.default_schedules
        if not isinstance(declared, Mapping) or not all(isinstance(k, str) for k in declared):
            raise PluginError(
                f"{owner}: default_schedules must map hyperparameter names to schedules, e.g. "
                f'{{"lr": "cosine:1e-4:1e-16"}}; got {declared!r}'
            )
        table = {h.name: h for h in self.hparams}
        for name in declared:
            if name not in table or not table[name].schedulable:
                schedulable = sorted(n for n, h in table.items() if h.schedulable)
                raise PluginError(
                    f"{owner}: default_schedules names {name!r}, which is not a schedulable "
                    f"hyperparameter.{did_you_mean(name, table)} Schedulable: "
                    f"{', '.join(schedulable) or 'none'}"
                )
        if _SCHEDULE_READERS:
            self.default_schedule_data()

    def _validate_class_agreement(self) -> None:
        """A spec written out by hand must say what its class declares (forward, closure)."""
        cls = self.factory
        for field_name, value in (
            ("forward", self.forward),
            ("needs_closure", self.needs_closure),
        ):
            declared = _declared(cls, field_name, str if field_name == "forward" else bool)
            if declared is not None and declared != value:
                raise PluginError(
                    f"optimizer {self.name!r}: the spec says {field_name}={value!r} but its class "
                    f"{cls.__qualname__} declares {field_name}={declared!r}; return "
                    f"benchbnn.optimizer_spec({cls.__qualname__}) from the hook instead of "
                    f"writing the spec out"
                )

    def _validate_ste_window(self) -> None:
        """``ste_window`` names a positive real hyperparameter of a latent-weight optimizer.

        Raises PluginError otherwise.
        """
        check_ste_window(f"optimizer {self.name!r}", self.ste_window, self.hparams, self.forward)


def check_ste_window(
    owner: str, ste_window: str | None, hparams: Iterable[HParam], forward: str | None
) -> None:
    """Raise PluginError unless ``ste_window`` is None or names a real-valued hyperparameter
    with a positive range, of an optimizer whose ``forward`` is ``"latent"``."""
    if ste_window is None:
        return
    table = {h.name: h for h in hparams}
    if ste_window not in table or table[ste_window].kind is not float:
        raise PluginError(
            f"{owner}: ste_window {ste_window!r} is not one of its real-valued hyperparameters"
        )
    if forward != "latent":
        raise PluginError(
            f"{owner}: ste_window needs latent_weights=True, i.e. forward='latent' (binary "
            f"layers only use a straight-through window on latent weights), not "
            f"forward={forward!r}"
        )
    valid = table[ste_window].valid_range
    if valid.low is None or valid.low < 0 or (valid.low == 0 and not valid.low_open):
        raise PluginError(
            f"{owner}: the straight-through window {ste_window!r} must be positive; "
            f"declare its range with low > 0 (or low=0.0, low_open=True), not {valid}"
        )


def check_forward(
    owner: str, forward: Any, ste_window: str | None, provides_evaluation_weights: bool
) -> None:
    """Raise PluginError for a ``forward`` outside :data:`FORWARD_MODES`, or ``"identity"``
    without evaluation weights (the fix is in the message)."""
    if forward not in FORWARD_MODES:
        raise PluginError(
            f"{owner}: forward {forward!r} is not one of {', '.join(FORWARD_MODES)}."
            f"{did_you_mean(str(forward), FORWARD_MODES)} Declare forward = 'sign' (weights "
            f"exactly +-1), 'latent' (sign with a straight-through gradient) or 'identity' "
            f"(weights used as they are, with evaluation weights)"
        )
    if forward == "identity" and not provides_evaluation_weights:
        raise PluginError(
            f"{owner}: forward='identity' trains on the weights as they are, but it provides no "
            f"evaluation weights, so evaluation would run a real-valued network; implement "
            f"evaluation_weights() (a context manager that puts +-1 weights in place, e.g. "
            f"their signs, and restores them) or declare forward='latent'"
        )


def validate_hparams(
    owner: str, hparams: Iterable[HParam], factory: Callable[..., Any] | None = None
) -> None:
    """Raise PluginError for a malformed hyperparameter table, naming ``owner`` and the fix.

    Checks that every entry is an :class:`HParam`, names are unique, each default is usable (a
    number, flag, text or list, inside the valid range), open ends have a bound, search ranges
    lie inside the valid range, and (with ``factory``) that the factory accepts each name.
    """
    hparams = tuple(hparams)
    for h in hparams:
        if not isinstance(h, HParam):
            raise PluginError(f"{owner}: {h!r} is not a benchbnn.HParam")
    names = [h.name for h in hparams]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise PluginError(
            f"{owner} declares hyperparameter {', '.join(map(repr, twice))} twice: {names}"
        )
    accepted = _accepted_keywords(factory) if factory is not None else None
    for h in hparams:
        if accepted is not None and h.name not in accepted:
            raise PluginError(
                f"{owner} declares hyperparameter {h.name!r} that its factory does not accept"
            )
        if (h.low_open and h.low is None) or (h.high_open and h.high is None):
            raise PluginError(f"{owner}: {h.name!r} has an open end without a bound")
        if h.default is None:
            raise PluginError(
                f"{owner}: hyperparameter {h.name!r} has no usable default (None): a run that "
                f"does not set it would stop mid-run. Give it a default value of its type, e.g. "
                f"HParam({h.name!r}, 0.01, ...) (a number, true/false or text)"
            )
        try:
            h.value_type  # noqa: B018 - raises for a default that declares no type
        except PluginError as exc:
            raise PluginError(f"{owner}: hyperparameter {h.name!r}: {exc}") from None
        if h.kind in (int, float):
            try:
                h.check_range(h.default, owner)
            except HyperparameterError as exc:
                raise PluginError(f"default out of range: {exc}") from None
        if callable(h.search):
            if h.kind not in (int, float):
                raise PluginError(
                    f"{owner}: search range of {h.name!r} depends on the run, but only a number "
                    f"has a range; give a boolean search=True"
                )
            continue  # resolved and checked from the run (HParam.resolved_search)
        if h.search and h.kind in (int, float):
            low, high = h.search
            if not low < high:
                raise PluginError(f"{owner}: search range of {h.name!r} is empty: {h.search}")
            for bound in (low, high):
                try:
                    h.check_range(bound, owner)
                except HyperparameterError:
                    raise PluginError(
                        f"{owner}: search range of {h.name!r} {h.search} leaves its valid range "
                        f"{h.valid_range}"
                    ) from None
            if h.log and low <= 0:
                raise PluginError(f"{owner}: log search range of {h.name!r} must be positive")


def _validate_hparams(
    owner: str, hparams: Iterable[HParam], factory: Callable[..., Any], skip: int = 0
) -> None:
    """:func:`validate_hparams` (the older name; ``skip`` is unused)."""
    validate_hparams(owner, hparams, factory)


@dataclass(frozen=True)
class ArchitectureSpec:
    """An architecture plugin: ``factory(num_classes, in_channels, image_size, **options)``.

    ``input_sizes`` lists the image sizes the network is defined for (empty: any), and
    ``in_channels`` the channel counts (empty: any); ``build`` refuses others with a message
    naming what is supported.

    ``options`` maps each option to its default. An option's declared type is the type of its
    default unless ``option_types`` declares one (a :class:`~benchbnn.core.values.ValueType`
    such as ``Choice(("batch", "layer"))`` or ``Number(float, positive=True)``); every value,
    command-line text or typed, is converted by it (:mod:`benchbnn.core.values`).
    """

    name: str
    factory: Callable[..., Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    input_sizes: tuple[int, ...] = ()
    in_channels: tuple[int, ...] = ()
    reference: str = ""
    option_types: Mapping[str, ValueType] = field(default_factory=dict)

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.options)

    def value_types(self) -> dict[str, ValueType]:
        """Each option's declared type: its ``option_types`` entry, else its default's type."""
        return _option_types(self.options, self.option_types)

    def build(
        self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **options: Any
    ):

        resolved = self.resolve_options(options)
        if self.input_sizes and image_size not in self.input_sizes:
            raise BenchbnnError(
                f"architecture {self.name!r} does not support {image_size}x{image_size} inputs; "
                f"supported image sizes: {', '.join(map(str, self.input_sizes))}"
            )
        if self.in_channels and in_channels not in self.in_channels:
            raise BenchbnnError(
                f"architecture {self.name!r} does not support {in_channels} input channels; "
                f"supported: {', '.join(map(str, self.in_channels))}"
            )
        return self.factory(
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            **resolved,
        )

    def coerce_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` (text or typed values) converted to their declared types.

        Only the names given come back. Raises HyperparameterError for an unknown name or a
        value that does not fit (naming the option, the architecture and the accepted form).
        """
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise HyperparameterError(
                f"architecture {self.name!r} has no option {unknown[0]!r}."
                f"{did_you_mean(unknown[0], self.options)} "
                f"Options: {', '.join(sorted(self.options)) or 'none'}."
            )
        owner = f"architecture {self.name!r}"
        types = self.value_types()
        return {
            key: convert(value, types[key], option_label(owner, key))
            for key, value in options.items()
        }

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The default options updated with ``options`` converted to their declared types.

        Raises HyperparameterError for an unknown name or a value that does not fit.
        """
        return {**self.options, **self.coerce_options(options)}

    def validate(self) -> None:
        check_name(self.name, "architecture")
        if not callable(self.factory):
            raise PluginError(f"architecture {self.name!r}: factory is not callable")
        accepted = _accepted_keywords(self.factory)
        if accepted is not None:
            missing = {"num_classes", "in_channels", "image_size", *self.options} - accepted
            if missing:
                raise PluginError(
                    f"architecture {self.name!r}: factory does not accept {sorted(missing)}"
                )
        _validate_option_types(f"architecture {self.name!r}", self.options, self.option_types)


def _option_types(
    options: Mapping[str, Any], declared: Mapping[str, ValueType]
) -> dict[str, ValueType]:
    """Each option's declared type: ``declared[name]`` (offering the default), else the type of
    its default. Raises PluginError for a default that declares nothing."""
    return {name: declare(default, declared.get(name)) for name, default in options.items()}


def _validate_option_types(
    owner: str, options: Mapping[str, Any], declared: Mapping[str, ValueType]
) -> None:
    """Every declaration names an option, and every default fits its option's declared type.

    Raises PluginError naming the owner and the option.
    """
    strays = sorted(set(declared) - set(options))
    if strays:
        raise PluginError(f"{owner}: option_types names {strays[0]!r}, which is not an option")
    for name, default in options.items():
        try:
            convert(default, declare(default, declared.get(name)), option_label(owner, name))
        except PluginError as exc:
            raise PluginError(f"{owner}: option {name!r}: {exc}") from None
        except HyperparameterError as exc:
            raise PluginError(f"default does not fit its declared type: {exc}") from None


#: Augmentation operations the in-memory pipeline applies, vectorized per batch.
AUGMENTATION_OPS = {
    "crop": "crop:P pads every side by P pixels (with the data set's crop_fill: black, pixel "
    "value 0, by default) and takes a random crop of the original size",
    "flip": "flip mirrors each image horizontally with probability 1/2",
}


def parse_augmentation(text: str) -> tuple[tuple[str, int], ...]:
    """``"crop:4,flip"`` -> ``(("crop", 4), ("flip", 0))``; ``""`` or ``"none"`` -> ``()``.

    Raises ValueError naming the bad part.
    """
    ops: list[tuple[str, int]] = []
    text = (text or "").strip()
    if text.lower() in ("", "none"):
        return ()
    for part in text.split(","):
        name, _, arg = part.strip().partition(":")
        if name not in AUGMENTATION_OPS:
            raise ValueError(
                f"unknown augmentation {name!r} in {text!r}; known: "
                f"{'; '.join(AUGMENTATION_OPS.values())}"
            )
        if name == "crop":
            if not arg.isdigit():
                raise ValueError(f"augmentation {part.strip()!r} needs a padding: crop:P, P >= 0")
            ops.append((name, int(arg)))
        elif arg:
            raise ValueError(f"augmentation {name!r} takes no argument, got {part.strip()!r}")
        else:
            ops.append((name, 0))
        if [o for o, _ in ops].count(name) > 1:
            raise ValueError(f"augmentation {name!r} appears twice in {text!r}")
    return tuple(ops)


@dataclass(frozen=True)
class Augmentation(ValueType):
    """The declared type of every data set's ``augmentation`` option (text, kept as given).

    For an in-memory data set (``fixed`` None) operations of :data:`AUGMENTATION_OPS` such as
    ``crop:4,flip``; for a loader data set only ``fixed`` (what its loader does) or none.
    ``none`` and the empty text turn augmentation off in both. ``example`` (the data set's
    default) is offered in messages.
    """

    fixed: str | None = None
    example: str = ""

    def parse(self, text: str, label: str) -> str:
        text = text.strip()
        if self.fixed is not None:
            if text == self.fixed or text.lower() in ("", "none"):
                return text
            raise self.error(
                label,
                text,
                f"cannot be changed: its loader fixes the augmentation "
                f"({self.fixed or 'none'}); only 'none' can turn it off, got {text!r}",
            )
        try:
            parse_augmentation(text)
        except ValueError as exc:
            problem = f"must be {self.describe()}, got {text!r} ({exc})"
            raise self.error(label, text, problem) from None
        return text

    def check(self, value: Any, label: str) -> str:
        if isinstance(value, str):
            return self.parse(value, label)
        raise self.error(label, value)

    def describe(self) -> str:
        if self.fixed is not None:
            return f"its loader's augmentation ({self.fixed or 'none'}) or none"
        return "augmentation operations joined by commas (crop:P, flip) or none"

    def plural(self) -> str:
        return "augmentations"

    def accepted(self) -> str:
        off = f"{quote('none')} or {quote('')} for none"
        if self.fixed is not None:
            own = f"{quote(self.fixed)} (what its loader does), " if self.fixed else ""
            return own + off
        samples = [self.example] if self.example.strip().lower() not in ("", "none") else []
        samples += [s for s in ("crop:4,flip", "crop:4", "flip") if s not in samples]
        return (
            "operations joined by commas, crop:P (pad by P pixels, then crop at random) and "
            f"flip (mirror at random), such as {', '.join(quote(s) for s in samples)}; or {off}"
        )


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset plugin: what it is (classes, image shape, normalization) and how to load it.

    A plugin provides its data in one of two ways:

    * ``tensors(root, split, download=False, **options)`` returns a
      :class:`benchbnn.data.tensors.ImageTensors` (every image of the split as uint8 NCHW plus
      int64 labels). The host feeds these through its in-memory pipeline: whole batches,
      ``augmentation`` applied vectorized on the training device, normalized with
      ``(x / pixel_max - mean) / std`` per channel. For small data sets.
    * ``loader(root, split, download=False, augment=False, **options)`` returns a torch
      ``Dataset`` of ``(CxHxW float tensor, int label)`` pairs that already applies its own
      normalization, and its training augmentation when ``augment`` is true. The host reads it
      through a multi-worker ``DataLoader``. For data sets too large to hold in memory.

    ``load(root=, split=)`` returns a torch ``Dataset`` either way. ``num_classes`` and
    ``image_shape`` describe the data with the default ``options`` (a generated data set may
    change them through its options). ``augmentation`` is the default training augmentation: for
    ``tensors`` data sets operations from :data:`AUGMENTATION_OPS` (``"crop:4,flip"``); for
    ``loader`` data sets a description of what the loader does. ``needs_data_dir`` is False for
    datasets that are embedded or generated (they ignore ``root``). ``options`` and
    ``option_types`` declare the plugin's options as for :class:`ArchitectureSpec`; the
    ``augmentation`` option every data set takes is declared by :class:`Augmentation`.
    """

    name: str
    loader: Callable[..., Any] | None
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    description: str = ""
    needs_data_dir: bool = True
    splits: tuple[str, ...] = ("train", "test")
    augmentation: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    tensors: Callable[..., Any] | None = None
    pixel_max: float = 255.0
    reference: str = ""
    option_types: Mapping[str, ValueType] = field(default_factory=dict)

    #: Options every data set accepts; the pipeline consumes them, the plugin never sees them.
    PIPELINE_OPTIONS = ("augmentation",)

    @property
    def in_memory(self) -> bool:
        """True when the data set hands the host uint8 tensors (the fast in-memory pipeline)."""
        return self.tensors is not None

    def normalization(self) -> tuple[list[float], list[float]]:
        """Per-channel ``(offset, divisor)``: the network input is ``(uint8 - offset) / divisor``.

        That is ``(x / pixel_max - mean) / std``, computed so that the ends of the range come
        out exact (0 and 255 give exactly -1 and 1 for mean = std = 0.5).
        """
        channels = int(self.image_shape[0])
        mean = list(self.mean) or [0.0]
        std = list(self.std) or [1.0]
        mean = mean * channels if len(mean) == 1 else mean
        std = std * channels if len(std) == 1 else std
        return [m * self.pixel_max for m in mean], [s * self.pixel_max for s in std]

    def resolve_options(
        self, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], str]:
        """``(loader options with defaults filled in, augmentation text)``.

        Raises HyperparameterError for an unknown name or a value that does not fit its
        declared type (see :meth:`coerce_options`).
        """
        given = self.coerce_options(options or {})
        augmentation = given.pop("augmentation", self.augmentation)
        return {**self.options, **given}, augmentation

    def value_types(self) -> dict[str, ValueType]:
        """Each option's declared type (``augmentation`` included): its ``option_types`` entry,
        else its default's type."""
        types = _option_types(self.options, self.option_types)
        fixed = None if self.in_memory else self.augmentation
        types["augmentation"] = Augmentation(fixed=fixed, example=self.augmentation)
        return types

    def coerce_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` (text or typed values, ``augmentation`` included) converted to their
        declared types; only the names given come back.

        Raises HyperparameterError for an unknown name or a value that does not fit (naming
        the option, the data set and the accepted form).
        """
        owner = f"dataset {self.name!r}"
        types = self.value_types()
        for key in options:
            if key not in types:
                valid = sorted(types)
                raise HyperparameterError(
                    f"{owner} has no option {key!r}.{did_you_mean(key, valid)} "
                    f"Options: {', '.join(valid)}."
                )
        return {
            key: convert(value, types[key], option_label(owner, key))
            for key, value in options.items()
        }

    def _check_request(self, root: str | Path | None, split: str) -> None:

        if split not in self.splits:
            raise BenchbnnError(
                f"dataset {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}"
            )
        if self.needs_data_dir and root is None:
            raise BenchbnnError(
                f"dataset {self.name!r} needs a data directory: pass --data-dir DIR "
                f"(or root=...) pointing at a copy of it, or --download when online"
            )

    def read_tensors(
        self,
        root: str | Path | None = None,
        split: str = "train",
        download: bool = False,
        **options: Any,
    ):
        """The split as :class:`~benchbnn.data.tensors.ImageTensors` (``tensors`` data sets
        only)."""

        if not self.in_memory:
            raise BenchbnnError(f"dataset {self.name!r} is read through its loader, not as tensors")
        self._check_request(root, split)
        resolved, _ = self.resolve_options(options)
        assert self.tensors is not None  # in_memory means a tensors function
        data = self.tensors(root=root, split=split, download=download, **resolved)
        data.check(f"dataset {self.name!r} ({split})")
        return data

    def load(
        self,
        root: str | Path | None = None,
        split: str = "train",
        download: bool = False,
        augment: bool | None = None,
        **options: Any,
    ):
        """A torch ``Dataset`` of ``(CxHxW float tensor, int label)`` for ``split``.

        ``augment`` (default: true for the training split) applies the training augmentation
        to every item read; the host's batch pipeline does not use it for ``tensors`` data sets.
        """
        self._check_request(root, split)
        resolved, augmentation = self.resolve_options(options)
        if augment is None:
            augment = split == "train"
        if augmentation.strip().lower() in ("", "none"):
            augment = False
        if self.in_memory:
            data = self.read_tensors(root=root, split=split, download=download, **resolved)
            return data.as_dataset(self, augmentation if augment else "")
        assert self.loader is not None  # not in_memory means a loader
        return self.loader(root=root, split=split, download=download, augment=augment, **resolved)

    def validate(self) -> None:
        check_name(self.name, "dataset")
        owner = f"dataset {self.name!r}"
        if self.loader is None and self.tensors is None:
            raise PluginError(f"{owner}: give a loader or a tensors function")
        bad = set(self.options) & set(self.PIPELINE_OPTIONS)
        if bad:
            raise PluginError(f"{owner}: option names {sorted(bad)} are reserved for the pipeline")
        for role in ("loader", "tensors"):
            factory = getattr(self, role)
            if factory is None:
                continue
            if not callable(factory):
                raise PluginError(f"{owner}: {role} is not callable")
            accepted = _accepted_keywords(factory)
            needed = {"root", "split", "download", *self.options}
            if role == "loader" and not self.in_memory:
                needed.add("augment")
            if accepted is not None and needed - accepted:
                raise PluginError(f"{owner}: {role} does not accept {sorted(needed - accepted)}")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 2):
            raise PluginError(f"{owner}: num_classes must be an int >= 2")
        shape = tuple(self.image_shape)
        if len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise PluginError(f"{owner}: image_shape must be (C, H, W) positive ints")
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (0, 1, shape[0]):
                raise PluginError(
                    f"{owner}: {label} needs 1 or {shape[0]} values, got {len(values)}"
                )
        if any(not s > 0 for s in self.std) or not self.pixel_max > 0:
            raise PluginError(f"{owner}: std and pixel_max must be positive")
        if self.in_memory:
            try:
                parse_augmentation(self.augmentation)
            except ValueError as exc:
                raise PluginError(f"{owner}: {exc}") from None
        _validate_option_types(owner, self.options, self.option_types)


@dataclass(frozen=True)
class SuiteSpec:
    """A benchmark suite shipped by a plugin: a TOML file that ``benchbnn compare`` can run."""

    name: str
    path: Path
    description: str = ""

    def validate(self) -> None:
        check_name(self.name, "suite")
        if not Path(self.path).is_file():
            raise PluginError(f"suite {self.name!r}: file {self.path} does not exist")
