"""The contenders of ``bench_engine.py``'s speed protocol, each run in a fresh process.

``bench_engine.py --contender engine|eager ...`` runs one of them in the process it starts and
prints one JSON line: the training seconds of every epoch and the test top-1 (%) after the last.

* ``engine``: :func:`benchbnn.train.engine.train` with its default settings (``compile="auto"``:
  BinaryNet is compiled and reads channels_last inputs), tracking into a temporary SQLite store,
  checkpointing every epoch. An epoch's training seconds are its images over its
  ``images_per_s`` (the engine's training time, without evaluation and without compiling, which
  the run reports apart as ``compile_time_s``).
* ``engine-bf16``: the same with ``precision="bf16"`` (autocast; CUDA or a CPU with native
  bfloat16);
* ``eager``: the loop a user writes by hand: the same BinaryNet, data pipeline, batch and
  optimizer (benchbnn's ``bop``: Bop for the binary weights, Adam for the rest), eager,
  contiguous NCHW, timed around each epoch's training loop.

Both read the prepared data folder (see ``bench_engine.prepare_data``) without augmentation.
"""

from __future__ import annotations

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

NO_AUGMENTATION = {"augmentation": "none"}


def run_config(
    width: float, steps: int, batch_size: int, epochs: int, optimizer: str, seed: int = 0
) -> RunConfig:
    """The configuration the PyTorch contenders train: BinaryNet on ``steps x batch_size``
    class-balanced CIFAR-10 training images (the subset of seed 0 whatever ``seed``, so every
    round trains on the same images), no augmentation, initial weights and batch order from
    ``seed``."""
    return RunConfig(
        dataset="cifar10",
        arch="binarynet",
        optimizer=optimizer,
        arch_options={"width": width},
        dataset_options=NO_AUGMENTATION,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        subset=steps * batch_size,
    )


def run_engine(
    config: RunConfig,
    data_dir: str,
    compile: str = "auto",
    precision: str = "fp32",
    binary_kernel: str = "auto",
) -> dict[str, Any]:
    """Train ``config`` with the engine (``binary_kernel`` as ``train`` takes it);
    ``{"epoch_s": [...], "test_top1": ..., ...}``."""
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as work:
        result = train(
            config,
            data_dir=data_dir,
            device="cpu",
            quiet=True,
            tracking_uri=f"sqlite:///{Path(work) / 'mlflow.db'}",
            checkpoint_dir=Path(work) / "checkpoints",
            compile=compile,
            precision=precision,
            binary_kernel=binary_kernel,
        )
    if not result.finished:
        raise SystemExit(f"engine run failed: {result.error}")
    images = config.subset or 0
    return {
        "epoch_s": [images / h["images_per_s"] for h in result.history],
        "epoch_with_eval_s": [h["epoch_time_s"] for h in result.history],
        "forward_backward_s": [h["forward_backward_s"] for h in result.history],
        "optimizer_step_s": [h["optimizer_step_s"] for h in result.history],
        "compile_time_s": result.metrics.get("compile_time_s", 0.0),
        "test_top1": result.metrics["test_top1"],
    }


def run_eager(config: RunConfig, data_dir: str) -> dict[str, Any]:
    """Train ``config`` with a hand-written eager loop; the same keys as :func:`run_engine`."""
    device = torch.device("cpu")
    data = build_loaders(
        config.dataset,
        data_dir=data_dir,
        batch_size=config.batch_size,
        seed=config.seed,
        subset=config.subset,
        device=device,
        eval_batch_size=max(config.batch_size, EVAL_BATCH_SIZE),
        options=dict(config.dataset_options),
    )
    seed_everything(config.seed)
    c, h, _ = data.image_shape
    model = benchbnn.get_architecture(config.arch).build(
        num_classes=data.num_classes, in_channels=c, image_size=h, **config.arch_options
    )
    set_latent_mode(model, False)
    binary, real = split_parameters(model)
    optimizer = benchbnn.get_optimizer(config.optimizer).build(binary, real, **config.hparams)
    seconds = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        data.train.set_epoch(epoch)
        started = time.perf_counter()
        for images, labels in data.train:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in data.test:
            correct += int((model(images).argmax(1) == labels).sum())
            total += labels.numel()
    return {"epoch_s": seconds, "test_top1": 100.0 * correct / total}


def export_arrays(config: RunConfig, data_dir: str, target: Path) -> None:
    """Write the training and test images the PyTorch contenders read, as NHWC float32 arrays
    in [-1, 1] (``train_x``, ``train_y``, ``test_x``, ``test_y``), for the larq contender."""
    import numpy as np

    data = build_loaders(
        config.dataset,
        data_dir=data_dir,
        batch_size=config.batch_size,
        seed=config.seed,
        subset=config.subset,
        device="cpu",
        eval_batch_size=EVAL_BATCH_SIZE,
        options=dict(config.dataset_options),
    )
    data.train.set_epoch(1)
    arrays: dict[str, Any] = {}
    for name, loader in (("train", data.train), ("test", data.test)):
        xs, ys = zip(*[(x, y) for x, y in loader], strict=True)
        arrays[f"{name}_x"] = torch.cat(xs).permute(0, 2, 3, 1).contiguous().numpy()
        arrays[f"{name}_y"] = torch.cat(ys).numpy()
    np.savez(target, **arrays)
