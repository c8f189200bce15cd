"""The declared ranges of every count a user gives: budgets, seeds, tuning, sweeps, model size.

A value outside these ranges is a typo, not a plan: ``--epochs 99999999999999999999`` would run
for ever, ``--seeds 1000000000`` would plan a billion runs, and a number past 64 bits overflows
torch and numpy. Each range is declared once here, as a
:class:`~benchbnn.core.values.Number`, and read everywhere the value arrives: the command line
(:func:`argument`, an argparse ``type=``), :func:`benchbnn.core.config.check_budget` (the engine,
the input pipeline and suites), suite files and the tuning and ablation functions. A value
outside its range is refused with one line before anything starts.

The size of a network is bounded by its parameter count (:func:`check_model_size`), computed from
the architecture's spec on PyTorch's ``meta`` device, so nothing is allocated to find out.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from benchbnn.core.errors import BenchbnnError, HyperparameterError
from benchbnn.core.values import Number

#: Epochs of one run (a year of one-minute epochs is about 500,000).
MAX_EPOCHS = 100_000
#: Images in one batch (the global batch, over every rank).
MAX_BATCH_SIZE = 2**20
#: Training images a run may be limited to with ``subset``.
MAX_SUBSET = 10**9
#: The largest seed: numpy's legacy seeding (which Optuna's samplers use) takes no more.
MAX_SEED = 2**32 - 1
#: Seeds per configuration (a count, or the length of a list of seeds).
MAX_SEEDS = 1_000
#: Trials of one tuning study.
MAX_TRIALS = 100_000
#: Seconds between the heartbeats of a tuning worker (a day).
MAX_HEARTBEAT_S = 86_400
#: Local worker processes of one compare, and the CPU threads of one worker.
MAX_WORKERS = 1_024
MAX_THREADS = 4_096
#: Powers of ten an ablation moves a hyperparameter by, either way.
MAX_FACTOR = 12
#: Parameters (weights and buffers) of one network: 10^10 is 40 GB of float32.
MAX_PARAMETERS = 10**10
#: Sides, channels and classes of an input ``benchbnn describe`` may describe.
MAX_IMAGE_SIDE = 2**14
MAX_CHANNELS = 2**14
MAX_CLASSES = 10**7
#: Timed (and warm-up) steps of ``benchbnn bench``, and the MiB of each memory-floor array.
MAX_BENCH_STEPS = 100_000
MAX_FLOOR_MIB = 2**16

EPOCHS = Number(int, positive=True, high=MAX_EPOCHS)
BATCH_SIZE = Number(int, positive=True, high=MAX_BATCH_SIZE)
SUBSET = Number(int, positive=True, high=MAX_SUBSET)
SEED = Number(int, low=0, high=MAX_SEED)
SEED_COUNT = Number(int, low=1, high=MAX_SEEDS)
TRIALS = Number(int, low=1, high=MAX_TRIALS)
STARTUP_TRIALS = Number(int, low=0, high=MAX_TRIALS)
HEARTBEAT_S = Number(int, low=1, high=MAX_HEARTBEAT_S)
#: 0 workers: compare queues its runs for workers started elsewhere and waits.
WORKERS = Number(int, low=0, high=MAX_WORKERS)
THREADS = Number(int, positive=True, high=MAX_THREADS)
FACTOR = Number(int, low=-MAX_FACTOR, high=MAX_FACTOR)
#: Steps between two records of the per-step flip ratio (any 64-bit count).
LOG_EVERY = Number(int, positive=True)
IMAGE_SIDE = Number(int, positive=True, high=MAX_IMAGE_SIDE)
CHANNELS = Number(int, positive=True, high=MAX_CHANNELS)
#: 0 classes: a network without classifier (timm's feature extractor).
CLASSES = Number(int, low=0, high=MAX_CLASSES)
BENCH_REPEATS = Number(int, positive=True, high=MAX_BENCH_STEPS)
BENCH_WARMUP = Number(int, low=0, high=MAX_BENCH_STEPS)
FLOOR_MIB = Number(int, positive=True, high=MAX_FLOOR_MIB)


def within(declared: Number, value: Any, name: str) -> Any:
    """``value`` (text or a number) as ``declared``, or BenchbnnError ``<name> must be ...``.

    The message says what the value must be (``epochs must be at most 100000, got 10**20``),
    which is also the fix.
    """
    try:
        return (
            declared.parse(value, name) if isinstance(value, str) else declared.check(value, name)
        )
    except HyperparameterError:
        raise BenchbnnError(f"{name} {declared.shortfall(value)}") from None


def argument(declared: Number, flag: str) -> Callable[[str], Any]:
    """An argparse ``type=`` reading ``flag``'s text by ``declared``.

    Text that does not fit raises BenchbnnError (not the ValueError argparse would turn into a
    message of its own); :func:`benchbnn.cli.main` reports it as one line with exit status 2,
    like any other bad input.
    """

    def read(text: str) -> Any:
        return within(declared, text, flag)

    read.__name__ = flag.lstrip("-").replace("-", "_")
    return read


def seed_list(seeds: Any, name: str) -> tuple[int, ...]:
    """``seeds`` (a non-empty list of distinct seeds) checked against :data:`SEED` and
    :data:`MAX_SEEDS`.

    Raises BenchbnnError naming ``name`` and the seed (or the count) that does not fit.
    """
    chosen = tuple(within(SEED, seed, f"a seed of {name}") for seed in seeds)
    if not chosen:
        raise BenchbnnError(f"{name} needs at least one seed")
    if len(chosen) > MAX_SEEDS:
        raise BenchbnnError(f"{name} lists {len(chosen)} seeds; at most {MAX_SEEDS} are allowed")
    return chosen


# --- model size -------------------------------------------------------------------------------


def parameter_count(
    arch: str, num_classes: int, in_channels: int, image_size: int, options: Mapping[str, Any]
) -> int | None:
    """Weights and saved buffers of architecture ``arch`` built with ``options`` for this input
    (buffers a module does not save, such as a binary layer's clipping window, left out).

    The network is built on PyTorch's ``meta`` device: nothing is allocated. Returns None when
    it cannot be built (a bad option or an unsupported input is left to the real build, which
    reports it). Raises UnknownNameError for an architecture nobody registered.
    """
    key = json.dumps(dict(options), sort_keys=True, default=repr)
    return _parameter_count(arch, num_classes, in_channels, image_size, key)


@functools.lru_cache(maxsize=256)
def _parameter_count(
    arch: str, num_classes: int, in_channels: int, image_size: int, options_key: str
) -> int | None:
    import torch

    from benchbnn.core.plugins import get_architecture

    spec = get_architecture(arch)
    try:
        with torch.device("meta"):
            model = spec.build(
                num_classes=num_classes,
                in_channels=in_channels,
                image_size=image_size,
                **json.loads(options_key),
            )
    except Exception:  # whatever it is, the real build reports it
        return None
    return sum(t.numel() for t in model.state_dict().values())


def check_model_size(arch: str, dataset: str, options: Mapping[str, Any]) -> None:
    """Raise BenchbnnError when architecture ``arch`` with ``options``, on ``dataset``'s images
    (its declared shape and class count), would have more than :data:`MAX_PARAMETERS`.

    Raises UnknownNameError for an architecture or dataset nobody registered.
    """
    from benchbnn.core.plugins import get_dataset

    data = get_dataset(dataset)
    channels, height, _width = (int(v) for v in data.image_shape)
    count = parameter_count(arch, int(data.num_classes), channels, height, options)
    if count is not None and count > MAX_PARAMETERS:
        given = ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "default options"
        raise BenchbnnError(
            f"architecture {arch!r} with {given} would have {count:,} parameters on "
            f"{dataset!r}, more than the {MAX_PARAMETERS:,} any run may allocate; make it "
            f"smaller through its options (a lower width, fewer or smaller hidden layers)"
        )
