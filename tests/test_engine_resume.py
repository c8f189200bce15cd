"""Kill a real ``benchbnn run`` process with SIGKILL, resume it, and get the uninterrupted result.

The killed process is a real subprocess; a small plugin loaded with ``-p`` only makes it pause at
the start of epoch 2 (after epoch 1's checkpoint was written) so the kill lands mid-run instead of
racing the end of a tiny run. PBop (random flips from its own generator) and a schedule are used
so that the generator state and the schedule position both have to survive the checkpoint.
Both model modes are covered: eager (what "auto" chooses for the MLP) and compiled (``--compile
on``): within a mode, the resumed run ends bit-identical to the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from engine_support import computed, fresh_store, tiny_config
from mlflow import MlflowClient

import benchbnn
from benchbnn.train.engine import train

PAUSE_PLUGIN = """
import time
import benchbnn

@benchbnn.hookimpl
def benchbnn_epoch_start(run, epoch):
    if epoch == 2:
        time.sleep(300)  # killed long before this ends
"""

HPARAMS = {"scaler": 1e4, "gamma": 1e-3}
SCHEDULE = {"threshold": {"schedule": "polynomial", "start": 1e-5, "end": 1e-8, "power": 1.0}}


def config():
    return tiny_config(optimizer="pbop", hparams=HPARAMS, schedules=SCHEDULE, epochs=3)


class FinalState:
    """Captures the model and optimizer state at the end of a run."""

    @benchbnn.hookimpl
    def benchbnn_run_end(self, run, result):
        self.model = {k: v.clone() for k, v in run.model.state_dict().items()}
        self.optimizer = run.optimizer.state_dict()


def _same(a, b) -> bool:
    """Exact equality of nested state (dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _cli_args(store: str, checkpoints, compile: str) -> list[str]:
    return [
        "run",
        "--dataset",
        "digits",
        "--arch",
        "bnn-mlp",
        "--arch-option",
        "hidden=32",
        "--optimizer",
        "pbop",
        "--set",
        "scaler=1e4",
        "--set",
        "gamma=1e-3",
        "--schedule",
        "threshold=polynomial:1e-5:1e-8",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--tracking-uri",
        store,
        "--checkpoint-dir",
        str(checkpoints),
        "--compile",
        compile,
        "--quiet",
    ]


def _wait_for_checkpoint(summary, process, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if summary.exists() and json.loads(summary.read_text())["epoch"] == 1:
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.communicate()}")
        time.sleep(0.1)
    raise AssertionError("no checkpoint after epoch 1")


@pytest.mark.slow
@pytest.mark.parametrize("compile", ["auto", "on"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, compile):
    store = fresh_store(tmp_path / "store")
    (tmp_path / "pause_at_epoch_two.py").write_text(PAUSE_PLUGIN)
    checkpoints = tmp_path / "ck"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }  # the same arithmetic as this process
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchbnn",
            "-p",
            "pause_at_epoch_two",
            *_cli_args(store, checkpoints, compile),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_checkpoint(checkpoints / "last.json", process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    killed_run = json.loads((checkpoints / "last.json").read_text())["run_id"]
    client = MlflowClient(store)
    assert client.get_run(killed_run).info.status == "RUNNING"  # SIGKILL left no chance to end it

    resumed_state, whole_state = FinalState(), FinalState()
    resumed = train(
        config(),
        tracking_uri=store,
        checkpoint_dir=checkpoints,
        resume=True,
        quiet=True,
        plugins=[resumed_state],
        compile=compile,
    )
    whole = train(
        config(),
        tracking_uri=store,
        checkpoint_dir=tmp_path / "whole",
        quiet=True,
        plugins=[whole_state],
        compile=compile,
    )

    assert resumed.status == whole.status == "FINISHED"
    assert computed(resumed.history) == computed(whole.history)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for key, value in whole_state.model.items():
        assert torch.equal(resumed_state.model[key], value), key
    assert _same(resumed_state.optimizer, whole_state.optimizer)  # PBop's generator included
    # the resumed run continued the killed MLflow run: one run, every epoch logged once
    assert resumed.run_id == killed_run
    run = client.get_run(killed_run)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(killed_run, "test_top1")] == [1, 2, 3]
    assert [m.value for m in client.get_metric_history(killed_run, "test_top1")] == pytest.approx(
        [h["test_top1"] for h in whole.history]
    )
