"""``imagenet``: ILSVRC 2012 (Russakovsky et al. 2015), read from an image-folder copy.

``--data-dir`` points at a folder with ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the
usual ImageFolder layout: the 50,000 validation images sorted into their class folders), or at
the folder containing it as ``imagenet/``. The ``val/`` images are the test split, as in the
papers; a validation split for tuning is held out of ``train/`` by the pipeline. The number of
classes is the number of class folders, so subsets such as ImageNet-100 work too.

Images are decoded by torchvision's ``ImageFolder`` (PIL images) in DataLoader workers, and
transformed as in the authors' code (``CuauSuarez/Bop2ndOrder``,
``bnn_optimization/data/imagenet.py``, from the EfficientNet TPU preprocessing):

* training: a random crop of 8-100% of the area with aspect ratio 3/4 to 4/3 (torchvision's
  ``RandomResizedCrop``), resized to 224x224 bicubically, and a horizontal flip with
  probability 1/2;
* evaluation: the central square of side ``224 / (224 + 32)`` of the shorter side (7/8: the
  same region as "resize to 256, centre-crop 224"), cut first and then resized to 224x224
  bicubically (:class:`CenterSquareCrop`);
* both normalize with the ImageNet mean and std.

The bicubic resizes are PIL's, which always antialias when shrinking (torchvision passes PIL
images to PIL and ignores its ``antialias`` flag for them); the authors'
``tf.compat.v1.image.resize_bicubic`` does not antialias and uses TF1's corner-aligned pixel
grid. When ten draws find no crop, torchvision falls back to the whole image's centre (aspect
ratio clamped), the authors' code to the evaluation crop. Option ``image_size`` changes 224
(the evaluation crop is then ``image_size / (image_size + 32)`` of the shorter side, as in the
authors' code). ImageNet cannot be downloaded automatically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import benchbnn
from benchbnn.core.values import Number, convert, option_label
from benchbnn.data import data_error

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SPLIT_FOLDERS = {"train": "train", "test": "val"}
#: The evaluation crop's margin: the central square of side size / (size + 32) of the shorter
#: side (the authors' ``CROP_PADDING``; 224 / 256 at 224).
CROP_PADDING = 32
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


class CenterSquareCrop:
    """PIL image -> the central square of side ``size / (size + padding)`` of its shorter side,
    resized bicubically to ``size`` x ``size`` (the authors' ``_decode_and_center_crop``).

    The side is truncated to whole pixels and the offsets are ``(extent - side + 1) // 2``, as
    there. Picklable, for DataLoader workers.
    """

    def __init__(self, size: int, padding: int = CROP_PADDING):
        self.size = size
        self.padding = padding

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of the crop in a ``width`` x ``height`` image."""
        side = int(self.size / (self.size + self.padding) * min(width, height))
        top, left = (height - side + 1) // 2, (width - side + 1) // 2
        return left, top, left + side, top + side

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        square = image.crop(self.box(*image.size))
        return square.resize((self.size, self.size), Image.Resampling.BICUBIC)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding}, bicubic)"


def transforms_for(augment: bool, image_size: int):
    """The training (``augment``) or evaluation transform of PIL images, as the module says."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    steps: list[Any]
    if augment:
        steps = [T.RandomResizedCrop(image_size, interpolation=bicubic), T.RandomHorizontalFlip()]
    else:
        steps = [CenterSquareCrop(image_size)]
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
            augmentation="random-resized-crop:224,flip",  # bicubic (module docstring)
            options={"image_size": 224},
            option_types={"image_size": IMAGE_SIZE},
            description=(
                "ILSVRC 2012 from train/<wnid>/ and val/<wnid>/ image folders (val = test split); "
                "bicubic resizes, evaluation on the central 224/256 as the authors'"
            ),
            reference="Russakovsky et al. 2015",
        )
    ]
