"""Several ``benchbnn tune`` worker processes share one study.

On a real PostgreSQL server (as on several machines): a throw-away cluster started by
``tests/pg.py`` (PostgreSQL 15 binaries, run as the ``postgres`` user when the tests run as root);
these tests fail, never skip, when it cannot start one. A killed worker's trial is failed through
its stopped heartbeat. On the default journal file (one machine): a killed worker's trial is failed
because its process is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from tuning_support import fresh_tracking_uri, write_suite

from benchbnn.tune import tuning

pytestmark = pytest.mark.slow
TrialState = optuna.trial.TrialState
HEARTBEAT_S = 2  # a silent worker's trial is failed after 3 beats (6 s)


def _worker(suite: Path, storage: str, tracking: str, out: Path, *extra: str) -> subprocess.Popen:
    # temporary files in the test's folder: a worker killed while it writes a run's artifacts
    # cannot remove its temporary folder, which would otherwise stay in the system's /tmp
    scratch = out.with_suffix(".tmp")
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    command = [
        sys.executable,
        "-m",
        "benchbnn",
        "tune",
        str(suite),
        "--optimizer",
        "bop2ndorder",
        "--sampler",
        "grid",
        "--pruner",
        "none",
        "--storage",
        storage,
        "--heartbeat",
        str(HEARTBEAT_S),
        "--tracking-uri",
        tracking,
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _log(out: Path) -> str:
    path = out.with_suffix(".log")
    return path.read_text() if path.exists() else ""


def _study(storage: str, name: str):
    return optuna.load_study(study_name=name, storage=tuning.open_storage(storage, heartbeat=None))


def _wait(procs: list[subprocess.Popen], outs: list[Path], timeout: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p, out in zip(procs, outs):
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"worker did not finish in {timeout} s; its log:\n{_log(out)}")
    return codes


def _victims_trials(storage: str, pid: int, started: bool = False) -> list[int]:
    """Numbers of the RUNNING trials of worker ``pid`` (that have begun training)."""
    try:
        running = _study(storage, "pgkill-bop2ndorder").get_trials(states=(TrialState.RUNNING,))
    except KeyError:  # the study is still being created
        return []
    return [
        t.number
        for t in running
        if f":{pid}:" in t.user_attrs.get(tuning.ATTR_WORKER, "")
        and (not started or t.user_attrs.get(tuning.ATTR_RUN_ID))
    ]


def _grid_points(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials]


@pytest.mark.postgres
def test_two_workers_share_one_study_and_run_each_grid_point_once(tmp_path, postgres_server):
    storage = postgres_server.new_database("shared")
    grid = "gamma = [1e-6, 1e-4]\nsigma = [1e-3, 1e-2]\nthreshold = 1e-6\nlr = false\n"
    suite = write_suite(tmp_path, name="pg", epochs=1, tune=grid)
    tracking = fresh_tracking_uri(tmp_path)
    outs = [tmp_path / "worker-a", tmp_path / "worker-b"]
    procs = [_worker(suite, storage, tracking, out) for out in outs]
    codes = _wait(procs, outs)
    assert codes == [0, 0], "\n".join(_log(o) for o in outs)

    trials = _study(storage, "pg-bop2ndorder").get_trials()
    counted = [t for t in trials if not t.user_attrs.get(tuning.ATTR_SURPLUS)]
    assert len(counted) == 6  # the grid: gamma 1e-6, 1e-5, 1e-4 x sigma 1e-3, 1e-2
    assert all(t.state == TrialState.COMPLETE for t in counted)
    assert sorted(_grid_points(counted)) == sorted(
        (("gamma", g), ("sigma", s)) for g in (1e-6, 1e-5, 1e-4) for s in (1e-3, 1e-2)
    )
    for t in trials:  # a trial that lost a race with the other worker never trained
        if t.user_attrs.get(tuning.ATTR_SURPLUS):
            assert t.state == TrialState.FAIL and tuning.ATTR_RUN_ID not in t.user_attrs
    workers = {t.user_attrs[tuning.ATTR_WORKER].split(":")[1] for t in counted}
    assert workers == {str(p.pid) for p in procs}  # both workers took part
    for out in outs:
        assert "6/6 trials counted" in _log(out)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "journal"])
def storage_url(request, tmp_path):
    if request.param == "journal":
        return str(tmp_path / "optuna.journal")
    return request.getfixturevalue("postgres_server").new_database("killed")


def test_a_killed_worker_loses_nothing(tmp_path, storage_url):
    storage = storage_url
    suite = write_suite(
        tmp_path,
        name="pgkill",
        epochs=8,
        tune="gamma = [1e-6, 1e-3]\nsigma = 1e-3\nthreshold = 1e-6\nlr = false\n",
    )
    tracking = fresh_tracking_uri(tmp_path)
    victim_out, survivor_out = tmp_path / "victim", tmp_path / "survivor"
    victim = _worker(suite, storage, tracking, victim_out)
    survivor = _worker(suite, storage, tracking, survivor_out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the victim is training a trial
        time.sleep(0.3)
        assert victim.poll() is None, _log(victim_out)
        if _victims_trials(storage, victim.pid, started=True):
            break
    # Kill it while it trains, not while it appends to the journal: a lock file left by a
    # writer that died is only broken after 30 s (correct, but slow for a test).
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    lost = _victims_trials(storage, victim.pid)
    assert len(lost) == 1, _log(victim_out)
    victim_trial = lost[0]
    assert _wait([survivor], [survivor_out]) == [0], _log(survivor_out)

    trials = {t.number: t for t in _study(storage, "pgkill-bop2ndorder").get_trials()}
    assert trials[victim_trial].state == TrialState.FAIL  # failed, not counted, and retried
    assert tuning.ATTR_FAILURE not in trials[victim_trial].user_attrs
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len(set(_grid_points(complete))) == 4
    assert {t.params["gamma"] for t in complete} == {1e-6, 1e-5, 1e-4, 1e-3}
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == victim_trial]
    assert len(retried) == 1 and retried[0].params == trials[victim_trial].params
    others = [
        t
        for t in trials.values()
        if t.state not in (TrialState.COMPLETE,) and t.number != victim_trial
    ]
    assert all(t.user_attrs.get(tuning.ATTR_SURPLUS) for t in others)
    assert "4/4 trials counted" in _log(survivor_out)


@pytest.mark.postgres
def test_workers_opening_a_fresh_database_at_once_all_get_the_storage(postgres_server):
    """Optuna's tables are created by whichever worker comes first; the others must not fail
    on the duplicate types that concurrent creation leaves (optuna/optuna#1092)."""
    from concurrent.futures import ThreadPoolExecutor

    from benchbnn.tune.studies import open_storage

    url = postgres_server.new_database("race")
    # A URL that names no driver (as users write it) must work with the installed psycopg2.
    url = url.replace("postgresql+psycopg2://", "postgresql://")
    with ThreadPoolExecutor(max_workers=4) as pool:
        storages = list(pool.map(lambda _: open_storage(url, heartbeat=None), range(4)))
    assert len(storages) == 4
    assert all(s.get_all_studies() == [] for s in storages)
