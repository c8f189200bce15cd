"""``synthetic``: seeded random images of any shape and class count, for smoke tests and timing.

Each class has a random prototype image; an image is the average of its class prototype and
uniform noise, so a network can learn the task (accuracy above chance shows that training works)
while nothing needs to be read from disk. Labels are balanced (sizes divisible by the class count
give exactly equal classes) and shuffled.

Options: ``num_classes`` (10), ``channels`` (3), ``size`` (32: images are size x size),
``train_size`` (2048), ``test_size`` (512), ``data_seed`` (0; the same data for every run seed).
Inputs are scaled to [-1, 1]; no augmentation by default.
"""

from __future__ import annotations

import torch

import benchbnn
from benchbnn.core.values import Number, convert, option_label
from benchbnn.data import ImageTensors, derived_generator

OWNER = "dataset 'synthetic'"

DEFAULTS = {
    "num_classes": 10,
    "channels": 3,
    "size": 32,
    "train_size": 2048,
    "test_size": 512,
    "data_seed": 0,
}
#: Declared types of the options (the rest are whole numbers like their defaults).
TYPES = {
    "num_classes": Number(int, low=2),
    "channels": Number(int, low=1),
    "size": Number(int, low=1),
    "train_size": Number(int, low=1),
    "test_size": Number(int, low=1),
}


def _check(name: str, value: int) -> None:
    """Raise HyperparameterError unless ``value`` fits option ``name``'s declared type."""
    convert(value, TYPES[name].with_example(DEFAULTS[name]), option_label(OWNER, name))


def make_synthetic(
    root=None,
    split: str = "train",
    download: bool = False,
    *,
    num_classes: int = 10,
    channels: int = 3,
    size: int = 32,
    train_size: int = 2048,
    test_size: int = 512,
    data_seed: int = 0,
) -> ImageTensors:
    """The split generated from ``data_seed``; the prototypes are shared by both splits."""
    for name, value in (
        ("num_classes", num_classes),
        ("channels", channels),
        ("size", size),
        ("train_size", train_size),
        ("test_size", test_size),
    ):
        _check(name, value)
    shape = (channels, size, size)
    prototypes = torch.randint(
        0,
        256,
        (num_classes, *shape),
        dtype=torch.uint8,
        generator=derived_generator("synthetic-prototypes", data_seed),
    )
    n = train_size if split == "train" else test_size
    generator = derived_generator("synthetic", data_seed, split)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    noise = torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8)
    images = ((prototypes[labels].to(torch.int16) + noise.to(torch.int16)) // 2).to(torch.uint8)
    return ImageTensors(images, labels, num_classes)


@benchbnn.hookimpl
def benchbnn_datasets():
    return [
        benchbnn.DatasetSpec(
            name="synthetic",
            loader=None,
            tensors=make_synthetic,
            num_classes=DEFAULTS["num_classes"],
            image_shape=(DEFAULTS["channels"], DEFAULTS["size"], DEFAULTS["size"]),
            mean=(0.5,),
            std=(0.5,),
            options=dict(DEFAULTS),
            option_types=dict(TYPES),
            description=(
                "seeded random class-prototype images of any shape and class count (no files)"
            ),
            needs_data_dir=False,
        )
    ]
