"""Runs as an exactly-once ledger: identity, environment, failure classes, owners, checkpoints.

Real MLflow SQLite stores in tmp_path, real training of a tiny BNN MLP on the embedded digits
for one epoch. What is checked:

- identity: an explicitly written default and an omitted one are one run; a plugin that changes
  a default makes a new one; a run tracked under the old scheme (hash of the configuration as
  written) is reused only while what it recorded is what the configuration resolves to now;
- environment: a run made with another CPU thread count is not reused silently, only with
  ``reuse_any_environment``, and a leaderboard that mixes environments says so;
- failure classes: a run that failed because of its environment is redone by the next compare,
  a diverged run stays a failed result; a RUNNING run whose process is gone is ended KILLED and
  redone, one whose process lives is left to it; an interrupted study's parent run ends KILLED;
- checkpoints of finished runs are deleted unless kept;
- three processes creating one new SQLite store at once all succeed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from engine_support import NanPlugin, fresh_store

import benchbnn
from benchbnn.bench.compare import BUSY, RECORDED_FAILURE, REUSE, TRAIN, compare
from benchbnn.core import names
from benchbnn.core.config import CONFIG_SCHEMA_VERSION, RunConfig
from benchbnn.core.errors import RunFailed
from benchbnn.train import identity
from benchbnn.train.engine import train
from benchbnn.train.store import lock_path
from benchbnn.train.tracking import client_for

SUITE = """\
name = "ident"
description = "one optimizer on a few digits, for the ledger tests"
dataset = "digits"
arch = "bnn-mlp"
epochs = 1
batch_size = 50
seeds = {seeds}
subset = 100

[arch_options]
hidden = [16]

[[entries]]
label = "opt"
optimizer = "{optimizer}"
[entries.hparams]
{hparams}
"""


def write_suite(
    folder: Path, *, optimizer: str = "bop", hparams: str = "", seeds: int = 1, name: str = "s"
) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(SUITE.format(optimizer=optimizer, hparams=hparams, seeds=seeds))
    return path


def tiny(**overrides) -> RunConfig:
    """The suite's run of seed 0 as data."""
    fields = dict(
        dataset="digits",
        arch="bnn-mlp",
        optimizer="bop",
        arch_options={"hidden": [16]},
        epochs=1,
        batch_size=50,
        subset=100,
    )
    return RunConfig(**{**fields, **overrides})


class Counter:
    """Lifecycle plugin: counts the runs the engine starts."""

    def __init__(self):
        self.starts = 0

    @benchbnn.hookimpl
    def benchbnn_run_start(self, run):
        self.starts += 1


@pytest.fixture
def store(tmp_path) -> str:
    return fresh_store(tmp_path / "store")


def run_compare(suite, tmp_path, store, **kwargs):
    lines: list[str] = []
    kwargs.setdefault("out", tmp_path / "lb")
    result = compare(
        suite,
        tracking_uri=store,
        checkpoint_dir=tmp_path / "ck",
        quiet=True,
        plots=False,
        echo=lines.append,
        **kwargs,
    )
    return result, lines


def all_runs(store: str, experiment: str = names.DEFAULT_EXPERIMENT) -> list:
    client = client_for(store)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def set_tags(store: str, run_id: str, tags: dict[str, str]) -> None:
    client = client_for(store)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


@pytest.fixture
def threads():
    """``threads(n)`` sets torch's CPU threads for the test; one thread again afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# --- identity ---------------------------------------------------------------------------------


def test_the_identity_is_the_resolved_configuration():
    defaults = benchbnn.get_optimizer("bop").defaults
    omitted, written = tiny(), tiny(hparams={"lr": defaults["lr"]})
    assert omitted.config_hash() == written.config_hash()
    assert omitted.legacy_config_hash() != written.legacy_config_hash()  # the old scheme differed
    text = tiny(hparams={"lr": str(defaults["lr"])}, val_fraction=0, l2=0)  # canonical types
    assert text.config_hash() == omitted.config_hash()
    ident = omitted.identity()
    assert ident["schema"] == CONFIG_SCHEMA_VERSION == 2
    assert ident["hparams"] == {k: defaults[k] for k in sorted(defaults)}
    assert ident["dataset_options"] == {"augmentation": ""}
    assert tiny(hparams={"lr": 0.02}).config_hash() != omitted.config_hash()


def test_an_explicit_default_and_an_omitted_one_share_a_run(tmp_path, store):
    lr = benchbnn.get_optimizer("bop").defaults["lr"]
    first, _ = run_compare(str(write_suite(tmp_path, name="a")), tmp_path, store)
    assert [p.action for p in first.plan] == [TRAIN]
    counter = Counter()
    explicit = write_suite(tmp_path, hparams=f"lr = {lr}", name="b")
    second, _ = run_compare(str(explicit), tmp_path, store, plugins=[counter])
    assert [p.action for p in second.plan] == [REUSE] and counter.starts == 0
    assert second.plan[0].run_id == first.results[0].run_id
    (tracked,) = all_runs(store)
    tags = tracked.data.tags
    assert tags[names.TAG_CONFIG_HASH] == tiny().config_hash()
    assert tags[names.TAG_CONFIG_SCHEMA] == "2"
    assert tags[names.TAG_LEGACY_CONFIG_HASH] == tiny().legacy_config_hash()


def shifted_plugin(lr: float):
    """A plugin providing ``shifted-bop``: bop, with ``lr`` as the default learning rate."""
    bop = benchbnn.get_optimizer("bop")
    hparams = tuple(
        dataclasses.replace(h, default=lr) if h.name == "lr" else h for h in bop.hparams
    )

    class Shifted:
        @benchbnn.hookimpl
        def benchbnn_optimizers(self):
            return [dataclasses.replace(bop, name="shifted-bop", hparams=hparams)]

    return Shifted()


def use_shifted(lr: float) -> None:
    """Install ``shifted-bop`` with default ``lr`` (replacing any earlier release of it)."""
    benchbnn.unregister_plugin("shifted")
    benchbnn.register_plugin(shifted_plugin(lr), "shifted")


def test_a_plugin_that_changes_a_default_gives_a_new_identity(tmp_path, store, clean_registry):
    suite = str(write_suite(tmp_path, optimizer="shifted-bop"))
    use_shifted(0.01)
    config = tiny(optimizer="shifted-bop")
    before = config.config_hash()
    first, _ = run_compare(suite, tmp_path, store)
    assert [p.action for p in first.plan] == [TRAIN]

    use_shifted(0.02)  # a new release of the plugin with another default
    assert config.config_hash() != before
    assert config.legacy_config_hash() == tiny(optimizer="shifted-bop").legacy_config_hash()
    counter = Counter()
    second, _ = run_compare(suite, tmp_path, store, plugins=[counter])
    assert [p.action for p in second.plan] == [TRAIN] and counter.starts == 1
    params = {
        client_for(store).get_run(r.run_id).data.params["hparam.lr"]
        for r in (first.results[0], second.results[0])
    }
    assert params == {"0.01", "0.02"}


def as_old_scheme(store: str, run_id: str, config: RunConfig) -> None:
    """Make a tracked run look as benchbnn tracked it before identity schema 2."""
    client = client_for(store)
    for key in (names.TAG_CONFIG_SCHEMA, names.TAG_LEGACY_CONFIG_HASH):
        client.delete_tag(run_id, key)
    client.set_tag(run_id, names.TAG_CONFIG_HASH, config.legacy_config_hash())


def test_an_old_scheme_run_is_reused_only_while_its_recorded_defaults_hold(
    tmp_path, store, clean_registry
):
    """The rule for stores made before schema 2: found by the hash as written, the old run
    stands for the configuration while the hyperparameters it recorded (defaults filled in)
    are those it resolves to now; once the plugin's default changed it is another run."""
    suite = str(write_suite(tmp_path, optimizer="shifted-bop"))
    use_shifted(0.01)
    first, _ = run_compare(suite, tmp_path, store)
    old = first.results[0].run_id
    as_old_scheme(store, old, tiny(optimizer="shifted-bop"))

    again, _ = run_compare(suite, tmp_path, store)
    assert [(p.action, p.run_id) for p in again.plan] == [(REUSE, old)]
    data = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert (
        data["rows"][0]["runs"][0]["config_hash"]
        == tiny(optimizer="shifted-bop").legacy_config_hash()
    )

    use_shifted(0.02)
    changed, _ = run_compare(suite, tmp_path, store)
    assert [p.action for p in changed.plan] == [TRAIN]


# --- environment ------------------------------------------------------------------------------


def test_runs_of_another_thread_count_are_not_reused_silently(tmp_path, store, threads):
    suite = str(write_suite(tmp_path, seeds=2))
    threads(2)
    first, lines = run_compare(suite, tmp_path, store, seeds=1)
    assert [p.action for p in first.plan] == [TRAIN]
    two = identity.current_environment("cpu").key()
    assert "2 threads" in two and lines[1].startswith(f"environment: {two}")
    (made,) = all_runs(store)
    assert made.data.tags[names.TAG_CPU_THREADS] == "2"
    assert made.data.tags[names.TAG_ENVIRONMENT] == two

    threads(1)
    one = identity.current_environment("cpu").key()
    counter = Counter()
    second, lines = run_compare(suite, tmp_path, store, seeds=1, plugins=[counter])
    assert [p.action for p in second.plan] == [TRAIN] and counter.starts == 1
    said = "\n".join(lines)
    assert f"environment: {one}; results of 0 of the 1 runs found in it" in said
    assert f"results of 1 of the runs found in {two}; not reused" in said
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert f"- Environment: {one}." in md and "mixed" not in md

    threads(3)  # a third environment: seed 0 is reused from another one, seed 1 is trained here
    mixed, lines = run_compare(suite, tmp_path, store, reuse_any_environment=True)
    assert [p.action for p in mixed.plan] == [REUSE, TRAIN]
    assert mixed.plan[0].reason.startswith("made in another environment")
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "- Environments: **mixed**" in md
    data = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert data["mixed_environments"] is True
    assert sum(e["runs"] for e in data["environments"]) == 2 and len(data["environments"]) == 2


def test_runs_of_an_unknown_environment_are_reused_only_when_asked(tmp_path, store):
    suite = str(write_suite(tmp_path))
    first, _ = run_compare(suite, tmp_path, store)
    run_id = first.results[0].run_id
    client_for(store).delete_tag(run_id, names.TAG_ENVIRONMENT)  # as before it was recorded
    again, _ = run_compare(suite, tmp_path, store)
    assert [p.action for p in again.plan] == [TRAIN]
    any_env, _lines = run_compare(suite, tmp_path, store, reuse_any_environment=True)
    assert [p.action for p in any_env.plan] == [REUSE]  # this environment's run comes first
    assert any_env.plan[0].run_id == again.results[0].run_id


# --- failure classes --------------------------------------------------------------------------


def test_an_environment_failure_is_redone_and_a_divergence_stays_a_result(
    tmp_path, store, clean_registry
):
    """The checkpoint of the first run cannot be written (``last.pt`` is taken by a folder,
    which even root cannot replace with a file): the run fails after its first epoch because
    of where it ran. Once the folder is gone, the next compare trains it again, while the
    diverged run stays a failed result."""
    benchbnn.register_plugin(NanPlugin(), "nan-plugin")
    suite = str(write_suite(tmp_path))
    blocked = tmp_path / "ck" / tiny().config_hash() / "last.pt"
    (blocked / "taken").mkdir(parents=True)
    with pytest.raises(RunFailed, match="IsADirectoryError"):
        run_compare(suite, tmp_path, store, optimizers="+nan-opt")
    (failed,) = all_runs(store)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[names.TAG_FAILURE_CLASS] == names.FAILURE_ENVIRONMENT

    (blocked / "taken").rmdir()
    blocked.rmdir()  # the checkpoint folder is writable again
    second, _ = run_compare(suite, tmp_path, store, optimizers="+nan-opt")
    assert [p.action for p in second.plan] == [TRAIN, TRAIN]
    assert [r.status for r in second.results] == ["FINISHED", "FAILED"]
    assert second.results[1].failure_class == names.FAILURE_RUN
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "| nan-opt | bnn-mlp | 0 | FAILED | training diverged" in md

    counter = Counter()
    third, _ = run_compare(suite, tmp_path, store, optimizers="+nan-opt", plugins=[counter])
    assert [p.action for p in third.plan] == [REUSE, RECORDED_FAILURE] and counter.starts == 0
    assert third.plan[0].run_id == second.results[0].run_id


def test_failure_classes_of_exceptions_and_old_reasons():
    environment, run = names.FAILURE_ENVIRONMENT, names.FAILURE_RUN
    assert identity.failure_class_of(PermissionError(13, "Permission denied")) == environment
    assert identity.failure_class_of(MemoryError()) == environment
    assert identity.failure_class_of(RuntimeError("CUDA out of memory. Tried")) == environment
    assert identity.failure_class_of(KeyboardInterrupt()) == environment
    wrapped = RunFailed("run crashed")
    wrapped.__cause__ = OSError(28, "No space left on device")
    assert identity.failure_class_of(wrapped) == environment
    assert identity.failure_class_of(ValueError("bad shape")) == run
    assert identity.failure_class_of_reason("training diverged: the loss is nan") == run
    assert identity.failure_class_of_reason("PermissionError: [Errno 13] denied") == environment
    assert identity.recorded_failure_class("KILLED", {}) == environment
    assert identity.recorded_failure_class("FAILED", {names.TAG_FAILURE: "diverged"}) == run
    assert not identity.is_result("FAILED", {names.TAG_FAILURE_CLASS: environment})


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_running_run_whose_process_is_gone_is_killed_and_redone(tmp_path, store):
    suite = str(write_suite(tmp_path))
    first, _ = run_compare(suite, tmp_path, store)
    run_id = first.results[0].run_id
    client = client_for(store)
    client.update_run(run_id, status="RUNNING")  # as a SIGKILL before its first checkpoint
    dead = str(_dead_pid())
    set_tags(store, run_id, {names.TAG_PID: dead, names.TAG_PROCESS_START: ""})

    second, _ = run_compare(suite, tmp_path, store)
    assert [p.action for p in second.plan] == [TRAIN]
    ended = client.get_run(run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags[names.TAG_FAILURE_CLASS] == names.FAILURE_ENVIRONMENT
    assert f"process {dead} on {socket.gethostname()} is gone" in ended.data.tags[names.TAG_FAILURE]
    assert second.results[0].status == "FINISHED" and second.results[0].run_id != run_id


def test_a_running_run_whose_process_lives_is_left_to_it(tmp_path, store):
    suite = str(write_suite(tmp_path))
    first, _ = run_compare(suite, tmp_path, store)
    run_id = first.results[0].run_id
    client_for(store).update_run(run_id, status="RUNNING")  # this (live) process owns it
    counter = Counter()
    second, lines = run_compare(suite, tmp_path, store, plugins=[counter])
    assert [p.action for p in second.plan] == [BUSY] and counter.starts == 0
    assert "leaving 1 to the processes running them" in lines[0]
    assert client_for(store).get_run(run_id).info.status == "RUNNING"
    client_for(store).set_terminated(run_id, "FINISHED")


def test_an_interrupted_study_ends_its_parent_run(tmp_path, store, monkeypatch):
    from benchbnn.tune import tuning

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("Ctrl-C")

    monkeypatch.setattr(tuning, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(
            str(write_suite(tmp_path)),
            "bop",
            trials=2,
            sampler="random",
            storage=str(tmp_path / "optuna.journal"),
            tracking_uri=store,
            out=tmp_path / "tuning",
            quiet=True,
        )
    (parent,) = [r for r in all_runs(store) if r.data.tags.get(names.TAG_ROLE) == "study"]
    assert parent.info.status == "KILLED"
    assert parent.data.tags[names.TAG_FAILURE_CLASS] == names.FAILURE_ENVIRONMENT


class _CtrlC:
    """Presses Ctrl-C (a bare KeyboardInterrupt, as Python raises it) when epoch 2 starts."""

    @benchbnn.hookimpl
    def benchbnn_epoch_start(self, run, epoch):
        if epoch == 2:
            raise KeyboardInterrupt


def test_ctrl_c_is_recorded_as_such(tmp_path, store):
    with pytest.raises(KeyboardInterrupt):
        train(
            tiny(epochs=2),
            quiet=True,
            tracking_uri=store,
            plugins=[_CtrlC()],
            checkpoint_dir=tmp_path / "ck",
        )
    (run,) = all_runs(store)
    assert run.info.status == "KILLED"
    assert run.data.tags[names.TAG_FAILURE] == "interrupted (Ctrl-C)"
    assert run.data.tags[names.TAG_FAILURE_CLASS] == names.FAILURE_ENVIRONMENT


# --- checkpoints ------------------------------------------------------------------------------


def test_finished_runs_checkpoints_are_deleted_unless_kept(tmp_path, store):
    deleted = train(tiny(), quiet=True, tracking_uri=store, checkpoint_dir=tmp_path / "a")
    assert deleted.finished and deleted.checkpoint is None and not (tmp_path / "a").exists()
    kept = train(
        tiny(), quiet=True, tracking_uri=store, checkpoint_dir=tmp_path / "b", keep_checkpoint=True
    )
    assert Path(kept.checkpoint) == tmp_path / "b" / "last.pt" and Path(kept.checkpoint).is_file()

    suite = str(write_suite(tmp_path, seeds=2))
    run_compare(suite, tmp_path, store, experiment="deleted")
    assert not any((tmp_path / "ck").iterdir())
    run_compare(suite, tmp_path, store, experiment="kept", keep_checkpoints=True)
    assert len(list((tmp_path / "ck").glob("*/last.pt"))) == 2


def test_a_default_run_command_leaves_no_checkpoint(tmp_path, monkeypatch):
    from benchbnn.cli import main

    monkeypatch.chdir(tmp_path)
    fresh_store(tmp_path)
    args = ["run", "--dataset", "digits", "--arch", "bnn-mlp", "--arch-option", "hidden=16"]
    args += ["--optimizer", "bop", "--epochs", "1", "--subset", "100", "--quiet"]
    assert main(args) == 0
    assert not any((tmp_path / ".benchbnn" / "checkpoints").iterdir())
    assert main([*args, "--keep-checkpoints"]) == 0
    assert len(list((tmp_path / ".benchbnn" / "checkpoints").glob("*/last.pt"))) == 1


# --- a new store, created by several processes at once -----------------------------------------

CREATE = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from benchbnn.train.tracking import client_for, ensure_experiment
    ready, go, uri = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    print(ensure_experiment(client_for(uri), "benchbnn", uri))
    """
)


@pytest.mark.slow
def test_three_processes_create_one_new_store_at_once(tmp_path):
    db = tmp_path / "new" / "mlflow.db"
    uri = f"sqlite:///{db}"
    go = tmp_path / "go"
    script = tmp_path / "create.py"
    script.write_text(CREATE)
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"ready{i}"), str(go), uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    go.touch()  # all three open the store within milliseconds of each other
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1  # one experiment, the same for all
    assert not lock_path(db).exists()
    assert [e.name for e in client_for(uri).search_experiments()].count("benchbnn") == 1


# --- real processes: the thread count, and a run killed before its first checkpoint ------------


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchbnn", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_one_thread_compare_does_not_reuse_a_two_thread_compare(tmp_path):
    suite = str(write_suite(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    common = [suite, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-plots"]
    two = _cli("compare", *common, env={**env, "OMP_NUM_THREADS": "2"}, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "training 1" in two.stdout
    one = _cli("compare", *common, env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "reusing 0 finished and 0 failed, resuming 0, training 1" in one.stdout
    assert "2 threads, world size 1; not reused" in one.stdout
    both = _cli(
        "compare",
        *common,
        "--reuse-any-environment",
        env={**env, "OMP_NUM_THREADS": "3"},
        cwd=tmp_path,
    )
    assert both.returncode == 0 and "reusing 1 finished" in both.stdout
    md = (tmp_path / "leaderboards" / "ident" / "leaderboard.md").read_text()
    assert "- Environment: " in md and "2 threads," in md  # the earliest of the finished runs


PAUSE = textwrap.dedent(
    """\
    import time
    import benchbnn

    @benchbnn.hookimpl
    def benchbnn_epoch_start(run, epoch):
        time.sleep(600)  # killed here, before the first checkpoint
    """
)


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_is_ended_and_redone(tmp_path):
    """A real ``benchbnn run`` is SIGKILLed during its first epoch: its MLflow run stays
    RUNNING with no checkpoint. The next compare of the same configuration ends it KILLED and
    trains the configuration again."""
    store = fresh_store(tmp_path / "store")
    (tmp_path / "pause_in_epoch_one.py").write_text(PAUSE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    args = ["-p", "pause_in_epoch_one", "run", "--dataset", "digits", "--arch", "bnn-mlp"]
    args += ["--arch-option", "hidden=16", "--optimizer", "bop", "--epochs", "1"]
    args += ["--batch-size", "50", "--subset", "100", "--tracking-uri", store, "--quiet"]
    process = subprocess.Popen(
        [sys.executable, "-m", "benchbnn", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    try:
        while not [r for r in all_runs(store) if r.info.status == "RUNNING"]:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    (killed,) = all_runs(store)
    assert killed.info.status == "RUNNING"
    assert killed.data.tags[names.TAG_PID] == str(process.pid)

    second, _ = run_compare(str(write_suite(tmp_path)), tmp_path, store)
    assert [p.action for p in second.plan] == [TRAIN]
    assert client_for(store).get_run(killed.info.run_id).info.status == "KILLED"
    assert second.results[0].status == "FINISHED"


def test_a_rule_version_above_one_enters_the_identity_and_version_one_keeps_old_hashes(
    monkeypatch,
):
    """PBop's stream changed (rule_version 2): its runs hash differently from the same
    configuration under rule 1; Bop (rule 1) hashes as before, without the field."""
    from benchbnn.core import plugins as plugin_registry

    pbop = RunConfig(dataset="digits", arch="bnn-mlp", optimizer="pbop", epochs=1)
    bop = RunConfig(dataset="digits", arch="bnn-mlp", optimizer="bop", epochs=1)
    assert pbop.identity()["optimizer_rule_version"] == 2
    assert "optimizer_rule_version" not in bop.identity()
    now = pbop.config_hash()
    old = dataclasses.replace(benchbnn.get_optimizer("pbop"), rule_version=1)
    original = plugin_registry.get_optimizer
    monkeypatch.setattr(
        plugin_registry, "get_optimizer", lambda name: old if name == "pbop" else original(name)
    )
    assert pbop.config_hash() != now


@pytest.mark.parametrize("version", [0, -1, 1.5, True, "2"])
def test_a_bad_rule_version_is_refused_with_the_fix(version):
    spec = dataclasses.replace(benchbnn.get_optimizer("bop"), rule_version=version)
    with pytest.raises(benchbnn.PluginError, match="rule_version must be a whole number >= 1"):
        spec.validate()
