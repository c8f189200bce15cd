"""Bad input gets one line and exit status 2 before anything starts, in every command alike.

Each class of bad input is provoked through ``benchbnn.cli.main``: absurd sizes and numbers past
64 bits, suite paths that hold no suite, tracking and storage URIs MLflow or Optuna cannot use
(passwords never printed), output locations that cannot be written, ``-p`` modules that cannot
be loaded, study names and entry labels that would write outside their folders, and CIFAR-10
batches crafted to run code. Every test checks the one line (the problem and the fix) and that
nothing was created in the working directory: no tracking store, no checkpoint, no output.
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from datafiles import write_cifar_pickles

import benchbnn
import benchbnn.core.plugins
from benchbnn.bench.suite_file import parse_suite
from benchbnn.cli import build_parser
from benchbnn.cli import main as cli_main
from benchbnn.core import limits
from benchbnn.core.config import check_budget
from benchbnn.core.errors import BenchbnnError, DataError
from benchbnn.core.urls import redact
from benchbnn.train.tracking import client_for, ensure_experiment, resolve_tracking_uri

HUGE = "99999999999999999999"  # past 64 bits
RUN = ["run", "--dataset", "digits", "--arch", "bnn-mlp", "--optimizer", "bop", "--quiet"]
TUNE = ["tune", "quick", "--optimizer", "bop"]
PASSWORD = "s3cretpw"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory; stores, outputs and caches default into it or tmp_path."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("MLFLOW_TRACKING_URI", "BENCHBNN_TUNE_STORAGE", "BENCHBNN_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BENCHBNN_CACHE_DIR", str(tmp_path / "cache"))
    return work


def exit_status(argv: list[str]) -> int:
    """``main``'s status; argparse's own refusals (a missing flag, ``bench``'s counts) exit."""
    try:
        return cli_main(argv)
    except SystemExit as exc:
        return int(exc.code)


def refused(capsys, argv: list[str], *fragments: str) -> str:
    """Run ``argv``: exit status 2 and one line on stderr holding every fragment; returns it."""
    code = exit_status(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("benchbnn: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert PASSWORD not in out + err
    return lines[0]


def created(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir())


def write_suite(path: Path, *, label: str = "bop", extra: str = "") -> Path:
    path.write_text(
        f'dataset = "digits"\narch = "bnn-mlp"\nepochs = 1\n{extra}\n'
        f'[arch_options]\nhidden = [16]\n[[entries]]\nlabel = "{label}"\noptimizer = "bop"\n'
    )
    return path


# --- 1. absurd sizes and numbers past 64 bits -------------------------------------------------


SIZES = {
    "run seed past 64 bits": (RUN + ["--seed", HUGE], "--seed must be at most 4294967295"),
    "run epochs past 64 bits": (
        RUN + ["--epochs", HUGE],
        f"--epochs must be at most 100000, got {HUGE}",
    ),
    "run epochs": (RUN + ["--epochs", "1000000000"], "--epochs must be at most 100000"),
    "run batch size": (RUN + ["--batch-size", "10" * 7], "--batch-size must be at most 1048576"),
    "run subset": (RUN + ["--subset", HUGE], "--subset must be at most 1000000000"),
    "run log every": (
        RUN + ["--log-every", HUGE],
        "--log-every must be at most 9223372036854775807",
    ),
    "run hidden units": (
        RUN + ["--arch-option", "hidden=1000000000"],
        "option 'hidden' must be one or more positive whole numbers up to 1048576",
    ),
    "run parameter count": (
        RUN + ["--arch-option", "hidden=1000000,1000000"],
        "more than the 10,000,000,000 any run may allocate; make it smaller",
    ),
    "run width": (
        ["run", "--dataset", "synthetic", "--arch", "binarynet", "--optimizer", "bop"]
        + ["--arch-option", "width=1e6"],
        "option 'width' = 1000000.0 is outside its valid range (0.0, 64.0)",
    ),
    "run width by parameter count": (
        ["run", "--dataset", "synthetic", "--arch", "binarynet", "--optimizer", "bop"]
        + ["--arch-option", "width=40"],
        "would have 16,542,295,079 parameters on 'synthetic'",
    ),
    "run integer hyperparameter past 64 bits": (
        ["run", "--dataset", "digits", "--arch", "bnn-mlp", "--optimizer", "pbop"]
        + ["--set", f"seed={HUGE}"],
        "= 99999999999999999999 is outside its valid range [-1, 9223372036854775807]",
    ),
    "run dataset option past 64 bits": (
        ["run", "--dataset", "synthetic", "--arch", "bnn-mlp", "--optimizer", "bop"]
        + ["--dataset-option", f"data_seed={HUGE}"],
        "option 'data_seed' = 99999999999999999999 does not fit in 64 bits",
    ),
    "compare seed count": (["compare", "--seeds", "1000000000"], "--seeds must be at most 1000"),
    "compare seed count past 64 bits": (["compare", "--seeds", HUGE], "--seeds must be at most"),
    "compare seed in a list": (
        ["compare", "--seeds", f"0,{HUGE}"],
        "a seed of --seeds must be at most 4294967295",
    ),
    "compare epochs": (["compare", "--epochs", HUGE], "--epochs must be at most 100000"),
    "compare subset": (["compare", "--subset", HUGE], "--subset must be at most 1000000000"),
    "compare override": (
        ["compare", "--override", f"epochs={HUGE}"],
        "protocol key 'epochs' = 99999999999999999999 is outside its valid range [1, 100000]",
    ),
    "leaderboard seeds": (["leaderboard", "--seeds", "1000000000"], "--seeds must be at most"),
    "tune seeds": (TUNE + ["--seeds", "1000000000"], "--seeds must be at most 1000"),
    "tune epochs": (TUNE + ["--epochs", HUGE], "--epochs must be at most 100000"),
    "tune startup trials": (
        TUNE + ["--startup-trials", "-1"],
        "--startup-trials must be at least 0",
    ),
    "tune trials": (TUNE + ["--trials", "-3"], "--trials must be at least 1, got -3"),
    "tune trials past 64 bits": (TUNE + ["--trials", HUGE], "--trials must be at most 100000"),
    "tune heartbeat": (TUNE + ["--heartbeat", "0"], "--heartbeat must be at least 1, got 0"),
    "tune sampler seed": (TUNE + ["--sampler-seed", HUGE], "--sampler-seed must be at most"),
    "ablate factors": (
        ["ablate", "quick", "--factors", "400"],
        "each of --factors must be at most 12",
    ),
    "ablate negative factors": (["ablate", "--factors=-1,-400"], "must be at least -12, got -400"),
    "ablate seeds": (["ablate", "--seeds", "1000000000"], "--seeds must be at most 1000"),
    "ablate epochs": (["ablate", "--epochs", HUGE], "--epochs must be at most 100000"),
    "bench repeats": (["bench", "--repeats", HUGE], "argument --repeats: must be at most 100000"),
    "bench floor": (["bench", "--floor-mib", "10000000"], "argument --floor-mib: must be at most"),
    "describe image size": (
        ["describe", "bnn-mlp", "--image-size", HUGE],
        "--image-size must be at most 16384",
    ),
}


@pytest.mark.parametrize(("argv", "fragment"), SIZES.values(), ids=SIZES.keys())
def test_absurd_sizes_are_refused_before_anything_is_allocated(workdir, capsys, argv, fragment):
    refused(capsys, argv, fragment)
    assert created(workdir) == []  # no store, no checkpoint, no output: nothing started


def test_every_integer_argument_of_every_command_is_read_by_a_declaration():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.type is not int, f"{name} {action.option_strings}: type=int"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("seeds = 1000000000", "key seeds: a seed count must be at most 1000"),
        ("seeds = [0, 99999999999]", "key seeds[2]: a seed must be at most 4294967295"),
    ],
)
def test_a_suites_seeds_are_bounded_when_it_loads(tmp_path, extra, message):
    with pytest.raises(BenchbnnError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_suite(write_suite(tmp_path / "s.toml", extra=extra).read_text(), tmp_path / "s.toml")


def test_a_suites_epochs_are_refused_before_compare_opens_anything(workdir, capsys):
    suite = write_suite(workdir.parent / "s.toml")
    suite.write_text(suite.read_text().replace("epochs = 1\n", "epochs = 1000000000\n"))
    refused(capsys, ["compare", str(suite)], "epochs must be at most 100000, got 1000000000")
    assert created(workdir) == []


def test_the_library_refuses_the_same_sizes(tmp_path):
    with pytest.raises(BenchbnnError, match="epochs must be at most 100000"):
        check_budget(epochs=10**20)
    with pytest.raises(BenchbnnError, match="seed must be at most 4294967295"):
        check_budget(seed=2**32)
    suite = parse_suite(write_suite(tmp_path / "s.toml").read_text(), tmp_path / "s.toml")
    with pytest.raises(BenchbnnError, match="--seeds must be at most 1000"):
        suite.run_configs(seeds=10**9)  # refused before a billion seeds are listed
    assert limits.within(limits.SEED_COUNT, "3", "--seeds") == 3


# --- 2. suite paths that hold no suite ----------------------------------------------------------


def _directory(tmp: Path) -> Path:
    (tmp / "suites.toml").mkdir()
    return tmp / "suites.toml"


def _binary(tmp: Path) -> Path:
    path = tmp / "junk.toml"
    path.write_bytes(bytes(range(128, 256)) * 8)
    return path


def _latin1(tmp: Path) -> Path:
    path = tmp / "latin.toml"
    path.write_bytes('description = "caf\xe9"\n'.encode("latin-1"))
    return path


def _not_toml(tmp: Path) -> Path:
    path = tmp / "notes.toml"
    path.write_text("this is a note, not a suite\n")
    return path


SUITE_PATHS = {
    "directory": (_directory, "is a directory; pass a suite TOML file"),
    "plain directory": (lambda folder: folder, "is a directory; pass a suite TOML file"),
    "binary junk": (_binary, "is not UTF-8 text (byte 0 is 0x80); a suite is a TOML text file"),
    "latin-1 text": (_latin1, "is not UTF-8 text (byte 18 is 0xe9)"),
    "not TOML": (_not_toml, "line 1, column 6: invalid TOML"),
}


@pytest.mark.parametrize("command", [["compare"], ["leaderboard"], ["ablate"], TUNE[:1]])
@pytest.mark.parametrize(("make", "fragment"), SUITE_PATHS.values(), ids=SUITE_PATHS.keys())
def test_a_suite_path_that_holds_no_suite_is_one_line(
    workdir, capsys, tmp_path, command, make, fragment
):
    folder = tmp_path / "suites"
    folder.mkdir()
    suite = make(folder)
    argv = [*command, str(suite)] + (["--optimizer", "bop"] if command == ["tune"] else [])
    refused(capsys, argv, str(suite), fragment)
    assert created(workdir) == []


# --- 3. tracking and storage URIs ---------------------------------------------------------------


URIS = {
    "tracking ftp": (
        RUN + ["--tracking-uri", f"ftp://u:{PASSWORD}@host/x"],
        ["the tracking URI ftp://u:***@host/x: unsupported scheme 'ftp'", "sqlite:///PATH.db"],
    ),
    "tracking without driver": (
        RUN + ["--tracking-uri", f"mysql://u:{PASSWORD}@localhost/db"],
        ["no database driver for the tracking URI mysql://u:***@localhost/db", "install"],
    ),
    "compare tracking": (
        ["compare", "--tracking-uri", "ftp://x"],
        ["unsupported scheme 'ftp'", "pass --tracking-uri with one of them"],
    ),
    "leaderboard tracking": (
        ["leaderboard", "--tracking-uri", "ftp://x"],
        ["unsupported scheme 'ftp'", "pass --tracking-uri with one of them"],
    ),
    "ablate tracking": (
        ["ablate", "--tracking-uri", "gopher://x"],
        ["unsupported scheme 'gopher'", "http:// or https://"],
    ),
    "tune tracking": (
        TUNE + ["--tracking-uri", "ftp://x"],
        ["unsupported scheme 'ftp'", "pass --tracking-uri with one of them"],
    ),
    "storage mongodb": (
        TUNE + ["--storage", f"mongodb://u:{PASSWORD}@x/db"],
        ["the Optuna storage mongodb://u:***@x/db: unsupported scheme 'mongodb'", "journal file"],
    ),
    "storage ftp": (TUNE + ["--storage", "ftp://x"], ["unsupported scheme 'ftp'", "--storage"]),
    "storage without driver": (
        TUNE + ["--storage", f"mysql://u:{PASSWORD}@localhost/db"],
        ["no database driver for the Optuna storage mysql://u:***@localhost/db", "mysqlclient"],
    ),
    "compare tuned storage": (
        ["compare", "--tuned", "--storage", f"mongodb://u:{PASSWORD}@x/db"],
        ["unsupported scheme 'mongodb'"],
    ),
}


@pytest.mark.parametrize(("argv", "fragments"), URIS.values(), ids=URIS.keys())
def test_unusable_uris_say_which_schemes_work_and_hide_passwords(workdir, capsys, argv, fragments):
    refused(capsys, argv, *fragments)
    assert created(workdir) == []  # the tracking store is not created either


def test_passwords_are_masked_in_every_kind_of_url():
    assert redact(f"postgresql://u:{PASSWORD}@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact(f"https://u:{PASSWORD}@mlflow.example/") == "https://u:***@mlflow.example/"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_plain_postgresql_url_uses_the_installed_psycopg2(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None or importlib.util.find_spec("psycopg"):
        pytest.skip("needs psycopg2 and not psycopg 3")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert resolve_tracking_uri("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"


@pytest.mark.slow
@pytest.mark.postgres
def test_mlflow_tracks_to_a_plain_postgresql_url(postgres_server, workdir, capsys):
    url = postgres_server.new_database("plain").replace("postgresql+psycopg2://", "postgresql://")
    client = client_for(resolve_tracking_uri(url))
    assert ensure_experiment(client, "plain", url)
    argv = RUN + ["--arch-option", "hidden=16", "--epochs", "1", "--subset", "100"]
    assert cli_main(argv + ["--tracking-uri", url, "--experiment", "plain"]) == 0, (
        capsys.readouterr()
    )
    runs = client.search_runs([client.get_experiment_by_name("plain").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]


# --- 4. output locations, checked before training -----------------------------------------------


def _a_file(workdir: Path) -> Path:
    path = workdir.parent / "a-file"
    path.write_text("")
    return path


OUTPUTS = {
    "ablate out is a file": (["ablate", "--out", "{file}"], "cannot write the ablation to {file}"),
    "ablate out under a file": (["ablate", "--out", "{file}/x"], "{file} is a file"),
    "ablate out unwritable": pytest.param(
        ["ablate", "--out", "/proc/benchbnn-nope"],
        "cannot write the ablation to /proc/benchbnn-nope",
        marks=pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc"),
    ),
    "tune out": (TUNE + ["--out", "{file}"], "cannot write the tuning results to {file}/quick-bop"),
    "compare out": (["compare", "--out", "{file}"], "cannot write the leaderboard to {file}"),
    "compare checkpoint dir": (
        ["compare", "--checkpoint-dir", "{file}"],
        "cannot write checkpoints to {file} (it is a file); pass --checkpoint-dir",
    ),
    "run checkpoint dir": (
        RUN + ["--checkpoint-dir", "{file}"],
        "cannot write checkpoints to {file} (it is a file); pass --checkpoint-dir",
    ),
    "bench out": (
        ["bench", "bop", "--weights", "small", "--floor-mib", "64", "--out", "{file}"],
        "cannot write the benchmark to {file}",
    ),
}


@pytest.mark.parametrize(("argv", "fragment"), OUTPUTS.values(), ids=OUTPUTS.keys())
def test_outputs_that_cannot_be_written_are_refused_before_training(
    workdir, capsys, argv, fragment
):
    blocked = _a_file(workdir)
    argv = [a.format(file=blocked) for a in argv]
    refused(capsys, argv, fragment.format(file=blocked))
    assert created(workdir) == []  # nothing trained: no tracking store, no checkpoint


# --- 5. -p modules that cannot be loaded --------------------------------------------------------


@pytest.fixture
def extra_modules():
    """Forget the ``-p`` modules a test loaded."""
    before = list(benchbnn.core.plugins._extra_modules)
    yield
    benchbnn.core.plugins._extra_modules[:] = before
    benchbnn.core.plugins.reset_registry()


@pytest.mark.parametrize(
    "command",
    [
        RUN,
        ["compare"],
        TUNE,
        ["ablate"],
        ["leaderboard"],
        ["describe", "bnn-mlp"],
        ["bench", "bop", "--weights", "small", "--floor-mib", "64", "--out", "b"],
    ],
    ids=lambda c: c[0],
)
def test_a_plugin_module_that_cannot_be_imported_is_an_error(
    workdir, capsys, extra_modules, command
):
    refused(
        capsys,
        ["-p", "benchbnn_no_such_module", *command],
        "-p benchbnn_no_such_module: failed to import",
        "No module named 'benchbnn_no_such_module'",
        "PYTHONPATH",
    )
    assert created(workdir) == []


def test_a_plugin_module_whose_hook_raises_is_an_error(
    workdir, capsys, extra_modules, tmp_path, monkeypatch
):
    (tmp_path / "broken_hooks.py").write_text(
        "import benchbnn\n\n"
        "@benchbnn.hookimpl\n"
        "def benchbnn_optimizers():\n"
        "    raise RuntimeError('half-written plugin')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    line = refused(
        capsys, ["-p", "broken_hooks", *RUN], "-p broken_hooks: benchbnn_optimizers() raised"
    )
    assert "PYTHONPATH" not in line  # it imported: advice on module names would mislead
    assert created(workdir) == []


def test_the_plugins_listing_reports_a_module_that_cannot_be_imported(
    workdir, capsys, extra_modules
):
    assert cli_main(["-p", "benchbnn_no_such_module", "plugins"]) == 0
    out = capsys.readouterr().out
    assert "problems:" in out and "benchbnn_no_such_module (from local module)" in out


# --- 6. names that would write outside their folders -------------------------------------------


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".", "a\\b", "tab\there", " "])
def test_a_study_name_cannot_write_outside_the_tuning_folder(workdir, capsys, name):
    refused(
        capsys,
        [*TUNE, "--study", name, "--trials", "1"],
        f"study name {name!r} cannot name a file or folder",
        "choose another with --study NAME",
    )
    assert created(workdir) == []
    assert not (workdir.parent.parent / "escaped").exists()


@pytest.mark.parametrize("label", ["../evil", "a/b", "..", "back\\\\slash"])
@pytest.mark.parametrize("command", [["compare"], ["tune", "--optimizer", "bop"]])
def test_an_entry_label_that_would_name_a_path_is_refused(workdir, capsys, label, command):
    suite = write_suite(workdir.parent / "s.toml", label=label)
    shown = label.replace("\\\\", "\\")
    refused(
        capsys,
        [command[0], str(suite), *command[1:]],
        "line 8, key entries[1].label",
        f"label {shown!r} cannot name a file or folder",
    )
    assert created(workdir) == []


# --- 7. CIFAR-10 batches crafted to run code ---------------------------------------------------


class _RunsCommand:
    """What a crafted pickle holds: unpickling it calls ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Executes:
    """Unpickling calls ``exec(code)``."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def _crafted(marker: Path, how: str) -> bytes:
    touch = f"touch {marker}"
    images = np.zeros((2, 3072), np.uint8)
    payloads = {
        "os.system": lambda: {b"data": images, b"labels": [0, 1], b"x": _RunsCommand(touch)},
        "exec": lambda: _Executes(f"open({str(marker)!r}, 'w').close()"),
        "in the labels": lambda: {b"data": images, b"labels": [0, _RunsCommand(touch)]},
    }
    return pickle.dumps(payloads[how](), protocol=2)


@pytest.mark.parametrize("how", ["os.system", "exec", "in the labels"])
def test_a_crafted_cifar_batch_is_refused_and_runs_nothing(workdir, tmp_path, how):
    marker = tmp_path / "ran"
    proof = tmp_path / "ran-with-plain-pickle"
    pickle.loads(_crafted(proof, how))  # the payload is real: the standard unpickler runs it
    assert proof.exists()
    write_cifar_pickles(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(_crafted(marker, how))
    with pytest.raises(DataError) as info:
        benchbnn.get_dataset("cifar10").read_tensors(tmp_path / "data", "train")
    message = str(info.value)
    assert "refused to unpickle CIFAR-10 batch" in message and str(batch) in message
    assert "only numpy arrays and plain values are read" in message
    assert not marker.exists()


def test_a_crafted_cifar_batch_stops_the_command_line_with_one_line(workdir, capsys, tmp_path):
    marker = tmp_path / "ran"
    write_cifar_pickles(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(_crafted(marker, "os.system"))
    argv = ["run", "--dataset", "cifar10", "--arch", "binarynet", "--optimizer", "bop"]
    argv += ["--arch-option", "width=0.125", "--data-dir", str(tmp_path / "data"), "--quiet"]
    argv += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--epochs", "1"]
    argv += ["--checkpoint-dir", str(tmp_path / "ckpt")]
    refused(capsys, argv, "refused to unpickle CIFAR-10 batch", "data_batch_1")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("protocol", "numpy1_names"),
    # numpy 1's module names are patched into GLOBAL opcodes (protocols 2 and 3); from protocol
    # 4 on names are length-prefixed (STACK_GLOBAL) and written by this numpy only
    [(2, False), (3, False), (4, False), (5, False), (2, True), (3, True)],
    ids=["p2", "p3", "p4", "p5", "p2-numpy1-names", "p3-numpy1-names"],
)
def test_real_cifar_batches_still_load_at_every_protocol(tmp_path, protocol, numpy1_names):
    rng = np.random.default_rng(protocol)
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = [np.int64(v) for v in rng.integers(0, 10, 4)]  # numpy scalars too
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, "note": 1.5}
        raw = pickle.dumps(batch, protocol=protocol)
        if numpy1_names:  # as numpy 1 (and the official Python 2 files) name the builders
            raw = raw.replace(b"numpy._core.", b"numpy.core.")
        (directory / name).write_bytes(raw)
        written.append((data, labels))
    train = benchbnn.get_dataset("cifar10").read_tensors(tmp_path, "train")
    expected = np.concatenate([d for d, _ in written[:5]]).reshape(-1, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == [int(v) for _, labels in written[:5] for v in labels]


def test_the_official_python2_layout_still_loads(tmp_path):
    written = write_cifar_pickles(tmp_path, per_batch=3, test=4)
    test = benchbnn.get_dataset("cifar10").read_tensors(tmp_path, "test")
    images, labels = written["test"]
    assert np.array_equal(test.images.numpy(), images)
    assert test.labels.tolist() == labels.tolist()
