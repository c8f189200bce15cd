"""The per-job trial operations of the work queue and the ledger (benchbnn.train.storage), on a
journal file (Optuna's public API) and on PostgreSQL (SQLAlchemy Core on Optuna's tables):

- taking a queued trial by id: of two processes taking the same ids in the same order, exactly one
  wins each; a trial already taken or finished is refused; the winner's user attributes and first
  heartbeat are written with the transition;
- creating RUNNING trials: numbers are consecutive per study, interleaved with Optuna's own;
- ending: only a RUNNING trial, with its value, read back by Optuna as its own;
- what Optuna reads back: states, values, datetimes, heartbeats (stale detection sees a silent
  trial taken this way);
- the database connection kept between operations: one the server dropped is given back when an
  operation fails on it, and replaced before use once held longer than the hold time.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap
import time
import uuid

import optuna
import pytest

from benchbnn.train.storage import RDBTrialOps, TrialOps, open_storage, trial_ops

TrialState = optuna.trial.TrialState


@pytest.fixture(params=["journal", "postgres"])
def storage(request, tmp_path) -> str:
    """A fresh storage: a journal file, or a new PostgreSQL database."""
    if request.param == "journal":
        return str(tmp_path / "ops.journal")
    server = request.getfixturevalue("postgres_server")
    return server.new_database(f"ops_{uuid.uuid4().hex[:10]}")


def _study(storage, name: str = "queue") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=storage)


def test_a_database_gets_the_core_operations_and_a_journal_optuna_s_api(storage):
    opened = open_storage(storage, heartbeat=None)
    expected = RDBTrialOps if "://" in storage else TrialOps
    assert type(trial_ops(opened)) is expected


def test_a_queued_trial_is_taken_once_with_its_attributes(storage):
    opened = open_storage(storage, heartbeat=None)
    ops = trial_ops(opened)
    study = _study(opened)
    study.enqueue_trial({}, user_attrs={"job": {"n": 1}})
    study.enqueue_trial({}, user_attrs={"job": {"n": 2}})
    study.enqueue_trial({}, user_attrs={"other": 3})  # no "job": never listed
    listed = ops.waiting(["queue", "no-such-study"], "job")
    assert [(q.number, q.decoded()) for q in listed] == [(0, {"n": 1}), (1, {"n": 2})]
    first = listed[0].trial_id
    assert ops.take(first, {"holder": {"pid": 7}}, beat=False) is True
    assert ops.take(first, {"holder": {"pid": 8}}, beat=False) is False
    trial = opened.get_trial(first)
    assert trial.state == TrialState.RUNNING and trial.user_attrs["holder"] == {"pid": 7}
    assert [q.trial_id for q in ops.waiting(["queue"], "job")] == [listed[1].trial_id]
    assert ops.end(first, TrialState.COMPLETE, 1.5) is True
    assert ops.take(first, {}, beat=False) is False  # finished: refused, not an error
    assert ops.end(first, TrialState.FAIL) is False  # ended already
    trial = opened.get_trial(first)
    assert trial.state == TrialState.COMPLETE and trial.value == 1.5
    assert trial.datetime_complete is not None and trial.datetime_start is not None


def test_running_trials_get_consecutive_numbers_beside_optuna_s_own(storage):
    opened = open_storage(storage, heartbeat=None)
    ops = trial_ops(opened)
    study = _study(opened, "claims")
    mine = [ops.create_running(study._study_id, {"holder": n}, beat=False) for n in range(2)]
    study.ask()  # Optuna numbers a trial of its own in between
    mine.append(ops.create_running(study._study_id, {"holder": 2}, beat=False))
    assert [number for _, number in mine] == [0, 1, 3]
    trials = opened.get_all_trials(study._study_id)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.user_attrs.get("holder") for t in trials] == [0, 1, None, 2]
    assert ops.running(study._study_id) == [(t._trial_id, t.number) for t in trials]
    ops.end(mine[0][0], TrialState.FAIL)
    assert [n for _, n in ops.running(study._study_id)] == [1, 2, 3]


def test_datetimes_are_written_as_optuna_writes_them(storage):
    opened = open_storage(storage, heartbeat=None)
    ops = trial_ops(opened)
    study = _study(opened)
    reference = opened.get_trial(study.ask()._trial_id).datetime_start
    trial_id, _ = ops.create_running(study._study_id, {}, beat=False)
    ops.end(trial_id, TrialState.COMPLETE, 0.0)
    trial = opened.get_trial(trial_id)
    # naive local time, like Optuna's own trial (a UTC/local mix-up is hours off)
    assert trial.datetime_start.tzinfo is None
    assert abs(trial.datetime_start - reference) < datetime.timedelta(minutes=10)
    assert trial.datetime_start <= trial.datetime_complete


def test_a_silent_trial_taken_on_a_database_is_found_stale(postgres_server):
    url = postgres_server.new_database(f"ops_{uuid.uuid4().hex[:10]}")
    opened = open_storage(url, heartbeat=1)
    ops = trial_ops(opened)
    study = _study(opened)
    study.enqueue_trial({}, user_attrs={"job": 1})
    trial_id = ops.waiting(["queue"], "job")[0].trial_id
    assert ops.take(trial_id, {}, beat=True)  # the first heartbeat, and no more
    claim, _ = ops.create_running(study._study_id, {}, beat=True)
    time.sleep(3.5)  # three one-second intervals
    assert sorted(opened._get_stale_trial_ids(study._study_id)) == sorted([trial_id, claim])


def test_a_connection_the_server_dropped_is_given_back_and_replaced(postgres_server, monkeypatch):
    import sqlalchemy

    from benchbnn.train import storage as storage_module

    url = postgres_server.new_database(f"ops_{uuid.uuid4().hex[:10]}")
    opened = open_storage(url, heartbeat=None)
    ops = trial_ops(opened)
    study_id = _study(opened)._study_id
    admin = sqlalchemy.create_engine(url)

    def drop_the_held_connection() -> None:
        with ops._connection() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")

    # used again within the hold time: the operation fails and the connection is given back
    drop_the_held_connection()
    with pytest.raises(sqlalchemy.exc.DBAPIError):
        ops.running(study_id)
    assert ops._held is None and ops.running(study_id) == []
    # held longer than the hold time: given back, and the pool's ping replaces it before use
    drop_the_held_connection()
    monkeypatch.setattr(storage_module, "HOLD_S", 0.0)
    assert ops.running(study_id) == []
    ops.close()
    assert ops._held is None
    admin.dispose()


RACE = textwrap.dedent(
    """\
    import json, sys, time
    from pathlib import Path
    from benchbnn.train.storage import open_storage, trial_ops
    storage, go = sys.argv[1], Path(sys.argv[2])
    ops = trial_ops(open_storage(storage, heartbeat=None))
    ids = [q.trial_id for q in ops.waiting(["queue"], "job")]
    while not go.exists():
        time.sleep(0.002)
    print(json.dumps([i for i in ids if ops.take(i, {"holder": sys.argv[3]}, beat=False)]))
    """
)


def test_two_processes_taking_the_same_ids_win_each_exactly_once(storage, tmp_path):
    opened = open_storage(storage, heartbeat=None)
    study = _study(opened)
    for n in range(40):
        study.enqueue_trial({}, user_attrs={"job": n})
    script = tmp_path / "race.py"
    script.write_text(RACE)
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), storage, str(go), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    time.sleep(3.0)  # both list the same 40 ids, then take them in the same order
    go.touch()
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-1500:] for _, err in outputs]
    won = [set(json.loads(out)) for out, _ in outputs]
    trials = opened.get_all_trials(study._study_id)
    assert not won[0] & won[1]
    assert won[0] | won[1] == {t._trial_id for t in trials}
    holders = {t._trial_id: t.user_attrs["holder"] for t in trials}
    assert all(t.state == TrialState.RUNNING for t in trials)
    assert {i for i, h in holders.items() if h == "a"} == won[0]
