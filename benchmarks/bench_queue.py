"""Does the work queue hand out every job exactly once, cheaply, to many workers?

Targets: claim overhead under 50 ms per job; 8 workers finish sleep-bound jobs within 1.2x of
the ideal time (jobs x job time / workers).

A throw-away PostgreSQL cluster is started as ``tests/pg.py`` does (a unix socket in a temporary
directory, removed afterwards). For each worker count (default 1, 2, 4, 8) a fresh database gets
``--jobs`` jobs (default 500) queued by :meth:`benchbnn.train.workqueue.WorkQueue.put`, and that
many worker processes drain it the way ``benchbnn worker`` does, minus the training: take a job
and claim its configuration (:meth:`~benchbnn.train.workqueue.WorkQueue.take_and_claim`: from a
listing of the waiting jobs, the atomic WAITING -> RUNNING transition of one by id and a RUNNING
trial in the configuration's claim study with its holder, with the first heartbeats of both, in
one transaction on a database), sleep ``--job-ms`` (default 50 ms) instead of training, end the
claim and the job (:meth:`~benchbnn.train.workqueue.WorkQueue.finish_claimed`: one transaction).
``--separate`` makes the four calls instead (``take``, ``Ledger.try_claim``, ``Claim.finish``,
``finish``), for comparison. Reported per worker count:

* exactly once: every job done by one worker, each configuration claimed once, no job left,
  the number of stray trials (trials without a job; ``take`` creates none, so 0);
* claim overhead per job: take + claim before the job, end of claim + job after it (median,
  p99; wall-clock milliseconds, so it includes waiting for the CPU on a busy machine);
* how late a job's sleep ended (median, mean; beyond ``--job-ms``: the wait for a CPU on a busy
  machine, no cost of the queue);
* wall time against the ideal, and the scaling efficiency (ideal / wall);
* the machine: cores, load average before and after, CPU seconds the workers used (with their
  start-up: imports, opening the storage) and CPU milliseconds per job while draining (measured
  in each worker: ``time.process_time`` around its loop), CPU milliseconds per job of the
  database server (its postmaster's and ended children's CPU in ``/proc``, from the start
  signal until the workers are gone), the listings the workers read and the takes they lost to
  another worker.

    python benchmarks/bench_queue.py
    python benchmarks/bench_queue.py --workers 1,8 --jobs 200 --out benchbnn-out/queue.json
    python benchmarks/bench_queue.py --journal --workers 1,4
    python benchmarks/bench_queue.py --profile 100

``--profile JOBS`` measures instead one process draining JOBS jobs without sleeping, on
PostgreSQL and on a journal file: SQL statements and commits (SQLAlchemy listeners) and CPU
milliseconds per job for each step (take and claim, finish claimed; with ``--separate``: take,
claim, end claim, finish), and cProfile's top functions.

Workers start together (each says when it is imported and has opened the storage, then waits
for a go file; the benchmark gives the go once all are waiting). Timings on a shared machine are
noisy: read them with the load average printed beside them. ``--journal`` drains a journal file
instead (one machine; no server CPU to measure).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# --- one worker process -----------------------------------------------------------------------


def worker(
    storage: str, go: Path, job_s: float, separate: bool = False, ready: Path | None = None
) -> dict[str, Any]:
    """Drain the queue as ``benchbnn worker`` does, sleeping instead of training: take and claim
    in one step, end claim and job in one (``separate``: in four calls). ``ready`` is created
    once imports are done and the storage is open; the drain starts when ``go`` exists."""
    from benchbnn.train.ledger import Ledger, this_holder
    from benchbnn.train.workqueue import WorkQueue

    ledger = Ledger.open(storage)
    queue = WorkQueue(ledger)
    holder = this_holder("worker", ledger.heartbeat_s)
    if ready is not None:
        ready.touch()
    while not go.exists():
        time.sleep(0.002)
    records = []
    cpu = time.process_time()
    while True:
        start = time.perf_counter()
        if separate:
            taken = queue.take(holder)
            claim = None if taken is None else ledger.try_claim(taken.job["key"], holder)
        else:
            found = queue.take_and_claim(holder)
            taken, claim = (None, None) if found is None else found
        if taken is None or claim is None:  # nothing waiting (no worker dies here)
            break
        claimed = time.perf_counter()
        if claim.owned:
            time.sleep(job_s)
        slept = time.perf_counter()
        if separate:
            claim.finish(True) if claim.owned else None
            queue.finish(taken)
        else:
            queue.finish_claimed(taken, claim)
        end = time.perf_counter()
        records.append(
            {
                "job": taken.job["n"],
                "owned": claim.owned,
                "before_ms": 1000 * (claimed - start),
                "after_ms": 1000 * (end - slept),
                "late_ms": 1000 * (slept - claimed - job_s) if claim.owned else 0.0,
                "end": time.time(),
            }
        )
    cpu = time.process_time() - cpu
    ledger.close()
    return {
        "pid": os.getpid(),
        "records": records,
        "finished_at": time.time(),
        "drain_cpu_s": cpu,
        "listings": queue.listings,
        "lost": queue.lost,
    }


# --- one job's path, profiled ------------------------------------------------------------------

#: The steps of one job's path, in order, as the profile names them: in four calls
#: (``--separate``), or in two.
STEPS = ("take", "claim", "end claim", "finish")
COMBINED = ("take and claim", "finish claimed")


def profile(storage: str, jobs: int, top: int = 25, separate: bool = False) -> dict[str, Any]:
    """Queue ``jobs`` jobs in ``storage`` and drain them in this process (no sleep), under
    cProfile, counting SQL statements (a SQLAlchemy ``before_cursor_execute`` listener),
    transactions (its ``commit`` listener) and CPU time (``time.process_time``) per step of
    each job's path. Returns per-step means per job (statements, commits, CPU milliseconds)
    and prints cProfile's ``top`` functions by internal time."""
    import cProfile
    import pstats

    import sqlalchemy
    import sqlalchemy.event

    from benchbnn.train.ledger import Ledger, claim_key, this_holder
    from benchbnn.train.workqueue import WorkQueue

    statements, commits = [0], [0]

    def count(*_args: Any) -> None:
        statements[0] += 1

    def count_commit(*_args: Any) -> None:
        commits[0] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", count_commit)
    producer = Ledger.open(storage)
    keys = [claim_key("http://bench", "queue", f"{n:016x}") for n in range(jobs)]
    WorkQueue(producer).put([{"key": key, "n": n} for n, key in enumerate(keys)])
    producer.close()
    ledger = Ledger.open(storage)  # a worker's: it knows no study yet
    queue = WorkQueue(ledger)
    holder = this_holder("worker", ledger.heartbeat_s)
    sums = {step: [0, 0, 0.0] for step in (STEPS if separate else COMBINED)}
    done = 0

    def step(name: str, call: Any) -> Any:
        before_n, before_c, before_t = statements[0], commits[0], time.process_time()
        result = call()
        sums[name][0] += statements[0] - before_n
        sums[name][1] += commits[0] - before_c
        sums[name][2] += time.process_time() - before_t
        return result

    profiler = cProfile.Profile()
    profiler.enable()
    while separate:
        if (taken := step("take", lambda: queue.take(holder))) is None:
            break
        claim = step("claim", lambda t=taken: ledger.try_claim(t.job["key"], holder))
        step("end claim", lambda c=claim: c.finish(True))
        step("finish", lambda t=taken: queue.finish(t))
        done += 1
    while not separate:
        if (found := step("take and claim", lambda: queue.take_and_claim(holder))) is None:
            break
        step("finish claimed", lambda f=found: queue.finish_claimed(*f))
        done += 1
    profiler.disable()
    ledger.close()
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "commit", count_commit)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)
    per_job = lambda i: {name: sums_[i] / max(done, 1) for name, sums_ in sums.items()}
    cpu = {name: 1000 * t for name, t in per_job(2).items()}
    return {
        "jobs": done,
        "statements_per_job": per_job(0),
        "commits_per_job": per_job(1),
        "cpu_ms_per_job": {**cpu, "total": sum(cpu.values())},
    }


# --- one worker count -------------------------------------------------------------------------


def drain(
    url: str,
    workers: int,
    jobs: int,
    job_s: float,
    folder: Path,
    server_pid: int | None = None,
    separate: bool = False,
) -> dict[str, Any]:
    """Queue ``jobs`` jobs in the database at ``url`` and drain them with ``workers`` processes
    (``separate``: each job's path in four calls). With ``server_pid`` (the postmaster), the
    CPU the database server used meanwhile is measured too (:func:`server_cpu_s`)."""
    from benchbnn.train.ledger import Ledger, claim_key
    from benchbnn.train.workqueue import ATTR_JOB, ATTR_STRAY, WorkQueue

    ledger = Ledger.open(url)
    queue = WorkQueue(ledger)
    started = time.perf_counter()
    queue.put(
        [{"key": claim_key("http://bench", "queue", f"{n:016x}"), "n": n} for n in range(jobs)]
    )
    enqueue_s = time.perf_counter() - started
    go = folder / f"go-{workers}-{uuid.uuid4().hex[:6]}"  # a new one per drain
    outputs = [folder / f"worker-{go.name[3:]}-{i}.json" for i in range(workers)]
    command = [sys.executable, __file__, "--worker", url, str(go), str(job_s), str(int(separate))]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = [
        subprocess.Popen([*command, str(out)], stderr=subprocess.PIPE, text=True) for out in outputs
    ]
    while not all(Path(f"{out}.ready").exists() for out in outputs):  # imported and waiting
        if any(p.poll() is not None for p in processes):
            break  # a worker failed: reported below
        time.sleep(0.05)
    time.sleep(0.5)  # the workers' start-up CPU leaves the load average's latest samples
    load_before = os.getloadavg()
    server_before = server_cpu_s(server_pid)
    begin = time.time()
    go.touch()
    for p in processes:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed:\n{err[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.5)  # the workers' server processes end and are reaped
    server_s = server_cpu_s(server_pid) - server_before
    results = [json.loads(out.read_text()) for out in outputs]
    records = [r for result in results for r in result["records"]]
    wall = max(r["end"] for r in records) - begin
    done = sorted(r["job"] for r in records)
    trials = queue.trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    strays = [t for t in trials if t.user_attrs.get(ATTR_STRAY)]
    claims_owned = sum(r["owned"] for r in records)
    overhead = [r["before_ms"] + r["after_ms"] for r in records]
    ideal = jobs * job_s / workers
    ledger.close()
    return {
        "workers": workers,
        "jobs": jobs,
        "exactly_once": done == list(range(jobs))
        and sorted(t.user_attrs[ATTR_JOB]["n"] for t in complete) == list(range(jobs))
        and claims_owned == jobs,
        "left_in_queue": queue_left(trials),
        "strays": len(strays),
        "enqueue_ms_per_job": 1000 * enqueue_s / jobs,
        "overhead_ms": {
            "median": statistics.median(overhead),
            "p99": _percentile(overhead, 0.99),
            "before_median": statistics.median(r["before_ms"] for r in records),
            "after_median": statistics.median(r["after_ms"] for r in records),
        },
        "sleep_late_ms": {
            "median": statistics.median(r["late_ms"] for r in records),
            "mean": statistics.fmean(r["late_ms"] for r in records),
        },
        "wall_s": wall,
        "ideal_s": ideal,
        "wall_over_ideal": wall / ideal,
        "efficiency": ideal / wall,
        "jobs_per_worker": sorted(len(r["records"]) for r in results),
        "worker_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "drain_cpu_ms_per_job": 1000 * sum(r["drain_cpu_s"] for r in results) / jobs,
        "server_cpu_ms_per_job": 1000 * server_s / jobs,
        "listings": sum(r["listings"] for r in results),
        "lost_takes": sum(r["lost"] for r in results),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def server_cpu_s(pid: int | None) -> float:
    """CPU seconds (user and system) a PostgreSQL postmaster and its ended children (the
    connections' server processes, autovacuum) used so far, from ``/proc/PID/stat`` (fields 14
    to 17: utime, stime, cutime, cstime, in clock ticks); 0.0 without a pid or ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError, IndexError):
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def queue_left(trials: list[Any]) -> int:
    return sum(t.state.name in ("WAITING", "RUNNING") for t in trials)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        storage, go, job_s = sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
        separate, out = sys.argv[5] == "1", sys.argv[6]
        ready = Path(f"{out}.ready")
        Path(out).write_text(json.dumps(worker(storage, go, job_s, separate, ready)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts (default 1,2,4,8)")
    parser.add_argument("--jobs", type=int, default=500, help="jobs per drain (default 500)")
    parser.add_argument("--job-ms", type=float, default=50.0, help="job length (default 50 ms)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="JOBS",
        help="instead: profile one process draining JOBS jobs (no sleep) on PostgreSQL and on a "
        "journal file; SQL statements and CPU ms per step of a job, cProfile's top functions",
    )
    parser.add_argument(
        "--journal",
        action="store_true",
        help="drain a journal file instead of PostgreSQL (workers of one machine)",
    )
    parser.add_argument(
        "--separate",
        action="store_true",
        help="each job's path in four calls (take, claim, end claim, finish job) as before the "
        "combined take_and_claim and finish_claimed",
    )
    args = parser.parse_args()

    sys.path.insert(0, str(TESTS))
    import pg  # the same throw-away cluster the tests start

    server = pg.start_server()
    folder = Path(tempfile.mkdtemp(prefix="benchbnn-bench-queue-"))
    reports = []
    try:
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")
        if args.profile:
            for name, where in (
                ("postgresql", server.new_database(f"profile_{uuid.uuid4().hex[:6]}")),
                ("journal file", str(folder / "profile.journal")),
            ):
                figures = profile(where, args.profile, separate=args.separate)
                reports.append({"profile": name, **figures})
                print(f"{name}: {json.dumps(figures)}")
        for workers in [] if args.profile else [int(w) for w in args.workers.split(",")]:
            if args.journal:
                url, pid = str(folder / f"queue-{workers}.journal"), None
            else:
                url = server.new_database(f"queue_{workers}_{uuid.uuid4().hex[:6]}")
                pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
            report = drain(url, workers, args.jobs, args.job_ms / 1000, folder, pid, args.separate)
            reports.append(report)
            o = report["overhead_ms"]
            print(
                f"{workers} worker(s): {args.jobs} jobs, exactly once: {report['exactly_once']}, "
                f"left {report['left_in_queue']}, strays {report['strays']}; claim overhead "
                f"median {o['median']:.1f} ms (take+claim {o['before_median']:.1f}, "
                f"end {o['after_median']:.1f}), p99 {o['p99']:.1f} ms; the sleep woke late by "
                f"{report['sleep_late_ms']['median']:.1f} ms (median; mean "
                f"{report['sleep_late_ms']['mean']:.1f}: waiting for a CPU); wall "
                f"{report['wall_s']:.2f} s vs ideal {report['ideal_s']:.2f} s "
                f"({report['wall_over_ideal']:.2f}x, efficiency {report['efficiency']:.0%}); "
                f"workers' CPU {report['worker_cpu_s']:.1f} s (draining: "
                f"{report['drain_cpu_ms_per_job']:.1f} ms/job; server "
                f"{report['server_cpu_ms_per_job']:.1f} ms/job; {report['listings']} listings, "
                f"{report['lost_takes']} takes lost to another worker); load "
                f"{report['load_before'][0]:.2f} -> {report['load_after'][0]:.2f}; "
                f"enqueue {report['enqueue_ms_per_job']:.1f} ms/job"
            )
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
