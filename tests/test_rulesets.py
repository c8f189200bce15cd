"""Rulesets end to end on a tiny suite: equal budgets under ``external``, the median study,
budgets in every table, ``defaults``, and the command line."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import optuna
import pytest
from tuning_support import fresh_tracking_uri, one_torch_thread, write_suite

from benchbnn.bench.compare import compare
from benchbnn.bench.suite_file import load_suite
from benchbnn.cli import main as cli
from benchbnn.core.errors import BenchbnnError
from benchbnn.train.tracking import client_for
from benchbnn.tune import rulesets
from benchbnn.tune.studies import open_storage

pytestmark = pytest.mark.slow

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

EXTRA = "val_fraction = 0.1\ntarget_accuracy = 30.0\n"


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """2 trials x 3 studies for each of the tiny suite's two entries, then the final runs."""
    root = tmp_path_factory.mktemp("rulesets")
    path = write_suite(root, epochs=1, extra=EXTRA)
    uri = fresh_tracking_uri(root)
    suite = load_suite(path)
    used, info = rulesets.apply_ruleset(
        suite,
        "external",
        trials=2,
        studies=3,
        run=True,
        out=root / "tuning",
        tracking_uri=uri,
        quiet=True,
    )
    result = compare(
        used, ruleset=info, tracking_uri=uri, out=root / "lb", plots=False, echo=None, quiet=True
    )
    return SimpleNamespace(
        root=root,
        path=path,
        uri=uri,
        suite=suite,
        used=used,
        info=info,
        result=result,
        journal=root / "tuning" / "optuna.journal",
    )


def _best_values(journal, names):
    storage = open_storage(str(journal), create=False)
    out = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        out.append(max(t.value for t in study.get_trials() if t.value is not None))
    return out


def test_every_entry_gets_the_same_trials_in_three_studies(external):
    assert [b.label for b in external.info.budgets] == ["bop2ndorder", "bop"]
    for budget in external.info.budgets:
        assert budget.trials == (2, 2, 2)
        assert budget.studies == tuple(f"tiny-{budget.label}-external-{k}" for k in range(3))
    assert external.info.refusal() is None


def test_the_median_study_is_chosen(external):
    for budget in external.info.budgets:
        values = _best_values(external.journal, budget.studies)
        # by hand: sort the three studies by their best validation top-1 (ties by index)
        middle = sorted(range(3), key=lambda k: (values[k], k))[1]
        assert budget.chosen == budget.studies[middle]
        storage = open_storage(str(external.journal), create=False)
        study = optuna.load_study(study_name=budget.chosen, storage=storage)
        best = max(
            (t for t in study.get_trials() if t.value is not None),
            key=lambda t: (t.value, -t.number),
        )
        entry = external.used.entry(budget.label)
        for name, value in best.params.items():
            assert entry.hparams[name] == pytest.approx(value)


def test_median_index_by_hand():
    assert rulesets.median_index([90.0, 95.0, 92.0]) == 2
    assert rulesets.median_index([3.0, 1.0, 2.0, 4.0]) == 2  # the lower middle one
    assert rulesets.median_index([5.0, 5.0, 5.0]) == 1  # ties by study index


def test_budgets_are_written_in_every_table(external):
    out = external.root / "lb"
    md = (out / "leaderboard.md").read_text()
    assert "- Ruleset: external v1, tpe sampler (see docs/rulesets.md)." in md
    assert "bop: 3 studies x 2 trials (tiny-bop-external-0, tiny-bop-external-1, " in md
    assert "Not ranked" not in md
    assert "Steps to 30% (val)" in md and "| Test accuracy (%) |" in md
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert {r["ruleset"] for r in rows} == {"external"}
    assert all(r["budget"].startswith("3 studies x 2 trials") for r in rows)
    data = json.loads((out / "leaderboard.json").read_text())
    assert [b["trials"] for b in data["ruleset"]["budgets"]] == [[2, 2, 2], [2, 2, 2]]
    assert data["ruleset"]["ranked"] is True
    assert "--ruleset external --trials 2 --studies 3" in data["command"]


def test_the_command_line_reuses_the_studies_and_runs(external, monkeypatch):
    monkeypatch.chdir(external.root)
    client = client_for(external.uri)
    before = len(client.search_runs(client.get_experiment_by_name("benchbnn").experiment_id))
    args = [
        "compare",
        str(external.path),
        "--ruleset",
        "external",
        "--trials",
        "2",
        "--storage",
        str(external.journal),
        "--tracking-uri",
        external.uri,
        "--out",
        str(external.root / "lb2"),
        "--no-plots",
        "--quiet",
    ]
    assert cli(args) == 0
    after = len(client.search_runs(client.get_experiment_by_name("benchbnn").experiment_id))
    assert after == before  # nothing trained again
    md = (external.root / "lb2" / "leaderboard.md").read_text()
    assert "median study: " + external.info.budgets[1].chosen in md


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--ruleset external needs the number of trials"),
        (["--trials", "2", "--ruleset", "fixed"], "only apply with --ruleset external"),
        (["--tuned"], "--tuned and --ruleset external both choose"),
    ],
)
def test_bad_ruleset_arguments_are_one_line(tmp_path, capsys, extra, message):
    path = write_suite(tmp_path, epochs=1, extra=EXTRA)
    args = ["leaderboard", str(path), "--ruleset", "external", *extra]
    args += ["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_defaults_keeps_variant_switches_and_drops_searched_values(tmp_path):
    suite = load_suite(write_suite(tmp_path, epochs=1, extra=EXTRA))
    used, info = rulesets.apply_ruleset(suite, "defaults")
    entry = used.entry("bop2ndorder")
    assert "gamma" not in entry.hparams and "sigma" not in entry.hparams
    assert (info.name, info.version) == ("defaults", 1)
    with pytest.raises(BenchbnnError, match="unknown ruleset 'paper'"):
        rulesets.apply_ruleset(suite, "paper")


def test_score_reads_a_benchmark_of_the_tuned_suite(external, monkeypatch, capsys):
    monkeypatch.chdir(external.root)
    bench = external.root / "tiny.benchmark.toml"
    bench.write_text(
        'name = "tiny-bench"\nruleset = "external"\ntrials = 2\nmeasure = "steps"\n'
        f'[[workloads]]\nsuite = "{external.path.name}"\n'
    )
    args = ["score", str(bench), "--storage", str(external.journal)]
    args += ["--tracking-uri", external.uri, "--no-plots"]
    assert cli(args) == 0
    out = external.root / "leaderboards" / "tiny-bench"
    data = json.loads((out / "score.json").read_text())
    assert (data["ruleset"], data["ruleset_version"], data["workloads"]) == (
        "external",
        1,
        ["tiny"],
    )
    assert {s["optimizer"] for s in data["scores"]} == {"bop", "bop2ndorder"}
    assert data["ranked"] is True
    for s in data["scores"]:
        assert 0.0 <= s["score"] <= 1.0
        # one seed: a run that reached the target took a whole number of epochs of steps
        assert all(t is None or t > 0 for t in s["times"]["tiny"])
    assert "## Performance profiles" in (out / "score.md").read_text()
