"""``imagenet``: ILSVRC 2012 (Russakovsky et al. 2015), read from an image-folder copy.

``--data-dir`` points at a folder with ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the
usual ImageFolder layout: the 50,000 validation images sorted into their class folders), or at
the folder containing it as ``imagenet/``. The ``val/`` images are the test split, as in the
papers; a validation split for tuning is held out of ``train/`` by the pipeline. The number of
classes is the number of class folders, so subsets such as ImageNet-100 work too.

Images are decoded by torchvision's ``ImageFolder`` in DataLoader workers: training uses
RandomResizedCrop(224) and a horizontal flip, evaluation resizes the shorter side to 256 and
takes the central 224x224; both normalize with the usual ImageNet mean and std. Option
``image_size`` changes 224 (evaluation then resizes to image_size / 0.875). ImageNet cannot be
downloaded automatically.
"""

from __future__ import annotations

import os
from pathlib import Path

import benchbnn
from benchbnn.core.values import Number, convert, option_label
from benchbnn.data import data_error

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPLIT_FOLDERS = {"train": "train", "test": "val"}
#: Declared type of option ``image_size``: the side of the square crop, at least 8 pixels.
IMAGE_SIZE = Number(int, low=8, example=224)
LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the same class folders in both)"
OBTAIN = (
    "ImageNet cannot be downloaded automatically: get ILSVRC 2012 from https://image-net.org, "
    "sort val/ into class folders, and point --data-dir at the folder holding train/ and val/."
)


def find_root(root: Path) -> Path:
    """The folder holding ``train/`` and ``val/``: ``root`` or ``root/imagenet``."""
    if not root.is_dir():
        raise data_error(
            "ImageNet data directory does not exist or is not a directory", root, LAYOUT, OBTAIN
        )
    for candidate in (root, root / "imagenet"):
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    raise data_error("no train/ and val/ folders found in", root, LAYOUT, OBTAIN)


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def check_layout(directory: Path) -> None:
    """Class folders exist and agree between train/ and val/ (a flat val/ is the common mistake)."""
    train, val = (_class_folders(directory / s) for s in ("train", "val"))
    if len(train) < 2:
        raise data_error(
            "ImageNet train/ needs at least 2 class folders", directory / "train", LAYOUT, OBTAIN
        )
    if val != train:
        raise data_error(
            "the class folders of val/ differ from those of train/ (is val/ still flat?)",
            directory / "val",
            LAYOUT,
            OBTAIN,
        )


def transforms_for(augment: bool, image_size: int):
    from torchvision import transforms as T

    if augment:
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])


def load_imagenet(
    root, split: str = "train", download: bool = False, augment: bool = False, image_size: int = 224
):
    """A torchvision ``ImageFolder`` of the split with the training or evaluation transforms."""
    from torchvision.datasets import ImageFolder

    if download:
        raise benchbnn.BenchbnnError(OBTAIN)
    image_size = convert(image_size, IMAGE_SIZE, option_label("dataset 'imagenet'", "image_size"))
    directory = find_root(Path(root).expanduser())
    check_layout(directory)
    folder = directory / SPLIT_FOLDERS[split]
    try:
        return ImageFolder(str(folder), transform=transforms_for(augment, image_size))
    except FileNotFoundError as exc:  # a class folder without any image file
        raise data_error(
            f"ImageNet folder has a class without images ({exc})", folder, LAYOUT, OBTAIN
        ) from None


@benchbnn.hookimpl
def benchbnn_datasets():
    return [
        benchbnn.DatasetSpec(
            name="imagenet",
            loader=load_imagenet,
            num_classes=1000,
            image_shape=(3, 224, 224),
            mean=MEAN,
            std=STD,
            augmentation="random-resized-crop:224,flip",
            options={"image_size": 224},
            option_types={"image_size": IMAGE_SIZE},
            description=(
                "ILSVRC 2012 from train/<wnid>/ and val/<wnid>/ image folders (val = test split)"
            ),
            reference="Russakovsky et al. 2015",
        )
    ]
