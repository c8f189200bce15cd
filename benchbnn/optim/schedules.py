"""Hyperparameter schedules: how a real-valued hyperparameter (a rate, a threshold, a learning
rate, a clipping bound) changes over a run.

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

Every value a schedule takes during a run must lie in the hyperparameter's valid range
(:attr:`benchbnn.core.specs.HParam.valid_range`). :func:`validate_schedules` checks this with
what is known: the values a schedule declares (START, END) always; with the run's epochs, the
value at the start of every epoch (the same for any number of steps per epoch); with the steps
per epoch too, every step, naming the first one outside. Every kind is monotone in the step, so
the values of a run lie between those of its first and last steps and the steps outside the
range, if any, follow those inside: a binary search finds the first one exactly from a few
evaluations of the same :meth:`Schedule.value` the run uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any, ClassVar

from benchbnn.core.errors import BenchbnnError, HyperparameterError, did_you_mean
from benchbnn.core.specs import HParam, ValueRange

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
    #: True when the value depends only on the epochs elapsed (``step / steps_per_epoch``), not
    #: on the run's length: the start of every epoch then has the same value for any batch count.
    by_epoch: ClassVar[bool] = True

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        """The value at optimizer step ``step`` (counted from 0)."""
        raise NotImplementedError

    def values(self) -> tuple[float, ...]:
        """Values the schedule declares (START, END), in range whatever the run's length."""
        raise NotImplementedError

    def first_outside(
        self, valid: ValueRange, steps_per_epoch: int, total_steps: int
    ) -> int | None:
        """The first step (from 0) of a run whose value lies outside ``valid``, or None.

        Exact and cheap: every kind is monotone in the step, so the steps inside the range come
        first (when step 0 is inside) and a binary search over ``[0, total_steps)`` finds the
        first step outside with about ``log2(total_steps)`` evaluations of :meth:`value`.
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


def _scaled(start: float, factor: float, exponent: float) -> float:
    """``start * factor ** exponent``; an infinity of START's sign where that overflows.

    The infinity lies outside every valid range, so a schedule that grows past the float range
    within a run is refused instead of raising OverflowError mid-run.
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
        return _scaled(self.start, self.factor, math.floor(self.periods(step, steps_per_epoch)))

    def values(self) -> tuple[float, ...]:
        return (float(self.start),)


@dataclass(frozen=True)
class Exponential(Step):
    """``start * factor ** (epochs / every_epochs)``: the step schedule without stairs."""

    kind: ClassVar[str] = "exponential"

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        _check_position(step, steps_per_epoch, total_steps)
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
    by_epoch: ClassVar[bool] = False

    def _check(self) -> None:
        super()._check()
        if self.power <= 0:
            raise ScheduleError(f"polynomial schedule needs power > 0, got {self.power}")

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        _check_position(step, steps_per_epoch, total_steps)
        t = _progress(step, total_steps)
        if t <= 0.0 or t >= 1.0:
            return float(self.start if t <= 0.0 else self.end)
        value = self.end + (self.start - self.end) * (1.0 - t) ** self.power
        return float(_between(value, self.start, self.end))

    def values(self) -> tuple[float, ...]:
        return (float(self.start), float(self.end))


@dataclass(frozen=True)
class Cosine(Schedule):
    """From ``start`` to ``end`` along half a cosine (flat at both ends)."""

    start: float
    end: float
    kind: ClassVar[str] = "cosine"
    positional: ClassVar[tuple[str, ...]] = ("start", "end")
    by_epoch: ClassVar[bool] = False

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        _check_position(step, steps_per_epoch, total_steps)
        t = _progress(step, total_steps)
        if t <= 0.0 or t >= 1.0:
            return float(self.start if t <= 0.0 else self.end)
        value = self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * t)) / 2.0
        return float(_between(value, self.start, self.end))

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


def validate_schedules(
    spec: Any,
    schedules: Mapping[str, Any],
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
) -> dict[str, Schedule]:
    """Parse ``schedules`` (name -> schedule) for the optimizer ``spec``; raise clear errors.

    Names must be schedulable hyperparameters of the optimizer (real-valued, not ``static``),
    and every value a schedule takes must lie in the hyperparameter's valid range, checked with
    what is known of the run (see :func:`check_schedule_range`): ``epochs`` (its length in
    epochs) and ``steps_per_epoch`` (optimizer steps per epoch, known once the data are).
    Raises HyperparameterError (or ScheduleError for a malformed schedule).
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
