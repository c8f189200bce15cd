"""Values of a declared type: the one converter behind every option and hyperparameter.

Every option of an architecture or data set and every optimizer hyperparameter has a declared
type: the type of its default (``1.0`` is a number, ``True`` a flag, ``(512, 512)`` a list of
whole numbers, ``"batch"`` text), or a :class:`ValueType` that its plugin declares (a
:class:`Choice` among strings, a :class:`Number` with bounds, a :class:`Nullable` value).
:func:`convert` turns a value into its declared type:

* text (``--set``, ``--arch-option``, ``--dataset-option``, ``benchbnn describe --set``) is read
  by the declared type, never guessed first into None or a number: ``none`` is the text "none"
  for a text option, and None only for a :class:`Nullable` one;
* values that arrive typed (suite tables from TOML, JSON, Python calls) are checked and
  converted the same way, so ``--set lr=1e-3`` and ``lr = 1e-3`` give the same value.

A value that does not fit raises :class:`~benchbnn.core.errors.HyperparameterError`. Its message
names the option with its owner (the label, e.g. ``architecture 'binarynet': option 'norm'``),
the bad value and the accepted form, and ends with ``; accepted: ...``, in which every value
offered is single-quoted (``; accepted: 'batch', 'layer'``). :func:`offered_values` reads them
back; each of them is accepted by the same declared type.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchbnn.core.errors import HyperparameterError, PluginError

#: What ends every conversion error; the single-quoted values after it are the values offered.
ACCEPTED = "; accepted: "

TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
NONE_WORDS = ("none", "null", "")
#: The ends of a 64-bit signed integer: no whole number read beyond them (torch and numpy
#: overflow past them).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def quote(text: str) -> str:
    """``text`` in single quotes, the form in which error messages offer a value."""
    return f"'{text}'"


def offered_values(message: str) -> list[str]:
    """The single-quoted values after the last ``; accepted: `` of an error message."""
    _, sep, tail = message.rpartition(ACCEPTED)
    return re.findall(r"'([^']*)'", tail) if sep else []


def _as_number(given: Any) -> int | float | None:
    """``given`` as a number: text read exactly (whole numbers past 2**53 too), a number kept,
    anything else (and booleans) None."""
    if isinstance(given, str):
        for kind in (int, float):
            try:
                return kind(given.strip())
            except ValueError:
                continue
        return None
    if isinstance(given, bool):
        return None
    if isinstance(given, numbers.Integral):
        return int(given)
    if isinstance(given, numbers.Real):
        return float(given)
    return None


def option_label(owner: str, name: str) -> str:
    """How messages name an option: ``architecture 'binarynet': option 'norm'``."""
    return f"{owner}: option {name!r}" if owner else f"option {name!r}"


@dataclass(frozen=True)
class ValueType:
    """A declared type. Subclasses read text (:meth:`parse`), check typed values (:meth:`check`)
    and describe themselves for messages (:meth:`describe`, :meth:`plural`, :meth:`accepted`)."""

    def convert(self, value: Any, label: str) -> Any:
        """``value`` as this type: text is parsed, anything else checked.

        Raises HyperparameterError naming ``label``, the value and the accepted form.
        """
        if isinstance(value, str):
            return self.parse(value, label)
        return self.check(value, label)

    def parse(self, text: str, label: str) -> Any:
        """Command-line ``text`` as this type; raises HyperparameterError when it does not fit."""
        raise NotImplementedError

    def check(self, value: Any, label: str) -> Any:
        """A typed ``value`` (TOML, JSON, Python) as this type; raises HyperparameterError."""
        raise NotImplementedError

    def describe(self) -> str:
        """What a value must be, after "must be": ``a number``."""
        raise NotImplementedError

    def plural(self) -> str:
        """The same for several values (in a list): ``numbers``."""
        raise NotImplementedError

    def accepted(self) -> str:
        """The accepted form, every value it offers single-quoted (and each accepted)."""
        raise NotImplementedError

    def text(self, value: Any) -> str:
        """``value`` written as text that :meth:`parse` reads back."""
        return str(value)

    def with_example(self, example: Any) -> ValueType:
        """This type offering ``example`` (an option's default) in its messages."""
        return self

    def error(self, label: str, value: Any, problem: str | None = None) -> HyperparameterError:
        """The error for ``value``: ``<label> <problem>; accepted: <form>``."""
        problem = problem or f"must be {self.describe()}, got {value!r}"
        return HyperparameterError(f"{label} {problem}{ACCEPTED}{self.accepted()}")


@dataclass(frozen=True)
class Flag(ValueType):
    """True or false: ``true``/``yes``/``1`` and ``false``/``no``/``0`` as text."""

    def parse(self, text: str, label: str) -> bool:
        word = text.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise self.error(label, text)

    def check(self, value: Any, label: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        raise self.error(label, value)

    def describe(self) -> str:
        return "true or false"

    def plural(self) -> str:
        return "true or false values"

    def accepted(self) -> str:
        return "'true' or 'false' (also 'yes', 'no', '1', '0')"

    def text(self, value: Any) -> str:
        return "true" if value else "false"


@dataclass(frozen=True)
class Number(ValueType):
    """A finite number of ``kind`` (``int``: whole numbers) within ``low``..``high``.

    The ends are included unless ``low_open``/``high_open`` (``None``: unbounded);
    ``positive=True`` is ``low=0, low_open=True`` (with ``high``: "a positive number up to
    high"). Whole numbers never leave 64 bits (:data:`INT64_MAX`). ``example`` is offered in
    messages (an option's default).
    """

    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    positive: bool = False
    example: Any = None

    def __post_init__(self) -> None:
        if self.kind not in (int, float):
            raise PluginError(f"a Number is of kind int or float, not {self.kind!r}")
        if self.positive and self.low is None:
            object.__setattr__(self, "low", 0)
            object.__setattr__(self, "low_open", True)

    @property
    def _is_positive(self) -> bool:
        return self.low == 0 and self.low_open and (self.high is None or self.positive)

    def parse(self, text: str, label: str) -> int | float:
        word = text.strip()
        if self.kind is int:
            try:
                whole = int(word)  # exact, even past 2**53
            except ValueError:
                whole = None
            if whole is not None:
                return self._bounded(whole, label, text)
        try:
            number = float(word)
        except ValueError:
            raise self.error(label, text) from None
        return self.check(number, label, given=text)

    def check(self, value: Any, label: str, given: Any = None) -> int | float:
        given = value if given is None else given
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.error(label, given)
        if not math.isfinite(value):
            raise self.error(label, given, f"must be finite, got {given!r}")
        if self.kind is int:
            if isinstance(value, numbers.Integral):
                return self._bounded(int(value), label, given)
            if not float(value).is_integer():
                raise self.error(label, given)
            return self._bounded(int(float(value)), label, given)
        return self._bounded(float(value), label, given)

    def _bounded(self, number: int | float, label: str, given: Any) -> int | float:
        """``number`` if it lies within the bounds; raises HyperparameterError otherwise."""
        if self._is_positive and not number > 0:
            raise self.error(label, given)
        self.check_bounds(number, label)
        if self.kind is int and not INT64_MIN <= number <= INT64_MAX:
            raise self.error(label, given, f"= {number} does not fit in 64 bits")
        return number

    def in_bounds(self, number: Any) -> bool:
        """Whether ``number`` lies within ``low``..``high`` (open ends excluded)."""
        low, high = self.low, self.high
        if low is not None and (number < low or (self.low_open and number == low)):
            return False
        return high is None or not (number > high or (self.high_open and number == high))

    def check_bounds(self, number: float, label: str) -> None:
        """Raise HyperparameterError when ``number`` lies outside ``low``..``high``."""
        if not self.in_bounds(number):
            raise self.error(
                label, number, f"= {number!r} is outside its valid range {self.interval()}"
            )

    def interval(self) -> str:
        """``[0.0, 1.0]``, ``(0.0, inf)``: brackets include an end, parentheses exclude it."""
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        low = "-inf" if self.low is None else self._bound_text(self.low, up=True)
        high = "inf" if self.high is None else self._bound_text(self.high, up=False)
        return f"{left}{low}, {high}{right}"

    def _bound_text(self, bound: float, up: bool) -> str:
        """A bound as a value of this kind (whole-number kinds round inwards)."""
        if self.kind is int:
            return str(math.ceil(bound) if up else math.floor(bound))
        return repr(float(bound))

    def fits(self, number: Any) -> bool:
        """Whether ``number`` is a value of this type (no error raised)."""
        return (
            isinstance(number, numbers.Real)
            and not isinstance(number, bool)
            and math.isfinite(number)
            and (self.kind is not int or float(number).is_integer())
            and self.in_bounds(number)
            and (self.kind is not int or INT64_MIN <= (_as_number(number) or 0) <= INT64_MAX)
        )

    def _closed_bounds(self) -> list[int | float]:
        """The ends that are values of this type (offered in messages)."""
        ends = []
        sides = ((self.low, self.low_open, True), (self.high, self.high_open, False))
        for bound, is_open, up in sides:
            if bound is not None and not is_open:
                end = (math.ceil(bound) if up else math.floor(bound)) if self.kind is int else bound
                if self.fits(end):
                    ends.append(end)
        return ends

    def sample(self) -> int | float | None:
        """A value to offer: the example when it fits, else a closed end, 1 or 0 that fits."""
        for number in (self.example, *self._closed_bounds(), 1, 0):
            if self.fits(number):
                return int(number) if self.kind is int else float(number)
        return None

    def describe(self) -> str:
        noun = "whole number" if self.kind is int else "number"
        return f"a positive {noun}" if self._is_positive else f"a {noun}"

    def plural(self) -> str:
        noun = "whole numbers" if self.kind is int else "numbers"
        return f"positive {noun}{self._up_to()}" if self._is_positive else noun

    def _up_to(self) -> str:
        """`` up to 64.0`` for a positive type with an upper bound, else nothing."""
        if self.high is None:
            return ""
        return f" {'below' if self.high_open else 'up to'} {self._bound_text(self.high, up=False)}"

    def shortfall(self, given: Any) -> str:
        """Why ``given`` (text or a number) is not a value of this type, in a command line's
        words: ``must be at least 1, got 0``, ``must be at most 100000, got 10**20``, ``must be
        a positive whole number, got -3``. Never raises."""
        noun = "whole number" if self.kind is int else "number"
        number = _as_number(given)
        shown = given.strip() if isinstance(given, str) and number is not None else repr(given)
        if (
            number is None
            or not math.isfinite(number)
            or (self.kind is int and not float(number).is_integer())
        ):
            return f"must be {self.describe()}, got {shown}"
        if self._is_positive and not number > 0:
            return f"must be a positive {noun}, got {shown}"
        low, high = self.low, self.high
        if self.kind is int:
            low = INT64_MIN if low is None else max(low, INT64_MIN)
            high = INT64_MAX if high is None else min(high, INT64_MAX)
        if low is not None and (number < low or (self.low_open and number == low)):
            side = "more than" if self.low_open else "at least"
            return f"must be {side} {self._bound_text(low, up=True)}, got {shown}"
        if high is not None and (number > high or (self.high_open and number == high)):
            side = "less than" if self.high_open else "at most"
            return f"must be {side} {self._bound_text(high, up=False)}, got {shown}"
        return f"must be {self.describe()}, got {shown}"

    def accepted(self) -> str:
        form = self.describe()
        if (self.low is not None or self.high is not None) and not self._is_positive:
            form += f" in {self.interval()}"
        elif self._is_positive:
            form += self._up_to()
        offered = []
        for number in (self.sample(), *self._closed_bounds()):
            text = None if number is None else self.text(number)
            if text is not None and text not in offered:
                offered.append(text)
        if offered:
            form += ", such as " + ", ".join(quote(t) for t in offered)
        return form

    def text(self, value: Any) -> str:
        return str(int(value)) if self.kind is int else repr(float(value))

    def with_example(self, example: Any) -> Number:
        return self if self.example is not None else dataclasses.replace(self, example=example)


@dataclass(frozen=True)
class Text(ValueType):
    """Any text, kept as given; ``example`` is offered in messages (an option's default)."""

    example: Any = None

    def parse(self, text: str, label: str) -> str:
        return text

    def check(self, value: Any, label: str) -> str:
        if isinstance(value, str):
            return value
        raise self.error(label, value)

    def describe(self) -> str:
        return "text"

    def plural(self) -> str:
        return "texts"

    def accepted(self) -> str:
        if isinstance(self.example, str) and "'" not in self.example:
            return f"any text, such as {quote(self.example)}"
        return "any text"

    def with_example(self, example: Any) -> Text:
        return self if self.example is not None else dataclasses.replace(self, example=example)


@dataclass(frozen=True)
class Choice(ValueType):
    """One of ``choices`` (strings, matched case-insensitively, returned as declared)."""

    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        choices = tuple(self.choices)
        if not choices or not all(isinstance(c, str) and "'" not in c for c in choices):
            raise PluginError(f"a Choice needs one or more strings without quotes, got {choices!r}")
        object.__setattr__(self, "choices", choices)

    def parse(self, text: str, label: str) -> str:
        word = text.strip().lower()
        for choice in self.choices:
            if word == choice.lower():
                return choice
        raise self.error(label, text)

    def check(self, value: Any, label: str) -> str:
        if isinstance(value, str):
            return self.parse(value, label)
        raise self.error(label, value)

    def describe(self) -> str:
        return f"one of {', '.join(self.choices)}"

    def plural(self) -> str:
        return f"values among {', '.join(self.choices)}"

    def accepted(self) -> str:
        return ", ".join(quote(c) for c in self.choices)


@dataclass(frozen=True)
class ListOf(ValueType):
    """A list of ``item`` values: ``64,64`` as text (``64x64`` too for numbers), a TOML or JSON
    array, or one value alone. ``nonempty`` refuses the empty list. Returns a list."""

    item: ValueType = dataclasses.field(default_factory=Text)
    nonempty: bool = False
    example: Any = None

    def _separators(self) -> str:
        return r"[,x]" if isinstance(self.item, Number) else r","

    def parse(self, text: str, label: str) -> list[Any]:
        body = text.strip().strip("()[]").strip()
        parts = [p.strip() for p in re.split(self._separators(), body)] if body else []
        try:
            values = [self.item.parse(p, label) for p in parts if p]
        except HyperparameterError:
            raise self.error(label, text) from None
        return self._sized(values, label, text)

    def check(self, value: Any, label: str) -> list[Any]:
        if isinstance(value, str):
            return self.parse(value, label)
        if isinstance(value, Mapping):
            raise self.error(label, value)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        try:
            values = [self.item.convert(v, label) for v in items]
        except HyperparameterError:
            raise self.error(label, value) from None
        return self._sized(values, label, value)

    def _sized(self, values: list[Any], label: str, given: Any) -> list[Any]:
        if self.nonempty and not values:
            raise self.error(label, given)
        return values

    def describe(self) -> str:
        return f"{'one or more' if self.nonempty else 'a list of'} {self.item.plural()}"

    def plural(self) -> str:
        return f"lists of {self.item.plural()}"

    def text(self, value: Any) -> str:
        return ",".join(self.item.text(v) for v in value)

    def accepted(self) -> str:
        numeric = isinstance(self.item, Number)
        example = self.example if isinstance(self.example, (list, tuple)) else None
        if example is None or (self.nonempty and not example):
            sample = self.item.sample() if isinstance(self.item, Number) else None
            example = [sample] if sample is not None else None
        form = f"{self.item.plural()} separated by commas{' or x' if numeric else ''}"
        samples = []
        if example:
            samples.append(self.text(example))
            if numeric and len(example) > 1:
                samples.append("x".join(self.item.text(v) for v in example))
        if samples:
            form += ", such as " + " or ".join(quote(s) for s in samples)
        if not self.nonempty:
            form += f", or {quote('')} for none"
        return form

    def with_example(self, example: Any) -> ListOf:
        return self if self.example is not None else dataclasses.replace(self, example=example)


@dataclass(frozen=True)
class Nullable(ValueType):
    """``inner`` or None: the text ``none``, ``null`` or nothing, or a None value, is None."""

    inner: ValueType = dataclasses.field(default_factory=Text)

    def parse(self, text: str, label: str) -> Any:
        if text.strip().lower() in NONE_WORDS:
            return None
        try:
            return self.inner.parse(text, label)
        except HyperparameterError:
            raise self.error(label, text) from None

    def check(self, value: Any, label: str) -> Any:
        if value is None:
            return None
        try:
            return self.inner.check(value, label)
        except HyperparameterError:
            raise self.error(label, value) from None

    def describe(self) -> str:
        return f"{self.inner.describe()} or none"

    def plural(self) -> str:
        return f"{self.inner.plural()} or none"

    def accepted(self) -> str:
        return f"{self.inner.accepted()}, or 'none' (also 'null' or '')"

    def text(self, value: Any) -> str:
        return "none" if value is None else self.inner.text(value)

    def with_example(self, example: Any) -> Nullable:
        if example is None:
            return self
        return dataclasses.replace(self, inner=self.inner.with_example(example))


def declared_type(default: Any) -> ValueType:
    """The type an option declares by its default, offering the default as an example.

    Raises PluginError for a default whose type says nothing (None, a table, an object):
    such an option needs an explicit declaration.
    """
    if isinstance(default, bool):
        return Flag()
    if isinstance(default, numbers.Integral):
        return Number(int, example=int(default))
    if isinstance(default, numbers.Real):
        return Number(float, example=float(default))
    if isinstance(default, str):
        return Text(example=default)
    if isinstance(default, (list, tuple)):
        if not default:
            return ListOf(Text(), example=list(default))
        kinds = [declared_type(v) for v in default]
        numeric = [k for k in kinds if isinstance(k, Number)]
        item: ValueType
        if len(numeric) == len(kinds):
            item = Number(int if all(k.kind is int for k in numeric) else float)
        elif all(isinstance(k, Text) for k in kinds):
            item = Text()
        elif all(isinstance(k, Flag) for k in kinds):
            item = Flag()
        else:
            raise PluginError(f"cannot declare a type by the mixed or nested list {default!r}")
        return ListOf(item, example=list(default))
    raise PluginError(
        f"cannot declare a type by the default {default!r}: declare the option's type "
        f"(benchbnn.core.values: Flag, Number, Text, Choice, ListOf, Nullable)"
    )


def declare(default: Any, declared: ValueType | None = None) -> ValueType:
    """``declared`` (offering ``default`` as its example), or the type of ``default``.

    Raises PluginError when ``declared`` is not a ValueType or ``default`` declares nothing.
    """
    if declared is None:
        return declared_type(default)
    if not isinstance(declared, ValueType):
        raise PluginError(f"{declared!r} is not a benchbnn.core.values.ValueType")
    return declared.with_example(default)


def convert(value: Any, declared: ValueType, label: str) -> Any:
    """``value`` (text or typed) as the ``declared`` type.

    Raises HyperparameterError naming ``label``, the value and the accepted form.
    """
    return declared.convert(value, label)
