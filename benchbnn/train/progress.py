"""Progress display, as a plugin of the engine's lifecycle hooks.

On a terminal a single live line (epoch, step, loss, accuracy, flip ratio, images/s) is redrawn
in place with ``\\r`` at most a few times a second; it reads device tensors only when it
redraws, so it never slows the training loop. Each finished epoch prints one line, and the run
ends with a table of all epochs and a one-line summary. ``quiet`` prints the summary line only
(for logs and CI). Plain ANSI, no dependency.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from benchbnn.core.formatting import fixed
from benchbnn.core.names import FAILURE_STOPPED
from benchbnn.core.plugins import hookimpl

_CLEAR = "\r\033[2K"


def summary_line(run: Any, result: Any) -> str:
    """One line saying how the run ended, its headline accuracy and where it is tracked."""
    cfg = run.config
    what = f"{cfg.optimizer} on {cfg.arch}/{cfg.dataset} seed {cfg.seed}"
    m = result.metrics
    parts = [f"{ending_word(result):<8} {what}"]
    if "test_top1" in m:
        parts.append(f"test top-1 {m['test_top1']:.2f}% top-5 {m['test_top5']:.2f}%")
    if "val_top1" in m:
        parts.append(f"val top-1 {m['val_top1']:.2f}%")
    parts.append(f"{len(result.history)}/{cfg.epochs} epochs")
    if result.error:
        parts.append(result.error)
    if run.run_id:
        parts.append(f"run {run.run_id} in {run.tracking_uri}")
    if getattr(run, "replaced_checkpoint_epoch", None):
        parts.append(
            f"(started over instead of continuing the checkpoint at epoch "
            f"{run.replaced_checkpoint_epoch})"
        )
    return "; ".join(parts)


def ending_word(result: Any) -> str:
    """How the run ended, in capitals: its status, except for a run a plugin stopped on purpose
    (failure class ``stopped``), named by the outcome its failure reason starts with
    (:meth:`benchbnn.core.errors.RunStopped.record`: ``PRUNED`` for a pruned trial), so that
    a deliberate stop never reads as KILLED."""
    if getattr(result, "failure_class", None) == FAILURE_STOPPED:
        word = str(result.error or "").partition(":")[0].strip()
        return word.upper() if word.isalpha() else "STOPPED"
    return str(result.status)


def epoch_table(history: list[Mapping[str, Any]]) -> str:
    """All epochs' headline metrics as an aligned text table."""
    has_val = any("val_top1" in h for h in history)
    columns = [
        ("epoch", "epoch", 0),
        ("train loss", "train_loss", 4),
        ("train top1", "train_top1", 2),
    ]
    if has_val:
        columns.append(("val top1", "val_top1", 2))
    columns += [
        ("test top1", "test_top1", 2),
        ("test top5", "test_top5", 2),
        ("pi_t", "flip_log_ratio", 3),
        ("time s", "epoch_time_s", 1),
        ("img/s", "images_per_s", 0),
    ]
    rows = [[h[0] for h in columns]]
    for entry in history:
        rows.append([fixed(entry.get(key), digits) for _, key, digits in columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


class ProgressDisplay:
    """Live line on a TTY, a line per epoch, and a final table and summary."""

    def __init__(
        self,
        quiet: bool = False,
        out: TextIO | None = None,
        live: TextIO | None = None,
        interval: float = 0.25,
    ):
        self.quiet = quiet
        self.out = out or sys.stdout
        self.live_stream = live or sys.stderr
        self.live = not quiet and _isatty(self.live_stream)
        self.interval = interval
        self._next_draw = 0.0
        self._epoch_started = 0.0
        self._drawn = False

    def _print(self, text: str) -> None:
        self._clear()
        print(text, file=self.out, flush=True)

    def _clear(self) -> None:
        if self._drawn:
            self.live_stream.write(_CLEAR)
            self.live_stream.flush()
            self._drawn = False

    @hookimpl
    def benchbnn_run_start(self, run: Any) -> None:
        if self.quiet:
            return
        cfg = run.config
        start = f", resuming after epoch {run.start_epoch}" if run.start_epoch else ""
        self._print(
            f"benchbnn: {cfg.optimizer} on {cfg.arch}/{cfg.dataset}, {cfg.epochs} epochs x "
            f"{run.steps_per_epoch} steps of {cfg.batch_size}, seed {cfg.seed}, {run.device}"
            f"{f' x{run.world_size}' if run.world_size > 1 else ''}{start}"
        )
        if getattr(run, "note", None):
            self._print(f"note: {run.note}")
        if getattr(run, "replaced_checkpoint_epoch", None):
            self._print(
                f"note: starting over: the checkpoint of this configuration at epoch "
                f"{run.replaced_checkpoint_epoch} is replaced when this run saves its first epoch"
            )

    @hookimpl
    def benchbnn_epoch_start(self, run: Any, epoch: int) -> None:
        self._epoch_started = time.monotonic()
        self._next_draw = self._epoch_started + self.interval

    @hookimpl
    def benchbnn_step_end(self, run: Any, step: int, logs: Mapping[str, Any]) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now < self._next_draw:
            return
        self._next_draw = now + self.interval
        loss_sum, top1, _, seen = logs["totals"].tolist()
        pi = logs.get("flip_log_ratio")
        rate = seen * run.world_size / max(now - self._epoch_started, 1e-9)
        line = (
            f"epoch {logs['epoch']}/{run.config.epochs} step {logs['batch']}/{logs['batches']} "
            f"loss {loss_sum / max(seen, 1):.4f} top-1 {100 * top1 / max(seen, 1):.2f}% "
            f"pi_t {fixed(None if pi is None else float(pi), 2)} {rate:.0f} img/s"
        )
        self.live_stream.write(_CLEAR + line)
        self.live_stream.flush()
        self._drawn = True

    @hookimpl
    def benchbnn_epoch_end(self, run: Any, epoch: int, metrics: Mapping[str, Any]) -> None:
        if self.quiet:
            return
        val = f" val top-1 {fixed(metrics['val_top1'])}%" if "val_top1" in metrics else ""
        self._print(
            f"epoch {epoch}/{run.config.epochs}: train loss {fixed(metrics.get('train_loss'), 4)} "
            f"top-1 {fixed(metrics.get('train_top1'))}%{val} test top-1 "
            f"{fixed(metrics.get('test_top1'))}% pi_t {fixed(metrics.get('flip_log_ratio'), 3)} "
            f"{fixed(metrics.get('epoch_time_s'), 1)} s "
            f"{fixed(metrics.get('images_per_s'), 0)} img/s"
        )

    @hookimpl
    def benchbnn_run_end(self, run: Any, result: Any) -> None:
        self._clear()
        if not self.quiet and result.history:
            print(epoch_table(result.history), file=self.out)
        print(summary_line(run, result), file=self.out, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
