"""Real studies on digits: trials train through the engine into a real MLflow store and a real
Optuna journal file; resuming, pruning, divergence, MLflow structure, and bad input."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import optuna
import pytest
import torch
from tuning_support import fresh_tracking_uri, one_torch_thread, write_suite

import benchbnn
from benchbnn.cli import main as cli_main
from benchbnn.core import names
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.names import TAG_STUDY, TAG_TRIAL
from benchbnn.train.tracking import client_for
from benchbnn.tune import tuning

TrialState = optuna.trial.TrialState
_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


def _trials(path, name):
    storage = tuning.open_storage(str(path), create=False)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three random-sampler trials of Bop2ndOrder on a 2-epoch digits protocol."""
    root = tmp_path_factory.mktemp("study")
    suite = write_suite(root)
    uri = fresh_tracking_uri(root)
    result = tuning.tune(
        str(suite),
        "bop2ndorder",
        trials=3,
        sampler="random",
        pruner="none",
        out=root / "out",
        tracking_uri=uri,
        quiet=True,
    )
    return SimpleNamespace(
        root=root, suite=suite, uri=uri, result=result, journal=root / "out" / "optuna.journal"
    )


def test_a_study_trains_its_trials_on_a_validation_split(study):
    result = study.result
    assert result.study_name == "tiny-bop2ndorder"
    assert (result.counts.done, result.counts.complete, result.trials_run) == (3, 3, 3)
    trials = _trials(study.journal, "tiny-bop2ndorder")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    client = client_for(study.uri)
    for t in trials:
        assert set(t.params) == {"gamma", "sigma"}
        assert 1e-6 <= t.params["gamma"] <= 1e-4 and 1e-3 <= t.params["sigma"] <= 1e-2
        run = client.get_run(t.user_attrs[tuning.ATTR_RUN_ID])
        # the objective is the final validation top-1 (the suite holds none out: 10% is)
        assert run.data.params["val_fraction"] == "0.1"
        assert math.isclose(t.value, run.data.metrics["val_top1"])
        assert float(run.data.params["hparam.gamma"]) == pytest.approx(t.params["gamma"])
        assert float(run.data.params["hparam.threshold"]) == 1e-6  # pinned by [tune.bop2ndorder]
        assert float(run.data.params["hparam.lr"]) == 0.01  # the entry's base point


def test_mlflow_parent_and_nested_trial_runs(study):
    client = client_for(study.uri)
    trials = _trials(study.journal, "tiny-bop2ndorder")
    storage = tuning.open_storage(str(study.journal), create=False)
    parent_id = optuna.load_study(study_name="tiny-bop2ndorder", storage=storage).user_attrs[
        tuning.ATTR_PARENT
    ]
    assert parent_id == study.result.parent_run_id
    parent = client.get_run(parent_id)
    assert parent.data.tags[names.TAG_ROLE] == "study"
    assert parent.data.tags[TAG_STUDY] == "tiny-bop2ndorder"
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["search.gamma"])["low"] == 1e-6
    best = study.result.best
    assert parent.data.tags["benchbnn.best.trial"] == str(best.trial_number)
    assert float(parent.data.tags["benchbnn.best.gamma"]) == best.params["gamma"]
    for t in trials:
        run = client.get_run(t.user_attrs[tuning.ATTR_RUN_ID])
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags[TAG_STUDY] == "tiny-bop2ndorder"
        assert run.data.tags[TAG_TRIAL] == str(t.number)
        assert t.user_attrs[tuning.ATTR_RUN_IDS] == [run.info.run_id]


def test_best_configuration_is_printed_recorded_and_readable(study):
    best = study.result.best
    trials = _trials(study.journal, "tiny-bop2ndorder")
    top = max(trials, key=lambda t: (t.value, -t.number))
    assert (best.trial_number, best.value) == (top.number, top.value)
    data = json.loads((study.root / "out" / "tiny-bop2ndorder" / "best.json").read_text())
    assert data["trial_number"] == top.number and data["params"] == top.params
    assert data["hparams"] == {**top.params, "threshold": 1e-6}
    found = tuning.best_trial_hparams(str(study.suite), "bop2ndorder", storage=str(study.journal))
    assert found.hparams == data["hparams"] and found.trial_number == top.number
    assert found.study_name == "tiny-bop2ndorder"
    with pytest.raises(BenchbnnError, match=r"create it with 'benchbnn tune .* --optimizer bop "):
        tuning.best_trial_hparams(str(study.suite), "bop", storage=str(study.journal))


def test_a_study_with_another_search_space_is_refused(study, capsys):
    (study.root / "other").mkdir(exist_ok=True)
    other = write_suite(study.root / "other", tune="gamma = [1e-7, 1e-4]\nlr = false\n")
    code = cli_main(
        [
            "tune",
            str(other),
            "--optimizer",
            "bop2ndorder",
            "--trials",
            "4",
            "--out",
            str(study.root / "out"),
            "--tracking-uri",
            study.uri,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "study 'tiny-bop2ndorder'" in err and "different search space" in err
    assert "--study NAME" in err
    assert len(_trials(study.journal, "tiny-bop2ndorder")) == 3  # nothing was run
    code = cli_main(
        [
            "tune",
            str(study.suite),
            "--optimizer",
            "bop2ndorder",
            "--epochs",
            "3",
            "--out",
            str(study.root / "out"),
            "--tracking-uri",
            study.uri,
        ]
    )
    assert code == 2 and "different protocol" in capsys.readouterr().err


def test_rerunning_the_command_continues_the_study(study, capsys):
    code = cli_main(
        [
            "tune",
            str(study.suite),
            "--optimizer",
            "bop2ndorder",
            "--trials",
            "5",
            "--sampler",
            "random",
            "--pruner",
            "none",
            "--quiet",
            "--out",
            str(study.root / "out"),
            "--tracking-uri",
            study.uri,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "5/5 trials counted" in out and "2 run by this worker" in out
    trials = _trials(study.journal, "tiny-bop2ndorder")
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    client = client_for(study.uri)
    parents = client.search_runs(
        [client.get_experiment_by_name("benchbnn").experiment_id],
        filter_string=f"tags.`{names.TAG_ROLE}` = 'study'",
    )
    assert [p.info.run_id for p in parents] == [study.result.parent_run_id]  # the same parent
    for t in trials[3:]:
        run = client.get_run(t.user_attrs[tuning.ATTR_RUN_ID])
        assert run.data.tags["mlflow.parentRunId"] == study.result.parent_run_id
    # asking for what the study already has runs nothing
    assert (
        cli_main(
            [
                "tune",
                str(study.suite),
                "--optimizer",
                "bop2ndorder",
                "--trials",
                "4",
                "--sampler",
                "random",
                "--pruner",
                "none",
                "--quiet",
                "--out",
                str(study.root / "out"),
                "--tracking-uri",
                study.uri,
            ]
        )
        == 0
    )
    assert "0 run by this worker" in capsys.readouterr().out


@pytest.mark.slow
def test_hopeless_trials_are_pruned(tmp_path):
    wide = "gamma = [1e-9, 1e-2]\nsigma = [1e-3, 1e-2]\nthreshold = 1e-6\nlr = false\n"
    suite = write_suite(tmp_path, name="prune", epochs=2, tune=wide)
    result = tuning.tune(
        str(suite),
        "bop2ndorder",
        trials=6,
        sampler="random",
        pruner="median",
        out=tmp_path / "out",
        tracking_uri=fresh_tracking_uri(tmp_path),
        quiet=True,
    )
    trials = _trials(tmp_path / "out" / "optuna.journal", "prune-bop2ndorder")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.intermediate_values) for t in trials]
    assert result.counts.done == 6 and result.counts.pruned == len(pruned)
    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for t in pruned:  # stopped after epoch 1 (never after the last), its MLflow run ended KILLED
        assert max(t.intermediate_values) == 1
        assert client.get_run(t.user_attrs[tuning.ATTR_RUN_ID]).info.status == "KILLED"


# --- a trial that diverges ----------------------------------------------------------------------


def _exploding_factory(binary_params, real_params, gamma=1e-4, blowup=1.0):
    """Bop whose real-valued parameters are multiplied by ``blowup`` after each step."""
    real_params = list(real_params)
    opt = benchbnn.get_optimizer("bop").build(binary_params, real_params, gamma=gamma)
    if blowup > 1.0:
        step = opt.step

        def exploding_step(closure=None):
            loss = step(closure)
            with torch.no_grad():
                for p in real_params:
                    p.mul_(blowup)
            return loss

        opt.step = exploding_step
    return opt


class _ExplodingPlugin:
    @benchbnn.hookimpl
    def benchbnn_optimizers(self):
        return [
            benchbnn.OptimizerSpec(
                name="exploding-bop",
                factory=_exploding_factory,
                hparams=(
                    benchbnn.HParam("gamma", 1e-4, low=0.0, high=1.0),
                    benchbnn.HParam("blowup", 1.0, low=1.0, high=1e9, search=(1.0, 1e6), log=True),
                ),
            )
        ]


@pytest.mark.usefixtures("clean_registry")
def test_a_diverging_trial_fails_and_the_study_goes_on(tmp_path):
    benchbnn.register_plugin(_ExplodingPlugin(), name="exploding")
    suite = write_suite(
        tmp_path,
        name="explode",
        epochs=1,
        extra="[tune.exploding-bop]\nblowup = { grid = [1.0, 1e6] }\n",
    )
    uri = fresh_tracking_uri(tmp_path)
    result = tuning.tune(
        str(suite),
        "exploding-bop",
        sampler="grid",
        pruner="none",
        out=tmp_path / "out",
        tracking_uri=uri,
        quiet=True,
    )
    assert result.target == 2 and result.counts.done == 2
    assert (result.counts.complete, result.counts.failed) == (1, 1)
    trials = {
        t.params["blowup"]: t
        for t in _trials(tmp_path / "out" / "optuna.journal", "explode-exploding-bop")
    }
    assert trials[1e6].state == TrialState.FAIL
    assert "diverged" in trials[1e6].user_attrs[tuning.ATTR_FAILURE]
    assert trials[1.0].state == TrialState.COMPLETE
    diverged_run = client_for(uri).get_run(trials[1e6].user_attrs[tuning.ATTR_RUN_ID])
    assert diverged_run.info.status == "FAILED"
    assert result.best.params == {"blowup": 1.0}


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--storage", "postgresql+psycopg2://u:pw@127.0.0.1:1/optuna"],
            "cannot open the Optuna storage postgresql+psycopg2://u:***@127.0.0.1:1/optuna",
        ),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--entry", "bop"], "uses optimizer 'bop', not 'bop2ndorder'"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, args, message):
    suite = write_suite(tmp_path)
    code = cli_main(
        [
            "tune",
            str(suite),
            "--optimizer",
            "bop2ndorder",
            "--out",
            str(tmp_path / "o"),
            "--tracking-uri",
            fresh_tracking_uri(tmp_path),
            *args,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert message in err


def test_an_unknown_hyperparameter_in_the_suites_tune_table(tmp_path, capsys):
    suite = write_suite(tmp_path, tune="gama = [1e-6, 1e-4]\n")
    code = cli_main(
        [
            "tune",
            str(suite),
            "--optimizer",
            "bop2ndorder",
            "--out",
            str(tmp_path / "o"),
            "--tracking-uri",
            fresh_tracking_uri(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "gama" in err and "gamma" in err
    assert not (tmp_path / "o" / "optuna.journal").exists()
