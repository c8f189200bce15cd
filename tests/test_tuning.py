"""Tuning building blocks: search spaces, samplers, pruners, storages, study identity.

Everything here runs in well under a second per test; real studies that train are in
``test_tuning_study.py`` and the multi-worker PostgreSQL tests in ``test_tuning_postgres.py``.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import optuna
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import benchbnn
from benchbnn.core.errors import BenchbnnError, HyperparameterError
from benchbnn.core.specs import HParam, OptimizerSpec
from benchbnn.tune import search_space as spaces
from benchbnn.tune import studies, tuning


def _factory(
    binary_params,
    real_params,
    gamma=1e-4,
    sigma=1e-3,
    threshold=1e-6,
    unbiased=False,
    lr=0.01,
    steps=3,
):
    raise AssertionError("never built in these tests")


SPEC = OptimizerSpec(
    name="toy-bop",
    factory=_factory,
    hparams=(
        HParam("gamma", 1e-4, low=0.0, high=1.0, search=(1e-8, 1e-2), log=True),
        HParam("sigma", 1e-3, low=0.0, high=1.0, search=(1e-5, 1e-1), log=True),
        HParam("threshold", 1e-6, low=0.0, high=1.0, search=(1e-9, 1e-4), log=True),
        HParam("unbiased", False, search=(False, True)),
        HParam("lr", 0.01, low=0.0, high=10.0),
        HParam("steps", 3, low=1, high=50),
    ),
)


# --- search spaces --------------------------------------------------------------------------


def test_declared_search_space_is_the_plugins():
    space = spaces.search_space(SPEC)
    assert sorted(space.params) == ["gamma", "sigma", "threshold", "unbiased"]
    gamma = space.params["gamma"]
    assert (gamma.kind, gamma.low, gamma.high, gamma.log) == ("float", 1e-8, 1e-2, True)
    assert space.params["unbiased"].kind == "bool"
    assert space.fixed == {}


def test_suite_table_narrows_fixes_adds_and_drops():
    space = spaces.search_space(
        SPEC,
        {
            "gamma": [1e-6, 1e-4],
            "sigma": {"grid": [1e-3, 1e-2]},
            "threshold": 1e-7,
            "unbiased": False,
            "lr": {"low": 0.001, "high": 0.1, "log": True},
            "steps": [2, 5],
        },
    )
    assert sorted(space.params) == ["gamma", "lr", "sigma", "steps"]
    assert (space.params["gamma"].low, space.params["gamma"].high) == (1e-6, 1e-4)
    assert space.params["sigma"].grid == (1e-3, 1e-2)
    assert space.params["lr"].log is True
    assert space.params["steps"].kind == "int"
    # a single value pins the hyperparameter (for a boolean, false is such a value)
    assert space.fixed == {"threshold": 1e-7, "unbiased": False}
    # `false` on a number: not searched, default kept; one boolean in a list pins it
    dropped = spaces.search_space(SPEC, {"gamma": False, "unbiased": [True]})
    assert "gamma" not in dropped.params and dropped.fixed == {"unbiased": True}


@pytest.mark.parametrize(
    "table, message",
    [
        ({"gama": [1e-6, 1e-4]}, "Did you mean 'gamma'"),
        ({"gamma": [1e-4, 1e-6]}, "is empty"),
        ({"gamma": [1e-6, 2.0]}, "outside its valid range"),
        ({"gamma": [1e-6, 1e-5, 1e-4]}, "a range is [low, high]"),
        ({"gamma": {"low": 1e-6}}, "give both low and high"),
        ({"gamma": {"low": 1e-6, "high": 1e-4, "step": 2}}, "unknown key"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "must be positive"),
        ({"unbiased": {"low": 0, "high": 1}}, "has no range"),
    ],
)
def test_bad_tune_tables_are_clear_errors(table, message):
    with pytest.raises(HyperparameterError) as info:
        spaces.search_space(SPEC, table, source="suite 'x', table [tune.toy-bop]")
    assert message in str(info.value)
    assert "[tune.toy-bop]" in str(info.value)


def test_grid_uses_powers_of_ten_on_log_ranges():
    space = spaces.search_space(
        SPEC, {"gamma": [1e-7, 1e-5], "sigma": [3e-4, 5e-2], "threshold": 1e-6, "unbiased": [False]}
    )
    assert space.grid() == {"gamma": [1e-7, 1e-6, 1e-5], "sigma": [1e-3, 1e-2]}
    assert space.grid_size() == 6


@settings(max_examples=200, deadline=None)
@given(st.integers(-12, 2), st.integers(0, 6), st.floats(1.0, 9.99), st.floats(1.0, 9.99))
def test_powers_of_ten_lie_in_the_range_and_are_exact(k, span, a, b):
    low, high = a * 10.0**k, b * 10.0 ** (k + span)
    assume(low < high)
    values = spaces.powers_of_ten(low, high)
    assert values == sorted(values) and values
    assert all(low <= v <= high for v in values)
    inside = [e for e in range(k - 1, k + span + 2) if low <= float(f"1e{e}") <= high]
    if inside:
        assert values == [float(f"1e{e}") for e in inside]
    else:
        assert values == [low, high]


def test_linear_and_integer_grids():
    space = spaces.search_space(
        SPEC,
        {
            "gamma": False,
            "sigma": False,
            "threshold": False,
            "unbiased": [False],
            "lr": [0.0, 1.0],
            "steps": [1, 50],
        },
    )
    assert space.grid()["lr"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert space.grid()["steps"] == [1, 13, 26, 38, 50]
    small = spaces.search_space(
        SPEC,
        {"gamma": False, "sigma": False, "threshold": False, "unbiased": [False], "steps": [2, 5]},
    )
    assert small.grid() == {"steps": [2, 3, 4, 5]}


@pytest.mark.parametrize("name", sorted(benchbnn.list_optimizers()))
def test_every_installed_optimizer_has_a_valid_search_space(name):
    spec = benchbnn.get_optimizer(name)
    space = spaces.search_space(spec)
    assert set(space.params) == set(spec.search_space)
    for param in space.params.values():
        values = param.grid_values()
        assert values, param
        if param.kind != "bool":
            assert all(param.low <= v <= param.high for v in values)
            for v in values:
                spec.hparam(param.name).coerce(v)  # every grid point is a valid value


# --- samplers and pruners -------------------------------------------------------------------


def _sampled(sampler, space, n=6):
    study = optuna.create_study(sampler=sampler, direction="maximize")
    out = []

    def objective(trial):
        params = space.sample(trial)
        out.append(params)
        return sum(math.log10(v) for v in params.values() if isinstance(v, float))

    study.optimize(objective, n_trials=n)
    return out


def test_tpe_arguments_are_pinned():
    space = spaces.search_space(SPEC)
    with studies.quiet_optuna():
        sampler = studies.make_sampler("tpe", space, seed=3, startup_trials=4)
    inner = sampler._inner
    assert isinstance(inner, optuna.samplers.TPESampler)
    assert inner._multivariate is True and inner._constant_liar is True
    assert inner._n_startup_trials == 4


@pytest.mark.parametrize("kind", ["tpe", "random", "grid"])
def test_samplers_are_reproducible_and_seeded(kind):
    space = spaces.search_space(
        SPEC, {"gamma": [1e-7, 1e-5], "sigma": [1e-3, 1e-2], "threshold": 1e-6, "unbiased": [False]}
    )
    with studies.quiet_optuna():
        a = _sampled(studies.make_sampler(kind, space, seed=1), space)
        b = _sampled(studies.make_sampler(kind, space, seed=1), space)
        c = _sampled(studies.make_sampler(kind, space, seed=2), space)
    assert a == b
    if kind == "grid":  # every grid point exactly once, in a seeded order
        assert sorted(map(str, a)) == sorted(map(str, c)) and len({str(p) for p in a}) == 6
    else:
        assert a != c


def test_two_workers_with_one_seed_draw_different_points():
    """Workers started together with the same --sampler-seed must not repeat each other."""
    space = spaces.search_space(SPEC)
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(
        storage=storage, study_name="s", sampler=studies.make_sampler("random", space, seed=0)
    )
    b = optuna.load_study(
        storage=storage, study_name="s", sampler=studies.make_sampler("random", space, seed=0)
    )
    assert space.sample(a.ask()) != space.sample(b.ask())
    # ... which plain seeded samplers would do
    plain = [optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)) for _ in range(2)]
    assert space.sample(plain[0].ask()) == space.sample(plain[1].ask())


@pytest.mark.parametrize(
    "kind, cls",
    [
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_pruners(kind, cls):
    assert isinstance(studies.make_pruner(kind, epochs=8), cls)


def test_unknown_sampler_and_pruner():
    space = spaces.search_space(SPEC)
    with pytest.raises(BenchbnnError, match="unknown sampler 'cmaes'"):
        studies.make_sampler("cmaes", space)
    with pytest.raises(BenchbnnError, match="unknown pruner 'asha'"):
        studies.make_pruner("asha", 3)


# --- storages -------------------------------------------------------------------------------


def test_default_storage_is_a_journal_in_the_out_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(studies.STORAGE_ENV, raising=False)
    assert studies.default_storage(tmp_path) == str(tmp_path / "optuna.journal")
    assert studies.default_storage() == str(studies.DEFAULT_TUNE_DIR / "optuna.journal")
    monkeypatch.setenv(studies.STORAGE_ENV, "sqlite:///x.db")
    assert studies.default_storage() == "sqlite:///x.db"
    storage = studies.open_storage(str(tmp_path / "sub" / "optuna.journal"))
    assert isinstance(storage, optuna.storages.JournalStorage)
    assert (tmp_path / "sub" / "optuna.journal").exists()


def test_journal_is_shared_by_processes(tmp_path):
    path = tmp_path / "optuna.journal"
    storage = studies.open_storage(str(path))
    optuna.create_study(storage=storage, study_name="shared")
    code = (
        "import optuna, sys; from benchbnn.tune import studies\n"
        f"s = optuna.load_study(study_name='shared', storage=studies.open_storage({str(path)!r}))\n"
        "s.optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=3)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert len(trials) == 6 and len({t.number for t in trials}) == 6


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://nobody:secret@127.0.0.1:1/nodb",
        "sqlite:////nonexistent-dir/deeper/optuna.db",
    ],
)
def test_unreachable_storage_is_one_clear_line(url):
    with pytest.raises(BenchbnnError) as info:
        studies.open_storage(url)
    message = str(info.value)
    assert "cannot open the Optuna storage" in message and "\n" not in message
    assert "secret" not in message  # passwords never printed
    assert "check that the database server is running" in message


def test_missing_journal_for_lookups(tmp_path):
    with pytest.raises(BenchbnnError, match="no Optuna storage at"):
        studies.open_storage(str(tmp_path / "none.journal"), create=False)
    assert not (tmp_path / "none.journal").exists()


def test_redact_hides_passwords():
    assert studies.redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert studies.redact("tuning/optuna.journal") == "tuning/optuna.journal"


# --- study identity and bookkeeping -----------------------------------------------------------


def test_study_names():
    assert studies.study_name("quick", "bop") == "quick-bop"
    assert studies.study_name("quick", "bop2ndorder", "unbiased") == "quick-bop2ndorder-unbiased"


def test_a_study_with_another_search_space_is_refused():
    space = {"params": {"gamma": {"type": "float", "low": 1e-8, "high": 1e-2, "log": True}}}
    other = {"params": {"gamma": {"type": "float", "low": 1e-7, "high": 1e-2, "log": True}}}
    attrs = {studies.ATTR_SPACE: space, studies.ATTR_PROTOCOL: {"epochs": 3}}
    studies.check_study_matches("s", attrs, space, {"epochs": 3}, "x.journal")
    with pytest.raises(BenchbnnError) as info:
        studies.check_study_matches("s", attrs, other, {"epochs": 3}, "x.journal")
    assert "different search space" in str(info.value) and "--study NAME" in str(info.value)
    with pytest.raises(
        BenchbnnError, match=r"different protocol .*epochs: study has 3, this run 5"
    ):
        studies.check_study_matches("s", attrs, space, {"epochs": 5}, "x.journal")
    with pytest.raises(BenchbnnError, match="not created by 'benchbnn tune'"):
        studies.check_study_matches("s", {}, space, {}, "x.journal")


def test_counts_follow_the_budget_rules():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, user_attrs={studies.ATTR_FAILURE: "diverged"}
        )
    )
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))  # lost
    study.ask()
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING))
    counts = studies.count_trials(study.get_trials())
    assert (counts.done, counts.complete, counts.pruned, counts.failed) == (3, 1, 1, 1)
    assert (counts.running, counts.waiting) == (1, 1)


def test_trials_of_dead_local_workers_are_failed_and_queued_again(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    token = studies.worker_token(int(dead.stdout))
    storage = studies.open_storage(str(tmp_path / "optuna.journal"))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    alive = study.ask()
    alive.set_user_attr(studies.ATTR_WORKER, studies.worker_token())
    lost = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    lost.set_user_attr(studies.ATTR_WORKER, token)
    x = lost.params["x"]
    with studies.quiet_optuna():
        assert studies.fail_lost_trials(study) == [lost.number]
        assert studies.fail_lost_trials(study) == []
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[alive.number].state == optuna.trial.TrialState.RUNNING
    assert by_number[lost.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == {"x": x}
    assert retry[0].system_attrs["failed_trial"] == lost.number


def test_optuna_dashboard_opens_the_default_storage(tmp_path):
    import optuna_dashboard  # the 'dashboard' extra (also in 'test'): this must not skip

    path = tmp_path / "optuna.journal"
    storage = studies.open_storage(str(path))
    optuna.create_study(storage=storage, study_name="watched")
    app = optuna_dashboard.wsgi(str(path))  # what `optuna-dashboard tuning/optuna.journal` opens
    assert callable(app)
    responses = []
    body = app(
        {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/api/studies",
            "QUERY_STRING": "",
            "SERVER_NAME": "x",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "wsgi.input": None,
            "SERVER_PROTOCOL": "HTTP/1.1",
        },
        lambda status, headers, exc_info=None: responses.append(status),
    )
    assert responses[0].startswith("200")
    assert b"watched" in b"".join(body)


def test_cli_choices_match_the_module():
    from benchbnn.cli import tune as cli

    assert cli.SAMPLERS == studies.SAMPLERS and cli.PRUNERS == studies.PRUNERS
    assert cli.DEFAULT_TRIALS == tuning.DEFAULT_TRIALS
    assert cli.DEFAULT_HEARTBEAT_S == studies.DEFAULT_HEARTBEAT_S
    assert cli.TPE_STARTUP_TRIALS == studies.TPE_STARTUP_TRIALS


def test_best_trial_hparams_reads_the_best_complete_trial(tmp_path, monkeypatch):
    monkeypatch.delenv(studies.STORAGE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        BenchbnnError, match=re.escape("no Optuna storage at tuning/optuna.journal")
    ):
        tuning.best_trial_hparams("quick", "bop")
    storage = studies.open_storage("tuning/optuna.journal")
    study = optuna.create_study(storage=storage, study_name="quick-bop", direction="maximize")
    study.set_user_attr(studies.ATTR_SPACE, {"fixed": {"threshold": 1e-6}})
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    with pytest.raises(BenchbnnError) as info:
        tuning.best_trial_hparams("quick", "bop")
    assert "no complete trial yet (1 pruned" in str(info.value)
    assert "'benchbnn tune quick --optimizer bop'" in str(info.value)
    gamma = optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)
    for value, g in ((80.0, 1e-3), (90.0, 1e-4), (90.0, 1e-5)):  # ties: the earlier trial
        study.add_trial(
            optuna.trial.create_trial(
                value=value, params={"gamma": g}, distributions={"gamma": gamma}
            )
        )
    found = tuning.best_trial_hparams("quick", "bop")
    assert (found.trial_number, found.value, found.study_name) == (2, 90.0, "quick-bop")
    assert found.hparams == {"threshold": 1e-6, "gamma": 1e-4} and found.params == {"gamma": 1e-4}
    # an entry's own study comes first when it exists
    own = optuna.create_study(storage=storage, study_name="quick-bop-fast", direction="maximize")
    own.add_trial(
        optuna.trial.create_trial(value=1.0, params={"gamma": 1e-2}, distributions={"gamma": gamma})
    )
    assert tuning.best_trial_hparams("quick", "bop", entry="fast").study_name == "quick-bop-fast"
    assert tuning.best_trial_hparams("quick", "bop", entry="slow").study_name == "quick-bop"
    with pytest.raises(BenchbnnError, match="no tuning study 'other'"):
        tuning.best_trial_hparams("quick", "bop", study="other")
