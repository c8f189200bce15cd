"""``mnist``: MNIST handwritten digits (LeCun et al. 1998), 60,000 training / 10,000 test, 28x28.

``--data-dir`` points at torchvision's layout: ``MNIST/raw/`` holding the four IDX files
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``). The folder that contains
``MNIST/``, ``MNIST/`` itself or the ``raw/`` folder all work.

Each split is decoded once into a uint8 cache (beside the files, or in ``$BENCHBNN_CACHE_DIR``
when that folder is read-only). Inputs are scaled to [-1, 1] as in the BNN paper's MNIST
experiments; there is no augmentation. ``download=True`` fetches the files with torchvision.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

import benchbnn
from benchbnn.data import ImageTensors, cached_tensors, data_error

PREFIX = {"train": "train", "test": "t10k"}
FORMAT = 1
LAYOUT = (
    "MNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz)"
)
OBTAIN = (
    "Pass --download to fetch MNIST with torchvision, or point --data-dir at the folder "
    "that contains MNIST/raw/."
)
_UBYTE = 0x08


def find_raw_dir(root: Path) -> Path:
    """The folder holding the IDX files: ``root/MNIST/raw``, ``root/raw`` or ``root`` itself."""
    if not root.is_dir():
        raise data_error(
            "MNIST data directory does not exist or is not a directory", root, LAYOUT, OBTAIN
        )
    for candidate in (root / "MNIST" / "raw", root / "raw", root):
        if any(candidate.glob("*-idx[13]-ubyte*")):
            return candidate
    raise data_error("no MNIST IDX files found in", root, LAYOUT, OBTAIN)


def _idx_file(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise data_error("missing MNIST file", directory / stem, LAYOUT, OBTAIN)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions, header and length checked."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise data_error(
            f"cannot read MNIST file (truncated or corrupt? {exc})", path, LAYOUT, OBTAIN
        ) from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:2] != b"\0\0" or raw[2] != _UBYTE or raw[3] != ndim:
        raise data_error(f"not an IDX file of {ndim}-d unsigned bytes", path, LAYOUT, OBTAIN)
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise data_error(
            f"MNIST file holds {len(raw) - header} bytes of data, its header promises "
            f"{int(np.prod(shape))} (truncated?)",
            path,
            LAYOUT,
            OBTAIN,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _decode(images_path: Path, labels_path: Path) -> ImageTensors:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise data_error(
            f"MNIST images are {images.shape[1]}x{images.shape[2]}",
            images_path,
            "28x28 images",
            OBTAIN,
        )
    if labels.shape[0] != images.shape[0]:
        raise data_error(
            f"{labels.shape[0]} labels for {images.shape[0]} images",
            labels_path,
            "one label per image",
            OBTAIN,
        )
    if labels.size and labels.max() > 9:
        raise data_error("MNIST labels outside 0..9", labels_path, "labels 0..9", OBTAIN)
    return ImageTensors(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels),
        10,
        tuple(str(d) for d in range(10)),
    )


def _download(root: Path, split: str) -> None:
    from torchvision.datasets import MNIST

    try:
        MNIST(root=str(root), train=split == "train", download=True)
    except Exception as exc:
        raise benchbnn.BenchbnnError(f"could not download MNIST into {root}: {exc}") from None


def read_mnist(root, split: str = "train", download: bool = False) -> ImageTensors:
    """The split as uint8 (N, 1, 28, 28) tensors and labels, decoded once and cached."""
    root = Path(root).expanduser()
    if download:
        _download(root, split)
    directory = find_raw_dir(root)
    images = _idx_file(directory, f"{PREFIX[split]}-images-idx3-ubyte")
    labels = _idx_file(directory, f"{PREFIX[split]}-labels-idx1-ubyte")
    return cached_tensors(
        "mnist",
        split,
        [images, labels],
        lambda: _decode(images, labels),
        beside=directory,
        version={"format": FORMAT},
    )


@benchbnn.hookimpl
def benchbnn_datasets():
    return [
        benchbnn.DatasetSpec(
            name="mnist",
            loader=None,
            tensors=read_mnist,
            num_classes=10,
            image_shape=(1, 28, 28),
            mean=(0.5,),
            std=(0.5,),
            description=(
                "MNIST, 60,000 train / 10,000 test 28x28 grayscale (torchvision's raw IDX files)"
            ),
            reference="LeCun et al. 1998",
        )
    ]
