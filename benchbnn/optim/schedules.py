"""Hyperparameter schedules: how gamma, sigma, threshold, scaler or lr change over a run.

A schedule is written as data (in a config or suite file)::

    {schedule = "polynomial", start = 1e-5, end = 1e-8, power = 1.0}

or as a compact string (on the command line, in tracked parameters)::

    constant:V                           the same value throughout
    step:START:FACTOR:EVERY_EPOCHS       START x FACTOR^k after k whole periods (staircase)
    exponential:START:FACTOR:EVERY_EPOCHS the same decay, continuous in every step
    polynomial:START:END[:POWER]         START to END over the run (power 1, the default, is
                                         the paper's linear schedule; it may increase)
    cosine:START:END                     START to END along half a cosine

Schedules are evaluated per optimizer step: step 0 gives START and, for polynomial and cosine,
the last step (``total_steps - 1``) gives END. :func:`apply_schedules` writes the values into
every param group that has the hyperparameter, where the optimizer reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any, ClassVar

from benchbnn.core.errors import BenchbnnError, HyperparameterError, did_you_mean

FORMS = {
    "constant": "constant:V",
    "step": "step:START:FACTOR:EVERY_EPOCHS",
    "exponential": "exponential:START:FACTOR:EVERY_EPOCHS",
    "polynomial": "polynomial:START:END[:POWER]",
    "cosine": "cosine:START:END",
}
SYNTAX = (
    ", ".join(FORMS.values())
    + ', or the same as data such as {"schedule": "polynomial", "start": 1e-5, "end": 1e-8}'
)


class ScheduleError(BenchbnnError, ValueError):
    """A malformed or impossible schedule."""


@dataclass(frozen=True)
class Schedule:
    """A value as a function of the optimizer step. Subclasses are the schedule kinds."""

    kind: ClassVar[str] = ""
    #: Field names in the order of the compact string form.
    positional: ClassVar[tuple[str, ...]] = ()
    #: Trailing fields that the compact form may leave out (they have defaults).
    optional: ClassVar[int] = 0

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        """The value at optimizer step ``step`` (counted from 0)."""
        raise NotImplementedError

    def values(self) -> tuple[float, ...]:
        """Values the schedule passes through that must lie in the hyperparameter's range."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": self.kind, **asdict(self)}

    def describe(self) -> str:
        """The compact string form, e.g. ``polynomial:1e-05:1e-08`` (parses back equal)."""
        parts = [getattr(self, name) for name in self.positional]
        defaults = [f.default for f in fields(self)][-self.optional :] if self.optional else []
        while defaults and parts and parts[-1] == defaults[-1]:
            parts.pop()
            defaults.pop()
        return ":".join([self.kind, *(_format(p) for p in parts)])

    def __str__(self) -> str:
        return self.describe()

    def _check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ScheduleError(
                    f"{self.kind} schedule: {f.name} must be a number, got {value!r}. "
                    f"Accepted: {SYNTAX}"
                )
            if not math.isfinite(value):
                raise ScheduleError(f"{self.kind} schedule: {f.name} must be finite, got {value!r}")


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


@dataclass(frozen=True)
class Constant(Schedule):
    """The same value at every step."""

    value_: float
    kind: ClassVar[str] = "constant"
    positional: ClassVar[tuple[str, ...]] = ("value_",)

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        _check_position(step, steps_per_epoch, total_steps)
        return float(self.value_)

    def values(self) -> tuple[float, ...]:
        return (float(self.value_),)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": self.kind, "value": self.value_}


@dataclass(frozen=True)
class Step(Schedule):
    """``start * factor ** k`` after ``k`` whole periods of ``every_epochs`` epochs."""

    start: float
    factor: float
    every_epochs: float
    kind: ClassVar[str] = "step"
    positional: ClassVar[tuple[str, ...]] = ("start", "factor", "every_epochs")

    def _check(self) -> None:
        super()._check()
        if self.factor <= 0 or self.every_epochs <= 0:
            raise ScheduleError(
                f"{self.kind} schedule needs factor > 0 and every_epochs > 0, got factor="
                f"{self.factor}, every_epochs={self.every_epochs}"
            )

    def periods(self, step: int, steps_per_epoch: int) -> Fraction:
        """How many periods have passed at ``step``, exactly (no float rounding at edges)."""
        return Fraction(step, steps_per_epoch) / Fraction(self.every_epochs)

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        _check_position(step, steps_per_epoch, total_steps)
        return float(self.start * self.factor ** math.floor(self.periods(step, steps_per_epoch)))

    def values(self) -> tuple[float, ...]:
        return (float(self.start),)


@dataclass(frozen=True)
class Exponential(Step):
    """``start * factor ** (epochs / every_epochs)``: the step schedule without stairs."""

    kind: ClassVar[str] = "exponential"

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        _check_position(step, steps_per_epoch, total_steps)
        return float(self.start * self.factor ** float(self.periods(step, steps_per_epoch)))


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

    def _check(self) -> None:
        super()._check()
        if self.power <= 0:
            raise ScheduleError(f"polynomial schedule needs power > 0, got {self.power}")

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        _check_position(step, steps_per_epoch, total_steps)
        t = _progress(step, total_steps)
        if t <= 0.0 or t >= 1.0:
            return float(self.start if t <= 0.0 else self.end)
        return float(self.end + (self.start - self.end) * (1.0 - t) ** self.power)

    def values(self) -> tuple[float, ...]:
        return (float(self.start), float(self.end))


@dataclass(frozen=True)
class Cosine(Schedule):
    """From ``start`` to ``end`` along half a cosine (flat at both ends)."""

    start: float
    end: float
    kind: ClassVar[str] = "cosine"
    positional: ClassVar[tuple[str, ...]] = ("start", "end")

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        _check_position(step, steps_per_epoch, total_steps)
        t = _progress(step, total_steps)
        if t <= 0.0 or t >= 1.0:
            return float(self.start if t <= 0.0 else self.end)
        return float(self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * t)) / 2.0)

    def values(self) -> tuple[float, ...]:
        return (float(self.start), float(self.end))


KINDS: dict[str, type[Schedule]] = {
    cls.kind: cls for cls in (Constant, Step, Exponential, Polynomial, Cosine)
}


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
        names = [f.name.rstrip("_") for f in fields(cls)]
        raise ScheduleError(
            f"{cls.kind} schedule {source!r} takes {', '.join(names)}; accepted: {SYNTAX}"
        ) from None
    schedule._check()
    return schedule


def _parse_string(text: str) -> Schedule:
    kind, *parts = [p.strip() for p in text.strip().split(":")]
    if kind.lower() not in KINDS:
        return _build(kind, {}, text)
    cls = KINDS[kind.lower()]
    least = len(cls.positional) - cls.optional
    if not least <= len(parts) <= len(cls.positional):
        raise ScheduleError(
            f"schedule {text!r} should look like {FORMS[cls.kind]}; accepted: {SYNTAX}"
        )
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ScheduleError(
            f"schedule {text!r} has a value that is not a number; accepted: {SYNTAX}"
        ) from None
    return _build(kind, dict(zip(cls.positional, numbers)), text)


def _parse_mapping(data: Mapping[str, Any]) -> Schedule:
    data = dict(data)
    kind = data.pop("schedule", None)
    if kind is None:
        raise ScheduleError(f"schedule data {data!r} has no 'schedule' key; accepted: {SYNTAX}")
    source = {"schedule": kind, **data}
    for key, value in data.items():
        if isinstance(value, str):
            try:
                data[key] = float(value)
            except ValueError:
                raise ScheduleError(
                    f"schedule {kind!r}: {key} must be a number, got {value!r}"
                ) from None
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


def validate_schedules(spec: Any, schedules: Mapping[str, Any]) -> dict[str, Schedule]:
    """Parse ``schedules`` (name -> schedule) for the optimizer ``spec``; raise clear errors.

    Names must be real-valued hyperparameters of the optimizer, and the values a schedule
    starts and ends at must lie in the hyperparameter's valid range.
    """
    table = {h.name: h for h in spec.hparams}
    schedulable = sorted(name for name, h in table.items() if h.schedulable)
    parsed: dict[str, Schedule] = {}
    for name, raw in schedules.items():
        if name not in table:
            raise HyperparameterError(
                f"cannot schedule {name!r}: optimizer {spec.name!r} has no such hyperparameter."
                f"{did_you_mean(name, table)} Schedulable: {', '.join(schedulable) or 'none'}."
            )
        if not table[name].schedulable:
            raise HyperparameterError(
                f"cannot schedule {name!r} of optimizer {spec.name!r}: it is not a real number. "
                f"Schedulable: {', '.join(schedulable) or 'none'}."
            )
        schedule = parse_schedule(raw)
        for value in schedule.values():
            try:
                table[name].check_range(value, f"optimizer {spec.name!r}")
            except HyperparameterError as exc:
                raise HyperparameterError(
                    f"schedule {schedule.describe()} for {name!r}: {exc}"
                ) from None
        parsed[name] = schedule
    return parsed


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
