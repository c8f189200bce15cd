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
  contiguous NCHW, timed around each epoch's training loop, with the C library's own policy
  for freed memory (a hand-written loop does not change it; the engine keeps freed memory:
  ``benchbnn.core.host_memory``).
* ``floor`` (not a contender: :func:`convolution_floor`): BinaryNet's convolutions alone, timed
  one by one on the shapes of a training step, as the engine runs them and all in float32.

Both read the prepared data folder (see ``bench_engine.prepare_data``) without augmentation.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import benchbnn
from benchbnn.core.binary import BinaryConv2d, set_binary_kernel, set_latent_mode, split_parameters
from benchbnn.core.config import RunConfig
from benchbnn.core.host_memory import retain_freed_memory
from benchbnn.core.int8 import conv2d_int8, resolve_binary_kernel
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


def _median_seconds(fn: Any, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def convolution_floor(width: float, batch_size: int, repeats: int = 20) -> dict[str, Any]:
    """Seconds per training step of BinaryNet's convolutions alone (CPU, this process's threads).

    Every convolution of a BinaryNet (``width``, CIFAR-10 shapes, ``batch_size`` images,
    channels_last, weights and binarized inputs exactly +-1) is timed alone, median of
    ``repeats`` calls: its forward pass and its backward pass (``aten.convolution_backward``:
    the weight gradient, and the input gradient for every layer but the first, whose input is
    the image). ``engine_step_s`` sums the forward passes as the engine runs them (the exact int8
    convolution, with its input conversion and weight prepacking, where ``binary_kernel="auto"``
    chooses it; float32 elsewhere) and the float32 backward passes; ``fp32_step_s`` the float32
    forward and the same backward passes, which is what a float32 framework computes. No
    training step can take less than its convolutions, so ``larq epoch / (engine_step_s x
    steps)`` bounds what larq / engine can reach here. ``layers`` has the seconds and the
    multiply-accumulates (MAC) of each convolution. Freed memory stays in the process
    (:func:`benchbnn.core.host_memory.retain_freed_memory`), as in the engine's.
    """
    retain_freed_memory()
    torch.manual_seed(0)
    model = benchbnn.get_architecture("binarynet").build(
        num_classes=10, in_channels=3, image_size=32, width=width
    )
    set_latent_mode(model, False)
    kernel = resolve_binary_kernel("auto", torch.device("cpu"))
    set_binary_kernel(model, kernel, sign_weights=True)
    inputs: dict[nn.Conv2d, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, args[0].detach()))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    layers = [
        _time_convolution(conv, raw, i > 0, kernel == "int8", repeats)
        for i, (conv, raw) in enumerate(inputs.items())
    ]
    engine = sum(
        (layer["forward_int8_s"] or layer["forward_fp32_s"]) + layer["backward_s"]
        for layer in layers
    )
    fp32 = sum(layer["forward_fp32_s"] + layer["backward_s"] for layer in layers)
    return {"engine_step_s": engine, "fp32_step_s": fp32, "layers": layers}


def _time_convolution(
    conv: nn.Conv2d, raw: torch.Tensor, input_grad: bool, int8_kernel: bool, repeats: int
) -> dict[str, Any]:
    """Median seconds of ``conv``'s forward passes (float32; int8 where the engine would use
    it) and of its backward pass on the input ``raw`` it received in a forward pass."""
    binary_input = isinstance(conv, BinaryConv2d) and conv.input_quantizer is not None
    x = torch.where(raw >= 0, 1.0, -1.0) if binary_input else raw
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.where(conv.weight.detach() >= 0, 1.0, -1.0)
    stride, dilation = [int(v) for v in conv.stride], [int(v) for v in conv.dilation]
    padding = [int(v) for v in conv.padding]  # numbers: BinaryNet pads with zeros
    out = F.conv2d(x, w, None, stride, padding, dilation, conv.groups)
    grad = torch.randn_like(out)
    mask = [input_grad, True, False]

    def forward_fp32() -> Any:
        return F.conv2d(x, w, None, stride, padding, dilation, conv.groups)

    def forward_int8() -> Any:
        return conv2d_int8(x, w, stride, padding, dilation, conv.groups)

    def backward() -> Any:
        return torch.ops.aten.convolution_backward(
            grad, x, w, None, stride, padding, dilation, False, [0, 0], conv.groups, mask
        )

    int8 = int8_kernel and isinstance(conv, BinaryConv2d) and conv.int8_applies(raw)
    return {
        "shape": list(w.shape),
        "input": list(x.shape),
        "macs": out.numel() * w[0].numel(),
        "forward_fp32_s": _median_seconds(forward_fp32, repeats),
        "forward_int8_s": _median_seconds(forward_int8, repeats) if int8 else None,
        "backward_s": _median_seconds(backward, repeats),
    }
