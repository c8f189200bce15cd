"""Freed host memory kept for reuse (benchbnn.core.host_memory): the switch, the effect, the tag.

The effect is measured in fresh Python processes: the minor page faults of allocating and
filling a 48 MiB tensor again and again (above glibc's largest adaptive mmap threshold, 32 MiB,
so by default every allocation maps fresh pages that the kernel zero-fills on first write).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from engine_support import fresh_store, tiny_config
from mlflow import MlflowClient

from benchbnn.core import host_memory
from benchbnn.core.errors import BenchbnnError
from benchbnn.core.host_memory import (
    HOST_MEMORY_ENV,
    RETAINED,
    host_memory_mode,
    retain_freed_memory,
)
from benchbnn.core.names import TAG_HOST_MEMORY
from benchbnn.train.engine import train

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

FAULTS = """
import json, resource, sys, torch
from benchbnn.core.host_memory import retain_freed_memory
outcome = retain_freed_memory() if sys.argv[1] == "retain" else "default"
values = 12 * 2**20  # 48 MiB of float32
torch.empty(values).fill_(1.0)  # the first allocation maps its pages whatever the policy
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(values).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"outcome": outcome, "faults": faults}))
"""


def _faults(policy: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, policy],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt's thresholds are glibc's")
def test_retained_memory_is_reused_without_page_faults():
    pages = 48 * 2**20 // 4096
    default = _faults("default")
    retained = _faults("retain")
    assert retained["outcome"] == RETAINED
    # glibc's default maps (and faults in) every page of every 48 MiB allocation again ...
    assert min(default["faults"][-4:]) >= pages
    # ... kept in the heap, the allocations settle on blocks they had (the first few can still
    # grow the heap, around Python's own small allocations), and then fault no more
    assert max(retained["faults"][-4:]) < pages // 100


def test_the_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(HOST_MEMORY_ENV, raising=False)
    assert host_memory_mode() == "retain"
    monkeypatch.setenv(HOST_MEMORY_ENV, "")
    assert host_memory_mode() == "retain"
    monkeypatch.setenv(HOST_MEMORY_ENV, " Release ")
    assert host_memory_mode() == "release"


def test_a_bad_mode_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(HOST_MEMORY_ENV, "keep")
    with pytest.raises(BenchbnnError) as raised:
        retain_freed_memory()
    message = str(raised.value)
    assert HOST_MEMORY_ENV in message and "retain, release" in message and "'keep'" in message


def test_release_leaves_the_process_alone(monkeypatch):
    monkeypatch.setattr(host_memory, "_state", {})
    monkeypatch.setenv(HOST_MEMORY_ENV, "release")
    assert retain_freed_memory() == f"released ({HOST_MEMORY_ENV}=release)"
    assert host_memory._state == {}


def test_a_process_that_retained_says_so_whatever_the_mode_says_later(monkeypatch):
    monkeypatch.setattr(host_memory, "_state", {"outcome": RETAINED})
    monkeypatch.setenv(HOST_MEMORY_ENV, "release")
    assert retain_freed_memory() == RETAINED


def test_without_glibc_memory_is_released(monkeypatch):
    monkeypatch.setattr(host_memory, "_state", {})
    monkeypatch.delenv(HOST_MEMORY_ENV, raising=False)
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert retain_freed_memory() == "released (not glibc)"


def test_a_cpu_run_records_what_its_process_does(tmp_path, monkeypatch):
    monkeypatch.delenv(HOST_MEMORY_ENV, raising=False)
    store = fresh_store(tmp_path / "store")
    result = train(
        tiny_config(epochs=1), quiet=True, tracking_uri=store, checkpoint_dir=tmp_path / "c"
    )
    tags = MlflowClient(store).get_run(result.run_id).data.tags
    assert tags[TAG_HOST_MEMORY] == retain_freed_memory()
    if GLIBC:
        assert tags[TAG_HOST_MEMORY] == RETAINED


def test_a_bad_mode_starts_no_run(tmp_path, monkeypatch):
    monkeypatch.setenv(HOST_MEMORY_ENV, "sometimes")
    store = fresh_store(tmp_path / "store")
    with pytest.raises(BenchbnnError, match=HOST_MEMORY_ENV):
        train(tiny_config(epochs=1), quiet=True, tracking_uri=store, checkpoint_dir=tmp_path / "c")
    client = MlflowClient(store)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
