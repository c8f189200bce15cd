"""How long one optimizer step takes, next to the fastest the memory system allows.

An optimizer step over binary weights is a streaming pass: it reads every weight, gradient and
per-weight state buffer once and writes the weights and the buffers back. Once those arrays no
longer fit in the last-level cache, no implementation can be faster than

    bytes moved / memory bandwidth,    bytes moved = 2 * weights + gradients + 2 * state

(:func:`step_bytes`, from the optimizer's own state after a step). The bandwidth is measured
with the same access pattern, ``a.add_(b)`` in place (read ``a`` and ``b``, write ``a``: three
array sizes per pass), on arrays several times the last-level cache so that it measures memory,
not cache (:func:`default_floor_bytes`, :func:`last_level_cache`). :func:`bench_optimizers`
times every implementation of every optimizer it is given, interleaving the floor's passes with
the steps, so that a machine whose speed drifts (a shared one) slows both alike, and reports
per implementation the median over the rounds of ``step time / floor time`` in the same round
(:meth:`OptimizerTiming.ratio`). An optimizer that declares ``needs_closure``
is stepped as ``step(closure)`` with a closure that only puts the stored gradients back and
returns a zero loss (:class:`_Stepper`), so its time leaves out the model's forward and backward
passes; optimizers whose training weights are real-valued (``forward`` other than ``"sign"``)
are timed alike. Every optimizer is built with :data:`BENCH_CONTEXT` as its run context.

Nothing here knows an optimizer by name: optimizers come from the plugin registry, and one that
is not a :class:`benchbnn.optim.base.BinaryOptimizer` (any ``torch.optim.Optimizer`` a plugin
builds) is timed as it is, as one implementation called ``default``. Measuring only; the
``benchbnn bench`` command and the report files live above this layer.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchbnn.core.errors import BenchbnnError
from benchbnn.core.machine import cpu_model, load_average, usable_cores
from benchbnn.core.plugins import get_optimizer, list_optimizers, provenance
from benchbnn.core.specs import RunContext
from benchbnn.optim.base import IMPLEMENTATIONS, BinaryOptimizer, compile_unavailable_reason

__all__ = [
    "BENCH_CONTEXT",
    "BINARYNET_SHAPES",
    "BINARYNET_WEIGHTS",
    "CLOSURE_NOTE",
    "DEFAULT_LLC_BYTES",
    "SMALL_SHAPES",
    "WEIGHT_SETS",
    "BenchResult",
    "Cache",
    "Case",
    "OptimizerTiming",
    "StreamFloor",
    "bench_optimizers",
    "default_floor_bytes",
    "last_level_cache",
    "machine_info",
    "state_bytes",
    "step_bytes",
]

MiB = 2**20
GiB = 2**30

#: The nine binary weight tensors of BinaryNet on CIFAR-10 (docs/architectures.md).
BINARYNET_SHAPES: tuple[tuple[int, ...], ...] = (
    (128, 3, 3, 3),
    (128, 128, 3, 3),
    (256, 128, 3, 3),
    (256, 256, 3, 3),
    (512, 256, 3, 3),
    (512, 512, 3, 3),
    (1024, 4608),
    (1024, 1024),
    (10, 1024),
)
BINARYNET_WEIGHTS = 10_352_000

#: The floor's array size for the ``small`` weights when none is given: a smoke test need not
#: allocate gigabytes for a floor its in-cache steps cannot be compared with.
SMALL_FLOOR_BYTES = 64 * 2**20

#: The same nine layers at a sixteenth of the width (41,240 weights): a step takes microseconds,
#: for tests and smoke runs. It fits in any cache, so its ratios say nothing about memory.
SMALL_SHAPES: tuple[tuple[int, ...], ...] = (
    (8, 3, 3, 3),
    (8, 8, 3, 3),
    (16, 8, 3, 3),
    (16, 16, 3, 3),
    (32, 16, 3, 3),
    (32, 32, 3, 3),
    (64, 288),
    (64, 64),
    (10, 64),
)

#: What the timed optimizers are told about the "run" (``spec.build(..., context=...)``): the
#: sizes of BinaryNet's CIFAR-10 training (50,000 images, batches of 100, 500 epochs), so that
#: an optimizer that scales by the training-set size (BayesBiNN) can be built outside a run.
BENCH_CONTEXT = RunContext(
    train_size=50_000,
    steps_per_epoch=500,
    total_steps=250_000,
    world_size=1,
    device=torch.device("cpu"),
    seed=0,
)

#: The note of an optimizer stepped with a closure (``needs_closure``).
CLOSURE_NOTE = (
    "step(closure): the closure only sets the stored gradients and returns a zero loss, so the "
    "forward and backward passes it runs in training (once per sample) are not included"
)

#: ``--weights`` choices: name -> (shapes, description).
WEIGHT_SETS: dict[str, tuple[tuple[tuple[int, ...], ...], str]] = {
    "binarynet": (BINARYNET_SHAPES, "BinaryNet's nine binary weight tensors on CIFAR-10"),
    "small": (SMALL_SHAPES, "BinaryNet's nine layers at 1/16 of the width"),
}

#: The last-level cache assumed when neither sysfs nor lscpu tells (larger than the L3 of most
#: server CPUs, so that the default floor arrays stay out of cache on an unknown machine too).
DEFAULT_LLC_BYTES = 512 * MiB
#: The floor's arrays are at least this large ...
FLOOR_MIN_BYTES = 2 * GiB
#: ... and at least this many times the last-level cache.
FLOOR_LLC_MULTIPLE = 4


# --- the machine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cache:
    """The last-level cache: its total size in bytes and how that was found."""

    bytes: int
    level: int | None
    source: str

    def describe(self) -> str:
        level = f"L{self.level} " if self.level else ""
        return f"{level}{self.bytes / MiB:g} MiB ({self.source})"


def _size_bytes(text: str) -> int | None:
    """``32768K``, ``32 MiB``, ``1.5 MB`` -> bytes (binary units, as sysfs and lscpu mean them)."""
    found = re.match(r"\s*([\d.]+)\s*([KMG]?)(?:i?B)?\b", text.strip(), re.I)
    if not found:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[found.group(2).upper()]
    return int(float(found.group(1)) * scale)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _cache_from_sysfs(root: Path) -> Cache | None:
    """The highest cache level of every CPU, each shared instance counted once."""
    instances: dict[tuple[int, str], int] = {}  # (level, shared_cpu_list) -> bytes
    for index in sorted(root.glob("cpu[0-9]*/cache/index[0-9]*")):
        kind, level, size = (_read(index / n) for n in ("type", "level", "size"))
        if kind not in ("Unified", "Data") or not level or not size or not level.isdigit():
            continue
        nbytes = _size_bytes(size)
        if nbytes:
            shared = _read(index / "shared_cpu_list") or str(index.parents[1].name)
            instances[(int(level), shared)] = nbytes
    if not instances:
        return None
    top = max(level for level, _ in instances)
    sizes = [b for (level, _), b in instances.items() if level == top]
    each = ", ".join(sorted({f"{b / MiB:g} MiB" for b in sizes}))
    return Cache(sum(sizes), top, f"sysfs: {len(sizes)} x {each}")


def _cache_from_lscpu() -> Cache | None:
    lscpu = shutil.which("lscpu")
    if not lscpu:
        return None
    try:
        done = subprocess.run(
            [lscpu], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}
        )
    except (OSError, subprocess.SubprocessError):
        return None
    best: tuple[int, int] | None = None
    for line in done.stdout.splitlines():
        found = re.match(r"\s*L(\d)\w* cache:\s*(.+)", line)
        if found and (nbytes := _size_bytes(found.group(2))):
            level = int(found.group(1))
            if best is None or level > best[0]:
                best = (level, nbytes)
    return Cache(best[1], best[0], "lscpu") if best else None


def last_level_cache(sysfs: str | Path = "/sys/devices/system/cpu") -> Cache:
    """The total last-level cache, from sysfs, else ``lscpu``, else :data:`DEFAULT_LLC_BYTES`.

    A virtual machine reports what its hypervisor shows it, which may be one slice of the host's
    cache; the floor's default size has a margin for that (:data:`FLOOR_MIN_BYTES`).
    """
    found = _cache_from_sysfs(Path(sysfs)) or _cache_from_lscpu()
    if found is not None:
        return found
    return Cache(DEFAULT_LLC_BYTES, None, "not reported; assumed")


def default_floor_bytes(cache: Cache) -> int:
    """Bytes per floor array: ``max(FLOOR_MIN_BYTES, FLOOR_LLC_MULTIPLE * LLC)``, whole MiB."""
    wanted = max(FLOOR_MIN_BYTES, FLOOR_LLC_MULTIPLE * cache.bytes)
    return -(-wanted // MiB) * MiB


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, torch and its thread count."""
    total = None
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_bytes": total,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _available_memory() -> int | None:
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


# --- the floor --------------------------------------------------------------------------------


class StreamFloor:
    """``a.add_(b)`` over two float32 arrays of ``nbytes`` each: ``3 * nbytes`` per pass.

    The arrays are allocated and touched once, then every :meth:`sample` times one pass.
    """

    def __init__(self, nbytes: int) -> None:
        numel = max(nbytes // 4, 1)
        available = _available_memory()
        if available is not None and 2 * 4 * numel > 0.8 * available:
            raise BenchbnnError(
                f"the bandwidth floor needs two arrays of {4 * numel / MiB:.0f} MiB but only "
                f"{available / MiB:.0f} MiB of memory is available; pass a smaller --floor-mib "
                f"(still several times the last-level cache)"
            )
        self.array_bytes = 4 * numel
        self.moved_bytes = 3 * self.array_bytes
        self._a = torch.zeros(numel)
        self._b = torch.ones(numel)
        self._a.add_(self._b)  # warm up: pages mapped, threads started
        #: Bytes per second of every pass timed so far.
        self.samples: list[float] = []

    def sample(self) -> float:
        start = time.perf_counter()
        self._a.add_(self._b)
        seconds = time.perf_counter() - start
        self.samples.append(self.moved_bytes / seconds)
        return self.samples[-1]

    def close(self) -> None:
        del self._a, self._b


# --- the optimizers' bytes ---------------------------------------------------------------------


def _state_tensors(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> list[torch.Tensor]:
    state = optimizer.state.get(p, {})
    return [v for v in state.values() if isinstance(v, torch.Tensor)]


def state_bytes(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> int:
    """Bytes of every tensor ``optimizer.state`` holds for ``params`` (after a step)."""
    return sum(t.nbytes for p in params for t in _state_tensors(optimizer, p))


def step_bytes(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> int:
    """The bytes one step over ``params`` must move at least, from the optimizer's state.

    Each weight is read and written, each gradient read, and each state tensor read and written:
    ``2 * weights + gradients + 2 * state``. Temporaries an implementation makes are not counted:
    they are what separates it from the floor. State an optimizer keeps outside
    ``optimizer.state`` (a random generator, say) is not counted either.
    """
    total = 0
    for p in params:
        grad = p.grad.nbytes if p.grad is not None else 0
        total += 2 * p.nbytes + grad + 2 * sum(t.nbytes for t in _state_tensors(optimizer, p))
    return total


# --- timing -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One implementation of one optimizer: its step times or why it could not be timed."""

    implementation: str
    available: bool = True
    reason: str = ""
    default: bool = False
    notes: list[str] = field(default_factory=list)
    #: Milliseconds of every timed step, in order.
    samples_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.samples_ms) if self.samples_ms else None

    @property
    def min_ms(self) -> float | None:
        return min(self.samples_ms) if self.samples_ms else None


@dataclass
class OptimizerTiming:
    """Every implementation of one optimizer, its bytes and the floor measured beside it.

    ``forward`` is how its binary layers use the weights while training (``"sign"``: the
    weights are +-1; ``"latent"``/``"identity"``: real-valued training weights), and
    ``needs_closure`` whether its steps were timed as ``step(closure)`` (:data:`CLOSURE_NOTE`).
    """

    name: str
    plugin: str
    num_weights: int
    state_bytes: int
    moved_bytes: int
    default_implementation: str
    cases: list[Case]
    forward: str = "sign"
    needs_closure: bool = False
    #: Bandwidth (bytes/s) of the floor passes interleaved with this optimizer's steps.
    bandwidth_samples: list[float] = field(default_factory=list)
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None

    @property
    def bandwidth(self) -> float | None:
        return statistics.median(self.bandwidth_samples) if self.bandwidth_samples else None

    @property
    def floor_ms(self) -> float | None:
        bandwidth = self.bandwidth
        return self.moved_bytes / bandwidth * 1e3 if bandwidth else None

    def ratio(self, case: Case) -> float | None:
        """Median over the rounds of ``step time / floor time`` within the same round.

        Each round times one step of every implementation and then one floor pass, so round
        ``r``'s step and floor met the same machine. Pairing them keeps a shift of the memory
        system's speed in the middle of a measurement (a neighbour's load on a shared machine)
        out of the ratio of a memory-bound step; the ratio of the two medians would mix the
        slow rounds of one with the fast rounds of the other. Without floor samples for every
        round (a case timed more often than the floor), the ratio of the medians.
        """
        samples = case.samples_ms
        if not samples or not self.moved_bytes:
            return None
        if len(self.bandwidth_samples) == len(samples):
            return statistics.median(
                ms * 1e-3 * bandwidth / self.moved_bytes
                for ms, bandwidth in zip(samples, self.bandwidth_samples)
            )
        floor, median = self.floor_ms, case.median_ms
        return median / floor if floor and median is not None else None


@dataclass
class BenchResult:
    """Everything one ``bench_optimizers`` call measured, and on what."""

    weights: str
    shapes: list[tuple[int, ...]]
    num_weights: int
    repeats: int
    warmup: int
    machine: dict[str, Any]
    cache: Cache
    floor_array_bytes: int
    optimizers: list[OptimizerTiming]
    load_before: tuple[float, float, float] | None
    load_after: tuple[float, float, float] | None
    started: str
    seconds: float

    @property
    def bandwidth_samples(self) -> list[float]:
        return [b for o in self.optimizers for b in o.bandwidth_samples]

    @property
    def loaded(self) -> bool:
        """Whether a 1-minute load average was above the usable cores (others were running)."""
        cores = self.machine.get("usable_cores") or 1
        pairs = [(self.load_before, self.load_after)]
        pairs += [(o.load_before, o.load_after) for o in self.optimizers]
        loads = [load[0] for pair in pairs for load in pair if load]
        return any(load > cores for load in loads)

    def to_data(self) -> dict[str, Any]:
        """JSON-ready: every figure, times in milliseconds, bandwidths in bytes per second."""

        def rounded(x: float | None, digits: int = 6) -> float | None:
            return None if x is None else round(x, digits)

        pooled = self.bandwidth_samples
        optimizers = []
        for o in self.optimizers:
            cases = []
            for c in o.cases:
                item: dict[str, Any] = {
                    "implementation": c.implementation,
                    "available": c.available,
                    "default": c.default,
                }
                if not c.available:
                    item["reason"] = c.reason
                else:
                    item.update(
                        median_ms=rounded(c.median_ms),
                        min_ms=rounded(c.min_ms),
                        floor_ms=rounded(o.floor_ms),
                        ratio=rounded(o.ratio(c), 4),
                        samples_ms=[rounded(s, 4) for s in c.samples_ms],
                    )
                if c.notes:
                    item["notes"] = list(c.notes)
                cases.append(item)
            optimizers.append(
                {
                    "name": o.name,
                    "plugin": o.plugin,
                    "num_weights": o.num_weights,
                    "state_bytes": o.state_bytes,
                    "state_bytes_per_weight": rounded(o.state_bytes / max(o.num_weights, 1), 4),
                    "moved_bytes": o.moved_bytes,
                    "moved_bytes_per_weight": rounded(o.moved_bytes / max(o.num_weights, 1), 4),
                    "default_implementation": o.default_implementation,
                    "forward": o.forward,
                    "needs_closure": o.needs_closure,
                    "floor_ms": rounded(o.floor_ms),
                    "bandwidth_bytes_per_s": rounded(o.bandwidth, 0),
                    "bandwidth_samples": [round(b) for b in o.bandwidth_samples],
                    "load_before": o.load_before,
                    "load_after": o.load_after,
                    "implementations": cases,
                }
            )
        return {
            "benchmark": "optimizer step time against a memory-bandwidth floor",
            "started": self.started,
            "seconds": round(self.seconds, 1),
            "weights": self.weights,
            "weights_description": WEIGHT_SETS.get(self.weights, ((), self.weights))[1],
            "shapes": [list(s) for s in self.shapes],
            "num_weights": self.num_weights,
            "dtype": "float32",
            "repeats": self.repeats,
            "warmup": self.warmup,
            "machine": self.machine,
            "last_level_cache": asdict(self.cache),
            "floor": {
                "kernel": "a.add_(b), float32, in place",
                "array_bytes": self.floor_array_bytes,
                "moved_bytes_per_pass": 3 * self.floor_array_bytes,
                "bandwidth_bytes_per_s": rounded(statistics.median(pooled), 0) if pooled else None,
                "bandwidth_min": rounded(min(pooled), 0) if pooled else None,
                "bandwidth_max": rounded(max(pooled), 0) if pooled else None,
                "model": "2 * weight bytes + gradient bytes + 2 * state bytes, "
                "divided by the bandwidth measured between the same optimizer's steps",
            },
            "load_before": self.load_before,
            "load_after": self.load_after,
            "loaded": self.loaded,
            "optimizers": optimizers,
        }


def _make_params(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> list[torch.nn.Parameter]:
    """Float32 weights drawn from N(0, 1) (an optimizer with ``forward="sign"`` sets them to
    +-1 when built, the others keep them as their real-valued training weights) with
    N(0, 1e-6) gradients, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=generator))
        p.grad = torch.randn(shape, generator=generator) * 1e-3
        params.append(p)
    return params


class _Stepper:
    """Calls ``optimizer.step()``, or ``optimizer.step(closure)`` for an optimizer that needs
    a closure, and waits for the device so that the time measured is the step's.

    The closure stands in for training's forward and backward pass: it puts the stored
    gradients back into every parameter's ``.grad`` (the optimizer may have replaced them,
    e.g. with an average over samples) and returns a zero loss tensor. It moves no memory, so
    the time of a closure step is the optimizer's own work around it (drawing samples,
    averaging gradients, the update); see :data:`CLOSURE_NOTE`.
    """

    def __init__(self, optimizer: Any, params: Sequence[torch.Tensor], needs_closure: bool) -> None:
        self.optimizer = optimizer
        self.needs_closure = needs_closure
        self._grads = [p.grad for p in params]
        self._params = list(params)
        self._device = params[0].device if params else torch.device("cpu")
        self._loss = torch.zeros((), device=self._device)

    def _closure(self) -> torch.Tensor:
        for p, g in zip(self._params, self._grads):
            p.grad = g
        return self._loss

    def __call__(self) -> None:
        if self.needs_closure:
            self.optimizer.step(self._closure)
        else:
            self.optimizer.step()
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)


def _cases(optimizer: Any, wanted: Sequence[str], device: torch.device) -> list[Case]:
    if not isinstance(optimizer, BinaryOptimizer):
        return [
            Case(
                "default",
                default=True,
                notes=[f"{type(optimizer).__name__} is not a BinaryOptimizer: timed as it is"],
            )
        ]
    default = optimizer.implementation
    cases = []
    for implementation in wanted:
        case = Case(implementation, default=implementation == default)
        if implementation == "compiled":
            reason = compile_unavailable_reason(device)
            if reason:
                case.available, case.reason = False, reason
        if implementation == "foreach" and type(optimizer).update_foreach is None:
            case.notes.append("no update_foreach: runs the reference loop")
        if implementation == "compiled" and case.available and device.type == "cpu":
            note = _native_note(optimizer)
            if note:
                case.notes.append(note)
        cases.append(case)
    return cases


def _native_note(optimizer: BinaryOptimizer) -> str:
    """What steps float32 CPU weights in the compiled implementation, when the optimizer
    ships a C++ kernel (``update_native``)."""
    if type(optimizer).update_native is None:
        return ""
    kernels = type(optimizer).native_kernels
    if kernels is not None and kernels.module() is None:
        return "its C++ kernel is not built here: torch.compile's kernel runs instead"
    return (
        "float32 CPU weights go through its C++ kernel (update_native) unless it declines "
        "(then torch.compile's kernel runs)"
    )


def _warm_up(step: _Stepper, case: Case, steps: int) -> None:
    """Run ``steps`` steps (at least one: compiles, fills the state); notice fallbacks."""
    optimizer = step.optimizer
    if case.implementation != "default":
        optimizer.implementation = case.implementation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(max(steps, 1)):
            step()
    if case.implementation == "compiled":
        failed = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
        if failed or getattr(optimizer, "_compile_failed", False):
            case.available = False
            case.reason = failed[0] if failed else "torch.compile failed; fell back to reference"


def _time_step(step: _Stepper, case: Case) -> None:
    if case.implementation != "default":
        step.optimizer.implementation = case.implementation
    start = time.perf_counter()
    step()
    case.samples_ms.append((time.perf_counter() - start) * 1e3)


def time_optimizer(
    name: str,
    shapes: Sequence[tuple[int, ...]],
    *,
    repeats: int,
    warmup: int,
    implementations: Sequence[str] = IMPLEMENTATIONS,
    floor: StreamFloor | None = None,
    hparams: Mapping[str, Any] | None = None,
) -> OptimizerTiming:
    """Time one optimizer (built with its defaults, or ``hparams``) on fresh weights.

    Each of ``repeats`` rounds times one step of every available implementation (in an order
    that rotates from round to round) and then one pass of ``floor``.
    """
    spec = get_optimizer(name)
    params = _make_params(shapes)
    optimizer = spec.build(params, [], context=BENCH_CONTEXT, **dict(hparams or {}))
    needs_closure = bool(spec.needs_closure or getattr(optimizer, "needs_closure", False))
    step = _Stepper(optimizer, params, needs_closure)
    default = getattr(optimizer, "implementation", "default")
    cases = _cases(optimizer, implementations, params[0].device)
    load_before = load_average()
    for case in cases:
        if case.available:
            _warm_up(step, case, warmup)
    timed = [c for c in cases if c.available]
    if not timed:  # nothing to time, but the state still needs a step to be measured
        step()
    for r in range(repeats):
        shift = r % len(timed) if timed else 0
        for case in timed[shift:] + timed[:shift]:
            _time_step(step, case)
        if floor is not None:
            floor.sample()
    result = OptimizerTiming(
        name=name,
        plugin=_plugin_label(name),
        num_weights=sum(p.numel() for p in params),
        state_bytes=state_bytes(optimizer, params),
        moved_bytes=step_bytes(optimizer, params),
        default_implementation=default,
        cases=cases,
        forward=str(spec.forward or "sign"),
        needs_closure=needs_closure,
        load_before=load_before,
        load_after=load_average(),
    )
    if floor is not None:
        result.bandwidth_samples = floor.samples[-repeats:]
    del optimizer, params, step
    gc.collect()
    return result


def _plugin_label(name: str) -> str:
    try:
        return provenance("optimizer", name).label
    except Exception:  # provenance is a record, never a reason to fail a measurement
        return "-"


def bench_optimizers(
    names: Sequence[str] | None = None,
    *,
    weights: str = "binarynet",
    repeats: int = 20,
    warmup: int = 3,
    implementations: Sequence[str] = IMPLEMENTATIONS,
    floor_bytes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Time ``names`` (default: every installed optimizer) against the bandwidth floor.

    Unknown names raise :class:`benchbnn.UnknownNameError` before anything is measured.
    ``floor_bytes`` is the size of each of the floor's two arrays (default:
    :func:`default_floor_bytes` of the detected last-level cache; :data:`SMALL_FLOOR_BYTES` for
    the ``small`` weights, whose ratios say nothing about memory anyway).
    """
    if weights not in WEIGHT_SETS:
        raise BenchbnnError(f"unknown weight set {weights!r}; choose {', '.join(WEIGHT_SETS)}")
    if repeats < 1 or warmup < 0:
        raise BenchbnnError("repeats must be at least 1 and warm-up steps at least 0")
    unknown = [i for i in implementations if i not in IMPLEMENTATIONS]
    if unknown or not implementations:
        raise BenchbnnError(
            f"unknown implementation {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(IMPLEMENTATIONS)}"
        )
    names = list(names) if names else list_optimizers()
    for name in names:
        get_optimizer(name)  # unknown names fail here, with a did-you-mean
    shapes = list(WEIGHT_SETS[weights][0])
    say = progress or (lambda _text: None)
    cache = last_level_cache()
    array_bytes = floor_bytes or (
        SMALL_FLOOR_BYTES if weights == "small" else default_floor_bytes(cache)
    )
    started = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    clock = time.perf_counter()
    load_before = load_average()
    say(
        f"floor: a.add_(b) on 2 x {array_bytes / MiB:.0f} MiB arrays "
        f"(last-level cache {cache.describe()}); {torch.get_num_threads()} torch threads"
    )
    floor = StreamFloor(array_bytes)
    try:
        timings = []
        for name in names:
            say(f"{name}: {', '.join(implementations)} ({repeats} rounds)")
            timings.append(
                time_optimizer(
                    name,
                    shapes,
                    repeats=repeats,
                    warmup=warmup,
                    implementations=implementations,
                    floor=floor,
                )
            )
    finally:
        floor.close()
    return BenchResult(
        weights=weights,
        shapes=shapes,
        num_weights=sum(torch.Size(s).numel() for s in shapes),
        repeats=repeats,
        warmup=warmup,
        machine=machine_info(),
        cache=cache,
        floor_array_bytes=floor.array_bytes,
        optimizers=timings,
        load_before=load_before,
        load_after=load_average(),
        started=started,
        seconds=time.perf_counter() - clock,
    )
