"""The engine's speed: against a hand-written eager PyTorch loop and against larq.

**Speed protocol** (the default; benchbnn issue 19): BinaryNet on CIFAR-10 (JPEG copy), batch
50, Bop for the binary weights and Adam for the rest, no augmentation, the same threads for
everyone. Contenders, each in a fresh process and interleaved round by round (the order rotates,
so drift on a shared machine hits all of them alike):

* ``engine``: ``benchbnn.train.engine.train`` with its default settings (compiled model,
  channels_last, fp32, ``binary_kernel="auto"``: exact int8 forward passes of the binary
  convolutions on CPUs with VNNI), tracking and checkpoints on;
* with ``--float-kernel``, also ``engine-float``: the engine with ``binary_kernel="float"``
  (float32 convolutions everywhere; bit-identical results, so the ratio engine-float / engine
  is what the int8 forward gains);
* ``eager``: a hand-written eager loop with the same model, data pipeline and optimizer;
* ``larq``: ``benchmarks/larq_binarynet.py`` run by ``--larq-python`` (a Python with TensorFlow,
  tf-keras and larq; larq is never a dependency of benchbnn: see docs/speed.md);
* with ``--bf16``, also ``engine-bf16`` (the engine with ``precision="bf16"``: autocast, on CUDA
  or a CPU with native bfloat16) and ``larq-bf16`` (larq under Keras' ``mixed_bfloat16``
  policy), so that each precision is compared with the same precision.

The PyTorch contenders step the optimizer the way a full-length run does: the benchmark's
runs are a few dozen steps long, and below a million binary weights (BinaryNet at width 0.25)
the optimizer would pick its multi-tensor ``foreach`` step for such a short run, where a
CIFAR-10 run of 1,000 steps an epoch compiles it (``benchbnn.optim.base``). So both contenders
get ``BENCHBNN_OPTIMIZER_IMPLEMENTATION=compiled`` (``--optimizer-implementation`` chooses
another, ``default`` none); the compiling falls in the engine's ``compile_time_s`` and in the
eager loop's first, uncounted epoch.

Round ``r`` trains every contender from seed ``r`` (initial weights and batch order; the images
are the same), so the spread of top-1 over rounds is a seed-noise estimate for judging whether
a faster contender learns as well.

Each trains ``--epochs`` epochs of ``--steps`` steps on the same class-balanced subset of the
training images and reports its training seconds per epoch (evaluation and compilation
excluded); the first epoch of every process is warm-up and not counted. The script prints every
epoch time, the median epoch per contender, the ratios per round (eager / engine, larq / engine)
and their medians against the targets (eager / engine >= 1.6 at width 0.25 and > 1 at width 1.0;
larq / engine >= 1.25), the test top-1 after the last epoch (on 200 test images a class), and
the 1-minute load average before and after every process.

After the contenders, every round times BinaryNet's convolutions alone in a fresh process
(``engine_contenders.convolution_floor``: each convolution's forward and backward pass on the
shapes of a training step, as the engine runs them and all in float32), and the report prints
what each contender spends besides its convolutions and the largest larq / engine that any
engine running the same convolutions could reach (larq's epoch over the engine's
convolutions alone).

    python benchmarks/bench_engine.py [--width 0.25] [--steps 40] [--epochs 3] [--rounds 2] \
        [--larq-python /work/larq-venv/bin/python]

**Overhead protocol** (``--overhead``): how much the engine adds to the model's own work:
``benchbnn.train.engine.train`` against a minimal hand-written PyTorch loop on the same model,
data, optimizer and batch size, interleaved epoch by epoch in one process.

Both sides train BinaryNet (width 0.25 by default) on CIFAR-10 with Bop2ndOrder from the same
initial weights through the same data pipeline (``benchbnn.data.pipeline.build_loaders``) and
evaluate the test split after every epoch. The engine runs with everything on: MLflow tracking
into a temporary SQLite store, the progress plugin, per-epoch checkpoints, top-1/top-5, loss and
flip-ratio bookkeeping.

On a machine shared with other jobs the speed drifts by tens of percent within minutes, so the
two sides are interleaved epoch by epoch in one process: a small lifecycle plugin runs one epoch
of the hand-written loop at every ``epoch_start`` of the engine, then the engine's epoch is
timed up to the next ``epoch_start`` (or ``run_end``), which includes its evaluation, the
tracker's flush and the checkpoint. Each pair of adjacent epochs gives one ratio; the script
reports the median ratio (and the ratio of summed times), in wall time and in CPU time of the
process. The first pair is warm-up and left out. Both sides compute the same numbers (same seed,
same order), which the script checks at the end.

    python benchmarks/bench_engine.py --overhead --data-dir /tmp/cifar10-jpeg [--steps 100]

``--steps`` trains on a class-balanced subset of ``steps x batch size`` images so an epoch fits a
shared machine (``--steps 0``: the whole training split); without ``--data-dir`` the development
copy in ../shared/datasets is extracted to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import benchbnn
from benchbnn.core.binary import set_binary_kernel, set_latent_mode, split_parameters
from benchbnn.core.config import RunConfig
from benchbnn.core.int8 import resolve_binary_kernel
from benchbnn.data.pipeline import build_loaders
from benchbnn.optim.base import IMPLEMENTATION_ENV, IMPLEMENTATIONS
from benchbnn.train.engine import EVAL_BATCH_SIZE, seed_everything, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
HERE = Path(__file__).resolve().parent
#: test images kept per class by the speed protocol (evaluation is not timed; this keeps it short)
TEST_PER_CLASS = 200
#: the speed protocol's targets: contender -> (width -> minimum ratio of its epoch to the engine's)
TARGETS = {"eager": {0.25: 1.6, 1.0: 1.0}, "larq": {0.25: 1.25, 1.0: 1.25}}


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


class HandWritten:
    """The loop a user would write: forward, loss, backward, step; test accuracy per epoch."""

    def __init__(self, config: RunConfig, data_dir: str, device: torch.device):
        self.data = build_loaders(
            config.dataset,
            data_dir=data_dir,
            batch_size=config.batch_size,
            seed=config.seed,
            subset=config.subset,
            device=device,
            eval_batch_size=max(config.batch_size, EVAL_BATCH_SIZE),
        )
        seed_everything(config.seed)  # the engine seeds the same way before building its model
        c, h, _ = self.data.image_shape
        self.model = (
            benchbnn.get_architecture(config.arch)
            .build(
                num_classes=self.data.num_classes,
                in_channels=c,
                image_size=h,
                **config.arch_options,
            )
            .to(device)
        )
        set_latent_mode(self.model, False)
        # the binary kernel the engine picks by default, so that both sides do the same work
        kernel = resolve_binary_kernel("auto", device)
        sign = benchbnn.get_optimizer(config.optimizer).forward == "sign"
        set_binary_kernel(self.model, kernel, sign_weights=sign)
        binary, real = split_parameters(self.model)
        self.optimizer = benchbnn.get_optimizer(config.optimizer).build(
            binary, real, **config.hparams
        )
        self.accuracy = 0.0

    def epoch(self, epoch: int) -> None:
        self.model.train()
        self.data.train.set_epoch(epoch)
        for images, labels in self.data.train:
            loss = F.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in self.data.test:
                correct += int((self.model(images).argmax(1) == labels).sum())
                total += labels.numel()
        self.accuracy = 100.0 * correct / total


class Interleave:
    """Lifecycle plugin: one hand-written epoch before each engine epoch, both timed."""

    def __init__(self, hand: HandWritten):
        self.hand = hand
        self.pairs: list[dict[str, tuple[float, float]]] = []
        self._engine_started: tuple[float, float] | None = None

    def _close_engine_epoch(self) -> None:
        if self._engine_started is not None:
            self.pairs[-1]["engine"] = _since(self._engine_started)

    @benchbnn.hookimpl(tryfirst=True)
    def benchbnn_epoch_start(self, run: Any, epoch: int) -> None:
        self._close_engine_epoch()
        rng = torch.get_rng_state()
        started = _clock()
        self.hand.epoch(epoch)
        self.pairs.append({"hand": _since(started)})
        torch.set_rng_state(rng)  # the engine's run must not notice the hand-written epoch
        self._engine_started = _clock()

    @benchbnn.hookimpl(tryfirst=True)
    def benchbnn_run_end(self, run: Any, result: Any) -> None:
        self._close_engine_epoch()


def _data_dir(given: str | None) -> str:
    if given:
        return given
    target = Path(tempfile.mkdtemp(prefix="bench-engine-cifar10-"))
    with tarfile.open(SHARED) as archive:
        archive.extractall(target, filter="data")
    return str(target)


def _report(pairs: list[dict[str, tuple[float, float]]]) -> None:
    for i, pair in enumerate(pairs, 1):
        (hw, hc), (ew, ec) = pair["hand"], pair["engine"]
        print(
            f"epoch {i}: hand-written {hw:7.2f} s wall {hc:7.2f} s CPU | engine {ew:7.2f} s "
            f"wall {ec:7.2f} s CPU | ratio wall {ew / hw:.3f} CPU {ec / hc:.3f}"
            f"{'  (warm-up, not counted)' if i == 1 else ''}"
        )
    counted = pairs[1:]
    for what, k in (("wall", 0), ("CPU", 1)):
        ratios = [p["engine"][k] / p["hand"][k] for p in counted]
        total = sum(p["engine"][k] for p in counted) / sum(p["hand"][k] for p in counted)
        print(
            f"{what:>4}: median ratio {statistics.median(ratios):.3f}, ratio of sums "
            f"{total:.3f}, range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} pairs "
            f"(target < 1.05)"
        )


def prepare_data(target: Path, test_per_class: int = TEST_PER_CLASS) -> str:
    """Extract the shared CIFAR-10 JPEG copy into ``target``, keeping ``test_per_class`` test
    images of each class (the first in name order); returns the data directory."""
    with tarfile.open(SHARED) as archive:
        archive.extractall(target, filter="data")
    root = target / "cifar10-jpeg"
    for folder in sorted((root / "test").iterdir()):
        for extra in sorted(folder.iterdir())[test_per_class:]:
            extra.unlink()
    return str(root)


def _load() -> float:
    return os.getloadavg()[0]


def _contender(name: str, args: argparse.Namespace, data_dir: str, arrays: Path, seed: int) -> dict:
    """Run contender ``name`` from ``seed`` in a fresh process; its JSON line plus the load
    around it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if args.optimizer_implementation != "default":
        env[IMPLEMENTATION_ENV] = args.optimizer_implementation
    if name.startswith("larq"):
        command = [
            args.larq_python,
            str(HERE / "larq_binarynet.py"),
            f"--data={arrays}",
            f"--width={args.width}",
            f"--epochs={args.epochs}",
            f"--batch-size={args.batch_size}",
            f"--threads={args.threads}",
            f"--seed={seed}",
            f"--precision={'bf16' if name.endswith('-bf16') else 'fp32'}",
        ]
    else:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            f"--contender={name}",
            f"--data-dir={data_dir}",
            f"--width={args.width}",
            f"--steps={args.steps}",
            f"--epochs={args.epochs}",
            f"--batch-size={args.batch_size}",
            f"--threads={args.threads}",
            f"--seed={seed}",
        ]
    before = _load()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"contender {name} failed:\n{done.stderr[-3000:]}")
    line = [text for text in done.stdout.splitlines() if text.startswith("{")][-1]
    return {**json.loads(line), "load": (before, _load())}


def _speed(args: argparse.Namespace) -> None:
    """The speed protocol (see the module's docstring)."""
    from engine_contenders import export_arrays, run_config

    names = ["engine", "eager"] + (["engine-float"] if args.float_kernel else [])
    names += ["engine-bf16"] if args.bf16 else []
    if args.larq_python:
        names += ["larq"] + (["larq-bf16"] if args.bf16 else [])
    work = Path(tempfile.mkdtemp(prefix="bench-engine-speed-"))
    try:
        data_dir = args.data_dir or prepare_data(work)
        arrays = work / "arrays.npz"
        if args.larq_python:
            config = run_config(args.width, args.steps, args.batch_size, 1, "bop")
            export_arrays(config, data_dir, arrays)
        print(
            f"BinaryNet width {args.width}, Bop + Adam, {args.steps} steps of {args.batch_size} "
            f"per epoch, {args.epochs} epochs per process (the first is warm-up), "
            f"{args.threads} threads, {args.rounds} rounds, optimizer step "
            f"{args.optimizer_implementation}; load {_load():.2f}"
        )
        rounds = []
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            results = {name: _contender(name, args, data_dir, arrays, r) for name in order}
            results["floor"] = _contender("floor", args, data_dir, arrays, r)
            for name in order:
                out = results[name]
                epochs = " ".join(f"{s:.2f}" for s in out["epoch_s"])
                extra = (
                    f", compile {out['compile_time_s']:.1f} s" if "compile_time_s" in out else ""
                )
                print(
                    f"round {r + 1} (seed {r}) {name:>11}: epochs {epochs} s, "
                    f"top-1 {out['test_top1']:.2f}%"
                    f"{extra}, load {out['load'][0]:.2f} -> {out['load'][1]:.2f}"
                )
            floor = results["floor"]
            print(
                f"round {r + 1} (seed {r})       floor: the convolutions alone take "
                f"{floor['engine_step_s'] * 1e3:.1f} ms a step as the engine runs them "
                f"({floor['engine_step_s'] * args.steps:.2f} s an epoch), "
                f"{floor['fp32_step_s'] * 1e3:.1f} ms in float32, load "
                f"{floor['load'][0]:.2f} -> {floor['load'][1]:.2f}"
            )
            rounds.append(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _speed_report(rounds, names, args.width)
    _floor_report(rounds, names, args.steps)


def _epoch(out: dict) -> float:
    """Median training seconds of the counted epochs (all but the first)."""
    return statistics.median(out["epoch_s"][1:] or out["epoch_s"])


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    """The ratios reported, as (slower, faster): every contender against the default engine,
    and each larq contender against the bf16 engine."""
    pairs = [(name, "engine") for name in names if name != "engine"]
    if "engine-bf16" in names:
        pairs += [(name, "engine-bf16") for name in ("larq", "larq-bf16") if name in names]
    return pairs


def _speed_report(rounds: list[dict], names: list[str], width: float) -> None:
    for name in names:
        epochs = [_epoch(results[name]) for results in rounds]
        top1 = [results[name]["test_top1"] for results in rounds]
        spread = f" (rounds {min(top1):.2f} to {max(top1):.2f})" if len(top1) > 1 else ""
        print(
            f"{name:>11}: median epoch {statistics.median(epochs):.2f} s over {len(epochs)} "
            f"rounds; top-1 mean {statistics.fmean(top1):.2f}%{spread}"
        )
    for slower, faster in _pairs(names):
        ratios = [_epoch(results[slower]) / _epoch(results[faster]) for results in rounds]
        target = TARGETS.get(slower, {}).get(width) if faster == "engine" else None
        verdict = "" if target is None else f" (target >= {target}: "
        if target is not None:
            verdict += "met)" if statistics.median(ratios) >= target else "NOT met)"
        print(
            f"{slower} / {faster} epoch: median {statistics.median(ratios):.2f}, rounds "
            f"{', '.join(f'{x:.2f}' for x in ratios)}{verdict}"
        )


def _floor_report(rounds: list[dict], names: list[str], steps: int) -> None:
    """What the convolutions leave: each contender's epoch minus its convolutions (the engine's
    and engine-float's as they run them, larq's in float32), and the largest larq / engine any
    engine with the same convolutions could reach (larq's epoch over the engine's
    convolutions alone)."""
    per_round = {
        "engine": [results["floor"]["engine_step_s"] * steps for results in rounds],
        "fp32": [results["floor"]["fp32_step_s"] * steps for results in rounds],
    }
    floors = {name: statistics.median(values) for name, values in per_round.items()}
    print(
        f"convolutions alone, median over rounds: {floors['engine']:.2f} s an epoch as the "
        f"engine runs them (int8 forward where it applies, float32 backward), "
        f"{floors['fp32']:.2f} s in float32"
    )
    kinds = {"engine": "engine", "engine-float": "fp32", "larq": "fp32"}
    for name, kind in kinds.items():
        if name not in names:
            continue
        rest = [
            _epoch(results[name]) - results["floor"][f"{kind}_step_s"] * steps for results in rounds
        ]
        print(f"{name:>11}: {statistics.median(rest):.2f} s an epoch besides its convolutions")
    if "larq" in names:
        ceiling = [
            _epoch(results["larq"]) / (results["floor"]["engine_step_s"] * steps)
            for results in rounds
        ]
        print(
            f"larq / engine could reach at most {statistics.median(ceiling):.2f} here (larq's "
            f"epoch over the engine's convolutions alone; rounds "
            f"{', '.join(f'{x:.2f}' for x in ceiling)})"
        )


def _run_contender(args: argparse.Namespace) -> None:
    """``--contender``: train one PyTorch contender here and print its JSON line (``floor``:
    time BinaryNet's convolutions alone, ``engine_contenders.convolution_floor``)."""
    from engine_contenders import convolution_floor, run_config, run_eager, run_engine

    torch.set_num_threads(args.threads)
    if args.contender == "floor":
        print(json.dumps(convolution_floor(args.width, args.batch_size)))
        return
    config = run_config(args.width, args.steps, args.batch_size, args.epochs, "bop", args.seed)
    if args.contender.startswith("engine"):
        precision = "bf16" if args.contender == "engine-bf16" else "fp32"
        kernel = "float" if args.contender == "engine-float" else "auto"
        out = run_engine(config, args.data_dir, precision=precision, binary_kernel=kernel)
    else:
        out = run_eager(config, args.data_dir)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="the overhead protocol (engine against a hand-written loop, one process)",
    )
    parser.add_argument(
        "--contender",
        choices=("engine", "engine-float", "engine-bf16", "eager", "floor"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="speed protocol: also the engine and larq in bf16 (autocast / mixed_bfloat16)",
    )
    parser.add_argument(
        "--float-kernel",
        action="store_true",
        help="speed protocol: also engine-float, the engine with binary_kernel='float' (no int8 "
        "forward), to measure what the int8 forward gains",
    )
    parser.add_argument(
        "--optimizer-implementation",
        choices=("default", *IMPLEMENTATIONS),
        default="compiled",
        help="speed protocol: the optimizer step of the PyTorch contenders (default compiled: "
        "what a full-length CIFAR-10 run of 1,000 steps an epoch picks; 'default' lets the "
        "optimizer choose for the benchmark's short runs, where it steps with foreach below a "
        "million binary weights)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="speed protocol: rounds")
    parser.add_argument("--threads", type=int, default=2, help="speed protocol: threads")
    parser.add_argument(
        "--larq-python",
        default=None,
        metavar="PATH",
        help="speed protocol: a Python with TensorFlow, tf-keras and larq (docs/speed.md)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training batches per epoch (default 40 for the speed protocol, 100 for the "
        "overhead protocol; 0, the whole training split, for the overhead protocol only)",
    )
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs per process (speed, default 3) or epoch pairs (overhead, default 7); "
        "the first is warm-up",
    )
    parser.add_argument("--optimizer", default="bop2ndorder", help="overhead protocol only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.contender:
        _run_contender(args)
        return
    if not args.overhead:
        args.steps = 40 if args.steps is None else args.steps
        if args.steps < 1:
            parser.error("the speed protocol trains a subset: give --steps 1 or more")
        args.epochs = args.epochs or 3
        _speed(args)
        return
    args.steps = 100 if args.steps is None else args.steps
    args.epochs = args.epochs or 7

    data_dir = _data_dir(args.data_dir)
    device = torch.device(args.device)
    config = RunConfig(
        dataset="cifar10",
        arch="binarynet",
        optimizer=args.optimizer,
        arch_options={"width": args.width},
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=0,
        subset=args.steps * args.batch_size if args.steps else None,
    )
    print(
        f"BinaryNet width {args.width}, {args.optimizer}, "
        f"{args.steps or 'all'} steps of {args.batch_size} + test-set evaluation per epoch, "
        f"{device}, {torch.get_num_threads()} threads"
    )
    interleave = Interleave(HandWritten(config, data_dir, device))
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as work:
        result = train(
            config,
            data_dir=data_dir,
            device=device,
            quiet=False,
            tracking_uri=f"sqlite:///{Path(work) / 'mlflow.db'}",
            checkpoint_dir=Path(work) / "checkpoints",
            plugins=[interleave],
        )
    assert result.finished, result.error
    _report(interleave.pairs)
    same = abs(result.metrics["test_top1"] - interleave.hand.accuracy) < 1e-9
    print(
        f"test top-1 after {args.epochs} epochs: engine {result.metrics['test_top1']:.2f}%, "
        f"hand-written {interleave.hand.accuracy:.2f}% ({'identical' if same else 'DIFFERENT'})"
    )


if __name__ == "__main__":
    main()
