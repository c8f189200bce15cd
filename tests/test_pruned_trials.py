"""A run a lifecycle plugin stops on purpose (RunStopped; the tuner's pruning) is recorded as
stopped: KILLED in MLflow with the failure class ``stopped`` and its reason, a result that
neither ``tune`` nor ``compare`` redoes, and never an environment failure.

Real runs on digits through a one-hidden-layer BNN MLP into a real MLflow store and a real
Optuna journal; the study's pruner is Optuna's ThresholdPruner with a lower bound above 100%,
so every trial is pruned after its first epoch.
"""

from __future__ import annotations

import contextlib
import io
import re
from types import SimpleNamespace

import optuna
import pytest
from tuning_support import fresh_tracking_uri, one_torch_thread, write_suite

import benchbnn
from benchbnn.bench import compare
from benchbnn.bench.suite_file import load_suite
from benchbnn.core import names
from benchbnn.core.errors import RunStopped
from benchbnn.core.plugins import hookimpl
from benchbnn.train.engine import train
from benchbnn.train.identity import is_result, recorded_failure_class
from benchbnn.train.ledger import claim_key, default_ledger
from benchbnn.train.progress import ending_word
from benchbnn.train.runs import collect_records
from benchbnn.train.tracking import client_for
from benchbnn.tune import tuning

TrialState = optuna.trial.TrialState
_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

#: validation top-1 is at most 100%: this pruner prunes every trial at its first report
PRUNE_ALL = 100.5
PRUNED_REASON = re.compile(
    r"pruned: validation top-1 (\d+\.\d\d)% after epoch 1 is below what the threshold pruner "
    r"allows"
)


def _tune(suite, root, uri, trials=2, quiet=True):
    return tuning.tune(
        str(suite),
        "bop2ndorder",
        trials=trials,
        sampler="random",
        pruner="median",  # replaced by the threshold pruner (the command line has none)
        out=root / "out",
        tracking_uri=uri,
        quiet=quiet,
    )


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Two trials of a 2-epoch study, both pruned after epoch 1, with the console output."""
    root = tmp_path_factory.mktemp("pruned")
    suite = write_suite(root, name="prunes", epochs=2)
    uri = fresh_tracking_uri(root)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tuning, "make_pruner", lambda kind, epochs: _threshold())
        with contextlib.redirect_stdout(out):
            result = _tune(suite, root, uri, quiet=False)
        again = _tune(suite, root, uri)
    lines = out.getvalue().splitlines()
    storage = tuning.open_storage(str(root / "out" / "optuna.journal"), create=False)
    trials = optuna.load_study(study_name="prunes-bop2ndorder", storage=storage).get_trials()
    return SimpleNamespace(
        root=root, suite=suite, uri=uri, result=result, again=again, trials=trials, lines=lines
    )


def _threshold() -> optuna.pruners.BasePruner:
    return optuna.pruners.ThresholdPruner(lower=PRUNE_ALL)


def _run_of(client, trial):
    return client.get_run(trial.user_attrs[tuning.ATTR_RUN_ID])


def test_pruned_trials_are_pruned_in_optuna_and_stopped_in_mlflow(pruned):
    assert [t.state for t in pruned.trials] == [TrialState.PRUNED] * 2
    assert (pruned.result.counts.done, pruned.result.counts.pruned) == (2, 2)
    client = client_for(pruned.uri)
    for trial in pruned.trials:
        run = _run_of(client, trial)
        tags = run.data.tags
        assert run.info.status == names.KILLED
        assert tags[names.TAG_FAILURE_CLASS] == names.FAILURE_STOPPED == "stopped"
        match = PRUNED_REASON.fullmatch(tags[names.TAG_FAILURE])
        assert match, tags[names.TAG_FAILURE]
        assert float(match.group(1)) == pytest.approx(trial.intermediate_values[1], abs=0.005)
        assert recorded_failure_class(run.info.status, tags) == names.FAILURE_STOPPED
        assert is_result(run.info.status, tags)


def test_the_console_says_pruned_not_killed_by_a_plugin(pruned):
    summaries = [line for line in pruned.lines if line.startswith("PRUNED   bop2ndorder on ")]
    assert len(summaries) == 2, pruned.lines
    for line in summaries:
        assert "1/2 epochs" in line
        assert PRUNED_REASON.search(line), line
    text = "\n".join(pruned.lines)
    assert "KILLED" not in text and "stopped by a plugin" not in text
    assert "TrialPruned" not in text
    assert sum(" -> pruned after epoch 1" in line for line in pruned.lines) == 2


def test_a_second_tune_does_not_redo_pruned_trials(pruned):
    assert pruned.again.trials_run == 0
    assert (pruned.again.counts.done, pruned.again.counts.pruned) == (2, 2)
    client = client_for(pruned.uri)
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id
    trial_runs = client.search_runs([experiment], filter_string="tags.`benchbnn.trial` != ''")
    assert len(trial_runs) == 2


def test_a_pruned_trials_claim_is_complete(pruned):
    """The run ledger records the configuration as done (COMPLETE), not freed for a retry
    (FAIL), as it records a finished run."""
    client = client_for(pruned.uri)
    storage = tuning.open_storage(default_ledger(pruned.uri), create=False)
    for trial in pruned.trials:
        config_hash = _run_of(client, trial).data.tags[names.TAG_CONFIG_HASH]
        key = claim_key(pruned.uri, names.DEFAULT_EXPERIMENT, config_hash)
        claims = optuna.load_study(study_name=key, storage=storage).get_trials()
        assert [c.state for c in claims] == [TrialState.COMPLETE]


def test_compare_shows_a_pruned_run_and_does_not_train_it_again(pruned):
    suite = load_suite(str(pruned.suite))
    spec = benchbnn.get_optimizer("bop2ndorder")
    space = tuning.search_space(spec, suite.tune["bop2ndorder"], source="test")
    protocol = tuning.build_protocol(suite, "bop2ndorder", space=space)
    entry = suite.entry("bop2ndorder")
    client = client_for(pruned.uri)
    for trial in pruned.trials:
        config = protocol.config(trial.params, protocol.seeds[0])
        run = _run_of(client, trial)
        assert config.config_hash() == run.data.tags[names.TAG_CONFIG_HASH]
        (planned,) = compare.plan_runs([(entry, suite.archs[0], config)], pruned.uri)
        assert planned.action == compare.RECORDED_FAILURE  # shown with its reason, not trained
        assert planned.run_id == run.info.run_id
        assert PRUNED_REASON.fullmatch(planned.reason), planned.reason
        (record,) = collect_records([(entry, suite.archs[0], config)], pruned.uri)
        assert record.failure_class == names.FAILURE_STOPPED
        assert record.outcome() == f"{run.data.tags[names.TAG_FAILURE]} (after 1 epoch)"


# --- a plain train call -------------------------------------------------------------------------


class _StopAfter:
    """Lifecycle plugin: stops the run on purpose after epoch ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    @hookimpl
    def benchbnn_epoch_end(self, run, epoch, metrics):
        if epoch == self.epoch:
            raise RunStopped(f"enough after epoch {epoch}", outcome="stopped")


class _Broken:
    """Lifecycle plugin that breaks: an environment failure, as before."""

    @hookimpl
    def benchbnn_epoch_end(self, run, epoch, metrics):
        raise ZeroDivisionError("a bug in the plugin")


def _config(epochs: int = 3) -> dict:
    return {
        "dataset": "digits",
        "arch": "bnn-mlp",
        "arch_options": {"hidden": [16]},
        "optimizer": "bop",
        "epochs": epochs,
        "batch_size": 128,
        "subset": 256,
    }


def test_a_plugin_raising_run_stopped_ends_a_train_run_as_stopped(tmp_path, capsys):
    uri = fresh_tracking_uri(tmp_path)
    with pytest.raises(RunStopped) as info:
        train(
            _config(),
            tracking_uri=uri,
            quiet=True,
            plugins=[_StopAfter(2)],
            checkpoint_dir=tmp_path / "ckpt",
        )
    assert info.value.record() == "stopped: enough after epoch 2"
    client = client_for(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id]
    )
    assert run.info.status == names.KILLED
    assert run.data.tags[names.TAG_FAILURE_CLASS] == names.FAILURE_STOPPED
    assert run.data.tags[names.TAG_FAILURE] == "stopped: enough after epoch 2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    out = capsys.readouterr().out
    assert out.startswith("STOPPED  bop on bnn-mlp/digits seed 0; ")
    assert "2/3 epochs; stopped: enough after epoch 2" in out


def test_any_other_plugin_exception_is_still_an_environment_failure(tmp_path):
    uri = fresh_tracking_uri(tmp_path)
    with pytest.raises(ZeroDivisionError):
        train(_config(2), tracking_uri=uri, quiet=True, plugins=[_Broken()])
    client = client_for(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id]
    )
    assert run.info.status == names.KILLED
    assert run.data.tags[names.TAG_FAILURE_CLASS] == names.FAILURE_ENVIRONMENT
    assert run.data.tags[names.TAG_FAILURE] == (
        "stopped by a plugin: ZeroDivisionError('a bug in the plugin')"
    )
    assert not is_result(run.info.status, run.data.tags)


# --- the pieces -----------------------------------------------------------------------------------


def test_the_tuners_exception_is_both_run_stopped_and_optunas_trial_pruned():
    exc = tuning.TrialPruned("validation top-1 1.00% after epoch 1 is below what x allows")
    assert isinstance(exc, RunStopped) and isinstance(exc, optuna.TrialPruned)
    assert exc.record() == "pruned: validation top-1 1.00% after epoch 1 is below what x allows"
    assert tuning.pruner_words(optuna.pruners.MedianPruner()) == "the median pruner"
    assert tuning.pruner_words(optuna.pruners.HyperbandPruner()) == "the hyperband pruner"


@pytest.mark.parametrize("outcome", ["Pruned", "two words", "", "pruned:"])
def test_a_run_stopped_outcome_is_one_lower_case_word(outcome):
    with pytest.raises(ValueError, match="one lower-case word"):
        RunStopped("why", outcome=outcome)


def test_the_summary_word_of_a_stopped_run():
    def result(status, failure_class, error):
        return SimpleNamespace(status=status, failure_class=failure_class, error=error)

    assert ending_word(result("KILLED", "stopped", "pruned: low")) == "PRUNED"
    assert ending_word(result("KILLED", "stopped", "stopped")) == "STOPPED"
    assert ending_word(result("KILLED", "environment", "interrupted (Ctrl-C)")) == "KILLED"
    assert ending_word(result("FAILED", "run", "training diverged")) == "FAILED"
