"""``benchbnn compare`` end to end: real training, a real MLflow store, reuse and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engine_support import NanPlugin, two_optimizer_suite, write_two_optimizer_suite
from PIL import Image

import benchbnn
from benchbnn.bench.compare import RECORDED_FAILURE, RESUME, REUSE, TRAIN, compare
from benchbnn.bench.report import OUTPUT_FILES
from benchbnn.cli import main as cli
from benchbnn.core.errors import BenchbnnError
from benchbnn.train.tracking import client_for


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one costs seconds); tests use own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


class Counter:
    """Lifecycle plugin: counts the runs the engine starts."""

    def __init__(self):
        self.starts = 0

    @benchbnn.hookimpl
    def benchbnn_run_start(self, run):
        self.starts += 1


class StopAtEpoch:
    """Lifecycle plugin: interrupts the run of one seed when ``epoch`` starts."""

    def __init__(self, seed: int, epoch: int):
        self.seed, self.epoch = seed, epoch

    @benchbnn.hookimpl
    def benchbnn_epoch_start(self, run, epoch):
        if run.config.seed == self.seed and epoch == self.epoch:
            raise Interrupted(f"stopped seed {self.seed} at epoch {epoch}")


class Interrupted(Exception):
    pass


def tiny_suite(tmp_path: Path, epochs: int = 1, seeds: int = 2) -> Path:
    return write_two_optimizer_suite(tmp_path / "tiny.toml", "tiny", epochs=epochs, seeds=seeds)


def mlflow_runs(store: str, experiment: str) -> list:
    client = client_for(store)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUT_FILES}


def run(suite, tmp_path, store, experiment, **kwargs):
    lines: list[str] = []
    kwargs.setdefault("out", tmp_path / "leaderboards" / "out")
    result = compare(
        suite,
        tracking_uri=store,
        experiment=experiment,
        checkpoint_dir=tmp_path / "ckpt",
        quiet=True,
        echo=lines.append,
        **kwargs,
    )
    return result, lines


# --- the quick path -------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_compare_trains_then_reuses_everything_and_leaderboard_matches(tmp_path, store):
    protocol = {"epochs": 1, "seeds": 2, "overrides": {"subset": 300}}
    out = tmp_path / "leaderboards" / "quick"
    counter = Counter()
    first, lines = run(
        "quick", tmp_path, store, "quick", out=out, plugins=[counter], index=True, **protocol
    )
    n = 2 * len(benchbnn.bench.suite_file.load_suite("quick").entries)
    assert counter.starts == n == first.trained
    assert f"training {n}" in lines[0]
    data = json.loads((out / "leaderboard.json").read_text())
    assert {run["status"] for row in data["rows"] for run in row["runs"]} == {"FINISHED"}
    assert {row["optimizer"] for row in data["rows"]} >= {
        "bop",
        "bop2ndorder",
        "pbop",
        "adam-latent",
    }
    assert (out / "curves.png").is_file() and (out / "flips.png").is_file()
    assert (tmp_path / "leaderboards" / "README.md").read_text().count(
        "[quick](quick/leaderboard.md)"
    ) == 1
    written = files(out)

    again = Counter()
    second, lines = run("quick", tmp_path, store, "quick", out=out, plugins=[again], **protocol)
    assert again.starts == 0 and second.trained == 0
    assert {p.action for p in second.plan} == {REUSE}
    assert lines[0].endswith(f"reusing {n} finished and 0 failed, resuming 0, training 0")
    assert len(mlflow_runs(store, "quick")) == n
    assert files(out) == written

    regenerated = tmp_path / "regenerated"
    status = cli(
        [
            "leaderboard",
            "quick",
            "--epochs",
            "1",
            "--seeds",
            "2",
            "--subset",
            "300",
            "--tracking-uri",
            store,
            "--experiment",
            "quick",
            "--out",
            str(regenerated),
        ]
    )
    assert status == 0
    assert files(regenerated) == written
    md = written["leaderboard.md"].decode()
    assert (
        "Changed from the suite file: bnn-mlp epochs 20 -> 1; seeds [0, 1, 2] -> [0, 1]; "
        "subset all -> 300." in md
    )
    assert "`benchbnn leaderboard quick --seeds 2 --epochs 1 --subset 300`" in md


def test_compare_says_which_store_it_tracks_to_and_when_that_store_is_new(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"  # a mistyped path: a new, empty store
    argv = ["compare", str(tiny_suite(tmp_path, seeds=1)), "--tracking-uri", store, "--quiet"]
    argv += ["--out", str(tmp_path / "lb")]
    assert cli(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        f"tracking store: {store} (new: nothing was tracked there before, so no run can be reused)"
        in lines
    )
    assert cli(argv) == 0
    assert f"tracking store: {store}" in capsys.readouterr().out.splitlines()


def test_leaderboard_without_tracked_runs_is_an_error(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'absent.db'}"
    status = cli(
        [
            "leaderboard",
            str(tiny_suite(tmp_path)),
            "--tracking-uri",
            store,
            "--out",
            str(tmp_path / "lb"),
        ]
    )
    assert status == 2
    assert "no tracked runs of suite 'tiny'" in capsys.readouterr().err
    assert not (tmp_path / "lb").exists() and not (tmp_path / "absent.db").exists()


def test_leaderboard_of_an_experiment_without_the_runs_is_an_error(tmp_path, store, capsys):
    status = cli(
        [
            "leaderboard",
            str(tiny_suite(tmp_path)),
            "--tracking-uri",
            store,
            "--experiment",
            "nothing-here",
            "--out",
            str(tmp_path / "lb"),
        ]
    )
    assert status == 2
    assert "no tracked runs of suite 'tiny'" in capsys.readouterr().err


# --- resume and failures --------------------------------------------------------------------------


def test_an_interrupted_compare_resumes_where_it_stopped(tmp_path, store):
    suite = tiny_suite(tmp_path, epochs=2, seeds=2)
    with pytest.raises(Interrupted):
        run(str(suite), tmp_path, store, "resume", optimizers="bop", plugins=[StopAtEpoch(1, 2)])
    killed = [r for r in mlflow_runs(store, "resume") if r.info.status != "FINISHED"]
    assert len(killed) == 1 and killed[0].info.status == "KILLED"

    counter = Counter()
    result, _lines = run(str(suite), tmp_path, store, "resume", optimizers="bop", plugins=[counter])
    assert [p.action for p in result.plan] == [REUSE, RESUME]
    assert result.plan[1].run_id == killed[0].info.run_id
    assert counter.starts == 1
    resumed = result.results[0]
    assert resumed.status == "FINISHED" and resumed.run_id == killed[0].info.run_id
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    runs = mlflow_runs(store, "resume")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}


def test_a_plugin_optimizer_is_ranked_and_a_diverged_run_is_shown_as_failed(
    tmp_path, store, clean_registry
):
    benchbnn.register_plugin(NanPlugin(), "nan-plugin")
    suite = str(tiny_suite(tmp_path, epochs=1, seeds=1))
    out = tmp_path / "leaderboards" / "tiny"
    result, _lines = run(suite, tmp_path, store, "failures", out=out, optimizers="+nan-opt")
    assert [p.entry.label for p in result.plan] == ["bop", "adam-latent", "nan-opt"]
    failed = result.results[-1]
    assert failed.status == "FAILED" and "diverged" in failed.error
    md = (out / "leaderboard.md").read_text()
    assert "- Runs: 2 finished, 1 failed; " in md
    assert "| nan-opt | bnn-mlp | 0 | FAILED | training diverged" in md
    assert "0/1; 1 failed: training diverged" in md
    assert "entries added: nan-opt" in md

    counter = Counter()
    again, _lines = run(
        suite, tmp_path, store, "failures", out=out, optimizers="+nan-opt", plugins=[counter]
    )
    assert [p.action for p in again.plan] == [REUSE, REUSE, RECORDED_FAILURE]
    assert counter.starts == 0 and "training diverged" in again.plan[-1].reason

    retried, _ = run(
        suite,
        tmp_path,
        store,
        "failures",
        out=out,
        optimizers="+nan-opt",
        plugins=[counter],
        retry_failed=True,
    )
    assert [p.action for p in retried.plan] == [REUSE, REUSE, TRAIN]
    assert counter.starts == 1


# --- bad input: nothing trains --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data_dir, message",
    [
        (None, "needs a data directory: pass --data-dir"),
        ("missing", "does not exist"),
        ("empty", "no CIFAR-10 layout found"),
    ],
)
def test_a_suite_whose_dataset_is_missing_fails_before_anything_trains(tmp_path, data_dir, message):
    store = f"sqlite:///{tmp_path / 'never.db'}"
    if data_dir == "empty":
        (tmp_path / "empty").mkdir()
    counter = Counter()
    with pytest.raises(BenchbnnError, match=message) as info:
        compare(
            "cifar10-cpu",
            data_dir=None if data_dir is None else tmp_path / data_dir,
            tracking_uri=store,
            out=tmp_path / "lb",
            checkpoint_dir=tmp_path / "ckpt",
            plugins=[counter],
            echo=None,
        )
    assert "cifar10-cpu" in str(info.value)
    assert counter.starts == 0
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "lb").exists()


def test_cli_reports_bad_suites_in_one_line_with_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    text = two_optimizer_suite("tiny", epochs=1, seeds=1)
    bad.write_text(text.replace('optimizer = "bop"', 'optimizer = "bopp"'))
    assert cli(["compare", str(bad), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(
        f"benchbnn: error: suite {bad}, line 16, key entries[1].optimizer: unknown optimizer 'bopp'"
    )
    assert not (tmp_path / "x.db").exists()


# --- the GPU-scale suites, end to end with tiny overrides -----------------------------------------


def _image_folder(
    root: Path, splits: dict[str, str], classes: list[str], per_class: int, size: int, suffix: str
) -> Path:
    rng = np.random.default_rng(0)
    for folder in splits.values():
        for c, name in enumerate(classes):
            directory = root / folder / name
            directory.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] = 40 * (c + 1) % 256  # a colour cue per class
                Image.fromarray(pixels).save(directory / f"{i}{suffix}")
    return root


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> Path:
    classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    return _image_folder(
        tmp_path_factory.mktemp("cifar"), {"train": "train", "test": "test"}, classes, 4, 32, ".png"
    )


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory) -> Path:
    return _image_folder(
        tmp_path_factory.mktemp("imagenet"),
        {"train": "train", "test": "val"},
        ["n01", "n02", "n03"],
        4,
        40,
        ".JPEG",
    )


TINY_BINARYNET = {"batch_size": 10, "arch_options": {"width": 0.0625}}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10-binarynet", "cifar10-base-point"])
def test_cifar10_suites_run_end_to_end_with_tiny_overrides(name, tmp_path, store, tiny_cifar):
    result, _ = run(
        name,
        tmp_path,
        store,
        name,
        data_dir=tiny_cifar,
        epochs=1,
        seeds=1,
        overrides=TINY_BINARYNET,
        data_note="a generated CIFAR-10 look-alike",
    )
    suite = benchbnn.bench.suite_file.load_suite(name)
    assert result.trained == len(suite.entries)
    assert {r.status for r in result.results} == {"FINISHED"}
    md = (tmp_path / "leaderboards" / "out" / "leaderboard.md").read_text()
    assert "Table 1 layout" in md
    assert "- Dataset: cifar10, read from a generated CIFAR-10 look-alike; " in md
    if suite.paper:
        assert "| bop2ndorder-biased | bop2ndorder |" in md and "| 98.1 | 91.9 |" in md


@pytest.mark.slow
def test_imagenet_suite_runs_end_to_end_with_tiny_overrides(
    tmp_path, store, tiny_imagenet, monkeypatch
):
    monkeypatch.setenv("BENCHBNN_NUM_WORKERS", "0")
    result, _ = run(
        "imagenet-xnornet-birealnet",
        tmp_path,
        store,
        "imagenet",
        data_dir=tiny_imagenet,
        epochs=1,
        seeds=1,
        overrides={
            "batch_size": 4,
            "arch_options": {"width": 0.0625},
            "dataset_options": {"image_size": 32},
        },
    )
    assert result.trained == 6 and {r.status for r in result.results} == {"FINISHED"}
    md = (tmp_path / "leaderboards" / "out" / "leaderboard.md").read_text()
    assert "Table 2 layout" in md
    assert "| bop2ndorder | Top-1 |" in md and "| 46.9 |" in md and "|  | Top-5 |" in md


@pytest.mark.slow
def test_compare_tuned_trains_each_entry_with_its_best_trial(tmp_path, store, monkeypatch):
    from benchbnn.tune.tuned import tuned_suite
    from benchbnn.tune.tuning import best_trial_hparams, tune

    monkeypatch.chdir(tmp_path)  # the tuner checkpoints under the working directory
    suite = str(tiny_suite(tmp_path, epochs=1, seeds=1))
    journal = str(tmp_path / "optuna.journal")
    tune(
        suite,
        "bop",
        trials=1,
        sampler="random",
        storage=journal,
        epochs=1,
        tracking_uri=store,
        experiment="tuning",
        out=tmp_path / "tuning",
        quiet=True,
    )
    best = best_trial_hparams(benchbnn.bench.suite_file.load_suite(suite), "bop", storage=journal)

    original = benchbnn.bench.suite_file.load_suite(suite)
    resolved, used = tuned_suite(original, "bop", storage=journal)
    result, lines = run(
        resolved, tmp_path, store, "tuned", optimizers="bop", tuned=used, original=original
    )
    assert lines[0].startswith(
        f"entry bop: tuned hyperparameters from study {best.study_name!r} "
        f"trial #{best.trial_number}"
    )
    assert [p.entry.label for p in result.plan] == ["bop"]
    assert dict(result.plan[0].config.hparams) == {k: best.hparams[k] for k in sorted(best.hparams)}
    md = (tmp_path / "leaderboards" / "out" / "leaderboard.md").read_text()
    assert "--optimizers bop --tuned`" in md and "- Changed from the suite file:" in md
