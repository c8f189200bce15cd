"""The figure stored with every tracked run: accuracy per epoch beside the flip ratio pi_t."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchbnn.core.figures import new_figure, save_png


def plot_curves(
    history: list[Mapping[str, Any]],
    steps: list[tuple[int, float]],
    path: Path,
    steps_per_epoch: int = 1,
) -> None:
    """Top-1 accuracy per epoch (train / val / test) and the flip ratio pi_t, side by side."""
    fig = new_figure(10, 4)
    acc, flips = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for split in ("train", "val", "test"):
        values = [h.get(f"{split}_top1") for h in history]
        if any(v is not None for v in values):
            ys = [math.nan if v is None else v for v in values]
            acc.plot(epochs, ys, marker=".", label=split)
    acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    if history:
        acc.legend()
    acc.grid(alpha=0.3)
    if steps:
        step_xs, step_ys = zip(*sorted(steps))
        flips.plot(step_xs, step_ys, linewidth=0.8, label="per step (sampled)")
    means = [(h["epoch"], h["flip_log_ratio"]) for h in history if "flip_log_ratio" in h]
    if means:  # an epoch's mean drawn at the epoch's last step (or at the epoch, without steps)
        scale = steps_per_epoch if steps else 1
        flips.plot(
            [e * scale for e, _ in means], [v for _, v in means], marker="o", label="epoch mean"
        )
    flips.set(
        xlabel="step" if steps else "epoch", ylabel="pi_t = log(F_t/N + e^-9)", title="flip ratio"
    )
    if steps or means:
        flips.legend()
    flips.grid(alpha=0.3)
    save_png(fig, path)
