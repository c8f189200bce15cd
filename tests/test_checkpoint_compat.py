"""Checkpoints record what made them; one that cannot continue a run is refused or started over.

A third-party optimizer plugin whose next release adds a state buffer is written into tmp_path:
``benchbnn run --resume`` of a run interrupted under the old release stops with exit status 2 and
one line saying what differs, and ends the interrupted MLflow run; ``benchbnn compare`` starts the
run over in a new MLflow run and says so. Checkpoints written before the record existed (format
1) are read leniently: refused only for an actual difference, resumed bit-identically otherwise.
Whatever fails while a run ends (the summary, a tracking plugin's run_end), no MLflow run is left
RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_support import computed, fresh_store, tiny_config

import benchbnn
from benchbnn.cli import main as cli
from benchbnn.core import names
from benchbnn.core.config import RunConfig
from benchbnn.core.plugins import reset_registry
from benchbnn.train.engine import train
from benchbnn.train.tracking import client_for

#: An optimizer plugin in the shape of examples/benchbnn-example-optimizer; ``buffers`` is the
#: state layout of its release: the second release also averages the squared gradient.
RELEASE = '''"""layout-flip {version}: Bop-like flips of the weights against a gradient average."""
import benchbnn
from benchbnn.optim import BinaryOptimizer, adam_hparams, ema_, flip_

__version__ = "{version}"
HPARAMS = (benchbnn.HParam("threshold", 1e-6, low=0.0, high=1.0), *adam_hparams())


class LayoutFlip(BinaryOptimizer):
    hparams = HPARAMS
    state_buffers = {buffers!r}
    rule_keys = ("threshold",)

    def __init__(self, binary_params, real_params=(), *, threshold=1e-6, lr=0.01, beta1=0.9,
                 beta2=0.999, eps=1e-7, implementation=None):
        super().__init__(
            binary_params,
            real_params,
            binary={{"threshold": threshold}},
            real={{"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps}},
            implementation=implementation,
        )

    @staticmethod
    def update(w, g, *buffers, threshold):
        ema_(buffers[0], g, 1e-3)
        if len(buffers) > 1:
            ema_(buffers[1], g * g, 1e-3)
        return flip_(w, w * buffers[0] > threshold)


@benchbnn.hookimpl
def benchbnn_optimizers():
    return [benchbnn.OptimizerSpec("layout-flip", LayoutFlip, HPARAMS)]
'''
OLD_BUFFERS, NEW_BUFFERS = ("m",), ("m", "v")

#: Stops a run when epoch 2 starts (after epoch 1's checkpoint), as Ctrl-C would.
STOP_AT_EPOCH_TWO = """
import benchbnn

@benchbnn.hookimpl
def benchbnn_epoch_start(run, epoch):
    if epoch == 2:
        raise KeyboardInterrupt("stopped at epoch 2")
"""

#: Keeps a run waiting at the start of epoch 2, so that a SIGKILL lands mid-run.
PAUSE_AT_EPOCH_TWO = """
import time
import benchbnn

@benchbnn.hookimpl
def benchbnn_epoch_start(run, epoch):
    if epoch == 2:
        time.sleep(300)  # killed long before this ends
"""

SUITE = """\
name = "layout"
description = "One plugin optimizer on the digits, for tests."
dataset = "digits"
arch = "bnn-mlp"
epochs = 3
batch_size = 64
seeds = [0]

[arch_options]
hidden = [32]

[[entries]]
label = "layout-flip"
optimizer = "layout-flip"
"""

#: The suite's one run, as ``run_args`` describes it too.
CONFIG = RunConfig(
    dataset="digits",
    arch="bnn-mlp",
    optimizer="layout-flip",
    arch_options={"hidden": [32]},
    epochs=3,
    batch_size=64,
)


def run_args(store: str, checkpoints: Path, optimizer: str = "layout-flip") -> list[str]:
    """``benchbnn run`` of CONFIG (with another optimizer: the same budget)."""
    return [
        "run",
        "--dataset",
        "digits",
        "--arch",
        "bnn-mlp",
        "--arch-option",
        "hidden=32",
        "--optimizer",
        optimizer,
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--tracking-uri",
        store,
        "--checkpoint-dir",
        str(checkpoints),
        "--keep-checkpoints",  # the tests read finished runs' checkpoints
        "--quiet",
    ]


def compare_args(suite: Path, store: str, checkpoints: Path, out: Path) -> list[str]:
    return [
        "compare",
        str(suite),
        "--tracking-uri",
        store,
        "--checkpoint-dir",
        str(checkpoints),
        "--out",
        str(out),
        "--no-plots",
        "--keep-checkpoints",  # the tests read finished runs' checkpoints
        "--quiet",
    ]


def release_module(folder: Path, module: str, version: str, buffers: tuple[str, ...]) -> None:
    (folder / f"{module}.py").write_text(RELEASE.format(version=version, buffers=buffers))


def install_release(site: Path, version: str, buffers: tuple[str, ...]) -> Path:
    """A tiny installed distribution ``layout-flip`` (what ``pip install --target`` leaves)."""
    site.mkdir(parents=True)
    release_module(site, "layout_flip", version, buffers)
    info = site / f"layout_flip-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: layout-flip\nVersion: {version}\n"
    )
    (info / "entry_points.txt").write_text("[benchbnn]\nlayout-flip = layout_flip\n")
    return site


def as_format_one(directory: Path) -> None:
    """Rewrite the checkpoint in ``directory`` as benchbnn wrote it before checkpoints recorded
    what made them: format 1, no record, a summary of four keys."""
    path = directory / "last.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    del state["made_with"]
    state["format"] = 1
    torch.save(state, path)
    summary = json.loads((directory / "last.json").read_text())
    keys = ("config_hash", "epoch", "step", "run_id")
    (directory / "last.json").write_text(json.dumps({k: summary[k] for k in keys}))


def runs_of(store: str, experiment: str = names.DEFAULT_EXPERIMENT) -> list:
    client = client_for(store)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def epochs_logged(store: str, run_id: str) -> list[int]:
    return [m.step for m in client_for(store).get_metric_history(run_id, "test_top1")]


@pytest.fixture
def plugin_modules(tmp_path, monkeypatch):
    """``use("a", "b")`` loads modules of tmp_path as plugins through BENCHBNN_PLUGINS."""
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded: list[str] = []

    def use(*modules: str) -> None:
        monkeypatch.setenv("BENCHBNN_PLUGINS", ",".join(modules))
        loaded.extend(modules)
        reset_registry()

    yield use
    for module in loaded:
        sys.modules.pop(module, None)
    reset_registry()


# --- another state layout: run --resume refuses, compare starts over ---------------------------


def test_a_checkpoint_of_another_state_layout_is_refused_by_run_and_started_over_by_compare(
    tmp_path, plugin_modules, capsys
):
    """The checkpoint is of format 1 (no record): its layout is read from its tensors."""
    store = fresh_store(tmp_path / "store")
    release_module(tmp_path, "layout_flip_old", "0.1.0", OLD_BUFFERS)
    release_module(tmp_path, "layout_flip_new", "0.2.0", NEW_BUFFERS)
    (tmp_path / "stop_at_epoch_two.py").write_text(STOP_AT_EPOCH_TWO)
    (tmp_path / "layout.toml").write_text(SUITE)

    plugin_modules("layout_flip_old", "stop_at_epoch_two")
    # the identity is the resolved configuration: it needs the plugin that fills the defaults in
    checkpoints = tmp_path / "ck" / CONFIG.config_hash()
    assert cli(run_args(store, checkpoints)) == 130
    as_format_one(checkpoints)
    (old,) = runs_of(store)
    client_for(store).update_run(old.info.run_id, status="RUNNING")  # as SIGKILL leaves it
    capsys.readouterr()

    plugin_modules("layout_flip_new")
    assert cli([*run_args(store, checkpoints), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        f"benchbnn: error: checkpoint of run {old.info.run_id[:8]} ({checkpoints / 'last.pt'}, "
        f"after epoch 1) was made with binary state buffers (m), but layout-flip (local module) "
        f"keeps (m, v); run it again without --resume to start over from epoch 1"
    )
    ended = client_for(store).get_run(old.info.run_id)
    assert ended.info.status == "KILLED"
    assert "binary state buffers (m)" in ended.data.tags[names.TAG_FAILURE]
    assert epochs_logged(store, old.info.run_id) == [1]  # nothing was trained

    out = tmp_path / "leaderboard"
    assert cli(compare_args(tmp_path / "layout.toml", store, tmp_path / "ck", out)) == 0
    printed = capsys.readouterr().out
    assert "resuming 1, training 0" in printed
    assert (
        "[1/1] layout/layout-flip/bnn-mlp/seed0: checkpoint of run "
        f"{old.info.run_id[:8]}" in printed
    )
    assert "keeps (m, v); starting over from epoch 1 in a new MLflow run" in printed
    (row,) = json.loads((out / "leaderboard.json").read_text())["rows"]
    (standing,) = row["runs"]
    assert standing["status"] == "FINISHED" and standing["epochs"] == 3
    assert standing["run_id"] != old.info.run_id
    assert epochs_logged(store, standing["run_id"]) == [1, 2, 3]
    assert client_for(store).get_run(old.info.run_id).info.status == "KILLED"
    assert len(runs_of(store)) == 2
    saved = torch.load(checkpoints / "last.pt", weights_only=True)
    assert saved["epoch"] == 3 and saved["format"] == 2
    assert saved["made_with"]["optimizer_state"]["groups"][0]["buffers"] == {
        "m": "float32",
        "v": "float32",
    }


def _wait_for_epoch_one(summary: Path, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if summary.exists() and json.loads(summary.read_text())["epoch"] == 1:
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.communicate()}")
        time.sleep(0.1)
    raise AssertionError("no checkpoint after epoch 1")


@pytest.fixture
def installed(monkeypatch):
    """``installed(site)`` puts an installed distribution on sys.path, as pip would."""
    yield lambda site: (monkeypatch.syspath_prepend(str(site)), reset_registry())
    sys.modules.pop("layout_flip", None)
    reset_registry()


@pytest.mark.slow
def test_a_killed_run_of_an_older_release_is_refused_then_started_over(tmp_path, installed, capsys):
    """A real ``benchbnn run`` under layout-flip 0.1.0 is SIGKILLed; 0.2.0 is installed."""
    store = fresh_store(tmp_path / "store")
    old_site = install_release(tmp_path / "site-0.1.0", "0.1.0", OLD_BUFFERS)
    new_site = install_release(tmp_path / "site-0.2.0", "0.2.0", NEW_BUFFERS)
    (tmp_path / "pause_at_epoch_two.py").write_text(PAUSE_AT_EPOCH_TWO)
    (tmp_path / "layout.toml").write_text(SUITE)
    # the identity is the resolved configuration: it needs the plugin that fills the defaults in
    # (both releases declare the same hyperparameters, so either gives the run's hash)
    installed(new_site)
    checkpoints = tmp_path / "ck" / CONFIG.config_hash()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(old_site), str(tmp_path), os.environ.get("PYTHONPATH")])
        ),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "benchbnn", "-p", "pause_at_epoch_two"]
        + run_args(store, checkpoints),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_epoch_one(checkpoints / "last.json", process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    summary = json.loads((checkpoints / "last.json").read_text())
    assert summary["config_hash"] == CONFIG.config_hash()
    assert summary["made_with"]["plugins"]["optimizer"] == {
        "name": "layout-flip",
        "distribution": "layout-flip",
        "version": "0.1.0",
    }
    killed = summary["run_id"]
    assert client_for(store).get_run(killed).info.status == "RUNNING"

    installed(new_site)
    assert cli([*run_args(store, checkpoints), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"benchbnn: error: checkpoint of run {killed[:8]} ({checkpoints / 'last.pt'}, after "
        f"epoch 1) was made by layout-flip 0.1.0 with binary state buffers (m), but layout-flip "
        f"0.2.0 keeps (m, v); run it again without --resume to start over from epoch 1 (in a new "
        f"MLflow run), or install layout-flip==0.1.0 to continue it\n"
    )
    run = client_for(store).get_run(killed)
    assert run.info.status == "KILLED"
    assert run.data.tags[names.TAG_FAILURE].startswith("its checkpoint cannot be resumed: ")

    out = tmp_path / "leaderboard"
    assert cli(compare_args(tmp_path / "layout.toml", store, tmp_path / "ck", out)) == 0
    printed = capsys.readouterr().out
    assert "was made by layout-flip 0.1.0 with binary state buffers (m)" in printed
    assert "starting over from epoch 1 in a new MLflow run" in printed
    (row,) = json.loads((out / "leaderboard.json").read_text())["rows"]
    (standing,) = row["runs"]
    assert standing["status"] == "FINISHED" and standing["epochs"] == 3
    assert epochs_logged(store, standing["run_id"]) == [1, 2, 3]
    assert {r.info.status for r in runs_of(store)} == {"FINISHED", "KILLED"}


# --- a matching checkpoint of format 1 still resumes, bit-identically --------------------------

HPARAMS = {"scaler": 1e4, "gamma": 1e-3}
SCHEDULE = {"threshold": {"schedule": "polynomial", "start": 1e-5, "end": 1e-8, "power": 1.0}}
PBOP = ["--set", "scaler=1e4", "--set", "gamma=1e-3"]
PBOP += ["--schedule", "threshold=polynomial:1e-5:1e-8"]


class _Stopped(Exception):
    pass


class _StopAtEpochTwo:
    @benchbnn.hookimpl
    def benchbnn_epoch_start(self, run, epoch):
        if epoch == 2:
            raise _Stopped("stopped at epoch 2")


def _same(a, b) -> bool:
    """Exact equality of nested state (dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_matching_checkpoint_of_format_one_resumes_bit_identically(tmp_path):
    """PBop (its own generator) with a schedule, as in test_engine_resume, from a format-1
    checkpoint: the resumed run ends with the uninterrupted run's exact state and metrics."""
    store = fresh_store(tmp_path / "store")
    resumed_dir, whole_dir = tmp_path / "resumed", tmp_path / "whole"
    config = tiny_config(optimizer="pbop", hparams=HPARAMS, schedules=SCHEDULE, epochs=3)
    with pytest.raises(_Stopped):
        train(
            config,
            tracking_uri=store,
            checkpoint_dir=resumed_dir,
            quiet=True,
            plugins=[_StopAtEpochTwo()],
        )
    as_format_one(resumed_dir)
    stopped = json.loads((resumed_dir / "last.json").read_text())["run_id"]

    assert cli([*run_args(store, resumed_dir, "pbop"), *PBOP, "--resume"]) == 0
    assert cli([*run_args(store, whole_dir, "pbop"), *PBOP]) == 0

    resumed = torch.load(resumed_dir / "last.pt", weights_only=True)
    whole = torch.load(whole_dir / "last.pt", weights_only=True)
    assert resumed["run_id"] == stopped and resumed["format"] == 2
    assert resumed["epoch"] == whole["epoch"] == 3 and resumed["step"] == whole["step"]
    assert _same(resumed["model"], whole["model"])
    assert _same(resumed["optimizer"], whole["optimizer"])  # PBop's generator included
    assert _same(resumed["rng"], whole["rng"])
    assert computed(resumed["history"]) == computed(whole["history"])
    client = client_for(store)
    assert client.get_run(stopped).info.status == "FINISHED"
    assert epochs_logged(store, stopped) == [1, 2, 3]
    assert [m.value for m in client.get_metric_history(stopped, "test_top1")] == [
        m.value for m in client.get_metric_history(whole["run_id"], "test_top1")
    ]


# --- whatever fails while a run ends, its MLflow run is not left RUNNING ------------------------

#: An optimizer whose state lost its buffer "v" (what loading an older release's checkpoint used
#: to produce): its step and its state size both raise KeyError, the second one while the crash
#: is being summarised. A tracking plugin then fails in run_end.
CRASHING = """
import benchbnn
from benchbnn.optim import BinaryOptimizer, adam_hparams, ema_, flip_

HPARAMS = (benchbnn.HParam("threshold", 1e-6, low=0.0, high=1.0), *adam_hparams())


class LostBuffer(BinaryOptimizer):
    hparams = HPARAMS
    state_buffers = ("m", "v")
    rule_keys = ("threshold",)

    def __init__(self, binary_params, real_params=(), *, threshold=1e-6, lr=0.01, beta1=0.9,
                 beta2=0.999, eps=1e-7):
        super().__init__(
            binary_params,
            real_params,
            binary={{"threshold": threshold}},
            real={{"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps}},
        )
        for p in self.param_groups[0]["params"]:
            del self.state[p]["v"]

    @staticmethod
    def update(w, g, m, v, *, threshold):
        ema_(m, g, 1e-3)
        ema_(v, g * g, 1e-3)
        return flip_(w, w * m > threshold)


@benchbnn.hookimpl
def benchbnn_optimizers():
    return [benchbnn.OptimizerSpec("lost-buffer", LostBuffer, HPARAMS)]


@benchbnn.hookimpl
def benchbnn_run_end(run, result):
    raise {error}("the tracking plugin failed while ending the run")
"""


@pytest.mark.parametrize(("error", "status"), [("RuntimeError", 1), ("KeyboardInterrupt", 130)])
def test_a_crash_while_ending_the_run_leaves_no_mlflow_run_running(
    tmp_path, plugin_modules, capsys, error, status
):
    store = fresh_store(tmp_path / "store")
    module = f"crashing_{error.lower()}"
    (tmp_path / f"{module}.py").write_text(CRASHING.format(error=error))
    plugin_modules(module)
    with pytest.warns(RuntimeWarning) as warned:
        assert cli(run_args(store, tmp_path / "ck", "lost-buffer")) == status
    messages = [str(w.message) for w in warned]
    assert any("could not summarise the run: KeyError('v')" in m for m in messages)
    if error == "RuntimeError":
        assert any(f"plugin {module!r} failed in run_end" in m for m in messages)
        assert "benchbnn: failed: run crashed: KeyError: 'v'" in capsys.readouterr().err
    (run,) = runs_of(store)
    assert run.info.status == "FAILED"
    assert run.data.tags[names.TAG_FAILURE] == "KeyError: 'v'"
