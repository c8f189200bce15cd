"""``benchbnn run``: exit status, output, defaults, and bad input that starts nothing."""

from __future__ import annotations

import json
import re

import pytest
from engine_support import fresh_store
from mlflow import MlflowClient

from benchbnn.cli import main
from benchbnn.core import names
from benchbnn.core.config import RunConfig

BASE = [
    "run",
    "--dataset",
    "digits",
    "--arch",
    "bnn-mlp",
    "--arch-option",
    "hidden=32",
    "--optimizer",
    "bop2ndorder",
    "--epochs",
    "2",
    "--batch-size",
    "64",
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory with an (empty) MLflow store where the default points."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _only_run(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def test_quiet_run_prints_one_summary_line_and_exits_0(workdir, capsys):
    uri = fresh_store(workdir)  # ./mlflow.db: the default location
    code = main(
        [
            *BASE,
            "--set",
            "gamma=1e-4",
            "--schedule",
            "threshold=polynomial:1e-5:1e-8",
            "--keep-checkpoints",  # a finished run's checkpoint is deleted unless kept
            "--quiet",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(out.splitlines()) == 1 and out.startswith("FINISHED")
    assert "test top-1" in out and "2/2 epochs" in out
    _client, run = _only_run(uri)
    assert run.info.status == "FINISHED" and run.info.run_id in out
    # the command line's configuration has the same hash as the same configuration as data
    same = RunConfig(
        dataset="digits",
        arch="bnn-mlp",
        optimizer="bop2ndorder",
        hparams={"gamma": 1e-4},
        arch_options={"hidden": [32]},
        epochs=2,
        batch_size=64,
        schedules={
            "threshold": {"schedule": "polynomial", "start": 1e-5, "end": 1e-8, "power": 1.0}
        },
    )
    config_hash = run.data.tags[names.TAG_CONFIG_HASH]
    assert config_hash == same.config_hash()
    assert (workdir / ".benchbnn" / "checkpoints" / config_hash / "last.pt").is_file()
    assert json.loads(run.data.params["arch_option.hidden"]) == [32]


def test_a_checkpoint_is_never_overwritten_without_resume_or_restart(workdir, capsys):
    fresh_store(workdir)
    checkpoint = ["--checkpoint-dir", str(workdir / "ckpt"), "--quiet"]
    # a finished run whose checkpoint is kept, under a new experiment: the next command is no
    # longer the same finished run of the ledger, but the checkpoint is the same configuration's
    assert main([*BASE, *checkpoint, "--keep-checkpoints"]) == 0
    summary = workdir / "ckpt" / "last.json"
    before = summary.read_text()
    capsys.readouterr()
    again = [*BASE, *checkpoint, "--experiment", "second"]
    assert main(again) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"benchbnn: error: a checkpoint of this configuration (epoch 2 of 2) is in "
        f"{workdir / 'ckpt'}: pass --resume to continue it, or --restart to discard it and "
        f"train from epoch 1"
    ]
    assert summary.read_text() == before  # nothing lost
    assert main([*again, "--resume", "--restart"]) == 2
    assert "--resume and --restart exclude each other" in capsys.readouterr().err
    assert main([*again, "--restart"]) == 0
    assert not summary.exists()  # trained again from epoch 1, finished, checkpoint deleted


def test_run_prints_epochs_table_and_summary(workdir, capsys):
    fresh_store(workdir)
    assert main([*BASE, "--optimizer", "bop"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("benchbnn: bop on bnn-mlp/digits, 2 epochs")
    assert out[1].startswith("epoch 1/2:") and out[2].startswith("epoch 2/2:")
    assert out[3].split()[:3] == ["epoch", "train", "loss"]
    assert [line.split()[0] for line in out[4:6]] == ["1", "2"]
    assert out[-1].startswith("FINISHED")


def test_divergence_exits_1_with_one_line(workdir, capsys):
    uri = fresh_store(workdir)
    code = main(
        [
            *BASE,
            "--optimizer",
            "bop",
            "--set",
            "lr=10",
            "--set",
            "beta2=0",
            "--set",
            "eps=0",
            "--quiet",
        ]
    )
    _out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("benchbnn: failed: training diverged") and len(err.splitlines()) == 1
    assert _only_run(uri)[1].info.status == "FAILED"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "gama=1e-7"], "no hyperparameter 'gama'. Did you mean 'gamma'"),
        (["--set", "gamma"], "--set expects KEY=VALUE"),
        (["--set", "gamma=often"], "'gamma' .* must be a number"),
        (["--schedule", "threshold=polynomial:1e-5"], "polynomial"),
        (["--schedule", "threshold=linear:1:2"], "linear"),
        (["--schedule", "gama=constant:1e-7"], "gama"),
        (["--arch-option", "hidden=many"], "hidden"),
        (["--tracking-uri", "sqlite:///{blocked}/mlflow.db"], "tracking location"),
        (["--optimizer", "adam"], "unknown optimizer 'adam'"),
        (["--epochs", "0"], "epochs must be a positive"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_starts_nothing(workdir, capsys, extra, message):
    blocked = workdir / "a-file"
    blocked.write_text("")
    code = main([*BASE, *[e.format(blocked=blocked) for e in extra]])
    _out, err = capsys.readouterr()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("benchbnn: error: ")
    assert re.search(message, err), err
    assert sorted(p.name for p in workdir.iterdir()) == ["a-file"]  # no store, no checkpoint


def test_missing_required_option_exits_2(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--arch", "bnn-mlp", "--optimizer", "bop"])
    assert exit_info.value.code == 2
    assert "--dataset" in capsys.readouterr().err
