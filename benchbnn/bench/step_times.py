"""The files of ``benchbnn bench``: optimizer step times against the bandwidth floor.

:func:`render_markdown` and :func:`render_json` are pure functions of the JSON data of a
:class:`benchbnn.optim.timing.BenchResult` (``result.to_data()``), so the Markdown can be
regenerated from ``bench.json`` alone; :func:`write` writes both into a folder
(``leaderboards/bench/`` by default).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchbnn.bench.tables import markdown_table
from benchbnn.core.formatting import fixed
from benchbnn.optim.timing import CLOSURE_NOTE

DEFAULT_OUT = Path("leaderboards") / "bench"
MARKDOWN_FILE = "bench.md"
JSON_FILE = "bench.json"

HEADER = [
    "Optimizer",
    "Implementation",
    "Median step (ms)",
    "Floor (ms)",
    "Ratio",
    "State bytes / binary weight",
    "Bytes moved / binary weight",
]

MiB = 2**20
GiB = 2**30


def _load(load: Any) -> str:
    return " ".join(f"{x:.2f}" for x in load) if load else "unknown"


def _gbs(value: float | None) -> str:
    return fixed(value / 1e9 if value else None, 1)


def table_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """One row per optimizer and implementation, in the order they were measured."""
    rows = []
    for o in data["optimizers"]:
        for c in o["implementations"]:
            label = c["implementation"] + (" (default)" if c.get("default") else "")
            if o.get("needs_closure"):
                label += ", step(closure) without forward/backward"
            if c["available"]:
                timing = [
                    fixed(c["median_ms"], 2),
                    fixed(c["floor_ms"], 2),
                    fixed(c["ratio"], 2),
                ]
            else:
                timing = ["unavailable", "-", "-"]
            rows.append(
                [
                    o["name"],
                    label,
                    *timing,
                    fixed(o["state_bytes_per_weight"], 2),
                    fixed(o["moved_bytes_per_weight"], 2),
                ]
            )
    return rows


def table_lines(data: Mapping[str, Any]) -> list[str]:
    return markdown_table(HEADER, table_rows(data))


def notes(data: Mapping[str, Any]) -> list[str]:
    """Unavailable implementations with their reasons, and any other per-row remark."""
    found = []
    for o in data["optimizers"]:
        for c in o["implementations"]:
            where = f"{o['name']} {c['implementation']}"
            if not c["available"]:
                found.append(f"{where}: unavailable ({c['reason']})")
            found += [f"{where}: {note}" for note in c.get("notes", ())]
        if o.get("plugin") and not o["plugin"].startswith("benchbnn "):
            found.append(f"{o['name']}: provided by {o['plugin']}")
        if o.get("needs_closure"):
            found.append(f"{o['name']}: {CLOSURE_NOTE}")
        if o.get("forward", "sign") != "sign":
            found.append(
                f"{o['name']}: trains real-valued weights (forward={o['forward']!r}), binarized "
                f"by its layers or for evaluation; the bytes model is the same"
            )
    return found


def header_lines(data: Mapping[str, Any]) -> list[str]:
    machine = data["machine"]
    floor = data["floor"]
    cache = data["last_level_cache"]
    level = f"L{cache['level']} " if cache.get("level") else ""
    memory = machine.get("memory_bytes")
    threads = machine["threads"]
    lines = [
        f"- Weights: {data['num_weights']:,} float32 binary weights in {len(data['shapes'])} "
        f"tensors ({data['weights_description']}), random gradients; no real-valued parameters.",
        f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable cores of "
        f"{machine['logical_cpus']}" + (f", {memory / GiB:.1f} GiB" if memory else "") + f"; "
        f"torch {machine['torch']} with {threads} thread{'s' if threads != 1 else ''}.",
        f"- Last-level cache: {level}{cache['bytes'] / MiB:g} MiB ({cache['source']}).",
        f"- Floor: `{floor['kernel']}` on two arrays of {floor['array_bytes'] / MiB:.0f} MiB "
        f"({floor['moved_bytes_per_pass'] / MiB:.0f} MiB moved per pass), one pass after every "
        f"round of steps: {_gbs(floor['bandwidth_bytes_per_s'])} GB/s median "
        f"({_gbs(floor['bandwidth_min'])} to {_gbs(floor['bandwidth_max'])}).",
        f"- Timing: median of {data['repeats']} steps per implementation after "
        f"{data['warmup']} warm-up steps; the implementations of an optimizer take turns.",
        f"- Load average (1, 5, 15 min): {_load(data['load_before'])} before, "
        f"{_load(data['load_after'])} after; {machine['usable_cores']} cores.",
    ]
    return lines


def warnings_lines(data: Mapping[str, Any]) -> list[str]:
    lines = []
    if data.get("loaded"):
        lines.append(
            f"> **The machine was loaded:** a 1-minute load average went above the "
            f"{data['machine']['usable_cores']} usable cores while measuring, so other "
            f"processes shared the cores and the memory bus; times are slower and noisier than "
            f"on an idle machine (the floor, measured between the same steps, shares some of it)."
            + (
                " With more torch threads than free cores every parallel region waits for its "
                "slowest thread, which hurts a step (a region per tensor and kernel) far more "
                "than the floor (one long region): compare with OMP_NUM_THREADS=1."
                if data["machine"]["threads"] > 1
                else ""
            )
        )
    cache_bytes = data["last_level_cache"]["bytes"]
    if data["floor"]["array_bytes"] < 2 * cache_bytes:
        lines.append(
            "> **The floor's arrays are not much larger than the last-level cache:** the floor "
            "measures the cache, not memory; pass a larger --floor-mib."
        )
    moved = [o["moved_bytes"] for o in data["optimizers"]]
    if moved and max(moved) < cache_bytes:
        lines.append(
            "> **These weights fit in the last-level cache:** a step runs from cache, so a "
            "ratio below 1 is possible and says nothing about memory (use --weights binarynet)."
        )
    return lines


def render_markdown(data: Mapping[str, Any]) -> str:
    lines = [
        "# Optimizer step time against the memory-bandwidth floor",
        "",
        f"Measured by `benchbnn bench` on {data['started']} ({data['seconds']:.0f} s).",
        "",
        *header_lines(data),
        "",
    ]
    warned = warnings_lines(data)
    for line in warned:
        lines += [line, ""]
    lines += table_lines(data)
    lines += [
        "",
        "Floor: a step reads and writes every weight, reads every gradient and reads and writes "
        "every state tensor the optimizer keeps, so it moves at least "
        "`2 x weights + gradients + 2 x state` bytes (the last column, per binary weight); the "
        "floor is those bytes divided by the median bandwidth of the passes measured between the "
        "same optimizer's steps. The ratio pairs each step with the floor pass of its round "
        "and takes the median of those quotients, so that a change of the machine's memory "
        "speed during the measurement cancels out; it can differ a little from the quotient "
        "of the two columns. *(default)* marks "
        "the implementation an optimizer picks for this many weights when none is asked for.",
    ]
    found = notes(data)
    if found:
        lines += ["", "Notes:", "", *(f"- {note}" for note in found)]
    return "\n".join(lines) + "\n"


def render_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def write(data: Mapping[str, Any], out: str | Path = DEFAULT_OUT) -> list[Path]:
    """Write ``bench.md`` and ``bench.json`` into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((MARKDOWN_FILE, render_markdown(data)), (JSON_FILE, render_json(data))):
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
