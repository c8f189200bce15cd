"""MLflow tracking of real training runs, read back through ``MlflowClient``.

Every run here trains a small BNN MLP on the embedded digits data into a temporary SQLite store;
nothing is mocked.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
from engine_support import assert_has_epoch_metrics, fresh_store
from engine_support import tiny_config as tiny
from mlflow import MlflowClient

import benchbnn
from benchbnn.core import names
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.names import EPOCH_METRICS, RUN_METRICS
from benchbnn.train.engine import train
from benchbnn.train.tracking import check_tracking_location, ensure_experiment, resolve_tracking_uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return fresh_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def tracked(store, tmp_path_factory):
    """A two-epoch run with a validation split, a schedule, tags and a parent run."""
    client = MlflowClient(store)
    experiment = ensure_experiment(client, "tracking-test", store)  # artifacts beside the store
    parent = client.create_run(experiment, run_name="parent").info.run_id
    cfg = tiny(
        hparams={"gamma": 1e-4},
        val_fraction=0.2,
        schedules={"threshold": {"schedule": "polynomial", "start": 1e-5, "end": 1e-8}},
    )
    result = train(
        cfg,
        tracking_uri=store,
        experiment="tracking-test",
        quiet=True,
        checkpoint_dir=tmp_path_factory.mktemp("ck"),
        tags={"benchbnn.suite": "unit"},
        parent_run_id=parent,
        run_name="tracked",
        log_every=5,
    )
    return client, cfg, result, parent


def test_run_ends_finished_with_its_name_and_parent(tracked):
    client, _cfg, result, parent = tracked
    run = client.get_run(result.run_id)
    assert result.status == run.info.status == "FINISHED"
    assert run.info.run_name == "tracked"
    assert run.data.tags["mlflow.parentRunId"] == parent


def test_params_hold_the_whole_configuration(tracked):
    client, _cfg, result, _ = tracked
    params = client.get_run(result.run_id).data.params
    assert params["dataset"] == "digits" and params["arch"] == "bnn-mlp"
    assert params["optimizer"] == "bop2ndorder"
    assert (params["epochs"], params["batch_size"], params["seed"]) == ("2", "64", "0")
    assert params["val_fraction"] == "0.2" and params["subset"] == "None" and params["l2"] == "0.0"
    spec = benchbnn.get_optimizer("bop2ndorder")
    resolved = spec.resolve(gamma=1e-4)
    for name, value in resolved.items():  # every hyperparameter, defaults filled in
        assert params[names.PARAM_HPARAM_PREFIX + name] == str(value)
    schedule = json.loads(params[names.PARAM_SCHEDULE_PREFIX + "threshold"])
    assert schedule["schedule"] == "polynomial"
    assert (schedule["start"], schedule["end"]) == (1e-5, 1e-8)
    assert json.loads(params[names.PARAM_ARCH_OPTION_PREFIX + "hidden"]) == [32]


def test_tags_record_provenance(tracked):
    client, cfg, result, _ = tracked
    tags = client.get_run(result.run_id).data.tags
    import torch

    assert tags[names.TAG_CONFIG_HASH] == cfg.config_hash() == result.config_hash
    assert tags[names.TAG_VERSION] == benchbnn.__version__
    assert tags[names.TAG_TORCH_VERSION] == torch.__version__
    assert tags[names.TAG_DEVICE] == "cpu" and tags[names.TAG_WORLD_SIZE] == "1"
    for kind in ("optimizer", "architecture", "dataset"):
        assert tags[names.TAG_PLUGIN_PREFIX + kind] == f"benchbnn=={benchbnn.__version__}"
    assert tags["benchbnn.suite"] == "unit"
    assert names.TAG_FAILURE not in tags


def test_epoch_metrics_are_logged_per_epoch(tracked):
    client, _cfg, result, _ = tracked
    assert [h["epoch"] for h in result.history] == [1, 2]
    for entry in result.history:
        assert_has_epoch_metrics(entry, val=True)
    for name in EPOCH_METRICS:
        history = client.get_metric_history(result.run_id, name)
        assert [m.step for m in history] == [1, 2], name
        assert [m.value for m in history] == pytest.approx([h[name] for h in result.history])
    for entry in result.history:
        assert 0 <= entry["train_top1"] <= entry["train_top5"] <= 100
        assert 0 <= entry["val_top1"] <= entry["val_top5"] <= 100
        assert entry["flip_log_ratio"] >= -9.0 - 1e-6  # pi_t >= log(e^-9)
        assert math.isclose(entry["lr"], 0.01)  # the real-valued Adam lr (not scheduled)
        assert entry["images_per_s"] > 0 and entry["epoch_time_s"] > 0


def test_flip_ratio_is_sampled_per_step(tracked):
    client, _cfg, result, _ = tracked
    from benchbnn.data.pipeline import build_loaders

    per_epoch = len(build_loaders("digits", batch_size=64, seed=0, val_fraction=0.2).train)
    steps = client.get_metric_history(result.run_id, "step_flip_log_ratio")
    assert sorted(m.step for m in steps) == list(range(5, 2 * per_epoch + 1, 5))  # log_every=5
    assert all(-9.0 - 1e-6 <= m.value <= 0.0 for m in steps)


def test_run_metrics_are_logged(tracked):
    client, _cfg, result, _ = tracked
    metrics = client.get_run(result.run_id).data.metrics
    assert result.metrics["binary_weights"] == 64 * 32 + 32 * 10
    assert result.metrics["real_parameters"] == 2 * (32 + 10)  # batch-norm scale and shift
    assert result.metrics["state_bytes_per_binary_weight"] == 8.0  # m and v in float32
    for name in RUN_METRICS:
        assert metrics[name] == pytest.approx(result.metrics[name])


def test_artifacts_are_config_metrics_and_curves(tracked, tmp_path):
    client, cfg, result, _ = tracked
    listed = {a.path for a in client.list_artifacts(result.run_id)}
    assert listed == {names.ARTIFACT_CONFIG, names.ARTIFACT_METRICS, names.ARTIFACT_CURVES}
    folder = Path(client.download_artifacts(result.run_id, "", str(tmp_path)))
    config = json.loads((folder / names.ARTIFACT_CONFIG).read_text())
    assert RunConfig.from_dict(config["config"]).config_hash() == cfg.config_hash()
    assert config["hparams"]["gamma"] == 1e-4 and config["hparams"]["threshold"] == 1e-6
    assert config["dataset"]["num_classes"] == 10 and config["dataset"]["image_shape"] == [1, 8, 8]
    final = json.loads((folder / names.ARTIFACT_METRICS).read_text())
    assert final["status"] == "FINISHED" and final["history"] == result.history
    assert (folder / names.ARTIFACT_CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_artifacts_of_a_local_store_live_beside_it(tracked, store):
    client, _, result, _ = tracked
    root = Path(store[len("sqlite:///") :]).parent
    artifacts = client.get_run(result.run_id).info.artifact_uri
    assert artifacts.startswith((root / "mlartifacts").as_uri())


class _Stop(Exception):
    pass


class _StopAfterFirstEpoch:
    @benchbnn.hookimpl
    def benchbnn_epoch_end(self, run, epoch, metrics):
        metrics["extra_metric"] = 42.0
        raise _Stop("pruned")


def test_a_plugin_that_raises_ends_the_run_killed(store, tmp_path):
    with pytest.raises(_Stop):
        train(
            tiny(seed=1),
            tracking_uri=store,
            quiet=True,
            checkpoint_dir=tmp_path,
            plugins=[_StopAfterFirstEpoch()],
        )
    client = MlflowClient(store)
    run = client.search_runs(
        [client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id],
        filter_string="params.seed = '1'",
    )[0]
    assert run.info.status == "KILLED"
    assert "pruned" in run.data.tags[names.TAG_FAILURE]
    # the stopped epoch's metrics, including the plugin's extra one, are still tracked
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_top1")] == [1]
    assert run.data.metrics["extra_metric"] == 42.0


class _SigtermAtStep:
    @benchbnn.hookimpl
    def benchbnn_step_end(self, run, step, logs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_ends_the_run_killed(store, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        train(
            tiny(seed=2),
            tracking_uri=store,
            quiet=True,
            checkpoint_dir=tmp_path,
            plugins=[_SigtermAtStep()],
        )
    client = MlflowClient(store)
    run = client.search_runs(
        [client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id],
        filter_string="params.seed = '2'",
    )[0]
    assert run.info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is restored


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("runs.db") == f"sqlite:///{tmp_path / 'runs.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri() == "http://tracking.example:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_unwritable_tracking_location_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(BenchbnnError, match="not a writable directory"):
        check_tracking_location(f"sqlite:///{blocker / 'mlflow.db'}")
    check_tracking_location(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # created on demand
    assert (tmp_path / "new").is_dir()
