"""Leaderboard plots like the paper's: accuracy per epoch (Figs. 5-7) and the flip ratio pi_t.

One panel per architecture, one colour per entry, curves averaged over the finished seeds.
Drawn with :mod:`benchbnn.core.figures` (reproducible PNGs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from benchbnn.bench.results import Leaderboard
from benchbnn.core.figures import colors, new_figure, save_png
from benchbnn.train.runs import RunRecord


def _mean_curve(records: Sequence[RunRecord], metric: str) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for r in records:
        for row in r.history:
            value = row.get(metric)
            if value is not None and math.isfinite(value):
                by_epoch.setdefault(int(row["epoch"]), []).append(float(value))
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def _figure(lb: Leaderboard, ylabel: str):
    """A figure with one panel per architecture (no pyplot: no global state, no display)."""
    from matplotlib.ticker import MaxNLocator

    n = len(lb.suite.archs)
    fig = new_figure(6.4 * n, 4.4)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, arch in zip(axes, lb.suite.archs):
        ax.set_title(f"{lb.suite.name}: {arch}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    return fig, axes


def plot_curves(lb: Leaderboard, path: Path) -> Path:
    """Training (solid) and validation (dashed) top-1 per epoch, mean over seeds, per entry."""
    fig, axes = _figure(lb, "top-1 accuracy (%)")
    metric = f"{lb.suite.eval_split}_top1"
    palette = colors(len(lb.suite.entries))
    for ax, arch in zip(axes, lb.suite.archs):
        for color, entry in zip(palette, lb.suite.entries):
            done = [r for r in lb.row(entry.label, arch).records if r.finished]
            for name, style, suffix in (
                ("train_top1", "-", "train"),
                (metric, "--", lb.suite.eval_split),
            ):
                x, y = _mean_curve(done, name)
                if x:
                    ax.plot(x, y, style, color=color, label=f"{entry.label} ({suffix})")
        ax.set_xlabel("epoch")
        if ax.has_data():
            ax.legend(fontsize=7, ncol=2)
    return save_png(fig, path)


def plot_flips(lb: Leaderboard, path: Path) -> Path:
    """The flip ratio pi_t = log(F_t/N + e^-9) per step (per epoch if steps were not logged)."""
    fig, axes = _figure(lb, "pi_t = log(flips / N + e^-9)")
    palette = colors(len(lb.suite.entries))
    per_step = any(r.step_flips for r in lb.records)
    for ax, arch in zip(axes, lb.suite.archs):
        for color, entry in zip(palette, lb.suite.entries):
            done = [r for r in lb.row(entry.label, arch).records if r.finished]
            if per_step:
                points: dict[int, list[float]] = {}
                for r in done:
                    for step, value in r.step_flips:
                        points.setdefault(step, []).append(value)
                x = sorted(points)
                y = [sum(points[s]) / len(points[s]) for s in x]
            else:
                x, y = _mean_curve(done, "flip_log_ratio")
            if x:
                ax.plot(x, y, color=color, linewidth=0.8, label=entry.label)
        ax.set_xlabel("optimizer step" if per_step else "epoch")
        if ax.has_data():
            ax.legend(fontsize=7)
    return save_png(fig, path)
