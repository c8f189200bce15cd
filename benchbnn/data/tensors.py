"""Reading image data sets once and keeping them as compact uint8 tensor caches.

This module is part of the public API for dataset plugins. A plugin that serves a small data set
returns an :class:`ImageTensors` record (all images of one split as a uint8 NCHW tensor and their
labels); it reads its files through :func:`cached_tensors`, which decodes them only the first
time and memory-maps the cached tensors on every later run.

A cache entry is a directory ``<name>-<split>-<key>/`` holding ``images.npy``, ``labels.npy`` and
``meta.json``. The key hashes a format version, the plugin's own version data and the identity
(relative path, size, modification time) of every source file, so a changed data set is decoded
again. Entries live beside the data (``<data dir>/.benchbnn-cache/``) or, when that directory is
read-only or the data has no directory of its own, in ``$BENCHBNN_CACHE_DIR`` (default
``~/.cache/benchbnn``). An entry is written into a temporary directory and renamed into place, so
a crash or a kill never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchbnn.core.errors import BenchbnnError, DataError
from benchbnn.core.processes import pid_alive
from benchbnn.core.specs import DatasetSpec
from benchbnn.data.augment import AugmentParams, Normalizer

#: Bump when the layout of a cache entry changes; every entry is then rebuilt.
CACHE_FORMAT_VERSION = 1
CACHE_SUBDIR = ".benchbnn-cache"
CACHE_ENV = "BENCHBNN_CACHE_DIR"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 24 * 3600
_KEY = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class ImageTensors:
    """All images of one split: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,).

    ``images`` may be a read-only memory map of a cache file: index it, never write into it.
    ``classes`` names the classes in label order when the source has names.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    classes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def check(self, owner: str) -> None:
        """Raise a clear error when a plugin hands over tensors the pipeline cannot use."""
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise BenchbnnError(f"{owner}: images must be a uint8 tensor of shape (N, C, H, W)")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise BenchbnnError(f"{owner}: labels must be an int64 tensor of shape (N,)")
        if images.shape[0] != labels.shape[0]:
            raise BenchbnnError(f"{owner}: {images.shape[0]} images but {labels.shape[0]} labels")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise BenchbnnError(
                f"{owner}: labels must lie in [0, {self.num_classes}), found "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        if self.classes and len(self.classes) != self.num_classes:
            raise BenchbnnError(
                f"{owner}: {len(self.classes)} class names for {self.num_classes} classes"
            )

    def as_dataset(self, spec: DatasetSpec, augmentation: str = "") -> TensorImageDataset:
        """A per-item torch ``Dataset`` view normalized (and augmented) as ``spec`` says."""
        return TensorImageDataset(self, spec, augmentation)


class TensorImageDataset(torch.utils.data.Dataset):
    """Items ``(normalized CxHxW float tensor, int label)`` of an :class:`ImageTensors`.

    With an ``augmentation``, every item is augmented with draws from torch's global RNG (as
    torchvision transforms are); the batch pipeline does not use this class.
    """

    def __init__(self, data: ImageTensors, spec: DatasetSpec, augmentation: str = ""):
        self.data = data
        self.classes = list(data.classes)
        self.targets = data.labels
        self.normalizer = Normalizer(spec, augmentation, data.images.shape[1], torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.data.images[index : index + 1]
        params = None
        if self.normalizer.ops:
            params = AugmentParams.draw(self.normalizer.ops, 1, torch.random.default_generator)
        return self.normalizer(image, params)[0], int(self.data.labels[index])


def data_error(problem: str, path: Path | str, expected: str, obtain: str) -> DataError:
    """The one error a user sees for missing or bad data: what, where, which layout, how to fix."""
    return DataError(f"{problem}: {path}. Expected {expected}. {obtain}")


# --- cache locations and keys -----------------------------------------------------------------


def user_cache_dir() -> Path:
    """Where caches go when the data directory is read-only: $BENCHBNN_CACHE_DIR or
    ~/.cache/benchbnn."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "benchbnn"


def source_identity(sources: Sequence[Path | str], base: Path | None) -> list[list[Any]]:
    """(path relative to ``base``, size, mtime in ns) of every source file, in the given order."""
    prefix = os.path.join(str(base), "") if base is not None else None
    identity = []
    for path in sources:
        path = os.fspath(path)
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}") from None
        if prefix is None:
            name = os.path.basename(path)
        elif path.startswith(prefix):
            name = path[len(prefix) :]
        else:
            name = os.path.relpath(path, base)
        identity.append([name, stat.st_size, stat.st_mtime_ns])
    return identity


def cache_key(name: str, split: str, identity: list[list[Any]], version: Mapping[str, Any]) -> str:
    text = json.dumps(
        {
            "format": CACHE_FORMAT_VERSION,
            "name": name,
            "split": split,
            "version": dict(version),
            "sources": identity,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _writable_dir(path: Path) -> bool:
    """True when ``path`` exists (or can be created) and a file can be created in it.

    A directory without any write permission bit counts as read-only even for root, who could
    write there anyway: someone marked the data read-only on purpose.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.stat().st_mode & 0o222:
            return False
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=_TMP_PREFIX + "probe-", dir=path)
        os.rmdir(probe)
        return True
    except OSError:
        return False


# --- reading and writing entries --------------------------------------------------------------


def _read_entry(entry: Path) -> ImageTensors:
    meta = json.loads((entry / "meta.json").read_text())
    images = np.load(entry / "images.npy", mmap_mode="c")  # copy-on-write map: writable, lazy
    labels = np.load(entry / "labels.npy")
    if images.dtype != np.uint8 or tuple(images.shape) != tuple(meta["shape"]):
        raise ValueError(f"images.npy has shape {images.shape}, meta.json says {meta['shape']}")
    if labels.shape != (images.shape[0],):
        raise ValueError("labels.npy does not match images.npy")
    return ImageTensors(
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64, copy=False)),
        int(meta["num_classes"]),
        tuple(meta.get("classes", ())),
    )


def _save_array(path: Path, array: np.ndarray) -> None:
    """Write one .npy file and flush it to disk (a separate function so tests can interrupt it)."""
    with open(path, "wb") as handle:
        np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def _write_entry(parent: Path, entry_name: str, data: ImageTensors, identity: list) -> Path:
    """Write ``data`` as ``parent/entry_name`` atomically: a temporary directory, then a rename."""
    tmp = Path(
        tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=parent)
    )
    final = parent / entry_name
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; other users of the data may read it
        _save_array(tmp / "images.npy", data.images.numpy())
        _save_array(tmp / "labels.npy", data.labels.numpy())
        meta = {
            "shape": list(data.images.shape),
            "num_classes": data.num_classes,
            "classes": list(data.classes),
            "format": CACHE_FORMAT_VERSION,
            "sources": len(identity),
            "created": time.time(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent writer that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_stale(parent: Path, prefix: str, keep: str) -> None:
    """Drop older entries of the same data set and split, and temporaries of dead writers."""
    host = socket.gethostname()
    for path in parent.iterdir():
        name = path.name
        if name != keep and name.startswith(prefix) and _KEY.fullmatch(name[len(prefix) :]):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(_TMP_PREFIX):
            parts = name[len(_TMP_PREFIX) :].rsplit("-", 2)
            dead = False
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                dead = not pid_alive(int(parts[1]))
            try:
                old = time.time() - path.stat().st_mtime > _STALE_TMP_SECONDS
            except OSError:
                continue
            if dead or old:
                shutil.rmtree(path, ignore_errors=True)


def cached_tensors(
    name: str,
    split: str,
    sources: Sequence[Path | str],
    decode: Callable[[], ImageTensors],
    *,
    beside: Path | None = None,
    version: Mapping[str, Any] | None = None,
) -> ImageTensors:
    """The decoded split, from the cache when its sources are unchanged, else ``decode()`` once.

    ``sources`` are the files ``decode`` reads (their identity keys the cache); ``beside`` is the
    data directory to keep the cache in (None: the user cache directory); ``version`` is any data
    whose change must invalidate old entries (e.g. a plugin's own format version).
    """
    identity = source_identity(sources, beside)
    prefix = f"{name}-{split}-"
    entry_name = prefix + cache_key(name, split, identity, version or {})
    places = []
    if beside is not None:
        places.append(beside / CACHE_SUBDIR)
    places.append(user_cache_dir())
    for place in places:
        entry = place / entry_name
        if (entry / "meta.json").is_file():
            try:
                return _read_entry(entry)
            except (OSError, ValueError, KeyError):
                shutil.rmtree(entry, ignore_errors=True)  # unreadable: decode again below
    data = decode()
    data.check(f"dataset {name!r} ({split})")
    for place in places:
        if not _writable_dir(place):
            continue
        try:
            entry = _write_entry(place, entry_name, data, identity)
        except OSError as exc:  # e.g. a full disk: train from the decoded tensors anyway
            warnings.warn(f"could not cache {name} ({split}) in {place}: {exc}", stacklevel=2)
            return data
        _remove_stale(place, prefix, entry_name)
        return _read_entry(entry)
    warnings.warn(
        f"no writable cache directory for {name} ({split}); set {CACHE_ENV}", stacklevel=2
    )
    return data


# --- image folders ----------------------------------------------------------------------------


def list_image_folder(folder: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names (sorted sub-directories), image file paths and labels of ``folder/<class>/*``.

    Label i is the i-th class in sorted order; files are sorted by name within a class. Paths
    are strings: data sets have tens of thousands of files and pathlib would dominate the time.
    """
    classes = sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        directory = os.path.join(folder, cls)
        names = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()
        )
        files.extend([os.path.join(directory, n) for n in names])
        labels.extend([label] * len(names))
    return classes, files, labels


def decode_images(files: Sequence[Path | str], shape: tuple[int, int, int]) -> torch.Tensor:
    """Decode image files with PIL into one uint8 (N, C, H, W) tensor; every image must be H x W.

    Images are converted to RGB (C = 3) or grayscale (C = 1). A file that is not a readable
    image or has another size raises :class:`DataError` naming it.
    """
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    mode = {1: "L", 3: "RGB"}[channels]
    out = np.empty((len(files), height, width, channels), dtype=np.uint8)
    view = out[..., 0] if channels == 1 else out
    for i, path in enumerate(files):
        try:
            with Image.open(path, formats=("PNG", "JPEG")) as image:
                if image.size != (width, height):
                    raise data_error(
                        f"image is {image.size[0]}x{image.size[1]}, not {width}x{height}",
                        path,
                        f"{width}x{height} images",
                        "Resize the images or use the matching data set.",
                    )
                if image.mode != mode:
                    image = image.convert(mode)
                view[i] = np.asarray(image)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise data_error(
                "cannot decode image (truncated or corrupt file?)",
                path,
                "PNG or JPEG files",
                f"Replace the file or re-extract the data set ({exc}).",
            ) from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
