"""The training engine: reproducibility, lifecycle hooks, checkpoints, divergence, bad input.

Real runs on the embedded digits data with a small BNN MLP, tracked into temporary SQLite
stores; nothing is mocked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from engine_support import assert_has_epoch_metrics, computed, fresh_store, tiny_config
from mlflow import MlflowClient
from torch import nn

import benchbnn
from benchbnn.core import names
from benchbnn.core.binary import BinaryLinear, split_parameters
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError, HyperparameterError
from benchbnn.train.engine import canonical_config, l2_parameters, train


@pytest.fixture
def store(tmp_path) -> str:
    return fresh_store(tmp_path / "store")


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


# --- reproducibility ------------------------------------------------------------------------


def test_same_seed_gives_identical_metrics(store, tmp_path):
    """PBop is included on purpose: its random flips come from a generator seeded by the run.
    Seed 0 is an ordinary seed (not "unseeded"): two runs with it agree exactly."""
    runs = [
        train(
            tiny_config(optimizer="pbop", seed=seed, hparams={"scaler": 1e4}),
            quiet=True,
            tracking_uri=store,
            checkpoint_dir=tmp_path / f"ck{i}",
        )
        for i, seed in enumerate((0, 0, 1))
    ]
    assert all(r.status == "FINISHED" for r in runs)
    assert computed(runs[0].history) == computed(runs[1].history)
    assert computed(runs[0].history) != computed(runs[2].history)  # the seed matters
    assert runs[0].config_hash == runs[1].config_hash != runs[2].config_hash


# --- lifecycle hooks ------------------------------------------------------------------------


class Recorder:
    """Records every lifecycle call and adds an extra metric at each epoch's end."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.saved_before_epoch: list[int | None] = []

    @benchbnn.hookimpl
    def benchbnn_run_start(self, run):
        self.calls.append(("run_start", run.run_id is not None, run.rank, run.world_size))
        self.steps_per_epoch = run.steps_per_epoch

    @benchbnn.hookimpl
    def benchbnn_epoch_start(self, run, epoch):
        self.calls.append(("epoch_start", epoch))
        summary = run.checkpoint_dir / "last.json"
        self.saved_before_epoch.append(
            json.loads(summary.read_text())["epoch"] if summary.exists() else None
        )

    @benchbnn.hookimpl
    def benchbnn_step_end(self, run, step, logs):
        self.calls.append(("step_end", step, logs["epoch"], logs["batch"]))
        assert logs["loss"].device == run.device and logs["loss"].ndim == 0
        assert logs["flip_ratio"] is not None and logs["flip_log_ratio"] is not None

    @benchbnn.hookimpl
    def benchbnn_epoch_end(self, run, epoch, metrics):
        self.calls.append(("epoch_end", epoch))
        metrics["weights_norm"] = float(sum(p.detach().abs().sum() for p in run.binary_params))

    @benchbnn.hookimpl
    def benchbnn_run_end(self, run, result):
        self.calls.append(("run_end", result.status))


def test_lifecycle_hooks_run_in_order(store, tmp_path):
    recorder = Recorder()
    result = train(
        tiny_config(),
        quiet=True,
        tracking_uri=store,
        checkpoint_dir=tmp_path / "ck",
        plugins=[recorder],
    )
    spe = recorder.steps_per_epoch
    expected = [("run_start", True, 0, 1)]
    for epoch in (1, 2):
        expected.append(("epoch_start", epoch))
        expected += [("step_end", (epoch - 1) * spe + b, epoch, b) for b in range(1, spe + 1)]
        expected.append(("epoch_end", epoch))
    expected.append(("run_end", "FINISHED"))
    assert recorder.calls == expected
    # every epoch is checkpointed: epoch 2 starts from epoch 1's checkpoint
    assert recorder.saved_before_epoch == [None, 1]
    # an extra metric added by a plugin is kept in the history and tracked with step=epoch
    assert [h["weights_norm"] for h in result.history] == [2368.0, 2368.0]  # all weights +-1
    history = MlflowClient(store).get_metric_history(result.run_id, "weights_norm")
    assert [m.step for m in history] == [1, 2]


def test_result_holds_epoch_and_run_metrics(store, tmp_path):
    result = train(
        tiny_config(),
        quiet=True,
        tracking_uri=store,
        checkpoint_dir=tmp_path / "ck",
        keep_checkpoint=True,  # else deleted once the run has finished
    )
    assert result.finished and result.error is None
    for entry in result.history:
        assert_has_epoch_metrics(entry)
        assert -9.0 <= entry["flip_log_ratio"] <= 0.0
        assert 0.0 <= entry["flip_ratio"] <= 1.0
    last = {k: v for k, v in result.history[-1].items() if k != "epoch"}
    assert {k: result.metrics[k] for k in last} == last
    assert result.metrics["binary_weights"] == 2368 and result.metrics["peak_memory_mb"] > 0
    assert Path(result.checkpoint).is_file()
    leftovers = [p.name for p in Path(result.checkpoint).parent.iterdir()]
    assert sorted(leftovers) == ["last.json", "last.pt"]  # no temporary files left behind


def test_a_finished_checkpoint_resumes_into_the_same_run(store, tmp_path):
    first = train(
        tiny_config(),
        quiet=True,
        tracking_uri=store,
        checkpoint_dir=tmp_path / "ck",
        keep_checkpoint=True,  # else deleted once the run has finished
    )
    again = train(
        tiny_config(), quiet=True, tracking_uri=store, checkpoint_dir=tmp_path / "ck", resume=True
    )
    assert again.run_id == first.run_id and again.status == "FINISHED"
    assert again.history == first.history
    client = MlflowClient(store)
    assert [m.step for m in client.get_metric_history(first.run_id, "test_top1")] == [1, 2]
    assert client.get_run(first.run_id).data.tags[names.TAG_RESUMED] == "2"
    fresh = train(tiny_config(), quiet=True, tracking_uri=store, checkpoint_dir=tmp_path / "ck")
    assert fresh.run_id != first.run_id  # without --resume the checkpoint is not used
    assert computed(fresh.history) == computed(first.history)


# --- divergence --------------------------------------------------------------------------------


def test_divergence_ends_failed_without_raising(store, tmp_path):
    """Adam with lr 10 and neither a second-moment average nor epsilon (beta2 = 0, eps = 0)
    divides by |g| of single noisy gradients: the batch-norm parameters blow up and the loss
    becomes infinite within the first epoch. A real divergence, not an injected one."""
    cfg = tiny_config(optimizer="bop", hparams={"lr": 10.0, "beta2": 0.0, "eps": 0.0}, epochs=3)
    result = train(cfg, quiet=True, tracking_uri=store, checkpoint_dir=tmp_path / "ck")
    assert result.status == "FAILED"
    assert "diverged" in result.error and "epoch 1" in result.error
    assert result.history == [] and result.checkpoint is None
    run = MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags[names.TAG_FAILURE]


# --- bad input: a clear error and nothing started ----------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hparams": {"gama": 1e-7}}, "no hyperparameter 'gama'.*Did you mean 'gamma'"),
        ({"schedules": {"threshold": "polynomial:1e-5"}}, "polynomial"),
        ({"schedules": {"unbiased": "constant:1"}}, "unbiased"),
        ({"arch_options": {"hiden": [8]}}, "no option 'hiden'"),
        ({"dataset": "digitz"}, "unknown dataset 'digitz'"),
        ({"epochs": 0}, "epochs must be a positive"),
        ({"l2": -1.0}, "l2 must be"),
    ],
)
def test_bad_configuration_starts_nothing(tmp_path, monkeypatch, overrides, message):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    with pytest.raises(BenchbnnError, match=message):
        train(tiny_config(**overrides), tracking_uri=f"sqlite:///{db}", quiet=True)
    assert not db.exists() and not (tmp_path / ".benchbnn").exists()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_tracking_location_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BenchbnnError, match="tracking location"):
        train(tiny_config(), tracking_uri=f"sqlite:///{blocker}/mlflow.db", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no checkpoint, no store


def test_unknown_device_is_bad_input(tmp_path):
    with pytest.raises(BenchbnnError, match="device"):
        train(tiny_config(), device="tpu:7", tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert not (tmp_path / "m.db").exists()


# --- configuration ------------------------------------------------------------------------------


def test_canonical_config_types_values_and_writes_schedules_as_data():
    typed = tiny_config(
        hparams={"gamma": 1e-7, "unbiased": True},
        schedules={
            "threshold": {"schedule": "polynomial", "start": 1e-5, "end": 1e-8, "power": 1.0}
        },
    )
    written = tiny_config(
        hparams={"gamma": "1e-7", "unbiased": "true"},
        schedules={"threshold": "polynomial:1e-5:1e-8"},
    )
    assert canonical_config(written) == canonical_config(typed) == typed
    assert canonical_config(written).config_hash() == typed.config_hash()
    assert canonical_config(typed.to_dict()) == typed
    with pytest.raises(HyperparameterError, match="gamma"):
        canonical_config(tiny_config(hparams={"gamma": "fast"}))


# --- L2 on the full-precision layers -------------------------------------------------------------


def test_l2_applies_to_full_precision_conv_and_linear_weights_only():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        BinaryLinear(4 * 6 * 6, 8),
        nn.BatchNorm1d(8),
        nn.Linear(8, 10),
    )
    _, real = split_parameters(model)
    assert [id(p) for p in l2_parameters(model, real)] == [id(model[0].weight), id(model[5].weight)]


def test_xnornet_l2_covers_its_first_and_last_layers():
    model = benchbnn.get_architecture("xnornet").build(
        num_classes=10, in_channels=3, image_size=32, width=0.0625
    )
    _, real = split_parameters(model)
    chosen = l2_parameters(model, real)
    assert len(chosen) == 2
    assert chosen[0].ndim == 4 and chosen[0].shape[1] == 3  # the full-precision first conv
    assert chosen[1].ndim == 2 and chosen[1].shape[0] == 10  # the full-precision classifier


class _Norms:
    @benchbnn.hookimpl
    def benchbnn_run_end(self, run, result):
        chosen = l2_parameters(run.model, run.real_params)
        self.norms = [float(p.detach().norm()) for p in chosen]


def test_l2_shrinks_the_full_precision_weights(store, tmp_path):
    data = {"train_size": 256, "test_size": 64}
    base = dict(
        dataset="synthetic",
        arch="xnornet",
        optimizer="bop",
        arch_options={"width": 0.0625},
        dataset_options=data,
        epochs=1,
        batch_size=64,
    )
    norms = []
    for l2 in (0.0, 10.0):
        probe = _Norms()
        result = train(
            RunConfig(**base, l2=l2),
            quiet=True,
            tracking_uri=store,
            checkpoint_dir=tmp_path / f"l2-{l2}",
            plugins=[probe],
        )
        assert result.finished
        norms.append(probe.norms)
    assert len(norms[0]) == len(norms[1]) == 2
    assert all(with_l2 < without for without, with_l2 in zip(*norms))
    assert all(math.isfinite(n) for n in norms[1])


def test_peak_memory_is_reported_in_megabytes():
    from benchbnn.train.engine import peak_memory_mb

    assert peak_memory_mb(torch.device("cpu")) > 10  # a Python process with torch loaded
