"""Writers for small data sets in the real on-disk formats (used by the test_data* files).

Every writer returns the images and labels it wrote, in the order a reader must return them.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def write_cifar_pickles(
    root: Path, per_batch: int = 12, test: int = 20, seed: int = 0, str_keys: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py`` as torchvision downloads it (5 training batches + test)."""
    rng = np.random.default_rng(seed)
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    written: dict[str, list] = {"train": [], "test": []}
    names = [(f"data_batch_{i}", "train", per_batch) for i in range(1, 6)] + [
        ("test_batch", "test", test)
    ]
    for name, split, n in names:
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        labels[:10] = list(range(10))[:n]
        batch = {
            key("batch_label"): key(name),
            key("labels"): labels,
            key("data"): data,
            key("filenames"): [key(f"img_{i}.png") for i in range(n)],
        }
        with open(directory / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        written[split].append((data.reshape(n, 3, 32, 32), np.array(labels)))
    meta = {
        key("label_names"): [key(c) for c in CIFAR_CLASSES],
        key("num_cases_per_batch"): per_batch,
    }
    with open(directory / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return {
        s: (np.concatenate([d for d, _ in parts]), np.concatenate([lab for _, lab in parts]))
        for s, parts in written.items()
    }


def write_image_tree(
    root: Path,
    counts: dict[str, int],
    classes=CIFAR_CLASSES,
    size=(32, 32),
    ext: str = ".png",
    seed: int = 0,
    mode: str = "RGB",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/<split>/<class>/NNNN<ext>`` with ``counts[split]`` random images per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    written = {}
    for split, per_class in counts.items():
        images, labels = [], []
        for label, cls in enumerate(sorted(classes)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
                Image.fromarray(pixels if channels == 3 else pixels[..., 0], mode).save(
                    folder / f"{i:04d}{ext}"
                )
                images.append(pixels.transpose(2, 0, 1))
                labels.append(label)
        written[split] = (np.stack(images), np.array(labels))
    return written


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes (LeCun's MNIST format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(
    root: Path, n_train: int = 30, n_test: int = 12, gz: bool = False, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/MNIST/raw`` with the four IDX files, plain or gzipped, as torchvision leaves them."""
    rng = np.random.default_rng(seed)
    directory = root / "MNIST" / "raw"
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = directory / f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
                    handle.write(idx_bytes(array))
            else:
                path.write_bytes(idx_bytes(array))
        written[split] = (images[:, None], labels.astype(np.int64))
    return written


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
