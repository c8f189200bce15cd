"""Data-parallel training under a real ``torchrun`` with two gloo processes on the CPU.

A probe plugin (loaded into both workers with ``-p``) all-gathers a fingerprint of the binary
weights after every optimizer step and saves each rank's final weights, so the test checks that
the ranks agree after every step (PBop included: its random flips must be drawn identically) and
end bit-identical.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from engine_support import computed, fresh_store
from mlflow import MlflowClient

from benchbnn.core import names

PROBE = """
import os
import torch
import torch.distributed as dist
import benchbnn
from benchbnn.train.distributed import checksum

seen = {"steps": 0, "mismatches": []}


@benchbnn.hookimpl
def benchbnn_step_end(run, step, logs):
    local = checksum(run.binary_params).reshape(1)
    everyone = [torch.empty_like(local) for _ in range(run.world_size)]
    dist.all_gather(everyone, local)
    seen["steps"] += 1
    if not all(torch.equal(x, everyone[0]) for x in everyone):
        seen["mismatches"].append(step)


@benchbnn.hookimpl
def benchbnn_run_end(run, result):
    torch.save({
        "rank": run.rank, "world_size": run.world_size, **seen,
        "batch_size": run.data.train.batch_size, "run_id": run.run_id,
        "status": result.status, "history": result.history,
        "state": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
    }, os.path.join(os.environ["PROBE_OUT"], f"rank{run.rank}.pt"))
"""


@pytest.mark.slow
@pytest.mark.torchrun
def test_two_gloo_ranks_hold_identical_weights_after_every_step(tmp_path):
    store = fresh_store(tmp_path / "store")
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PROBE_OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "benchbnn",
        "-p",
        "ddp_probe",
        "run",
        "--dataset",
        "digits",
        "--arch",
        "bnn-mlp",
        "--arch-option",
        "hidden=32",
        "--optimizer",
        "pbop",
        "--set",
        "scaler=1e4",
        "--set",
        "gamma=1e-3",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--tracking-uri",
        store,
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--quiet",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["batch_size"] for r in ranks] == [32, 32]  # the global batch split over the ranks
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    assert ranks[0]["mismatches"] == ranks[1]["mismatches"] == []
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    # metrics are reduced over the ranks, so both ranks report the same numbers
    assert computed(ranks[0]["history"]) == computed(ranks[1]["history"])
    assert ranks[0]["history"][-1]["test_top1"] > 10.0  # it learned something
    # only rank 0 tracks: one MLflow run, finished, tagged with the world size
    assert ranks[0]["run_id"] is not None and ranks[1]["run_id"] is None
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags[names.TAG_WORLD_SIZE] == "2"
    assert len(done.stdout.strip().splitlines()) == 1  # one summary line, from rank 0 only
