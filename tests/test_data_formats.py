"""Each on-disk format, read from small copies written here in the real formats, and every way
they can be wrong: each gives one DataError naming the path, the layout and how to get the data."""

from __future__ import annotations

import gzip
import pickle
import re

import numpy as np
import pytest
import torch
from datafiles import (
    CIFAR_CLASSES,
    idx_bytes,
    truncate,
    write_cifar_pickles,
    write_image_tree,
    write_mnist,
)

import benchbnn
from benchbnn.core.errors import BenchbnnError, DataError
from benchbnn.data.pipeline import build_loaders


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHBNN_CACHE_DIR", str(tmp_path / "user-cache"))


def read(name, root, split="train", **options):
    return benchbnn.get_dataset(name).read_tensors(root, split, **options)


def assert_same(data, written):
    images, labels = written
    assert torch.equal(data.images, torch.from_numpy(images))
    assert torch.equal(data.labels, torch.from_numpy(labels).long())


# --- CIFAR-10 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar_official_pickles(tmp_path, str_keys):
    written = write_cifar_pickles(tmp_path, str_keys=str_keys)
    for split in ("train", "test"):
        data = read("cifar10", tmp_path, split)
        assert_same(data, written[split])
        assert data.num_classes == 10 and data.classes == CIFAR_CLASSES
    assert (
        len(read("cifar10", tmp_path / "cifar-10-batches-py")) == 60
    )  # the folder itself works too


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_cifar_image_folders(tmp_path, ext):
    written = write_image_tree(tmp_path / "cifar10-jpeg", {"train": 3, "test": 2}, ext=ext)
    for root in (tmp_path, tmp_path / "cifar10-jpeg"):
        data = read("cifar10", root, "train")
        assert data.images.shape == (30, 3, 32, 32) and data.classes == tuple(sorted(CIFAR_CLASSES))
        assert torch.equal(data.labels, torch.from_numpy(written["train"][1]))
    if ext == ".png":  # lossless: exactly the pixels written
        assert_same(read("cifar10", tmp_path, "test"), written["test"])


def test_cifar_grayscale_images_are_read_as_rgb(tmp_path):
    write_image_tree(tmp_path, {"train": 1, "test": 1}, mode="L")
    data = read("cifar10", tmp_path)
    assert data.images.shape == (10, 3, 32, 32)
    assert torch.equal(data.images[:, 0], data.images[:, 2])


def test_cifar_bundle_feeds_the_papers_recipe(tmp_path):
    write_cifar_pickles(tmp_path)
    bundle = build_loaders("cifar10", data_dir=tmp_path, batch_size=10, seed=0)
    assert bundle.image_shape == (3, 32, 32) and bundle.num_classes == 10
    x, _ = next(iter(bundle.train))
    assert x.shape == (10, 3, 32, 32) and x.min() >= -1.0 and x.max() <= 1.0
    test_x = torch.cat([x for x, _ in bundle.test])
    assert len(test_x) == 20


# --- MNIST --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    written = write_mnist(tmp_path, gz=gz)
    for root in (tmp_path, tmp_path / "MNIST", tmp_path / "MNIST" / "raw"):
        for split in ("train", "test"):
            assert_same(read("mnist", root, split), written[split])
    bundle = build_loaders("mnist", data_dir=tmp_path, batch_size=6, seed=0)
    assert bundle.image_shape == (1, 28, 28) and len(bundle.train) == 5


# --- ImageNet (streamed through DataLoader workers) ----------------------------------------------

WNIDS = ("n01440764", "n01443537", "n01484850")


@pytest.fixture
def tiny_imagenet(tmp_path):
    write_image_tree(tmp_path, {"train": 4}, classes=WNIDS, size=(40, 30), ext=".JPEG")
    write_image_tree(tmp_path, {"val": 2}, classes=WNIDS, size=(30, 44), ext=".JPEG", seed=1)
    return tmp_path


def test_imagenet_standard_transforms(tiny_imagenet):
    bundle = build_loaders("imagenet", data_dir=tiny_imagenet, batch_size=4, seed=0, num_workers=0)
    assert bundle.num_classes == 3 and bundle.image_shape == (3, 224, 224)
    assert bundle.sizes == {"train": 12, "val": 0, "test": 6} and len(bundle.train) == 3
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    test_labels = torch.cat([y for _, y in bundle.test])
    assert sorted(test_labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_imagenet_augmentation_is_the_same_with_or_without_workers(tiny_imagenet):
    def epoch(workers):
        bundle = build_loaders(
            "imagenet",
            data_dir=tiny_imagenet,
            batch_size=4,
            seed=3,
            num_workers=workers,
            options={"image_size": 16},
        )
        bundle.train.set_epoch(1)
        return torch.cat([x for x, _ in bundle.train]), torch.cat([y for _, y in bundle.train])

    state = torch.random.get_rng_state()
    alone = epoch(0)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(alone[0], epoch(0)[0])
    workers = epoch(2)
    assert torch.equal(alone[0], workers[0]) and torch.equal(alone[1], workers[1])


def test_imagenet_shards_and_validation_split(tiny_imagenet):
    test_seen, val_seen = [], []
    for rank in range(2):
        bundle = build_loaders(
            "imagenet",
            data_dir=tiny_imagenet,
            batch_size=2,
            seed=0,
            num_workers=0,
            rank=rank,
            world_size=2,
            val_fraction=0.25,
            options={"image_size": 8},
        )
        assert bundle.sizes == {"train": 9, "val": 3, "test": 6}
        assert len(bundle.train) == 2  # 9 training images: 4 per rank, 2 batches of 2
        test_seen += [y for _, y in bundle.test]
        val_seen += [y for _, y in bundle.val]
    assert sorted(torch.cat(test_seen).tolist()) == [0, 0, 1, 1, 2, 2]
    assert sorted(torch.cat(val_seen).tolist()) == [0, 1, 2]  # one held-out image per class


def test_imagenet_corrupt_image_names_the_file(tiny_imagenet):
    bad = tiny_imagenet / "val" / WNIDS[1] / "0001.JPEG"
    truncate(bad, 0.3)
    bundle = build_loaders(
        "imagenet",
        data_dir=tiny_imagenet,
        batch_size=4,
        seed=0,
        num_workers=0,
        options={"image_size": 8},
    )
    with pytest.raises(DataError, match=re.escape("0001.JPEG")):
        list(bundle.test)


# --- bad inputs ---------------------------------------------------------------------------------


def _cifar_pickles(tmp_path):
    write_cifar_pickles(tmp_path)
    return tmp_path / "cifar-10-batches-py"


def _cifar_tree(tmp_path):
    write_image_tree(tmp_path, {"train": 2, "test": 1}, ext=".jpg")
    return tmp_path


def _mnist(tmp_path):
    write_mnist(tmp_path)
    return tmp_path / "MNIST" / "raw"


def _imagenet(tmp_path):
    write_image_tree(tmp_path, {"train": 2, "val": 1}, classes=WNIDS, ext=".JPEG")
    return tmp_path


def _corrupt_pickle(d):
    (d / "data_batch_2").write_bytes(b"this is not a pickle")


def _wrong_pickle_shape(d):
    with open(d / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, handle)


def _flat_val(d):
    for folder in (d / "val").iterdir():
        for f in folder.iterdir():
            f.rename(d / "val" / f"{folder.name}_{f.name}")
        folder.rmdir()


def _mnist_gz_truncated(d):
    path = d / "train-images-idx3-ubyte"
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(path.read_bytes())[:500])
    path.unlink()


BAD_INPUTS = {
    "cifar: missing directory": ("cifar10", lambda p: p / "nowhere", None, "does not exist"),
    "cifar: no layout": (
        "cifar10",
        lambda p: p,
        lambda d: (d / "notes.txt").write_text("hi"),
        "no CIFAR-10 layout",
    ),
    "cifar: truncated batch": (
        "cifar10",
        _cifar_pickles,
        lambda d: truncate(d / "data_batch_3"),
        "data_batch_3",
    ),
    "cifar: corrupt batch": ("cifar10", _cifar_pickles, _corrupt_pickle, "data_batch_2"),
    "cifar: missing batch": (
        "cifar10",
        _cifar_pickles,
        lambda d: (d / "data_batch_5").unlink(),
        "data_batch_5",
    ),
    "cifar: wrong shape": ("cifar10", _cifar_pickles, _wrong_pickle_shape, "test_batch"),
    "cifar: missing test folder": (
        "cifar10",
        _cifar_tree,
        lambda d: __import__("shutil").rmtree(d / "test"),
        "test",
    ),
    "cifar: nine classes": (
        "cifar10",
        _cifar_tree,
        lambda d: [__import__("shutil").rmtree(d / s / "truck") for s in ("train", "test")],
        "found 9",
    ),
    "cifar: classes differ": (
        "cifar10",
        _cifar_tree,
        lambda d: (d / "test" / "cat").rename(d / "test" / "kitten"),
        "same 10 class folders",
    ),
    "cifar: empty class": (
        "cifar10",
        _cifar_tree,
        lambda d: [f.unlink() for f in (d / "train" / "dog").iterdir()],
        "dog",
    ),
    "cifar: wrong image size": (
        "cifar10",
        _cifar_tree,
        lambda d: write_image_tree(d, {"train": 1}, classes=("bird",), size=(20, 20), ext=".jpg"),
        "20x20, not 32x32",
    ),
    "cifar: corrupt image": (
        "cifar10",
        _cifar_tree,
        lambda d: truncate(d / "train" / "frog" / "0001.jpg", 0.4),
        "0001.jpg",
    ),
    "mnist: missing directory": ("mnist", lambda p: p / "absent", None, "does not exist"),
    "mnist: no idx files": ("mnist", lambda p: p, None, "no MNIST IDX files"),
    "mnist: truncated": (
        "mnist",
        _mnist,
        lambda d: truncate(d / "train-images-idx3-ubyte"),
        "truncated",
    ),
    "mnist: truncated gz": ("mnist", _mnist, _mnist_gz_truncated, "train-images-idx3-ubyte.gz"),
    "mnist: not idx": (
        "mnist",
        _mnist,
        lambda d: (d / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02" * 20),
        "not an IDX file",
    ),
    "mnist: missing labels": (
        "mnist",
        _mnist,
        lambda d: (d / "train-labels-idx1-ubyte").unlink(),
        "train-labels-idx1-ubyte",
    ),
    "mnist: label count": (
        "mnist",
        _mnist,
        lambda d: (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, np.uint8))),
        "7 labels for 30 images",
    ),
    "mnist: image size": (
        "mnist",
        _mnist,
        lambda d: (d / "train-images-idx3-ubyte").write_bytes(
            idx_bytes(np.zeros((30, 20, 20), np.uint8))
        ),
        "20x20",
    ),
    "imagenet: missing directory": ("imagenet", lambda p: p / "absent", None, "does not exist"),
    "imagenet: no train/val": (
        "imagenet",
        lambda p: p,
        lambda d: (d / "train").mkdir(),
        "no train/ and val/",
    ),
    "imagenet: flat val": ("imagenet", _imagenet, _flat_val, "is val/ still flat"),
    "imagenet: class without images": (
        "imagenet",
        _imagenet,
        lambda d: [f.unlink() for f in (d / "val" / WNIDS[0]).iterdir()],
        "class without images",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_data_gives_one_error_naming_path_layout_and_remedy(tmp_path, case):
    name, make, damage, expected = BAD_INPUTS[case]
    root = make(tmp_path)
    if damage is not None:
        damage(root)
    with pytest.raises(DataError) as caught:
        build_loaders(name, data_dir=root, batch_size=2, seed=0, num_workers=0)
    message = str(caught.value)
    assert expected in message
    assert str(tmp_path) in message and "Expected" in message
    assert (
        "--download" in message
        or "--data-dir" in message
        or "Replace" in message
        or "Resize" in message
    )


def test_imagenet_cannot_be_downloaded(tmp_path):
    with pytest.raises(BenchbnnError, match=re.escape("image-net.org")):
        build_loaders("imagenet", data_dir=tmp_path, batch_size=2, seed=0, download=True)
