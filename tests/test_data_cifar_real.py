"""The real CIFAR-10 copy in ../shared/datasets (a JPEG image-folder tree), read end to end.

Skipped only where that folder is absent. The tarball is extracted once per test session.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

import benchbnn
from benchbnn.data.pipeline import build_loaders

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TARBALL = "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="session")
def cifar10_copy(tmp_path_factory) -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} is not present")
    target = tmp_path_factory.mktemp("cifar10-real")
    tar = shutil.which("tar")
    if tar:  # several times faster than tarfile on 60,000 small files
        subprocess.run([tar, "xzf", str(SHARED_DATASETS / TARBALL), "-C", str(target)], check=True)
    else:
        with tarfile.open(SHARED_DATASETS / TARBALL) as archive:
            archive.extractall(target, filter="data")
    return target


@pytest.mark.slow
def test_the_real_cifar10_copy_has_50000_train_and_10000_test_images(
    cifar10_copy, tmp_path, monkeypatch
):
    monkeypatch.setenv("BENCHBNN_CACHE_DIR", str(tmp_path))
    spec = benchbnn.get_dataset("cifar10")
    train = spec.read_tensors(cifar10_copy, "train")
    test = spec.read_tensors(cifar10_copy, "test")
    assert train.images.shape == (50_000, 3, 32, 32) and test.images.shape == (10_000, 3, 32, 32)
    assert train.classes == test.classes == CLASSES and train.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [5_000] * 10
    assert torch.bincount(test.labels).tolist() == [1_000] * 10
    assert 100 < train.images[:1000].float().mean() < 150  # real photographs, not blank decodes

    from benchbnn_plugins.datasets import cifar10

    monkeypatch.setattr(cifar10, "decode_images", lambda *a: pytest.fail("decoded a second time"))
    bundle = build_loaders(
        "cifar10", data_dir=cifar10_copy, batch_size=500, seed=0, subset=5000, val_fraction=0.1
    )
    assert bundle.sizes == {"train": 4500, "val": 500, "test": 10_000}
    assert torch.equal(bundle.test.data.images, test.images)
    labels = torch.cat([y for _, y in bundle.val])
    assert torch.bincount(labels).tolist() == [50] * 10
