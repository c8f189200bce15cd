"""The one way benchbnn writes numbers and settings as text (tables, listings, progress).

Results are printed at a fixed precision, rounded once (as the JSON files store them, so that
a figure printed from a live value and from a file never differ in the last digit), with a dash
for what was not measured; settings (hyperparameters, options) are printed in their shortest
exact-looking form.
"""

from __future__ import annotations

import math
from typing import Any

#: Results are rounded to this many decimals before any formatting (and in JSON files).
RESULT_DECIMALS = 6


def fixed(value: float | None, digits: int = 2, missing: str = "-") -> str:
    """``value`` with ``digits`` decimals; ``missing`` for None, NaN or infinity; never
    ``-0.00``."""
    if value is None or not math.isfinite(value):
        return missing
    text = f"{round(value, RESULT_DECIMALS):.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def signed(value: float, digits: int = 2) -> str:
    """:func:`fixed` with an explicit ``+`` on values that are not negative."""
    text = fixed(value, digits)
    return text if text.startswith("-") else f"+{text}"


def setting(value: Any) -> str:
    """A hyperparameter or option value: ``1e-07``, ``0.01``, ``true``, ``[64, 64]``, ``crop:4``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(setting(v) for v in value) + "]"
    return str(value)


def settings(values: dict[str, Any] | Any, empty: str = "defaults") -> str:
    """``key=value`` pairs sorted by key (``empty`` when there are none)."""
    return ", ".join(f"{k}={setting(v)}" for k, v in sorted(values.items())) or empty
