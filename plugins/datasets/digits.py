"""``digits``: scikit-learn's bundled 8x8 handwritten digits, the embedded default data set.

1,797 grayscale images of the digits 0-9 (Alpaydin and Kaynak's UCI optdigits test set, pixel
values 0..16), bundled with scikit-learn, so it needs no data directory and no download. A fixed
stratified split (seed independent of any run) holds out 360 images as the test split and
leaves 1,437 for training; every class keeps its share (35-37 test images per class).

Inputs are scaled to [-1, 1] (pixel / 16 * 2 - 1), like the BNN papers' inputs. There is no
augmentation: shifting an 8x8 digit by a pixel changes it too much.

The split is decoded once into a uint8 cache in ``$BENCHBNN_CACHE_DIR`` (``~/.cache/benchbnn``),
which also spares later runs the import of scikit-learn's dataset module.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
from pathlib import Path

import torch

import benchbnn
from benchbnn.data import ImageTensors, cached_tensors, stratified_split

TRAIN_SIZE = 1437
TEST_SIZE = 360
#: Bump when the split or the encoding changes, so that old caches are rebuilt.
FORMAT = 1
_SPLIT_SEED = "digits-test-split"


def _bundled_file() -> list[Path]:
    """scikit-learn's digits file, found without importing scikit-learn (its identity keys the
    cache)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise benchbnn.BenchbnnError(
            "the digits data set needs scikit-learn: pip install scikit-learn"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return [path] if path.is_file() else []


def _decode(split: str) -> ImageTensors:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.round().astype("uint8")).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype("int64"))
    train, test = stratified_split(labels, TEST_SIZE, 10, seed=_SPLIT_SEED)
    keep = train if split == "train" else test
    return ImageTensors(
        images[keep].contiguous(), labels[keep].contiguous(), 10, tuple(str(d) for d in range(10))
    )


def read_digits(root=None, split: str = "train", download: bool = False) -> ImageTensors:
    """The train (1,437) or test (360) split as uint8 tensors; ``root`` and ``download`` are
    unused."""
    return cached_tensors(
        "digits",
        split,
        _bundled_file(),
        lambda: _decode(split),
        version={"format": FORMAT, "sklearn": metadata.version("scikit-learn")},
    )


@benchbnn.hookimpl
def benchbnn_datasets():
    return [
        benchbnn.DatasetSpec(
            name="digits",
            loader=None,
            tensors=read_digits,
            num_classes=10,
            image_shape=(1, 8, 8),
            pixel_max=16.0,
            mean=(0.5,),
            std=(0.5,),
            description="scikit-learn's 8x8 digits (1,437 train / 360 test), embedded, no download",
            needs_data_dir=False,
            reference="Alpaydin & Kaynak, optdigits (UCI); bundled with scikit-learn",
        )
    ]
