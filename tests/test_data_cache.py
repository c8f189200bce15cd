"""The uint8 tensor cache: decode once, memory-map afterwards, never trust a half-written entry."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import write_cifar_pickles, write_image_tree, write_mnist

import benchbnn
import benchbnn.data.tensors as dio
from benchbnn_plugins.datasets import cifar10, mnist


@pytest.fixture
def user_cache(tmp_path, monkeypatch):
    path = tmp_path / "user-cache"
    monkeypatch.setenv("BENCHBNN_CACHE_DIR", str(path))
    return path


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls of the CIFAR-10 and MNIST decoders."""
    calls = []
    for module, name in (
        (cifar10, "_decode_pickles"),
        (cifar10, "_decode_folder"),
        (mnist, "_decode"),
    ):
        original = getattr(module, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


def entries(place: Path) -> list[str]:
    return (
        sorted(p.name for p in place.iterdir() if not p.name.startswith(".tmp-"))
        if place.exists()
        else []
    )


def read(name, root, split="train"):
    return benchbnn.get_dataset(name).read_tensors(root, split)


def test_second_load_uses_the_cache_and_returns_identical_tensors(tmp_path, user_cache, decodes):
    written = write_cifar_pickles(tmp_path)
    first = read("cifar10", tmp_path)
    second = read("cifar10", tmp_path)
    assert decodes == ["_decode_pickles"]
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert torch.equal(second.images, torch.from_numpy(written["train"][0]))
    beside = tmp_path / "cifar-10-batches-py" / ".benchbnn-cache"
    assert [e.split("-")[:2] for e in entries(beside)] == [["cifar10", "train"]]
    assert entries(user_cache) == []


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see memory maps")
def test_cached_images_are_memory_mapped(tmp_path, user_cache):
    write_mnist(tmp_path)
    read("mnist", tmp_path)
    data = read("mnist", tmp_path)
    maps = Path("/proc/self/maps").read_text()
    (entry,) = [
        e for e in (tmp_path / "MNIST" / "raw" / ".benchbnn-cache").iterdir() if "train" in e.name
    ]
    assert str(entry / "images.npy") in maps
    assert data.images.shape == (30, 1, 28, 28)


def test_a_changed_source_is_decoded_again_and_the_stale_entry_removed(
    tmp_path, user_cache, decodes
):
    write_cifar_pickles(tmp_path, seed=0)
    read("cifar10", tmp_path, "test")
    beside = tmp_path / "cifar-10-batches-py" / ".benchbnn-cache"
    old = entries(beside)
    written = write_cifar_pickles(tmp_path, seed=1, test=24)
    data = read("cifar10", tmp_path, "test")
    assert decodes == ["_decode_pickles", "_decode_pickles"]
    assert torch.equal(data.images, torch.from_numpy(written["test"][0]))
    assert len(entries(beside)) == 1 and entries(beside) != old


def test_a_read_only_data_directory_caches_in_the_user_cache_dir(tmp_path, user_cache, decodes):
    written = write_image_tree(tmp_path / "data", {"train": 2, "test": 1})
    os.chmod(tmp_path / "data", 0o555)
    try:
        first = read("cifar10", tmp_path / "data")
        second = read("cifar10", tmp_path / "data")
    finally:
        os.chmod(tmp_path / "data", 0o755)
    assert decodes == ["_decode_folder"]
    assert not (tmp_path / "data" / ".benchbnn-cache").exists()
    assert [e.split("-")[:2] for e in entries(user_cache)] == [["cifar10", "train"]]
    assert torch.equal(first.images, second.images)
    assert torch.equal(second.images, torch.from_numpy(written["train"][0]))


def test_digits_cache_spares_later_runs_the_scikit_learn_import(tmp_path, user_cache):
    benchbnn.get_dataset("digits").read_tensors(split="test")
    code = textwrap.dedent("""
        import sys
        from benchbnn_plugins.datasets.digits import read_digits
        data = read_digits(split="test")
        print(len(data), "sklearn" in sys.modules)
    """)
    env = {**os.environ, "BENCHBNN_CACHE_DIR": str(user_cache)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["360", "False"]


def test_a_failed_cache_write_leaves_nothing_and_still_returns_the_data(
    tmp_path, user_cache, monkeypatch, decodes
):
    written = write_mnist(tmp_path)

    def disk_full(path, array):
        with open(path, "wb") as handle:
            handle.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dio, "_save_array", disk_full)
    with pytest.warns(UserWarning, match="could not cache"):
        data = read("mnist", tmp_path)
    assert torch.equal(data.images, torch.from_numpy(written["train"][0]))
    beside = tmp_path / "MNIST" / "raw" / ".benchbnn-cache"
    assert list(beside.iterdir()) == []  # no entry and no temporary directory
    monkeypatch.undo()


def test_an_interrupted_cache_write_leaves_nothing_half_written(tmp_path, user_cache, monkeypatch):
    write_mnist(tmp_path)

    class Interrupted(BaseException):
        pass

    def interrupted(path, array):
        with open(path, "wb") as handle:
            handle.write(np.ascontiguousarray(array).tobytes()[:100])
        raise Interrupted

    monkeypatch.setattr(dio, "_save_array", interrupted)
    with pytest.raises(Interrupted):
        read("mnist", tmp_path)
    assert list((tmp_path / "MNIST" / "raw" / ".benchbnn-cache").iterdir()) == []


def test_a_writer_killed_mid_write_leaves_no_entry_and_is_cleaned_up(tmp_path, user_cache, decodes):
    written = write_cifar_pickles(tmp_path)
    script = textwrap.dedent("""
        import sys, time
        import benchbnn.data.tensors as dio
        from benchbnn_plugins.datasets.cifar10 import read_cifar10

        def slow_save(path, array):
            with open(path, "wb") as handle:
                handle.write(array.tobytes()[: array.nbytes // 2])
                handle.flush()
            print("writing", flush=True)
            time.sleep(120)

        dio._save_array = slow_save
        read_cifar10(sys.argv[1], "train")
    """)
    env = {**os.environ, "BENCHBNN_CACHE_DIR": str(user_cache)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "writing", proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    beside = tmp_path / "cifar-10-batches-py" / ".benchbnn-cache"
    leftovers = list(beside.iterdir())
    assert entries(beside) == [] and len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-")
    assert (leftovers[0] / "images.npy").stat().st_size > 0  # it really died mid-write

    data = read("cifar10", tmp_path)
    assert decodes == ["_decode_pickles"]
    assert torch.equal(data.images, torch.from_numpy(written["train"][0]))
    assert not leftovers[0].exists()  # the dead writer's temporary directory is gone
    assert len(entries(beside)) == 1


def test_an_unreadable_entry_is_rebuilt(tmp_path, user_cache, decodes):
    write_mnist(tmp_path)
    read("mnist", tmp_path, "test")
    beside = tmp_path / "MNIST" / "raw" / ".benchbnn-cache"
    (entry,) = beside.iterdir()
    (entry / "images.npy").write_bytes(b"garbage")
    data = read("mnist", tmp_path, "test")
    assert decodes == ["_decode", "_decode"] and data.images.shape == (12, 1, 28, 28)
