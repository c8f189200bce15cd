"""The progress display, driven by a real run: a live line on a terminal, epochs, table, summary."""

from __future__ import annotations

import io

from engine_support import fresh_store, tiny_config

from benchbnn.train.engine import train
from benchbnn.train.progress import ProgressDisplay, epoch_table


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_line_epoch_lines_table_and_summary(tmp_path):
    out, tty = io.StringIO(), Terminal()
    display = ProgressDisplay(out=out, live=tty, interval=0.0)  # redraw on every step
    result = train(
        tiny_config(),
        quiet=True,
        tracking_uri=fresh_store(tmp_path),
        checkpoint_dir=tmp_path / "ck",
        plugins=[display],
    )
    live = [frame for frame in tty.getvalue().split("\r\x1b[2K") if frame]
    assert live[0].startswith("epoch 1/2 step 1/")
    for field in ("loss ", "top-1 ", "% pi_t ", " img/s"):
        assert all(field in frame for frame in live), field
    assert tty.getvalue().endswith("\r\x1b[2K")  # the live line is cleared before printing
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("benchbnn: bop2ndorder on bnn-mlp/digits, 2 epochs")
    assert lines[1].startswith("epoch 1/2: train loss") and lines[2].startswith("epoch 2/2:")
    assert lines[3:6] == epoch_table(result.history).splitlines()
    assert lines[6].startswith("FINISHED bop2ndorder on bnn-mlp/digits seed 0; test top-1")
    assert len(lines) == 7


def test_quiet_and_not_a_terminal(tmp_path):
    out, pipe = io.StringIO(), io.StringIO()
    display = ProgressDisplay(quiet=True, out=out, live=pipe, interval=0.0)
    train(
        tiny_config(epochs=1),
        quiet=True,
        tracking_uri=fresh_store(tmp_path),
        checkpoint_dir=tmp_path / "ck",
        plugins=[display],
    )
    assert pipe.getvalue() == ""  # no live line into a pipe or log
    assert len(out.getvalue().splitlines()) == 1 and out.getvalue().startswith("FINISHED")
