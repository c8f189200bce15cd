"""Hyperparameter schedules: how a real-valued hyperparameter (a rate, a threshold, a learning
rate, a clipping bound) changes over a run.

A schedule is written as data (in a config or suite file)::

    {schedule = "polynomial", start = 1e-5, end = 1e-8, power = 1.0}

or as a compact string (on the command line, in tracked parameters)::

    constant:V                           the same value throughout
    step:START:FACTOR:EVERY              START x FACTOR^k after k whole periods (staircase)
    exponential:START:FACTOR:EVERY       the same decay, continuous in every step
    polynomial:START:END[:POWER]         START to END over the run (power 1, the default, is
                                         the paper's linear schedule; it may increase)
    cosine:START:END                     START to END along half a cosine

EVERY counts epochs (``10`` or ``10ep``) or optimizer steps, which papers call iterations
(``30000it``); a bare number means epochs, as it always has. In data, ``every_epochs = 10`` or
``every_steps = 30000`` (or ``every = 30000, unit = "steps"``). Every kind takes bounds, ``:min=V``
and ``:max=V`` at the end of the compact form (``min = V``, ``max = V`` in data): each value is
clamped into them, e.g. ``exponential:1:1.01:100it:max=1e35`` grows by 1% every 100 steps up
to 1e35.

Schedules are evaluated per optimizer step: step 0 gives START and, for polynomial and cosine,
the last step (``total_steps - 1``) gives END. :func:`apply_schedules` writes the values into
every param group that has the hyperparameter, where the optimizer reads them.

Every value a schedule takes during a run must lie in the hyperparameter's valid range
(:attr:`benchbnn.core.specs.HParam.valid_range`). :func:`validate_schedules` checks this with
what is known: the values a schedule declares (START, END) always; with the run's epochs, the
value at the start of every epoch (the same for any number of steps per epoch); with the steps
per epoch too, every step, naming the first one outside. Every kind is monotone in the step, so
the values of a run lie between those of its first and last steps and the steps outside the
range, if any, follow those inside: a binary search finds the first one exactly from a few
evaluations of the same :meth:`Schedule.value` the run uses. Bounds keep this true (clamping is
monotone), and so does a period counted in steps.

An optimizer may declare default schedules (``default_schedules`` on its class, see
:class:`benchbnn.core.specs.OptimizerSpec`): :func:`validate_schedules` adds them for every
hyperparameter the run gives no schedule for (:func:`effective_schedules`), so the engine follows
them; :func:`default_schedule_data` checks them when the plugin loads (this module installs it
with :func:`benchbnn.core.specs.register_schedule_reader` when imported).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from typing import Any, ClassVar

from benchbnn.core.config import refuse_overwritten_values
from benchbnn.core.errors import BenchbnnError, HyperparameterError, PluginError, did_you_mean
from benchbnn.core.specs import HParam, ValueRange, register_schedule_reader

FORMS = {
    "constant": "constant:V",
    "step": "step:START:FACTOR:EVERY[ep|it]",
    "exponential": "exponential:START:FACTOR:EVERY[ep|it]",
    "polynomial": "polynomial:START:END[:POWER]",
    "cosine": "cosine:START:END",
}
SYNTAX = (
    ", ".join(FORMS.values())
    + " (each optionally ending in :min=V and/or :max=V)"
    + ', or the same as data such as {"schedule": "polynomial", "start": 1e-5, "end": 1e-8}'
)


class ScheduleError(BenchbnnError, ValueError):
    """A malformed or impossible schedule."""


@dataclass(frozen=True)
class Schedule:
    """A value as a function of the optimizer step. Subclasses are the schedule kinds.

    Every kind takes optional bounds, ``lower`` and ``upper`` (``min``/``max`` in the data and
    compact forms): each value is clamped into ``[lower, upper]`` after the kind computes it,
    e.g. MD-tanh's inverse temperature that grows x1.01 every 100 iterations up to a cap
    (Ajanthan et al., "Mirror Descent View for Neural Network Quantization", AISTATS 2021).
    Clamping is monotone, so a bounded schedule stays monotone in the step.
    """

    kind: ClassVar[str] = ""
    #: Field names in the order of the compact string form.
    positional: ClassVar[tuple[str, ...]] = ()
    #: Trailing fields that the compact form may leave out (they have defaults).
    optional: ClassVar[int] = 0
    #: True when the value depends only on the epochs elapsed (``step / steps_per_epoch``), not
    #: on the run's length: the start of every epoch then has the same value for any batch count.
    epoch_based: ClassVar[bool] = True

    lower: float | None = field(default=None, kw_only=True)
    upper: float | None = field(default=None, kw_only=True)

    @property
    def by_epoch(self) -> bool:
        """True when the value at the start of every epoch is the same for any batch count."""
        return self.epoch_based

    def raw_value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        """The kind's value at ``step`` before the bounds clamp it."""
        raise NotImplementedError

    def raw_values(self) -> tuple[float, ...]:
        """The values the kind declares (START, END) before the bounds clamp them."""
        raise NotImplementedError

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        """The value at optimizer step ``step`` (counted from 0), clamped into the bounds.

        Raises ScheduleError for ``step < 0``, ``steps_per_epoch < 1`` or ``total_steps < 1``.
        """
        _check_position(step, steps_per_epoch, total_steps)
        return self.clamp(self.raw_value(step, steps_per_epoch, total_steps))

    def values(self) -> tuple[float, ...]:
        """Values the schedule declares (START, END, clamped into the bounds): in range
        whatever the run's length."""
        return tuple(self.clamp(v) for v in self.raw_values())

    def clamp(self, value: float) -> float:
        """``value`` clamped into ``[lower, upper]`` (an end that is None does not bound)."""
        if self.upper is not None and value > self.upper:
            value = float(self.upper)
        if self.lower is not None and value < self.lower:
            value = float(self.lower)
        return float(value)

    def first_outside(
        self, valid: ValueRange, steps_per_epoch: int, total_steps: int
    ) -> int | None:
        """The first step (from 0) of a run whose value lies outside ``valid``, or None.

        Exact and cheap: every kind is monotone in the step (and so is clamping into the
        bounds), so the steps inside the range come first (when step 0 is inside) and a binary
        search over ``[0, total_steps)`` finds the first step outside with about
        ``log2(total_steps)`` evaluations of :meth:`value`.
        Raises ScheduleError for ``steps_per_epoch < 1`` or ``total_steps < 1``.
        """
        _check_position(0, steps_per_epoch, total_steps)

        def outside(step: int) -> bool:
            return self.value(step, steps_per_epoch, total_steps) not in valid

        if outside(0):
            return 0
        inside, out = 0, total_steps - 1
        if not outside(out):
            return None
        while out - inside > 1:
            middle = (inside + out) // 2
            if outside(middle):
                out = middle
            else:
                inside = middle
        return out

    def numbers(self) -> dict[str, float]:
        """The kind's numeric fields by their data names (bounds left out)."""
        return {name: getattr(self, name) for name in self.positional}

    def bounds(self) -> dict[str, float]:
        """The bounds that are set, as data: ``{"min": .., "max": ..}`` (either may be absent)."""
        found = {"min": self.lower, "max": self.upper}
        return {k: v for k, v in found.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        """The data form. Bounds appear only when set, so a schedule without bounds has the
        same data (and runs the same configuration hash) as before bounds existed."""
        return {"schedule": self.kind, **self.numbers(), **self.bounds()}

    def describe(self) -> str:
        """The compact string form, e.g. ``polynomial:1e-05:1e-08`` (parses back equal)."""
        parts = [v if isinstance(v, str) else _format(v) for v in self._compact_parts()]
        parts += [f"{k}={_format(v)}" for k, v in self.bounds().items()]
        return ":".join([self.kind, *parts])

    def _compact_parts(self) -> list[Any]:
        """The compact form's fields in order (numbers, or text written as it is)."""
        parts = [getattr(self, name) for name in self.positional]
        defaults = [f.default for f in fields(self)][-self.optional :] if self.optional else []
        while defaults and parts and parts[-1] == defaults[-1]:
            parts.pop()
            defaults.pop()
        return parts

    def scaled(self, ratio: float) -> Schedule:
        """The same schedule with every value multiplied by ``ratio`` > 0: START, END (a
        constant's value) and the bounds; a periodic kind keeps its FACTOR and period.

        This is how tuning moves a scheduled hyperparameter: the sampled value becomes START
        and the schedule keeps its shape. Raises ScheduleError for a ratio that is not a
        positive finite number.
        """
        if isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and ratio > 0):
            raise ScheduleError(f"a schedule is scaled by a positive number, got {ratio!r}")
        if not math.isfinite(ratio):
            raise ScheduleError(f"a schedule is scaled by a finite number, got {ratio!r}")
        changes = {name: getattr(self, name) * ratio for name in self.scaled_fields()}
        changes.update(
            {
                b: getattr(self, b) * ratio
                for b in ("lower", "upper")
                if getattr(self, b) is not None
            }
        )
        return replace(self, **changes)

    def scaled_fields(self) -> tuple[str, ...]:
        """Fields :meth:`scaled` multiplies (the values, not the shape)."""
        return ("start", "end")

    def starting_at(self, value: float) -> Schedule:
        """The schedule :meth:`scaled` so that it starts at ``value`` (exactly).

        Raises ScheduleError when the schedule starts at 0 or ``value`` and START differ in
        sign (no positive ratio maps one onto the other).
        """
        start = self.raw_values()[0]
        if start == 0 or value == 0 or (start < 0) != (value < 0):
            raise ScheduleError(
                f"schedule {self.describe()} cannot be moved to start at {value!r}: it starts "
                f"at {start!r}, and only a positive ratio keeps its shape"
            )
        moved = self.scaled(value / start)
        return replace(moved, **{self.scaled_fields()[0]: float(value)})

    def __str__(self) -> str:
        return self.describe()

    def _check(self) -> None:
        for name in self.positional:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ScheduleError(
                    f"{self.kind} schedule: {name.rstrip('_')} must be a number, got {value!r}. "
                    f"Accepted: {SYNTAX}"
                )
            if not math.isfinite(value):
                raise ScheduleError(f"{self.kind} schedule: {name} must be finite, got {value!r}")
        self._check_bounds()

    def _check_bounds(self) -> None:
        for label, value in (("min", self.lower), ("max", self.upper)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ScheduleError(
                    f"{self.kind} schedule: {label} must be a number, got {value!r}"
                )
            if not math.isfinite(value):
                raise ScheduleError(f"{self.kind} schedule: {label} must be finite, got {value!r}")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ScheduleError(
                f"{self.kind} schedule: min {self.lower!r} is above max {self.upper!r}; swap them "
                f"(values are clamped into [min, max])"
            )


def _format(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e6:
        return repr(int(value))
    return repr(float(value))


def _check_position(step: int, steps_per_epoch: int, total_steps: int) -> None:
    if steps_per_epoch < 1 or total_steps < 1 or step < 0:
        raise ScheduleError(
            f"schedules need step >= 0, steps_per_epoch >= 1 and total_steps >= 1; got "
            f"step={step}, steps_per_epoch={steps_per_epoch}, total_steps={total_steps}"
        )


def _progress(step: int, total_steps: int) -> float:
    """0 at the first step, 1 at the last (``total_steps - 1``) and after it.

    A run of a single step stays at 0: its only step is the first one.
    """
    if total_steps <= 1:
        return 0.0
    return min(step / (total_steps - 1), 1.0)


def _scaled(start: float, factor: float, exponent: float) -> float:
    """``start * factor ** exponent``; an infinity of START's sign where that overflows.

    The infinity lies outside every valid range, so a schedule that grows past the float range
    within a run is refused instead of raising OverflowError mid-run (unless a bound caps it).
    """
    if start == 0:
        return float(start)
    try:
        return float(start * factor**exponent)
    except OverflowError:
        return math.copysign(math.inf, start)


def _between(value: float, start: float, end: float) -> float:
    """``value`` kept between ``start`` and ``end``, where float rounding may overshoot by an
    ulp: a schedule whose ends lie in a range then never leaves it."""
    return min(max(value, min(start, end)), max(start, end))


@dataclass(frozen=True)
class Constant(Schedule):
    """The same value at every step."""

    value_: float
    kind: ClassVar[str] = "constant"
    positional: ClassVar[tuple[str, ...]] = ("value_",)

    def raw_value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        return float(self.value_)

    def raw_values(self) -> tuple[float, ...]:
        return (float(self.value_),)

    def numbers(self) -> dict[str, float]:
        return {"value": self.value_}

    def scaled_fields(self) -> tuple[str, ...]:
        return ("value_",)


#: Units a periodic schedule's EVERY counts, by the names data may give them; the compact form
#: writes ``10`` or ``10ep`` for epochs and ``30000it`` for optimizer steps (iterations).
UNITS = {"epochs": "epochs", "ep": "epochs", "steps": "steps", "it": "steps"}
#: The suffix of each unit in the compact form (epochs need none).
UNIT_SUFFIX = {"epochs": "", "steps": "it"}


@dataclass(frozen=True)
class Step(Schedule):
    """``start * factor ** k`` after ``k`` whole periods of ``every`` epochs or optimizer steps.

    ``unit`` says what EVERY counts: ``"epochs"`` (the default, and the meaning of every
    schedule written before units existed) or ``"steps"`` (optimizer steps, what papers call
    iterations: MD-tanh multiplies its inverse temperature by 1.01 every 100 iterations). A
    count of steps makes the schedule depend on the batch count, not only on the epochs.
    """

    start: float
    factor: float
    every: float
    unit: str = "epochs"
    kind: ClassVar[str] = "step"
    positional: ClassVar[tuple[str, ...]] = ("start", "factor", "every")

    @property
    def by_epoch(self) -> bool:
        return self.unit == "epochs"

    def _check(self) -> None:
        super()._check()
        if self.unit not in UNIT_SUFFIX:
            raise ScheduleError(
                f"{self.kind} schedule: unknown unit {self.unit!r}; EVERY counts epochs or steps "
                f'(unit = "epochs" or "steps" in data, 10 or 10ep / 30000it in the compact form)'
            )
        if self.factor <= 0 or self.every <= 0:
            raise ScheduleError(
                f"{self.kind} schedule needs factor > 0 and every > 0, got factor="
                f"{self.factor}, every={self.every} {self.unit}"
            )

    def periods(self, step: int, steps_per_epoch: int) -> Fraction:
        """How many periods have passed at ``step``, exactly (no float rounding at edges)."""
        if self.unit == "steps":
            return Fraction(step) / Fraction(self.every)
        return Fraction(step, steps_per_epoch) / Fraction(self.every)

    def raw_value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        return _scaled(self.start, self.factor, math.floor(self.periods(step, steps_per_epoch)))

    def raw_values(self) -> tuple[float, ...]:
        return (float(self.start),)

    def numbers(self) -> dict[str, float]:
        every = "every_steps" if self.unit == "steps" else "every_epochs"
        return {"start": self.start, "factor": self.factor, every: self.every}

    def _compact_parts(self) -> list[Any]:
        every = f"{_format(self.every)}{UNIT_SUFFIX[self.unit]}"
        return [self.start, self.factor, every]

    def scaled_fields(self) -> tuple[str, ...]:
        return ("start",)


@dataclass(frozen=True)
class Exponential(Step):
    """``start * factor ** (periods elapsed)``: the step schedule without stairs."""

    kind: ClassVar[str] = "exponential"

    def raw_value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        return _scaled(self.start, self.factor, float(self.periods(step, steps_per_epoch)))


@dataclass(frozen=True)
class Polynomial(Schedule):
    """From ``start`` at the first step to ``end`` at the last, as Keras's PolynomialDecay:

    ``end + (start - end) * (1 - t) ** power`` with ``t`` going from 0 to 1 over the run.
    Power 1 is a straight line (the paper's schedules); it may increase or decrease.
    """

    start: float
    end: float
    power: float = 1.0
    kind: ClassVar[str] = "polynomial"
    positional: ClassVar[tuple[str, ...]] = ("start", "end", "power")
    optional: ClassVar[int] = 1
    epoch_based: ClassVar[bool] = False

    def _check(self) -> None:
        super()._check()
        if self.power <= 0:
            raise ScheduleError(f"polynomial schedule needs power > 0, got {self.power}")

    def raw_value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        t = _progress(step, total_steps)
        if t <= 0.0 or t >= 1.0:
            return float(self.start if t <= 0.0 else self.end)
        value = self.end + (self.start - self.end) * (1.0 - t) ** self.power
        return float(_between(value, self.start, self.end))

    def raw_values(self) -> tuple[float, ...]:
        return (float(self.start), float(self.end))


@dataclass(frozen=True)
class Cosine(Schedule):
    """From ``start`` to ``end`` along half a cosine (flat at both ends)."""

    start: float
    end: float
    kind: ClassVar[str] = "cosine"
    positional: ClassVar[tuple[str, ...]] = ("start", "end")
    epoch_based: ClassVar[bool] = False

    def raw_value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        t = _progress(step, total_steps)
        if t <= 0.0 or t >= 1.0:
            return float(self.start if t <= 0.0 else self.end)
        value = self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * t)) / 2.0
        return float(_between(value, self.start, self.end))

    def raw_values(self) -> tuple[float, ...]:
        return (float(self.start), float(self.end))


KINDS: dict[str, type[Schedule]] = {
    cls.kind: cls for cls in (Constant, Step, Exponential, Polynomial, Cosine)
}
#: Keys every kind takes in the data and compact forms besides its own numbers: the bounds.
BOUND_KEYS = {"min": "lower", "max": "upper"}


def _build(kind: Any, arguments: dict[str, Any], source: Any) -> Schedule:
    if not isinstance(kind, str) or kind.lower() not in KINDS:
        raise ScheduleError(
            f"unknown schedule {kind!r} in {source!r}.{did_you_mean(str(kind), KINDS)} "
            f"Accepted: {SYNTAX}"
        )
    cls = KINDS[kind.lower()]
    try:
        schedule = cls(**arguments)
    except TypeError:
        names = [*(n.rstrip("_") for n in cls.positional), *BOUND_KEYS]
        if issubclass(cls, Step):
            names = ["start", "factor", "every_epochs or every_steps", *BOUND_KEYS]
        raise ScheduleError(
            f"{cls.kind} schedule {source!r} takes {', '.join(names)}; accepted: {SYNTAX}"
        ) from None
    schedule._check()
    return schedule


def _parse_every(token: str, text: str) -> tuple[float, str]:
    """``"10"``/``"10ep"`` -> ``(10.0, "epochs")``; ``"30000it"`` -> ``(30000.0, "steps")``.

    Raises ScheduleError for an unknown unit suffix or a count that is not a number.
    """
    number = token.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    suffix = token[len(number) :].lower()
    if suffix and (number.endswith(("e", "E")) or suffix not in ("ep", "it")):
        raise ScheduleError(
            f"schedule {text!r}: unknown unit {suffix!r} in EVERY {token!r}; write a number of "
            f"epochs (10 or 10ep) or of optimizer steps (30000it)"
        )
    try:
        return float(number), UNITS[suffix or "epochs"]
    except ValueError:
        raise ScheduleError(
            f"schedule {text!r}: EVERY {token!r} is not a number of epochs (10, 10ep) or of "
            f"optimizer steps (30000it)"
        ) from None


def _number(text: str, what: str, source: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ScheduleError(
            f"schedule {source!r}: {what} {text!r} is not a number; accepted: {SYNTAX}"
        ) from None


def _parse_string(text: str) -> Schedule:
    kind, *parts = [p.strip() for p in text.strip().split(":")]
    if kind.lower() not in KINDS:
        return _build(kind, {}, text)
    cls = KINDS[kind.lower()]
    first_named = next((i for i, p in enumerate(parts) if "=" in p), len(parts))
    named, parts = parts[first_named:], parts[:first_named]
    least = len(cls.positional) - cls.optional
    if not least <= len(parts) <= len(cls.positional) or any("=" not in p for p in named):
        raise ScheduleError(
            f"schedule {text!r} should look like {FORMS[cls.kind]}[:min=V][:max=V]; "
            f"accepted: {SYNTAX}"
        )
    arguments: dict[str, Any] = {}
    for name, part in zip(cls.positional, parts):
        if issubclass(cls, Step) and name == "every":
            arguments["every"], arguments["unit"] = _parse_every(part, text)
        else:
            arguments[name] = _number(part, name.rstrip("_").upper(), text)
    for part in named:
        key, _, value = (s.strip() for s in part.partition("="))
        if key.lower() not in BOUND_KEYS:
            raise ScheduleError(
                f"schedule {text!r}: unknown option {key!r}; a schedule takes min=V and max=V"
            )
        arguments[BOUND_KEYS[key.lower()]] = _number(value, key, text)
    return _build(kind, arguments, text)


def _step_arguments(data: dict[str, Any], kind: Any) -> None:
    """Turn a periodic schedule's ``every_epochs``, ``every_steps`` or ``every`` + ``unit``
    into the ``every`` and ``unit`` fields, in place. Raises ScheduleError when they clash."""
    given = [k for k in ("every_epochs", "every_steps", "every") if k in data]
    if len(given) > 1:
        raise ScheduleError(
            f"schedule {kind!r}: give one of every_epochs, every_steps or every (+ unit), "
            f"not {' and '.join(given)}"
        )
    unit = data.pop("unit", None)
    if unit is not None and (not isinstance(unit, str) or unit.lower() not in UNITS):
        raise ScheduleError(
            f"schedule {kind!r}: unknown unit {unit!r}; EVERY counts epochs or steps "
            f'(unit = "epochs" or "steps")'
        )
    if "every_epochs" in data or "every_steps" in data:
        key = given[0]
        implied = "epochs" if key == "every_epochs" else "steps"
        if unit is not None and UNITS[unit.lower()] != implied:
            raise ScheduleError(f"schedule {kind!r}: {key} contradicts unit = {unit!r}")
        data["every"], data["unit"] = data.pop(key), implied
    elif unit is not None:
        data["unit"] = UNITS[unit.lower()]


def _parse_mapping(data: Mapping[str, Any]) -> Schedule:
    data = dict(data)
    kind = data.pop("schedule", None)
    if kind is None:
        raise ScheduleError(f"schedule data {data!r} has no 'schedule' key; accepted: {SYNTAX}")
    source = {"schedule": kind, **data}
    for key, value in data.items():
        if isinstance(value, str) and key != "unit":
            try:
                data[key] = float(value)
            except ValueError:
                raise ScheduleError(
                    f"schedule {kind!r}: {key} must be a number, got {value!r}"
                ) from None
    for key, name in BOUND_KEYS.items():
        if key in data:
            data[name] = data.pop(key)
    if isinstance(kind, str) and kind.lower() in ("step", "exponential"):
        _step_arguments(data, kind)
    if isinstance(kind, str) and kind.lower() == "constant" and "value" in data:
        data["value_"] = data.pop("value")
    return _build(kind, data, source)


def parse_schedule(obj: Any) -> Schedule:
    """A :class:`Schedule` from data, a compact string, a number (constant) or a Schedule."""
    if isinstance(obj, Schedule):
        return obj
    if isinstance(obj, Mapping):
        return _parse_mapping(obj)
    if isinstance(obj, str):
        return _parse_string(obj)
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return _build("constant", {"value_": float(obj)}, obj)
    raise ScheduleError(f"cannot read a schedule from {obj!r}; accepted: {SYNTAX}")


def validate_schedules(
    spec: Any,
    schedules: Mapping[str, Any],
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    defaults: bool = True,
    hparams: Mapping[str, Any] | None = None,
) -> dict[str, Schedule]:
    """Parse ``schedules`` (name -> schedule) for the optimizer ``spec``; raise clear errors.

    With ``defaults`` (the default) the optimizer's default schedules
    (``spec.default_schedules``, declared by its class) come in for every hyperparameter that
    ``schedules`` does not name: :func:`effective_schedules`. Names must be schedulable
    hyperparameters of the optimizer (real-valued, not ``static``), and every value a schedule
    takes must lie in the hyperparameter's valid range, checked with what is known of the run
    (see :func:`check_schedule_range`): ``epochs`` (its length in epochs) and
    ``steps_per_epoch`` (optimizer steps per epoch, known once the data are). ``hparams``
    (the values the configuration gives) refuses a value that a default schedule would
    overwrite (:func:`benchbnn.core.config.refuse_overwritten_values`).
    Raises HyperparameterError (or ScheduleError for a malformed schedule).
    """
    if defaults and hparams is not None:
        declared = getattr(spec, "default_schedules", None) or {}
        refuse_overwritten_values(spec.name, declared, hparams, schedules)
    table = {h.name: h for h in spec.hparams}
    schedulable = sorted(name for name, h in table.items() if h.schedulable)
    parsed: dict[str, Schedule] = {}
    wanted = effective_schedules(spec, schedules) if defaults else dict(schedules)
    for name, raw in wanted.items():
        if name not in table:
            raise HyperparameterError(
                f"cannot schedule {name!r}: optimizer {spec.name!r} has no such hyperparameter."
                f"{did_you_mean(name, table)} Schedulable: {', '.join(schedulable) or 'none'}."
            )
        if not table[name].schedulable:
            why = "it is declared static" if table[name].static else "it is not a real number"
            raise HyperparameterError(
                f"cannot schedule {name!r} of optimizer {spec.name!r}: {why}. "
                f"Schedulable: {', '.join(schedulable) or 'none'}."
            )
        schedule = parse_schedule(raw)
        check_schedule_range(
            schedule, table[name], f"optimizer {spec.name!r}", epochs, steps_per_epoch
        )
        parsed[name] = schedule
    return parsed


def effective_schedules(spec: Any, schedules: Mapping[str, Any]) -> dict[str, Any]:
    """``schedules`` with the optimizer's default schedules for the names it does not give.

    The defaults come first (in their declared order), then the schedules given; a schedule
    given for a hyperparameter replaces its default (``constant:V`` holds it at V). An
    optimizer without default schedules gets ``schedules`` back unchanged.
    """
    declared = getattr(spec, "default_schedules", None) or {}
    return {
        **{k: v for k, v in declared.items() if k not in schedules},
        **schedules,
    }


def default_schedule_data(owner: str, hparams: Any, declared: Mapping[str, Any]) -> dict:
    """The default schedules an optimizer declares, parsed and written as data.

    Checked as a plugin loads (:meth:`benchbnn.core.specs.OptimizerSpec.validate` calls this
    through :func:`benchbnn.core.specs.register_schedule_reader`): every name is a schedulable
    hyperparameter and every value the schedule declares (START, END, within its bounds) lies in
    the hyperparameter's valid range. Raises PluginError naming ``owner`` and the fix.
    """
    table = {h.name: h for h in hparams}
    data: dict[str, dict[str, Any]] = {}
    for name, raw in declared.items():
        hparam = table.get(name)
        if hparam is None or not hparam.schedulable:
            why = "is not one of its hyperparameters" if hparam is None else "cannot be scheduled"
            raise PluginError(
                f"{owner}: default_schedules names {name!r}, which {why}; schedulable: "
                f"{', '.join(sorted(h.name for h in table.values() if h.schedulable)) or 'none'}"
            )
        try:
            schedule = parse_schedule(raw)
            check_schedule_range(schedule, hparam, owner)
        except BenchbnnError as exc:
            raise PluginError(f"{owner}: default schedule of {name!r}: {exc}") from None
        data[name] = schedule.to_dict()
    return data


register_schedule_reader(default_schedule_data)


def check_schedule_range(
    schedule: Schedule,
    hparam: HParam,
    owner: str,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
) -> None:
    """Raise HyperparameterError where ``schedule`` takes a value outside ``hparam``'s range.

    With ``epochs`` and ``steps_per_epoch`` every step of the run is checked and the message
    names the first step outside (exactly). With ``epochs`` alone, the values every run of that
    many epochs takes whatever its batch count: the start of each epoch for kinds that follow
    the epochs (constant, step, exponential). In every case the values the schedule declares
    (START, END) must lie in the range. The message is one line: the schedule, the
    hyperparameter and ``owner`` (e.g. ``"optimizer 'bop'"``), the range, where, the value.
    """
    valid = hparam.valid_range
    found = _departure(schedule, valid, epochs, steps_per_epoch)
    if found is not None:
        where, value = found
        raise HyperparameterError(
            f"schedule {schedule.describe()} for {hparam.name!r} of {owner} is outside its "
            f"valid range {valid} {where}: {hparam.name} = {value!r}"
        )


def _departure(
    schedule: Schedule, valid: ValueRange, epochs: int | None, steps_per_epoch: int | None
) -> tuple[str, float] | None:
    """``(where, value)`` of the first point known to lie outside ``valid``, or None."""
    if epochs is not None and steps_per_epoch is not None:
        total = epochs * steps_per_epoch
        step = schedule.first_outside(valid, steps_per_epoch, total)
        if step is None:
            return None
        epoch, batch = divmod(step, steps_per_epoch)
        where = (
            f"from step {step + 1} of {total} (epoch {epoch + 1} of {epochs}, "
            f"batch {batch + 1} of {steps_per_epoch})"
        )
        return where, schedule.value(step, steps_per_epoch, total)
    if epochs is not None and schedule.by_epoch:
        step = schedule.first_outside(valid, 1, epochs)
        if step is not None:
            return f"at the start of epoch {step + 1} of {epochs}", schedule.value(step, 1, epochs)
    for label, value in zip(("start", "end"), schedule.values()):
        if value not in valid:
            return f"at its {label}", value
    return None


def apply_schedules(
    optimizer: Any,
    schedules: Mapping[str, Schedule],
    step: int,
    steps_per_epoch: int,
    total_steps: int,
) -> dict[str, float]:
    """Set ``group[name]`` to each schedule's value at ``step`` in every group that has ``name``.

    Returns the values that were set (handy for logging).
    """
    values: dict[str, float] = {}
    for name, schedule in schedules.items():
        value = parse_schedule(schedule).value(step, steps_per_epoch, total_steps)
        groups = [g for g in optimizer.param_groups if name in g]
        if not groups:
            raise HyperparameterError(
                f"cannot schedule {name!r}: no param group of {type(optimizer).__name__} has it"
            )
        for group in groups:
            group[name] = value
        values[name] = value
    return values
