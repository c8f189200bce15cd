"""``cifar10``: CIFAR-10 (Krizhevsky 2009), 50,000 training and 10,000 test images, 32x32 RGB.

``--data-dir`` points at one of two layouts, or at the folder that contains it:

* the official pickled batches, as torchvision downloads them: ``cifar-10-batches-py/``
  with ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``, read by an unpickler that
  builds numpy arrays and plain values only (a crafted batch cannot run code);
* an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (PNG or JPEG), label i being
  the i-th class folder in sorted order (CIFAR-10's official class order is alphabetical);
  looked for in the folder itself or in a ``cifar10-jpeg``, ``cifar10`` or ``cifar-10``
  sub-folder.

Each split is decoded once into a uint8 cache (beside the data, or in ``$BENCHBNN_CACHE_DIR``
when the data directory is read-only) and memory-mapped afterwards. Training augmentation is the
BNN papers' recipe: inputs scaled to [-1, 1], padded by 4, a random 32x32 crop and a random
horizontal flip. ``download=True`` fetches the official batches with torchvision; nothing
downloads otherwise.

Option ``crop_fill`` (:data:`benchbnn.data.augment.CROP_FILL_OPTION`) says what the crop pads
with: ``black`` (default) is pixel value 0, -1 after scaling, as the authors' code pads the
uint8 image before scaling it (``CuauSuarez/Bop2ndOrder``, branch ``conference``, and
``plumerai/rethinking-bnn-optimization``, both ``bnn_optimization/data/cifar10.py``:
``tf.image.resize_with_crop_or_pad(image, 40, 40)``, a random 32x32 crop, a random flip, then
``x / 127.5 - 1``); ``mid-grey`` pads with 0 after
scaling, what benchbnn did before. The host's augmentation reads the option; the decoded
tensors do not depend on it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import benchbnn
from benchbnn.data import (
    ImageTensors,
    cached_tensors,
    data_error,
    decode_images,
    list_image_folder,
)
from benchbnn.data.augment import CROP_FILL, CROP_FILL_OPTION

#: The authors' padding of the random crop (module docstring).
DEFAULT_CROP_FILL = "black"

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PICKLE_DIR = "cifar-10-batches-py"
PICKLE_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
FOLDER_NAMES = ("cifar10-jpeg", "cifar10", "cifar-10")
FORMAT = 1
LAYOUTS = (
    f"the official pickled batches ({PICKLE_DIR}/data_batch_1..5 and test_batch) or an image "
    "folder tree train/<class>/*.png|jpg and test/<class>/*.png|jpg with 10 classes"
)
OBTAIN = (
    "Pass --download to fetch the official batches with torchvision, or point --data-dir "
    "at a folder holding one of these layouts."
)


def find_layout(root: Path) -> tuple[str, Path]:
    """``("pickles" | "folder", directory)`` of the CIFAR-10 copy in or under ``root``."""
    if not root.is_dir():
        raise data_error(
            "CIFAR-10 data directory does not exist or is not a directory", root, LAYOUTS, OBTAIN
        )
    for candidate in (root / PICKLE_DIR, root):
        if any((candidate / f).exists() for f in (*PICKLE_FILES["train"], *PICKLE_FILES["test"])):
            return "pickles", candidate
    for candidate in (root, *(root / name for name in FOLDER_NAMES)):
        if (candidate / "train").is_dir() or (candidate / "test").is_dir():
            return "folder", candidate
    raise data_error("no CIFAR-10 layout found in", root, LAYOUTS, OBTAIN)


# --- the official pickled batches ---------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """A pickle that asks for a callable besides those that build numpy arrays."""


def _latin1(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol 2, and nothing else."""
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _array_builders() -> dict[tuple[str, str], Any]:
    """The callables numpy arrays, dtypes and scalars pickle themselves with, by the module and
    name numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) write. They are taken from
    numpy's own reductions, so the deprecated ``numpy.core`` is never imported."""
    array = np.zeros(1, np.uint8)
    builders: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
    }
    for package in ("numpy.core", "numpy._core"):
        builders[f"{package}.multiarray", "_reconstruct"] = array.__reduce__()[0]
        builders[f"{package}.multiarray", "scalar"] = np.int64(0).__reduce__()[0]
        builders[f"{package}.numeric", "_frombuffer"] = array.__reduce_ex__(5)[0]
    return builders


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain values (dict, list, tuple, str, bytes, int, float) only.

    Plain values need no callable; anything a pickle names besides :func:`_array_builders`
    (``os.system`` in a crafted ``__reduce__``, any class) raises :class:`_Refused` before it is
    looked up, so a crafted batch file cannot run code.
    """

    BUILDERS = _array_builders()

    def find_class(self, module: str, name: str) -> Any:
        found = self.BUILDERS.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch's images (n, 3072) and labels, read by :class:`_ArraysOnly`.

    Raises DataError naming the file for a batch that asks to call anything but numpy's array
    builders, and for one that is truncated, corrupt or of the wrong shape.
    """
    try:
        with open(path, "rb") as handle:
            batch = _ArraysOnly(handle, encoding="bytes").load()
        # Python 2 pickles (the official files) load with bytes keys, Python 3 ones with str keys.
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except _Refused as exc:
        raise data_error(
            f"refused to unpickle CIFAR-10 batch: it asks to call {exc}, and only numpy arrays "
            f"and plain values are read (a crafted or foreign file)",
            path,
            LAYOUTS,
            OBTAIN,
        ) from None
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
    ) as exc:
        raise data_error(
            f"cannot read CIFAR-10 batch (truncated or corrupt? {exc!r})", path, LAYOUTS, OBTAIN
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise data_error(
            f"CIFAR-10 batch has data {data.shape} and {labels.shape[0]} labels",
            path,
            "data of shape (n, 3072) and n labels",
            OBTAIN,
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise data_error("CIFAR-10 batch has labels outside 0..9", path, "labels 0..9", OBTAIN)
    return data, labels


def _pickle_files(directory: Path, split: str) -> list[Path]:
    files = [directory / name for name in PICKLE_FILES[split]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise data_error("missing CIFAR-10 batch file", missing[0], LAYOUTS, OBTAIN)
    return files


def _decode_pickles(files: list[Path]) -> ImageTensors:
    parts = [_read_batch(f) for f in files]
    data = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([lab for _, lab in parts])
    return ImageTensors(torch.from_numpy(data), torch.from_numpy(labels), 10, CLASSES)


# --- image folders ------------------------------------------------------------------------------


def _folder_files(directory: Path, split: str) -> tuple[tuple[str, ...], list[str], list[int]]:
    folders = {s: directory / s for s in ("train", "test")}
    for s, folder in folders.items():
        if not folder.is_dir():
            raise data_error(
                f"missing the {s}/ folder of the CIFAR-10 image tree", folder, LAYOUTS, OBTAIN
            )
    classes, files, labels = list_image_folder(folders[split])
    other = [
        e.name
        for e in os.scandir(folders["test" if split == "train" else "train"])
        if e.is_dir() and not e.name.startswith(".")
    ]
    if len(classes) != 10 or sorted(other) != classes:
        raise data_error(
            f"the CIFAR-10 image tree must have the same 10 class folders in train/ and test/, "
            f"found {len(classes)} in {split}/",
            directory,
            LAYOUTS,
            OBTAIN,
        )
    counts = np.bincount(labels, minlength=10)
    if counts.min() == 0:
        empty = classes[int(counts.argmin())]
        raise data_error(
            "CIFAR-10 class folder has no .png/.jpg images", folders[split] / empty, LAYOUTS, OBTAIN
        )
    return tuple(classes), files, labels


def _decode_folder(classes: tuple[str, ...], files: list[str], labels: list[int]) -> ImageTensors:
    images = decode_images(files, (3, 32, 32))
    return ImageTensors(images, torch.tensor(labels, dtype=torch.int64), 10, classes)


# --- the plugin ---------------------------------------------------------------------------------


def _download(root: Path, split: str) -> None:
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(root=str(root), train=split == "train", download=True)
    except Exception as exc:
        raise benchbnn.BenchbnnError(
            f"could not download CIFAR-10 into {root}: {exc}. Check the connection, or download "
            f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
            f"and extract it there"
        ) from None


def read_cifar10(
    root, split: str = "train", download: bool = False, crop_fill: str = DEFAULT_CROP_FILL
) -> ImageTensors:
    """The split as uint8 (N, 3, 32, 32) tensors and labels, decoded once and cached.

    ``crop_fill`` is accepted because it is a declared option of the data set; the host's
    augmentation applies it (the decoded images are the same for every value).
    """
    root = Path(root).expanduser()
    if download:
        _download(root, split)
    kind, directory = find_layout(root)
    sources: Sequence[Path | str]
    if kind == "pickles":
        batch_files = _pickle_files(directory, split)
        sources = batch_files
        decode = lambda: _decode_pickles(batch_files)
    else:
        classes, image_files, labels = _folder_files(directory, split)
        sources = image_files
        decode = lambda: _decode_folder(classes, image_files, labels)
    return cached_tensors(
        "cifar10",
        split,
        sources,
        decode,
        beside=directory,
        version={"format": FORMAT, "layout": kind},
    )


@benchbnn.hookimpl
def benchbnn_datasets():
    return [
        benchbnn.DatasetSpec(
            name="cifar10",
            loader=None,
            tensors=read_cifar10,
            num_classes=10,
            image_shape=(3, 32, 32),
            mean=(0.5,),
            std=(0.5,),
            augmentation="crop:4,flip",
            options={CROP_FILL_OPTION: DEFAULT_CROP_FILL},
            option_types={CROP_FILL_OPTION: CROP_FILL},
            description=(
                "CIFAR-10, 50,000 train / 10,000 test 32x32 RGB (pickled batches or image "
                "folders); crop_fill=black pads the random crop with -1 as the authors'"
            ),
            reference=(
                "Krizhevsky 2009; augmentation as in Courbariaux et al. 2016 and the Bop papers"
            ),
        )
    ]
