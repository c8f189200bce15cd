"""``compare --ruleset external`` on the worker queue (issue 17).

- study jobs: a suite survives the queue exactly, a job names its study, storage and options
  (absolute paths, no password), a worker runs a job of another kind through the runner it is
  given under the job's claim, leaves a job whose claim another live process holds, and puts
  back (with one clear error) a job of a kind it has no runner for;
- end to end: ``compare --ruleset external --trials 2 --studies 3 --workers 2`` on a fresh
  store runs every study on the two worker processes (never in compare), each to exactly 2
  counted trials, takes the median study, states the budgets, trains the final run of a new
  seed on a worker, and a second compare trains nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from tuning_support import fresh_tracking_uri, write_suite

from benchbnn.bench.suite_file import load_suite
from benchbnn.bench.worker import WorkerOptions, work
from benchbnn.cli import main as cli_main
from benchbnn.core import names
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.plugins import list_suites
from benchbnn.train.ledger import Ledger, this_holder
from benchbnn.train.tracking import client_for
from benchbnn.train.workqueue import DUPLICATE, SETTLED, WorkQueue
from benchbnn.tune import rulesets
from benchbnn.tune.studies import ATTR_WORKER, count_trials, open_storage
from benchbnn.tune.tuning import build_protocol

EXTRA = "val_fraction = 0.1\ntarget_accuracy = 30.0\n"


# --- study jobs -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_suites())
def test_a_suite_crosses_the_queue_with_every_field_a_study_reads(name):
    suite = load_suite(name)
    data = json.loads(json.dumps(rulesets.suite_data(suite)))  # as the queue stores it
    again = rulesets.suite_of_data(data)
    for field in rulesets.STUDY_SUITE_FIELDS:
        assert getattr(again, field) == getattr(suite, field), field
    # so every entry's study tunes the same protocol (what a study's identity records)
    for entry in suite.entries:
        mine = build_protocol(again, entry.optimizer, entry=entry.label).identity()
        assert mine == build_protocol(suite, entry.optimizer, entry=entry.label).identity()


def test_a_study_job_names_its_study_storage_and_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = load_suite(write_suite(tmp_path, epochs=1, extra=EXTRA))
    entry = suite.entry("bop")
    options = {"tracking_uri": "postgresql://u:secret@h/db", "out": "tuning", "data_dir": "d"}
    job = rulesets.study_job(suite, entry, 2, 8, "tuning/optuna.journal", options, threads=1)
    assert "secret" not in json.dumps(job)
    assert job["kind"] == rulesets.STUDY_KIND and job["version"] == rulesets.STUDY_JOB_VERSION
    assert (job["name"], job["entry"], job["optimizer"]) == ("tiny-bop-external-2", "bop", "bop")
    assert (job["sampler_seed"], job["trials"], job["threads"]) == (2, 8, 1)
    assert job["storage"] == str(tmp_path / "tuning" / "optuna.journal")
    assert (job["out"], job["data_dir"]) == (str(tmp_path / "tuning"), str(tmp_path / "d"))
    assert job["tracking_uri"].endswith("://u:***@h/db")  # resolved, without its password
    # one claim per study and storage: the same study of another storage is another key
    assert job["key"] == rulesets.study_key(str(tmp_path / "tuning/optuna.journal"), job["name"])
    assert job["key"].startswith(rulesets.STUDY_CLAIM_PREFIX)
    assert job["key"].endswith(".tiny-bop-external-2")
    assert rulesets.study_key("other.journal", job["name"]) != job["key"]


def test_a_study_job_of_another_release_or_a_hidden_storage_password_is_refused(tmp_path):
    suite = load_suite(write_suite(tmp_path, epochs=1, extra=EXTRA))
    job = rulesets.study_job(suite, suite.entry("bop"), 0, 2, "postgresql://u:pw@h/db", {})
    assert job["storage"] == "postgresql://u:***@h/db"
    with pytest.raises(BenchbnnError, match="another benchbnn release"):
        rulesets.run_study_job({**job, "version": 1}, WorkerOptions(), print)
    with pytest.raises(BenchbnnError, match="password is not kept in the queue"):
        rulesets.run_study_job(job, WorkerOptions(), print)


def _queue_one(storage: str, job: dict) -> None:
    ledger = Ledger.open(storage, heartbeat=None)
    try:
        WorkQueue(ledger).put([job])
    finally:
        ledger.close()


def _job_values(storage: str) -> list[float | None]:
    ledger = Ledger.open(storage, heartbeat=None)
    try:
        return [t.value for t in WorkQueue(ledger).trials() if t.state.is_finished()]
    finally:
        ledger.close()


def test_a_worker_runs_another_kind_of_job_through_its_runner_under_the_job_s_claim(tmp_path):
    storage = str(tmp_path / "ledger.journal")
    _queue_one(storage, {"kind": "echo", "key": "benchbnn.claim.test.echo", "text": "hi"})
    seen = []

    def runner(job, options, say):
        ledger = Ledger.open(storage, heartbeat=None)
        try:  # the worker holds the job's claim while its runner works
            seen.append((job["text"], options.device, ledger.holder_of(job["key"]) is not None))
        finally:
            ledger.close()

    options = WorkerOptions(device="cpu")
    report = work(storage, options, runners={"echo": runner}, echo=None, poll_s=0.05)
    assert seen == [("hi", "cpu", True)]
    assert (report.ran, report.trained, report.failed) == ({"echo": 1}, 0, 0)
    assert _job_values(storage) == [SETTLED]


def test_a_worker_leaves_a_job_whose_claim_another_live_process_holds(tmp_path):
    storage = str(tmp_path / "ledger.journal")
    key = "benchbnn.claim.test.held"
    _queue_one(storage, {"kind": "echo", "key": key})
    holder = Ledger.open(storage, heartbeat=None)
    try:
        claim = holder.try_claim(key, this_holder("compare"))
        assert claim.owned
        report = work(storage, runners={"echo": pytest.fail}, echo=None, poll_s=0.05)
        claim.finish(True)
    finally:
        holder.close()
    assert (report.ran, report.duplicates) == ({}, 1)
    assert _job_values(storage) == [DUPLICATE]


def test_a_worker_puts_back_a_job_of_a_kind_it_cannot_run(tmp_path):
    storage = str(tmp_path / "ledger.journal")
    _queue_one(storage, {"kind": "study", "key": "benchbnn.claim.test.study"})
    with pytest.raises(BenchbnnError, match="of kind 'study', which this worker cannot run"):
        work(storage, echo=None, poll_s=0.05)
    ledger = Ledger.open(storage, heartbeat=None)
    try:
        assert WorkQueue(ledger).waiting() == 1  # back in the queue for another worker
    finally:
        ledger.close()


# --- end to end: two local workers ------------------------------------------------------------


def _compare(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchbnn", "compare", *args],
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        try:
            code = process.wait(timeout=900)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert code == 0, log.read_text()[-4000:]
    return process


def _runs(uri: str) -> list:
    client = client_for(uri)
    found = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


@pytest.mark.slow
def test_compare_runs_the_external_studies_on_two_local_workers(tmp_path):
    path = write_suite(tmp_path, epochs=1, extra=EXTRA)
    uri = fresh_tracking_uri(tmp_path)
    args = [str(path), "--optimizers", "bop2ndorder", "--seeds", "2", "--ruleset", "external"]
    args += ["--trials", "2", "--studies", "3", "--workers", "2", "--tracking-uri", uri]
    args += ["--no-plots", "--quiet"]
    first = _compare([*args, "--out", str(tmp_path / "lb")], tmp_path, tmp_path / "first.log")
    log = (tmp_path / "first.log").read_text()
    assert "queued 3 studies in " in log and " for 2 local workers " in log, log
    workers = {int(pid) for pid in re.findall(r"worker \d: started \(pid (\d+)\)", log)}
    assert first.pid not in workers and len(workers) >= 2

    journal = open_storage(str(tmp_path / "tuning" / "optuna.journal"), create=False)
    studies = [f"tiny-bop2ndorder-external-{k}" for k in range(3)]
    best = []
    for name in studies:
        trials = optuna.load_study(study_name=name, storage=journal).get_trials()
        assert count_trials(trials).done == 2 and len(trials) == 2
        # run by a worker process, never by compare
        pids = {int(t.user_attrs[ATTR_WORKER].split(":")[1]) for t in trials}
        assert pids <= workers, (pids, workers)
        best.append(max(t.value for t in trials))
    trial_runs = [r for r in _runs(uri) if names.TAG_TRIAL in r.data.tags]
    assert len(trial_runs) == 6
    assert {int(r.data.tags[names.TAG_PID]) for r in trial_runs} <= workers

    data = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    (budget,) = data["ruleset"]["budgets"]
    assert budget["trials"] == [2, 2, 2]
    middle = sorted(range(3), key=lambda k: (best[k], k))[1]  # the median study, by hand
    assert budget["chosen"] == studies[middle]
    assert data["ruleset"]["ranked"] is True
    # seed 0 is the median study's best trial run (the same configuration); seed 1 is new,
    # queued after the studies and trained by a worker of the second pool
    finals = [r for r in _runs(uri) if names.TAG_STUDY not in r.data.tags]
    assert len(finals) == 1 and int(finals[0].data.tags[names.TAG_PID]) != first.pid
    assert "queued 1 runs in " in log

    before = len(_runs(uri))
    _compare([*args, "--out", str(tmp_path / "lb2")], tmp_path, tmp_path / "second.log")
    again = (tmp_path / "second.log").read_text()
    assert "queued" not in again and "started (pid" not in again, again
    assert len(_runs(uri)) == before  # nothing trained again
    for name in studies:
        trials = optuna.load_study(study_name=name, storage=journal).get_trials()
        assert len(trials) == 2
    second = json.loads((tmp_path / "lb2" / "leaderboard.json").read_text())
    assert second["ruleset"]["budgets"] == data["ruleset"]["budgets"]


# --- a worker killed in a study job -------------------------------------------------------------

PAUSE = """\
import os
import time
from pathlib import Path

import benchbnn


@benchbnn.hookimpl
def benchbnn_epoch_start(run, epoch):
    paused = Path(os.environ["BENCHBNN_TEST_PAUSED"])
    if epoch == 2 and not paused.exists():  # after the first epoch of the first trial
        paused.write_text(str(os.getpid()))
        time.sleep(600)
"""


def _start(args: list[str], cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environment.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env)
    with open(log, "w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "benchbnn", *args],
            cwd=cwd,
            env=environment,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def _wait_for(condition, processes: list[subprocess.Popen], what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in processes), f"a process ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_study_whose_worker_is_killed_is_finished_by_another_with_exactly_n_trials(tmp_path):
    path = write_suite(tmp_path, epochs=2, extra=EXTRA)
    uri = fresh_tracking_uri(tmp_path)
    ledger = str(tmp_path / ".benchbnn" / "ledger.journal")
    (tmp_path / "pause_in_a_trial.py").write_text(PAUSE)
    paused = tmp_path / "paused"
    compare = _start(
        ["compare", str(path), "--optimizers", "bop2ndorder", "--ruleset", "external"]
        + ["--trials", "2", "--studies", "1", "--workers", "0", "--storage", ledger]
        + ["--tracking-uri", uri, "--out", str(tmp_path / "lb"), "--no-plots", "--quiet"],
        tmp_path,
        tmp_path / "compare.log",
    )
    survivor = None
    try:
        _wait_for(
            lambda: "queued 1 studies" in (tmp_path / "compare.log").read_text(),
            [compare],
            "the study job",
        )
        victim = _start(
            ["-p", "pause_in_a_trial", "worker", "--storage", ledger, "--quiet"],
            tmp_path,
            tmp_path / "victim.log",
            PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.getenv("PYTHONPATH")])),
            BENCHBNN_TEST_PAUSED=str(paused),
        )
        _wait_for(paused.exists, [compare, victim], "the victim's pause")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        survivor = _start(["worker", "--storage", ledger], tmp_path, tmp_path / "survivor.log")
        assert compare.wait(timeout=600) == 0, (tmp_path / "compare.log").read_text()[-3000:]
        assert survivor.wait(timeout=120) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    finally:
        for process in (compare, survivor):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    journal = open_storage(ledger, create=False)  # --storage holds the studies too
    trials = optuna.load_study(study_name="tiny-bop2ndorder-external-0", storage=journal)
    trials = trials.get_trials()
    assert count_trials(trials).done == 2  # exactly the budget: the killed trial is not counted
    pid = {t.number: int(t.user_attrs[ATTR_WORKER].split(":")[1]) for t in trials}
    killed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [pid[t.number] for t in killed] == [victim.pid]
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and {pid[t.number] for t in done} == {survivor.pid}
    # the killed trial was run again with its parameters, as Optuna's retry does
    assert any(t.params == killed[0].params for t in done)
    data = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert [b["trials"] for b in data["ruleset"]["budgets"]] == [[2]]


class _Recorded(Exception):
    pass


def test_score_train_with_workers_queues_its_external_studies_like_compare(monkeypatch):
    """`benchbnn score BENCHMARK --train --workers N` hands the workers to the ruleset, which
    then queues the missing studies as jobs (compare's path) instead of running them here."""
    seen: dict = {}

    def record(suite, name, **kwargs):
        seen.update(kwargs)
        raise _Recorded

    monkeypatch.setattr("benchbnn.tune.rulesets.apply_ruleset", record)
    with pytest.raises(_Recorded):
        cli_main(["score", "cpu", "--train", "--workers", "2", "--no-plots", "--quiet"])
    assert seen["workers"] == 2 and seen["run"] is True
    seen.clear()
    with pytest.raises(_Recorded):
        cli_main(["score", "cpu", "--train", "--no-plots", "--quiet"])
    assert "workers" not in seen
