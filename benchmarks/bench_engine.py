"""How much the engine adds to the model's own work: ``benchbnn.train.engine.train`` against a
minimal hand-written PyTorch loop on the same model, data, optimizer and batch size.

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

    python benchmarks/bench_engine.py --data-dir /tmp/cifar10-jpeg [--steps 100] [--epochs 7]

``--steps`` trains on a class-balanced subset of ``steps x batch size`` images so an epoch fits a
shared machine (``--steps 0``: the whole training split); without ``--data-dir`` the development
copy in ../shared/datasets is extracted to a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import benchbnn
from benchbnn.core.binary import set_latent_mode, split_parameters
from benchbnn.core.config import RunConfig
from benchbnn.data.pipeline import build_loaders
from benchbnn.train.engine import EVAL_BATCH_SIZE, seed_everything, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--steps",
        type=int,
        default=100,
        help="training batches per epoch (0: the whole training split)",
    )
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=7, help="epoch pairs (the first is warm-up)")
    parser.add_argument("--optimizer", default="bop2ndorder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

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
