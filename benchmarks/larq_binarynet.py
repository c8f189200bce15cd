"""The larq contender of ``bench_engine.py``: BinaryNet trained with Bop + Adam in TensorFlow.

Run with a Python that has TensorFlow, tf-keras and larq (never benchbnn's own environment; see
docs/speed.md), on the arrays ``bench_engine.py`` exported (``--data``: an ``.npz`` with
``train_x`` N x 32 x 32 x 3 float32 in [-1, 1], ``train_y``, ``test_x``, ``test_y``). Prints one
JSON line: the training seconds of every epoch (a Keras callback's wall clock around
``fit``'s epochs, evaluation excluded) and the test top-1 (%) after the last epoch.

The network is BinaryNet as the Bop authors lay it out (Helwegen et al. 2019, code
plumerai/rethinking-bnn-optimization; the same layers as benchbnn's ``binarynet`` plugin):
conv128 3x3 valid (real input), then binary 3x3 "same" convolutions 128 (max-pool), 256, 256
(max-pool), 512, 512 (max-pool) and binary dense 1024, 1024, classes, each followed by batch
norm without a learned scale; every binary layer but the first binarizes its input (ste_sign),
kernels are binarized by ste_sign and flipped by Bop (threshold 1e-8, gamma 1e-4); the other
variables follow Adam (lr 0.01). ``--precision bf16`` trains under Keras' ``mixed_bfloat16``
policy (bfloat16 compute, float32 variables, the softmax in float32). larq 0.14 needs
TensorFlow's legacy Keras: the environment variable ``TF_USE_LEGACY_KERAS=1`` is set here before
TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import larq as lq
import numpy as np
import tensorflow as tf

#: batch norm as benchbnn's (PyTorch defaults: momentum 0.1 is Keras' 0.9, eps 1e-5), no scale
BN = {"momentum": 0.9, "epsilon": 1e-5, "scale": False}
BINARY = {"kernel_quantizer": "ste_sign", "kernel_constraint": None, "use_bias": False}


def binarynet(width: float, classes: int) -> tf.keras.Model:
    """BinaryNet at ``width`` (channel and unit counts times width, rounded) for 32x32x3."""

    def n(channels: int) -> int:
        return max(1, round(channels * width))

    layers = [
        tf.keras.Input((32, 32, 3)),
        lq.layers.QuantConv2D(n(128), 3, padding="valid", **BINARY),
        tf.keras.layers.BatchNormalization(**BN),
    ]
    for channels, pool in ((128, True), (256, False), (256, True), (512, False), (512, True)):
        layers.append(
            lq.layers.QuantConv2D(
                n(channels), 3, padding="same", input_quantizer="ste_sign", **BINARY
            )
        )
        if pool:
            layers.append(tf.keras.layers.MaxPool2D(2))
        layers.append(tf.keras.layers.BatchNormalization(**BN))
    layers.append(tf.keras.layers.Flatten())
    for units in (n(1024), n(1024), classes):
        layers.append(lq.layers.QuantDense(units, input_quantizer="ste_sign", **BINARY))
        layers.append(tf.keras.layers.BatchNormalization(**BN))
    layers.append(tf.keras.layers.Activation("softmax", dtype="float32"))
    return tf.keras.Sequential(layers)


class EpochClock(tf.keras.callbacks.Callback):
    """Wall seconds of each training epoch (evaluation is run separately, after fit)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help=".npz exported by bench_engine.py")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: Keras' mixed_bfloat16 policy (bfloat16 compute, float32 variables)",
    )
    args = parser.parse_args()
    if args.precision == "bf16":
        tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.keras.utils.set_random_seed(args.seed)
    data = np.load(args.data)
    model = binarynet(args.width, int(data["train_y"].max()) + 1)
    optimizer = lq.optimizers.CaseOptimizer(
        (lq.optimizers.Bop.is_binary_variable, lq.optimizers.Bop(threshold=1e-8, gamma=1e-4)),
        default_optimizer=tf.keras.optimizers.legacy.Adam(0.01),
    )
    model.compile(optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    clock = EpochClock()
    model.fit(
        data["train_x"],
        data["train_y"],
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[clock],
    )
    _, accuracy = model.evaluate(data["test_x"], data["test_y"], batch_size=256, verbose=0)
    print(json.dumps({"epoch_s": clock.seconds, "test_top1": 100.0 * float(accuracy)}))


if __name__ == "__main__":
    main()
