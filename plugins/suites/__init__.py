"""The built-in benchmark suites, offered like any plugin's: one TOML file per suite.

A third-party package ships its own suites the same way: put the TOML files in the package (as
package data) and return one :class:`benchbnn.SuiteSpec` per file from ``benchbnn_suites``.
``benchbnn compare NAME`` then runs the suite called NAME.

Files named ``*.benchmark.toml`` in this folder are benchmarks (several suites under one
ruleset, ``benchbnn score NAME``), not suites: the host finds them beside the suite files.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import benchbnn

_HERE = Path(__file__).resolve().parent

#: A full stop and a space that end a sentence: not after an abbreviation such as "Fig." or
#: "e.g." (a capital letter or a digit must follow).
FIRST_SENTENCE_END = re.compile(r"(?<!\bFig\.)(?<!\be\.g\.)(?<!\bi\.e\.)(?<=\.)\s+(?=[A-Z0-9(])")


def _description(path: Path) -> str:
    """The first sentence of the suite's own description (the plugin listing shows it)."""
    with path.open("rb") as handle:
        text = " ".join(str(tomllib.load(handle).get("description", "")).split())
    return FIRST_SENTENCE_END.split(text, maxsplit=1)[0]


@benchbnn.hookimpl
def benchbnn_suites() -> list[benchbnn.SuiteSpec]:
    return [
        benchbnn.SuiteSpec(name=path.stem, path=path, description=_description(path))
        for path in sorted(_HERE.glob("*.toml"))
        if not path.name.endswith(".benchmark.toml")
    ]
