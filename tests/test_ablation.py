"""The paper's ablation (Bop2ndOrder paper, Fig. 3): the grid of run configurations, then a real
sweep on a tiny budget that produces its plots and robustness table, reusing tracked runs."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuning_support import fresh_tracking_uri, one_torch_thread, write_suite

from benchbnn.bench.suite_file import load_suite
from benchbnn.cli import main as cli_main
from benchbnn.core import names as tracked_names
from benchbnn.core.errors import BenchbnnError
from benchbnn.train.tracking import client_for
from benchbnn.tune import ablation

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@given(st.integers(-12, 2), st.integers(-4, 4))
def test_powers_of_ten_are_exact(k, f):
    assert ablation.scaled(float(f"1e{k}"), f) == float(f"1e{k + f}")
    assert ablation.scaled(3e-4, f) == float(f"3e{f - 4}")


def test_the_papers_grid_from_the_base_point():
    """cifar10-base-point: tau 1e-6, gamma 1e-7, sigma 1e-3, two powers of ten down and up."""
    suite = load_suite("cifar10-base-point")
    points = ablation.plan_ablation(
        suite, optimizers=["bop2ndorder-unbiased"], hparams=["gamma", "sigma", "threshold"]
    )
    values = {}
    for p in points:
        values.setdefault(p.hparam, []).append(p.value)
        assert len(p.configs) == 3 and {c.seed for c in p.configs} == {0, 1, 2}
        for c in p.configs:
            assert c.epochs == 100 and c.batch_size == 100 and c.arch == "binarynet"
            assert c.hparams["unbiased"] is True and c.hparams["lr"] == 0.01
            others = {"gamma": 1e-7, "sigma": 1e-3, "threshold": 1e-6}
            others.pop(p.hparam)
            assert all(c.hparams[k] == v for k, v in others.items())  # the others stay fixed
            assert c.hparams[p.hparam] == p.value
    assert values == {
        "gamma": [1e-9, 1e-8, 1e-7, 1e-6, 1e-5],
        "sigma": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        "threshold": [1e-8, 1e-7, 1e-6, 1e-5, 1e-4],
    }
    # one base-point configuration shared by the three sweeps: 1 + 3 x 4 points, 3 seeds each
    hashes = {c.config_hash() for p in points for c in p.configs}
    assert len(hashes) == 13 * 3
    base = {c.config_hash() for p in points if p.factor == 0 for c in p.configs}
    assert len(base) == 3


def test_default_sweep_is_the_log_scale_search_space_of_every_entry():
    suite = load_suite("cifar10-base-point")
    points = ablation.plan_ablation(suite)
    assert {p.label for p in points} == {
        "bop2ndorder-unbiased",
        "bop2ndorder-biased",
        "bop2ndorder-unbiased-tau-code",
        "bop2ndorder-biased-tau-code",
    }
    assert {p.hparam for p in points} == {"gamma", "sigma", "threshold", "lr"}
    assert sorted({p.factor for p in points}) == [-2, -1, 0, 1, 2]


def test_values_outside_the_valid_range_are_left_out():
    suite = load_suite("cifar10-base-point")  # lr = 0.01 and lr must lie in [0, 10]
    points = ablation.plan_ablation(
        suite, optimizers=["bop2ndorder-biased"], hparams=["lr"], factors=(3, 4)
    )
    assert [p.value for p in points] == [0.01, 10.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hparams": ["gama"]}, "no chosen entry has a real-valued hyperparameter 'gama'"),
        ({"optimizers": ["adam"]}, "has no entry or optimizer 'adam'"),
        ({"arch": "xnornet"}, "has no architecture 'xnornet'"),
    ],
)
def test_bad_sweeps_are_clear_errors(kwargs, message):
    with pytest.raises(BenchbnnError, match=message):
        ablation.plan_ablation(load_suite("cifar10-base-point"), **kwargs)


@pytest.mark.parametrize("text", ["-2,x", "0", "1.5"])
def test_bad_factors(text):
    with pytest.raises(BenchbnnError, match="--factors"):
        ablation.parse_factors(text)
    assert ablation.parse_factors("2,-1,1,-2,1") == (-2, -1, 1, 2)


def test_cli_rejects_bad_factors_with_exit_status_2(capsys):
    assert cli_main(["ablate", "quick", "--factors=-1,one"]) == 2
    assert "--factors takes whole powers of ten" in capsys.readouterr().err


def _read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_a_tiny_sweep_writes_plots_and_robustness_and_reuses_runs(tmp_path):
    suite = write_suite(tmp_path, epochs=1)
    uri = fresh_tracking_uri(tmp_path)
    out = tmp_path / "ablation"
    first = ablation.ablate(
        str(suite),
        optimizers=["bop2ndorder"],
        factors=(-1, 1),
        tracking_uri=uri,
        out=out,
        quiet=True,
        say=None,
    )
    assert first.trained == 5  # base point + (gamma, sigma) x (down, up)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "ablation.csv",
        "gamma.png",
        "robustness.csv",
        "robustness.md",
        "robustness.png",
        "sigma.png",
    ]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    points = _read_csv(out / "ablation.csv")
    assert [(r["hparam"], r["factor"], r["value"]) for r in points] == [
        ("gamma", "-1", "1e-06"),
        ("gamma", "0", "1e-05"),
        ("gamma", "1", "0.0001"),
        ("sigma", "-1", "0.0001"),
        ("sigma", "0", "0.001"),
        ("sigma", "1", "0.01"),
    ]
    assert all(r["finished"] == "1" and r["accuracy"] for r in points)
    accuracy = {(r["hparam"], r["factor"]): float(r["accuracy"]) for r in points}
    assert accuracy[("gamma", "0")] == accuracy[("sigma", "0")]  # one shared base-point run

    spread = {r["hparam"]: r for r in _read_csv(out / "robustness.csv")}
    assert set(spread) == {"gamma", "sigma", "all"}
    for name, row in spread.items():
        mine = [v for (h, _f), v in accuracy.items() if name in (h, "all")]
        assert float(row["min"]) == pytest.approx(min(mine), abs=1e-4)
        assert float(row["max"]) == pytest.approx(max(mine), abs=1e-4)
        assert float(row["range"]) == pytest.approx(max(mine) - min(mine), abs=2e-4)
    assert spread["all"]["points"] == "5"
    assert "| bop2ndorder | all | 5 |" in (out / "robustness.md").read_text()

    client = client_for(uri)
    runs = client.search_runs([client.get_experiment_by_name("benchbnn").experiment_id])
    assert sorted(r.data.tags[tracked_names.TAG_ABLATION] for r in runs) == [
        "base",
        "gamma=0.0001",
        "gamma=1e-06",
        "sigma=0.0001",
        "sigma=0.01",
    ]

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = ablation.ablate(
        str(suite),
        optimizers=["bop2ndorder"],
        factors=(-1, 1),
        tracking_uri=uri,
        out=out,
        quiet=True,
        say=None,
    )
    assert again.trained == 0  # every point reused by configuration hash
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # byte for byte


def test_a_suites_ablation_table_is_the_default_sweep_and_its_points_are_entries(
    monkeypatch, tmp_path
):
    """cifar10-cpu-sweep: ablate takes entries, hyperparameters and factors from [ablation],
    and every run it plans is one of the suite's own entries (compare trains them)."""
    suite = load_suite("cifar10-cpu-sweep")
    monkeypatch.setattr(ablation, "run_ablation", lambda *args, **kwargs: [])
    monkeypatch.setattr(ablation, "check_writable_dir", lambda *args: None)
    planned = {}

    def collect(suite_obj, points, **kwargs):
        planned["points"] = points
        return []

    monkeypatch.setattr(ablation, "collect_ablation", collect)
    monkeypatch.setattr(ablation, "write_ablation", lambda *args: [tmp_path / "x"])
    ablation.ablate(suite, say=None)
    points = planned["points"]
    assert {p.label for p in points} == set(suite.ablation.entries)
    assert {p.factor for p in points} == {-1, 0, 1}
    assert {(p.label, p.hparam) for p in points if p.label == "bop"} == {
        ("bop", "gamma"),
        ("bop", "threshold"),
    }
    suite_hashes = {c.config_hash() for _e, _a, c in suite.run_configs()}
    assert {c.config_hash() for p in points for c in p.configs} == suite_hashes
