"""``compare`` on many processes and machines: real ``benchbnn`` processes, real stores.

- two and three ``benchbnn compare`` processes started at once on a new SQLite store (and on
  PostgreSQL: tracking store and ledger) train every configuration exactly once, leave no run
  RUNNING and all exit 0;
- ``compare --workers 2`` trains each run once on two local worker processes (one CPU thread
  each on two cores) and writes the leaderboard a one-process compare in that environment
  writes;
- many machines: a real ``mlflow server`` over HTTP, a PostgreSQL Optuna storage,
  ``compare --workers 0`` waiting and two ``benchbnn worker`` processes; one is killed with
  SIGKILL in the middle of a run, the other resumes that run from its checkpoint (a shared
  checkpoint directory), and the leaderboard equals a single-process compare's, timings aside.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_support import write_two_optimizer_suite

from benchbnn.core import names
from benchbnn.train.tracking import client_for

pytestmark = pytest.mark.slow


#: Leaderboard fields that depend on the machine's speed or on which MLflow run it is.
# timings (and the load they were taken under) differ between equal computations
VOLATILE = (
    "time",
    "run_id",
    "command",
    "hardware",
    "seconds",
    "optimizer_step",
    "forward_backward",
    "load",
)


def write_suite(folder: Path, epochs: int = 1, seeds: int = 2) -> Path:
    return write_two_optimizer_suite(folder / "many.toml", "many", epochs=epochs, seeds=seeds)


def _env(threads: int = 1, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra}


def _start(args: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "benchbnn", *args],
        cwd=cwd,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def _finish(processes: list[subprocess.Popen], logs: list[Path], timeout: float = 600) -> None:
    """Wait for every process; on a timeout kill them all and show the logs."""
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    assert codes is not None, f"timed out:\n{text}"
    assert codes == [0] * len(processes), text


def _runs(uri: str, experiment: str = names.DEFAULT_EXPERIMENT) -> list:
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def _assert_each_configuration_once(uri: str, count: int, experiment: str = "benchbnn"):
    runs = _runs(uri, experiment)
    hashes = [r.data.tags[names.TAG_CONFIG_HASH] for r in runs]
    assert len(set(hashes)) == count, hashes
    assert len(runs) == count, [(r.info.status, r.data.tags.get(names.TAG_FAILURE)) for r in runs]
    assert {r.info.status for r in runs} == {"FINISHED"}
    return runs


def _stable(value):
    """A leaderboard without the fields that differ between equal computations."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _leaderboard(folder: Path) -> dict:
    return json.loads((folder / "leaderboard.json").read_text())


# --- several compares at once -------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_compares_started_at_once_on_a_new_sqlite_store_train_each_run_once(tmp_path, count):
    suite = write_suite(tmp_path)
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"  # nothing there yet
    logs = [tmp_path / f"compare{i}.log" for i in range(count)]
    processes = [
        _start(
            ["compare", str(suite), "--tracking-uri", uri, "--no-plots", "--quiet"]
            + ["--out", str(tmp_path / f"lb{i}"), "--checkpoint-dir", str(tmp_path / "ck")],
            log,
            tmp_path,
            _env(),
        )
        for i, log in enumerate(logs)
    ]
    _finish(processes, logs)
    _assert_each_configuration_once(uri, 4)
    for i in range(count):  # every compare waited for the runs the others trained
        rows = _leaderboard(tmp_path / f"lb{i}")["rows"]
        assert [run["status"] for row in rows for run in row["runs"]] == ["FINISHED"] * 4
    trained = sum(log.read_text().count("training many/") for log in logs)
    assert trained == 4, "\n".join(log.read_text() for log in logs)


@pytest.mark.postgres
def test_compares_started_at_once_on_postgresql_train_each_run_once(tmp_path, postgres_server):
    suite = write_suite(tmp_path)
    uri = postgres_server.new_database(f"mlflow_{uuid.uuid4().hex[:8]}")
    ledger = postgres_server.new_database(f"ledger_{uuid.uuid4().hex[:8]}")
    logs = [tmp_path / f"compare{i}.log" for i in range(3)]
    processes = [
        _start(
            ["compare", str(suite), "--tracking-uri", uri, "--storage", ledger, "--no-plots"]
            + ["--quiet", "--out", str(tmp_path / f"lb{i}"), "--heartbeat", "2"],
            log,
            tmp_path,
            _env(),
        )
        for i, log in enumerate(logs)
    ]
    _finish(processes, logs)
    _assert_each_configuration_once(uri, 4)
    trained = sum(log.read_text().count("training many/") for log in logs)
    assert trained == 4, "\n".join(log.read_text() for log in logs)


def test_run_compare_and_a_worker_started_at_once_train_each_configuration_once(tmp_path):
    suite = write_suite(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    run_args = ["run", "--dataset", "digits", "--arch", "bnn-mlp", "--arch-option"]
    run_args += ["hidden=32", "--optimizer", "bop", "--set", "gamma=1e-3", "--set"]
    run_args += ["threshold=1e-6", "--epochs", "1", "--batch-size", "50", "--subset", "200"]
    run_args += ["--seed", "0", "--tracking-uri", uri, "--quiet"]
    logs = [tmp_path / name for name in ("compare.log", "worker.log", "run.log")]
    compare = _start(
        ["compare", str(suite), "--workers", "0", "--tracking-uri", uri, "--no-plots"]
        + ["--quiet", "--out", str(tmp_path / "lb")],
        logs[0],
        tmp_path,
        _env(),
    )
    run = _start(run_args, logs[2], tmp_path, _env())
    deadline = time.monotonic() + 300
    while "queued" not in logs[0].read_text():
        assert compare.poll() is None and time.monotonic() < deadline, logs[0].read_text()
        time.sleep(0.2)
    ledger = str(tmp_path / "store" / ".benchbnn" / "ledger.journal")
    worker = _start(["worker", "--storage", ledger, "--quiet"], logs[1], tmp_path, _env())
    _finish([compare, worker, run], logs)
    _assert_each_configuration_once(uri, 4)  # the run command's configuration is the suite's
    said = logs[2].read_text()
    assert "FINISHED" in said, said  # trained it, or reported the run another process trained


def test_run_waits_for_the_process_holding_its_configuration_and_reports_its_result(tmp_path):
    from benchbnn.cli import build_parser
    from benchbnn.cli.run import build_config
    from benchbnn.train.engine import train
    from benchbnn.train.exclusive import exclusively

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", "--dataset", "digits", "--arch", "bnn-mlp", "--arch-option", "hidden=16"]
    args += ["--optimizer", "bop", "--epochs", "1", "--subset", "100", "--tracking-uri", uri]
    config = build_config(build_parser().parse_args(args))
    with exclusively(config, tracking_uri=uri, command="compare") as held:
        waiting = _start([*args, "--quiet"], tmp_path / "run.log", tmp_path, _env())
        deadline = time.monotonic() + 300
        while "waiting for it" not in (tmp_path / "run.log").read_text():
            assert waiting.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        said = (tmp_path / "run.log").read_text()
        assert f"being trained by benchbnn compare (pid {os.getpid()}" in said
        result = train(config, tracking_uri=uri, quiet=True, checkpoint_dir=tmp_path / "ck")
        held.end(result)
    _finish([waiting], [tmp_path / "run.log"])
    said = (tmp_path / "run.log").read_text()
    assert f"FINISHED run {result.run_id} of configuration {config.config_hash()}" in said
    assert [r.info.run_id for r in _runs(uri)] == [result.run_id]  # nothing trained twice


# --- local workers ------------------------------------------------------------------------------


def test_compare_on_two_local_workers_matches_a_one_process_compare(tmp_path):
    suite = write_suite(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // 2)  # what each of two workers gets
    common = ["compare", str(suite), "--tracking-uri", uri, "--no-plots", "--quiet"]
    one = _start(
        [*common, "--experiment", "one", "--out", str(tmp_path / "one")],
        tmp_path / "one.log",
        tmp_path,
        _env(share),
    )
    _finish([one], [tmp_path / "one.log"])
    two = _start(
        [*common, "--experiment", "two", "--out", str(tmp_path / "two"), "--workers", "2"],
        tmp_path / "two.log",
        tmp_path,
        _env(cores),
    )
    _finish([two], [tmp_path / "two.log"])
    log = (tmp_path / "two.log").read_text()
    assert "queued 4 runs" in log and "for 2 local workers" in log, log
    runs = _assert_each_configuration_once(uri, 4, "two")
    assert {r.data.tags[names.TAG_CPU_THREADS] for r in runs} == {str(share)}
    assert len({r.data.tags[names.TAG_PID] for r in runs}) == 2  # trained by both workers
    assert _stable(_leaderboard(tmp_path / "two")) == _stable(_leaderboard(tmp_path / "one"))
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [p for p in listing.splitlines() if " worker " in p and str(tmp_path) in p]


# --- many machines: an MLflow server, PostgreSQL, two workers, one killed ---------------------

PAUSE = """\
import os
import time
from pathlib import Path

import benchbnn


@benchbnn.hookimpl
def benchbnn_epoch_start(run, epoch):
    if epoch == 2:  # after the first epoch's checkpoint: killed here
        Path(os.environ["BENCHBNN_TEST_PAUSED"]).write_text(run.config_hash)
        time.sleep(600)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real ``mlflow server`` (SQLite backend) in its own process group, ended as a group."""
    port = _free_port()
    env = {**_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / "mlflow-server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
        + ["--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (folder / "mlflow-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not answer in 180 s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # any child the server left behind
        log.close()


@pytest.mark.postgres
def test_a_killed_worker_s_run_is_resumed_by_another_from_its_checkpoint(tmp_path, postgres_server):
    suite = write_suite(tmp_path, epochs=2, seeds=1)
    storage = postgres_server.new_database(f"queue_{uuid.uuid4().hex[:8]}")
    (tmp_path / "pause_at_epoch_two.py").write_text(PAUSE)
    shared = tmp_path / "shared-checkpoints"
    paused = tmp_path / "paused"
    with mlflow_server(tmp_path) as url:
        reference = _start(
            ["compare", str(suite), "--tracking-uri", url, "--experiment", "one-process"]
            + ["--out", str(tmp_path / "one-process"), "--no-plots", "--quiet"],
            tmp_path / "reference.log",
            tmp_path,
            _env(),
        )
        _finish([reference], [tmp_path / "reference.log"])

        common = ["--storage", storage, "--heartbeat", "1"]
        compare = _start(
            ["compare", str(suite), "--workers", "0", "--tracking-uri", url, *common]
            + ["--experiment", "machines", "--out", str(tmp_path / "machines")]
            + ["--checkpoint-dir", str(shared), "--no-plots", "--quiet"],
            tmp_path / "compare.log",
            tmp_path,
            _env(),
        )
        deadline = time.monotonic() + 300
        while "queued 2 runs" not in (tmp_path / "compare.log").read_text():
            assert compare.poll() is None, (tmp_path / "compare.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "compare queued nothing"
            time.sleep(0.2)
        victim_env = _env(
            PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
            BENCHBNN_TEST_PAUSED=str(paused),
        )
        victim = _start(
            ["-p", "pause_at_epoch_two", "worker", *common, "--quiet"],
            tmp_path / "victim.log",
            tmp_path,
            victim_env,
        )
        deadline = time.monotonic() + 300
        while not paused.exists():
            assert victim.poll() is None, (tmp_path / "victim.log").read_text()[-3000:]
            assert compare.poll() is None, (tmp_path / "compare.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the victim never reached its second epoch"
            time.sleep(0.2)
        killed_hash = paused.read_text()
        assert list(shared.glob(f"{killed_hash}/last.pt"))  # its first epoch's checkpoint
        victim.send_signal(signal.SIGKILL)
        victim.wait()

        survivor = _start(["worker", *common], tmp_path / "survivor.log", tmp_path, _env())
        logs = [tmp_path / "survivor.log", tmp_path / "compare.log"]
        _finish([survivor, compare], logs)

        survived = (tmp_path / "survivor.log").read_text()
        assert "resuming many/" in survived, survived
        runs = _assert_each_configuration_once(url, 2, "machines")
        (resumed,) = [r for r in runs if r.data.tags[names.TAG_CONFIG_HASH] == killed_hash]
        assert resumed.data.tags.get(names.TAG_RESUMED) == "1"  # continued, not started over
        assert resumed.data.tags[names.TAG_PID] == str(survivor.pid)
        assert _stable(_leaderboard(tmp_path / "machines")) == _stable(
            _leaderboard(tmp_path / "one-process")
        )
