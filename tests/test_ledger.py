"""The run ledger and the work queue on real Optuna storages (a journal file, PostgreSQL).

- claims: the lowest-numbered RUNNING claim owns a configuration; a later claimant is told who
  holds it; a holder whose process died (this machine) or whose heartbeat stopped (another
  machine, a database) is freed, but never by a claimant that beats less often than the holder;
  claims raced by several processes never overlap;
- the queue: every queued job is taken exactly once by workers racing for it, a take never
  creates a trial, a trial without a job (a stray of an earlier release's ``ask``) is never
  handed out nor counted, a job put back or lost with its worker is queued again;
- SQLite is refused as a ledger.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import optuna
import pytest

from benchbnn.core.errors import BenchbnnError
from benchbnn.train import ledger as ledger_module
from benchbnn.train.ledger import ATTR_HOLDER, Holder, Ledger, claim_key, this_holder
from benchbnn.train.workqueue import ATTR_JOB, ATTR_STRAY, QUEUE_PREFIX, SHARD_NAMES, WorkQueue

TrialState = optuna.trial.TrialState


@pytest.fixture(params=["journal", "postgres"])
def storage(request, tmp_path) -> str:
    """A fresh ledger storage: a journal file, or a new PostgreSQL database."""
    if request.param == "journal":
        return str(tmp_path / "ledger.journal")
    server = request.getfixturevalue("postgres_server")
    return server.new_database(f"ledger_{uuid.uuid4().hex[:10]}")


def _key(name: str = "a") -> str:
    return claim_key("sqlite:////nowhere/mlflow.db", "benchbnn", f"{name:0>16}")


def _claim_trials(ledger: Ledger, key: str) -> list:
    study_id = ledger.study_id(key, create=False)
    return ledger.storage.get_all_trials(study_id, deepcopy=False)


# --- claims -----------------------------------------------------------------------------------


def test_the_first_claim_owns_and_a_later_one_is_told_who(storage):
    ledger = Ledger.open(storage, heartbeat=1)
    try:
        key = _key()
        first = ledger.try_claim(key, this_holder("compare", ledger.heartbeat_s))
        assert first.owned
        second = ledger.try_claim(key, this_holder("worker", ledger.heartbeat_s))
        assert not second.owned and second.owner.command == "compare"
        assert second.owner.pid == os.getpid()
        assert ledger.holder_of(key).command == "compare"
        first.finish(True)
        assert ledger.holder_of(key) is None
        third = ledger.try_claim(key, this_holder("run", ledger.heartbeat_s))
        assert third.owned
        third.release()
        states = [t.state for t in sorted(_claim_trials(ledger, key), key=lambda t: t.number)]
        assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    finally:
        ledger.close()


def test_keys_name_the_store_the_experiment_and_the_configuration(tmp_path):
    a = claim_key(f"sqlite:///{tmp_path}/mlflow.db", "benchbnn", "0" * 16)
    assert a == claim_key(f"sqlite:///{tmp_path}/./mlflow.db", "benchbnn", "0" * 16)
    assert a != claim_key(f"sqlite:///{tmp_path}/mlflow.db", "other", "0" * 16)
    assert a != claim_key(f"sqlite:///{tmp_path}/mlflow.db", "benchbnn", "1" * 16)
    secret = claim_key("postgresql://u:pw@h/db", "benchbnn", "0" * 16)
    assert secret == claim_key("postgresql://u:other@h/db", "benchbnn", "0" * 16)
    assert ledger_module.default_ledger(f"sqlite:///{tmp_path}/s/mlflow.db") == str(
        tmp_path / "s" / ".benchbnn" / "ledger.journal"
    )


HOLD = textwrap.dedent(
    """\
    import sys, time
    from benchbnn.train.ledger import Ledger, this_holder
    ledger = Ledger.open(sys.argv[1], heartbeat=1)
    claim = ledger.try_claim(sys.argv[2], this_holder("run", ledger.heartbeat_s))
    print("owned" if claim.owned else "busy", flush=True)
    time.sleep(600)
    """
)


def test_a_claim_whose_process_died_is_freed(storage, tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    key = _key("dead")
    holder = subprocess.Popen(
        [sys.executable, str(script), storage, key], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "owned"
        ledger = Ledger.open(storage, heartbeat=1)
        busy = ledger.try_claim(key, this_holder("compare", 1))
        assert not busy.owned and busy.owner.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    owned = ledger.try_claim(key, this_holder("compare", 1))
    try:
        assert owned.owned  # the dead holder's claim was failed on the way
        assert [t.state for t in _claim_trials(ledger, key)].count(TrialState.RUNNING) == 1
    finally:
        owned.release()
        ledger.close()


@pytest.mark.postgres
def test_a_silent_holder_of_another_machine_is_freed_after_three_beats(postgres_server):
    storage = postgres_server.new_database(f"stale_{uuid.uuid4().hex[:10]}")
    ledger = Ledger.open(storage, heartbeat=1)
    try:
        key = _key("stale")
        study_id = ledger.study_id(key)
        for name, beats in (("fast", 1), ("slow", 60)):
            elsewhere = Holder("worker", f"{name}.elsewhere", 4242, "", beats)
            trial = optuna.trial.create_trial(
                state=TrialState.RUNNING, user_attrs={ATTR_HOLDER: elsewhere.as_attr()}
            )
            ledger.storage.record_heartbeat(ledger.storage.create_new_trial(study_id, trial))
        busy = ledger.try_claim(key, this_holder("compare", 1))
        assert not busy.owned and busy.owner.host == "fast.elsewhere"
        time.sleep(3.5)  # three of the holder's intervals without a beat
        busy = ledger.try_claim(key, this_holder("compare", 1))
        # the fast holder is freed; the slow one beats every 60 s and is left alone
        assert not busy.owned and busy.owner.host == "slow.elsewhere"
    finally:
        ledger.close()


RACE = textwrap.dedent(
    """\
    import json, sys, time
    from pathlib import Path
    from benchbnn.train.ledger import Ledger, this_holder
    storage, key, go, rounds = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    ledger = Ledger.open(storage, heartbeat=2)
    holder = this_holder("test", ledger.heartbeat_s)
    while not go.exists():
        time.sleep(0.005)
    held = []
    for _ in range(rounds):
        claim = ledger.try_claim(key, holder)
        if claim.owned:
            start = time.time()
            time.sleep(0.03)
            held.append((start, time.time()))
            claim.finish(True)
        else:
            time.sleep(0.01)
    ledger.close()
    print(json.dumps(held))
    """
)


@pytest.mark.slow
def test_claims_raced_by_three_processes_never_overlap(storage, tmp_path):
    script = tmp_path / "race.py"
    script.write_text(RACE)
    go = tmp_path / "go"
    key = _key("race")
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), storage, key, str(go), "12"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(3.0)  # all three are importing; they claim as soon as the file appears
    go.touch()
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err[-1500:] for _, err in outputs]
    held = sorted(interval for out, _ in outputs for interval in json.loads(out))
    assert len(held) >= 3
    for (_, end), (start, _) in itertools.pairwise(held):
        assert start >= end, "two processes held the claim at once"


def test_sqlite_is_refused_as_a_ledger(tmp_path):
    with pytest.raises(BenchbnnError, match="not a safe work queue"):
        Ledger.open(f"sqlite:///{tmp_path}/optuna.db")


# --- the queue --------------------------------------------------------------------------------


def test_a_job_is_taken_once_put_back_and_taken_again(storage):
    ledger = Ledger.open(storage, heartbeat=1)
    try:
        queue = WorkQueue(ledger)
        queue.put([{"key": "k", "n": 1}])
        holder = this_holder("worker", ledger.heartbeat_s)
        taken = queue.take(holder)
        assert taken.job == {"key": "k", "n": 1}
        assert queue.take(holder) is None and [dict(j) for j in queue.pending()] == [taken.job]
        queue.put_back(taken)
        again = queue.take(holder)
        assert again.job == taken.job and again.trial_id != taken.trial_id
        queue.finish(again)
        assert queue.pending() == [] and queue.waiting() == 0
    finally:
        ledger.close()


def test_take_creates_no_trial_and_never_hands_out_one_without_a_job(storage):
    ledger = Ledger.open(storage, heartbeat=1)
    try:
        queue = WorkQueue(ledger)
        queue.put([{"key": "k"}])
        holder = this_holder("worker", ledger.heartbeat_s)
        taken = queue.take(holder)
        queue.finish(taken)
        # a stray of an earlier release (ask on a dry queue) and a trial queued by something else
        study = optuna.load_study(
            study_name=f"{QUEUE_PREFIX}{taken.shard:02d}", storage=ledger.storage
        )
        study.add_trial(
            optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={ATTR_STRAY: True})
        )
        study.enqueue_trial({}, user_attrs={"other": 1})
        before = len(queue.trials())
        assert queue.take(holder) is None
        assert len(queue.trials()) == before == 3
        assert queue.waiting() == 0 and queue.pending() == []
        assert sorted(t.state.name for t in queue.trials()) == ["COMPLETE", "FAIL", "WAITING"]
    finally:
        ledger.close()


def test_the_job_of_a_dead_worker_is_queued_again(storage, tmp_path):
    ledger = Ledger.open(storage, heartbeat=1)
    try:
        queue = WorkQueue(ledger)
        queue.put([{"key": "k"}])
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout.strip()
        gone = Holder("worker", this_holder("x").host, int(dead), "", 1)
        taken = queue.take(gone)
        queue.release(taken)  # no more beats, as if the worker had died
        if ledger.heartbeat_s:  # a database: the job comes back once its heartbeat is stale
            time.sleep(3.5)
        else:  # a journal: the holder recorded on the job is a dead process of this machine
            assert taken.job == {"key": "k"}
        assert queue.reap() == 1
        assert queue.waiting() == 1
        assert queue.take(this_holder("worker", ledger.heartbeat_s)).job == {"key": "k"}
    finally:
        ledger.close()


def test_a_journal_job_taken_by_a_worker_killed_before_its_holder_record_is_queued_again(
    tmp_path,
):
    """On a journal a take is two records (RUNNING, then the holder): a worker killed between
    them leaves a RUNNING job nobody holds; reap queues it again after the grace period, and
    leaves a RUNNING trial without a job (a stray) alone."""
    ledger = Ledger.open(str(tmp_path / "ledger.journal"))
    try:
        queue = WorkQueue(ledger)
        queue.put([{"key": "k"}])
        (queued,) = ledger.ops.waiting(SHARD_NAMES, ATTR_JOB)
        assert ledger.ops.take(queued.trial_id, {}, beat=False)  # RUNNING, then killed
        study = optuna.load_study(study_name=queued.study_name, storage=ledger.storage)
        study.ask()  # a stray: RUNNING, no job, no holder
        assert queue.reap() == 0  # within the grace period: it may be a live worker
        assert queue.waiting() == 0
        assert queue.reap(orphan_grace_s=0.0) == 1
        assert queue.waiting() == 1
        states = sorted(t.state.name for t in queue.trials())
        assert states == ["FAIL", "RUNNING", "WAITING"]  # the stray is still RUNNING
        assert queue.take(this_holder("worker")).job == {"key": "k"}
    finally:
        ledger.close()


DRAIN = textwrap.dedent(
    """\
    import json, sys, time
    from pathlib import Path
    from benchbnn.train.ledger import Ledger, this_holder
    from benchbnn.train.workqueue import WorkQueue
    storage, go = sys.argv[1], Path(sys.argv[2])
    ledger = Ledger.open(storage, heartbeat=5)
    queue = WorkQueue(ledger)
    holder = this_holder("worker", ledger.heartbeat_s)
    while not go.exists():
        time.sleep(0.005)
    done = []
    while (taken := queue.take(holder)) is not None:
        done.append(taken.job["n"])
        queue.finish(taken)
    ledger.close()
    print(json.dumps(done))
    """
)


@pytest.mark.slow
def test_sixty_jobs_are_taken_exactly_once_by_three_workers(storage, tmp_path):
    ledger = Ledger.open(storage, heartbeat=5)
    WorkQueue(ledger).put([{"key": f"k{n}", "n": n} for n in range(60)])
    script = tmp_path / "drain.py"
    script.write_text(DRAIN)
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), storage, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(3.0)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err[-1500:] for _, err in outputs]
    taken = [n for out, _ in outputs for n in json.loads(out)]
    assert sorted(taken) == list(range(60))
    trials = WorkQueue(ledger).trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[ATTR_JOB]["n"] for t in complete) == list(range(60))
    assert len(trials) == 60  # a take never creates a trial: no strays
    ledger.close()


def test_a_worker_refuses_a_sqlite_storage_with_status_2(tmp_path, capsys):
    from benchbnn.cli import main

    assert main(["worker", "--storage", f"sqlite:///{tmp_path}/q.db"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "not a safe work queue" in err
    assert not Path(tmp_path / "q.db").exists()


# --- compare's jobs and worker shares ---------------------------------------------------------


def test_a_queued_job_describes_its_configuration_exactly(tmp_path):
    from benchbnn.bench.compare import PlannedRun, Training, job_of
    from benchbnn.bench.suites import SuiteEntry
    from benchbnn.bench.worker import WorkerOptions, planned_of, training_of
    from benchbnn.core.config import RunConfig

    config = RunConfig(
        dataset="digits",
        arch="bnn-mlp",
        optimizer="bop",
        hparams={"gamma": 1e-3},
        arch_options={"hidden": [32]},
        epochs=1,
        batch_size=50,
        subset=200,
    )
    planned = PlannedRun(SuiteEntry("bop", "bop"), "bnn-mlp", config, "train")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    training = Training("tiny", uri, "benchbnn", "cpu", {"benchbnn.suite": "tiny"})
    job = json.loads(json.dumps(job_of(planned, training, threads=1)))  # as stored
    again = planned_of(job)
    assert again.config.config_hash() == config.config_hash()
    assert (again.entry.label, again.arch) == ("bop", "bnn-mlp")
    assert job["key"] == training.key(config)
    assert training_of(job, WorkerOptions()).uri == uri
    secret = Training("tiny", "postgresql://u:pw@h/db", "benchbnn", "cpu", {})
    hidden = job_of(planned, secret)
    assert "pw" not in json.dumps(hidden)
    with pytest.raises(BenchbnnError, match="--tracking-uri"):
        training_of(hidden, WorkerOptions())
    with pytest.raises(BenchbnnError, match="another benchbnn release"):
        planned_of({**job, "version": 99})


def test_a_job_carries_how_the_model_runs_and_a_worker_may_override_it(tmp_path):
    from benchbnn.bench.compare import PlannedRun, Training, job_of
    from benchbnn.bench.suites import SuiteEntry
    from benchbnn.bench.worker import WorkerOptions, training_of
    from benchbnn.core.config import RunConfig

    config = RunConfig(dataset="digits", arch="bnn-mlp", optimizer="bop", epochs=1)
    planned = PlannedRun(SuiteEntry("bop", "bop"), "bnn-mlp", config, "train")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    training = Training("tiny", uri, "benchbnn", "cpu", {}, compile="off", precision="bf16")
    job = json.loads(json.dumps(job_of(planned, training)))  # as stored
    taken = training_of(job, WorkerOptions())
    assert (taken.compile, taken.precision) == ("off", "bf16")
    assert taken.environment.endswith(", bf16")  # reuses only bf16 results
    mine = training_of(job, WorkerOptions(compile="on", precision="fp32"))
    assert (mine.compile, mine.precision) == ("on", "fp32")
    assert not mine.environment.endswith(", bf16")
    # a job queued before these existed runs as compare's defaults
    old = {k: v for k, v in job.items() if k not in ("compile", "precision")}
    assert (
        training_of(old, WorkerOptions()).compile,
        training_of(old, WorkerOptions()).precision,
    ) == ("auto", "fp32")


def test_workers_split_the_cores_and_plan_in_their_environment(monkeypatch):
    from benchbnn.bench.compare import training_environment, worker_share

    cores = len(os.sched_getaffinity(0))
    share = worker_share("cpu", 2)
    assert share.devices == ("cpu", "cpu") and share.threads == max(1, cores // 2)
    assert share.environment.cpu_threads == share.threads
    assert f"{share.threads} thread" in training_environment("cpu", 2)
    assert worker_share("cpu", 64).threads == 1
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_share(None, 3).devices == ("cuda:0", "cuda:1", "cuda:0")


def test_compare_refuses_a_sqlite_queue_and_plugins_for_workers(tmp_path):
    from benchbnn.bench.compare import compare

    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "s"\ndescription = "d"\ndataset = "digits"\narch = "bnn-mlp"\nepochs = 1\n'
        'seeds = 1\n[arch_options]\nhidden = [8]\n[[entries]]\nlabel = "bop"\n'
        'optimizer = "bop"\n'
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(BenchbnnError, match="not a safe work queue"):
        compare(suite, tracking_uri=uri, storage=f"sqlite:///{tmp_path}/q.db", echo=None)
    with pytest.raises(BenchbnnError, match="lifecycle plugins"):
        compare(suite, tracking_uri=uri, workers=2, plugins=[object()], echo=None)
    assert not (tmp_path / "mlflow.db").exists()
