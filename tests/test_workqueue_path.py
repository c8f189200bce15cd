"""A worker's job path in two steps (``take_and_claim``, ``finish_claimed``), on a journal file
and on PostgreSQL, where each step is one transaction (:class:`benchbnn.train.ledger.JobPathOps`):

- it leaves the trials the four separate calls leave (take, ``try_claim``, end of the claim,
  ``finish``): states, values, holders;
- a configuration held by a live process gives a claim that is not owned, naming the holder;
- a job another worker took first is not claimed; a take whose claim fails stays WAITING;
- on a database both new trials get their first heartbeat, so a worker that stops beating loses
  its job and its claim;
- a job without a claim key is taken without a claim; a job whose claim study is missing is
  claimed once the study is created;
- a job failed meanwhile by a reaper stays failed, and its claim is ended anyway.
"""

from __future__ import annotations

import time
import uuid

import optuna
import pytest

from benchbnn.train.ledger import ATTR_HOLDER, JobPathOps, Ledger, claim_key, this_holder
from benchbnn.train.workqueue import ATTR_JOB, DUPLICATE, QUEUE_PREFIX, SETTLED, WorkQueue

TrialState = optuna.trial.TrialState


@pytest.fixture(params=["journal", "postgres"])
def new_storage(request, tmp_path):
    """Makes fresh ledger storages of one kind: journal files, or new PostgreSQL databases."""
    server = request.getfixturevalue("postgres_server") if request.param == "postgres" else None

    def make() -> str:
        name = f"path_{uuid.uuid4().hex[:10]}"
        return server.new_database(name) if server else str(tmp_path / f"{name}.journal")

    return make


@pytest.fixture
def ledger(new_storage):
    opened = Ledger.open(new_storage(), heartbeat=1)
    yield opened
    opened.close()


def _key(name: str) -> str:
    return claim_key("sqlite:////nowhere/mlflow.db", "benchbnn", f"{name:0>16}")


def _claims(ledger: Ledger, key: str) -> list:
    study_id = ledger.study_id(key, create=False)
    return ledger.storage.get_all_trials(study_id, deepcopy=False)


def _summary(ledger: Ledger, queue: WorkQueue, keys: list[str]) -> list:
    """States, values and holders' commands of every job and claim trial, by job and number."""
    jobs = sorted((t.user_attrs[ATTR_JOB]["n"], t.state.name, t.values) for t in queue.trials())
    claims = [
        (t.number, t.state.name, t.values, t.user_attrs[ATTR_HOLDER]["command"])
        for key in keys
        for t in _claims(ledger, key)
    ]
    return [jobs, claims]


def test_the_two_steps_leave_what_the_four_calls_leave(new_storage):
    figures = []
    for combined in (False, True):
        ledger = Ledger.open(new_storage(), heartbeat=1)
        queue = WorkQueue(ledger)
        keys = [_key(f"k{n}") for n in range(3)]
        queue.put([{"key": key, "n": n} for n, key in enumerate(keys)])
        holder = this_holder("worker", ledger.heartbeat_s)
        for _ in keys:
            if combined:
                taken, claim = queue.take_and_claim(holder)
                assert claim.owned and queue.finish_claimed(taken, claim) is True
            else:
                taken = queue.take(holder)
                claim = ledger.try_claim(taken.job["key"], holder)
                claim.finish(True)
                queue.finish(taken)
        assert queue.take_and_claim(holder) is None
        figures.append(_summary(ledger, queue, keys))
        ledger.close()
    assert figures[0] == figures[1]
    assert figures[1] == [
        [(n, "COMPLETE", [SETTLED]) for n in range(3)],
        [(0, "COMPLETE", [0.0], "worker")] * 3,
    ]


def test_a_held_configuration_gives_a_claim_naming_its_holder(ledger):
    queue = WorkQueue(ledger)
    key = _key("held")
    queue.put([{"key": key, "n": 0}])
    holding = ledger.try_claim(key, this_holder("compare", ledger.heartbeat_s))
    assert holding.owned
    taken, claim = queue.take_and_claim(this_holder("worker", ledger.heartbeat_s))
    assert not claim.owned and claim.owner.command == "compare"
    assert queue.finish_claimed(taken, claim, value=DUPLICATE) is True
    holding.finish(True)
    assert [(t.number, t.state.name) for t in _claims(ledger, key)] == [
        (0, "COMPLETE"),
        (1, "FAIL"),  # the duplicate claim, closed at once
    ]
    assert [(t.state.name, t.values) for t in queue.trials()] == [("COMPLETE", [DUPLICATE])]


def test_a_job_taken_first_by_another_worker_is_not_claimed(ledger):
    queue = WorkQueue(ledger)
    key = _key("raced")
    queue.put([{"key": key, "n": 0}])
    holder = this_holder("worker", ledger.heartbeat_s)
    taken, claim = queue.take_and_claim(holder)
    assert ledger.claim_taking(key, holder, taken.trial_id, {}) is None
    assert [t.state.name for t in _claims(ledger, key)] == ["RUNNING"]  # no second claim
    queue.finish_claimed(taken, claim)


def test_a_take_whose_claim_fails_leaves_the_job_waiting(postgres_server, monkeypatch):
    ledger = Ledger.open(postgres_server.new_database(f"path_{uuid.uuid4().hex[:10]}"), 1)
    try:
        queue = WorkQueue(ledger)
        queue.put([{"key": _key("fails"), "n": 0}])
        assert isinstance(ledger.ops, JobPathOps)

        def broken(*_args, **_kwargs):
            raise RuntimeError("the claim failed")

        monkeypatch.setattr(ledger.ops, "_claim_on", broken)
        with pytest.raises(RuntimeError, match="the claim failed"):
            queue.take_and_claim(this_holder("worker", ledger.heartbeat_s))
        assert [t.state.name for t in queue.trials()] == ["WAITING"]
        assert _claims(ledger, _key("fails")) == []
    finally:
        ledger.close()


def test_a_worker_that_stops_beating_loses_its_job_and_its_claim(postgres_server):
    ledger = Ledger.open(postgres_server.new_database(f"path_{uuid.uuid4().hex[:10]}"), 1)
    try:
        queue = WorkQueue(ledger)
        key = _key("silent")
        queue.put([{"key": key, "n": 0}])
        holder = this_holder("worker", ledger.heartbeat_s)
        taken, claim = queue.take_and_claim(holder)
        ledger.study_id(_key("alone"))
        alone = ledger.try_claim(_key("alone"), holder)  # a claim alone
        for trial_id in (taken.trial_id, claim.trial_id, alone.trial_id):
            ledger.heartbeat.remove(trial_id)  # as if the worker had died
        time.sleep(3.5)  # three one-second intervals
        shard = ledger.study_id(f"{QUEUE_PREFIX}{taken.shard:02d}", create=False)
        assert ledger.storage._get_stale_trial_ids(shard) == [taken.trial_id]
        for made, made_key in ((claim, taken.job["key"]), (alone, _key("alone"))):
            study_id = ledger.study_id(made_key, create=False)
            assert ledger.storage._get_stale_trial_ids(study_id) == [made.trial_id]
        assert queue.reap() == 1 and queue.waiting() == 1
    finally:
        ledger.close()


def test_a_job_without_a_key_is_taken_without_a_claim(ledger):
    queue = WorkQueue(ledger)
    queue.put([{"n": 0}])
    taken, claim = queue.take_and_claim(this_holder("worker", ledger.heartbeat_s))
    assert taken.job == {"n": 0} and claim is None
    assert queue.finish_claimed(taken, None) is True
    assert [(t.state.name, t.values) for t in queue.trials()] == [("COMPLETE", [SETTLED])]


def test_a_job_whose_claim_study_is_missing_is_claimed(ledger):
    queue = WorkQueue(ledger)
    queue.put([{"n": 0}])  # creates a shard; a job queued by hand names a key never seen
    key = _key("unseen")
    shard = next(s for s in (queue._study(i, create=False) for i in range(16)) if s is not None)
    shard.enqueue_trial({}, user_attrs={ATTR_JOB: {"key": key, "n": 1}})
    holder = this_holder("worker", ledger.heartbeat_s)
    found = [queue.take_and_claim(holder) for _ in range(2)]
    claims = {taken.job["n"]: claim for taken, claim in found}
    assert claims[0] is None and claims[1].owned
    assert [t.state.name for t in _claims(ledger, key)] == ["RUNNING"]
    for taken, claim in found:
        queue.finish_claimed(taken, claim)
    assert [t.state.name for t in _claims(ledger, key)] == ["COMPLETE"]


def test_a_job_failed_by_a_reaper_stays_failed_and_its_claim_ends(ledger):
    queue = WorkQueue(ledger)
    key = _key("reaped")
    queue.put([{"key": key, "n": 0}])
    taken, claim = queue.take_and_claim(this_holder("worker", ledger.heartbeat_s))
    ledger.storage.set_trial_state_values(taken.trial_id, TrialState.FAIL)  # the reaper
    assert queue.finish_claimed(taken, claim, result=False) is False
    assert [t.state.name for t in queue.trials()] == ["FAIL"]
    assert [(t.state.name, t.values) for t in _claims(ledger, key)] == [("FAIL", None)]
    assert claim.ended and queue.finish_claimed(taken, claim) is False  # nothing left to end


def test_on_a_database_a_job_is_eight_statements_in_two_commits(postgres_server):
    import sqlalchemy.event

    ledger = Ledger.open(postgres_server.new_database(f"path_{uuid.uuid4().hex[:10]}"), 30)
    try:
        queue = WorkQueue(ledger)
        queue.put([{"key": _key(f"n{n}"), "n": n} for n in range(3)])
        holder = this_holder("worker", ledger.heartbeat_s)
        queue.finish_claimed(*queue.take_and_claim(holder))  # reads the listing
        counts = {"statements": 0, "commits": 0}

        def statement(*_args) -> None:
            counts["statements"] += 1

        def commit(*_args) -> None:
            counts["commits"] += 1

        engine = ledger.storage.engine
        sqlalchemy.event.listen(engine, "before_cursor_execute", statement)
        sqlalchemy.event.listen(engine, "commit", commit)
        for _ in range(2):
            queue.finish_claimed(*queue.take_and_claim(holder))
        sqlalchemy.event.remove(engine, "before_cursor_execute", statement)
        sqlalchemy.event.remove(engine, "commit", commit)
        # take, lock, count, trial, holder, two heartbeats; both ends, both values
        assert counts == {"statements": 2 * 8, "commits": 2 * 2}
    finally:
        ledger.close()
