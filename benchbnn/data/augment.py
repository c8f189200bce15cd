"""Normalization and augmentation of uint8 image batches, on whatever device holds them.

:func:`transform_batch` scales, crops and flips a whole batch with a few tensor operations (one
gather), so no per-image Python runs in the training loop; :class:`AugmentParams` holds one
epoch's random draws; :class:`Normalizer` binds a dataset's normalization and augmentation to a
device.

A random crop pads the image first. What it pads with is the data set option
:data:`CROP_FILL_OPTION` (``crop_fill``): ``black`` (the default) pads with pixel value 0 before
normalization, as the Bop papers' code does (``tf.image.resize_with_crop_or_pad`` on the uint8
CIFAR-10 image, then scaling to [-1, 1], so the border is -1; ``CuauSuarez/Bop2ndOrder``, branch
``conference``, and ``plumerai/rethinking-bnn-optimization``, both in
``bnn_optimization/data/cifar10.py``); ``mid-grey`` pads with 0 after normalization (the data
set's mean colour), what benchbnn did before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbnn.core.specs import DatasetSpec, parse_augmentation
from benchbnn.core.values import Choice, convert, option_label

#: The data set option that chooses a random crop's padding, and its values.
CROP_FILL_OPTION = "crop_fill"
CROP_FILLS = ("black", "mid-grey")
#: Declared type of :data:`CROP_FILL_OPTION` (a data set's ``option_types`` entry).
CROP_FILL = Choice(CROP_FILLS)
#: The padding of a data set that does not declare :data:`CROP_FILL_OPTION`.
DEFAULT_CROP_FILL = "black"
#: :func:`transform_batch`'s ``fill`` for each :data:`CROP_FILLS` name: None pads with pixel
#: value 0 before normalization, a number is the value after it.
FILL_ARGUMENT: dict[str, float | None] = {"black": None, "mid-grey": 0.0}


@dataclass(frozen=True)
class AugmentParams:
    """One epoch's random draws for every image of a split: crop offsets and flips."""

    offsets: torch.Tensor | None  # (n, 2) int64 in [0, 2 * pad]: (row, column) of the crop
    flips: torch.Tensor | None  # (n,) bool

    @classmethod
    def draw(
        cls, ops: tuple[tuple[str, int], ...], n: int, generator: torch.Generator
    ) -> AugmentParams:
        table = dict(ops)
        offsets = flips = None
        if "crop" in table:
            offsets = torch.randint(0, 2 * table["crop"] + 1, (n, 2), generator=generator)
        if "flip" in table:
            flips = torch.rand(n, generator=generator) < 0.5
        return cls(offsets, flips)

    def take(self, positions: torch.Tensor, device: torch.device) -> AugmentParams:
        pick = lambda t: None if t is None else t[positions].to(device, non_blocking=True)
        return AugmentParams(pick(self.offsets), pick(self.flips))


def transform_batch(
    images: torch.Tensor,
    offset: torch.Tensor,
    divisor: torch.Tensor,
    pad: int = 0,
    params: AugmentParams | None = None,
    fill: float | None = 0.0,
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(images - offset) / divisor`` (per channel), cropped and
    flipped by ``params``.

    A crop pads every side by ``pad`` pixels and takes the H x W window at ``params.offsets``;
    a flip mirrors the window. The padding is ``fill`` in the normalized space, or with ``fill``
    None pixels of value 0 before normalization (black: ``-offset / divisor`` per channel, -1
    for CIFAR-10 scaled to [-1, 1]). Crop, flip and fill are one gather and one masked fill
    over the batch, on whatever device ``images`` is.
    """
    batch, channels, height, width = images.shape
    offset = offset.view(1, channels, 1, 1)
    divisor = divisor.view(1, channels, 1, 1)
    offsets = params.offsets if params is not None else None
    flips = params.flips if params is not None else None
    if offsets is None and flips is None:
        return images.to(torch.float32).sub_(offset).div_(divisor)
    device = images.device
    rows = torch.arange(height, device=device).expand(batch, height)
    cols = torch.arange(width, device=device).expand(batch, width)
    if offsets is not None:
        rows = rows + (offsets[:, :1] - pad)
        cols = cols + (offsets[:, 1:] - pad)
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    source = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]
    flat = images.reshape(batch, channels, height * width)
    gathered = flat.gather(2, source.reshape(batch, 1, -1).expand(batch, channels, -1))
    pixels = gathered.view(batch, channels, height, width)
    outside = None
    if offsets is not None and pad > 0:
        outside = ((rows < 0) | (rows >= height))[:, :, None] | ((cols < 0) | (cols >= width))[
            :, None, :
        ]
        if fill is None:  # black: pixel value 0, normalized below like every other pixel
            pixels.masked_fill_(outside[:, None], 0)
    out = pixels.to(torch.float32).sub_(offset).div_(divisor)
    if outside is not None and fill is not None:
        out.masked_fill_(outside[:, None], fill)
    return out


class Normalizer:
    """A spec's normalization and augmentation, ready to run on one device.

    ``crop_fill`` (one of :data:`CROP_FILLS`) is what a crop pads with; None takes the data
    set's declared default for :data:`CROP_FILL_OPTION`, else :data:`DEFAULT_CROP_FILL`.
    Raises HyperparameterError for another value.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        augmentation: str,
        channels: int,
        device: torch.device,
        crop_fill: str | None = None,
    ):
        offset, divisor = spec.normalization()
        if len(offset) != channels:  # a generated data set with another channel count
            offset, divisor = offset[:1] * channels, divisor[:1] * channels
        self.offset = torch.tensor(offset, dtype=torch.float32, device=device)
        self.divisor = torch.tensor(divisor, dtype=torch.float32, device=device)
        self.ops = parse_augmentation(augmentation)
        self.pad = dict(self.ops).get("crop", 0)
        if crop_fill is None:
            crop_fill = spec.options.get(CROP_FILL_OPTION, DEFAULT_CROP_FILL)
        label = option_label(f"dataset {spec.name!r}", CROP_FILL_OPTION)
        self.crop_fill: str = convert(crop_fill, CROP_FILL, label)
        self.fill = FILL_ARGUMENT[self.crop_fill]
        if (
            self.fill is None
            and bool((self.offset == self.offset[0]).all())
            and bool((self.divisor == self.divisor[0]).all())
        ):
            # black, alike in every channel (CIFAR-10: -1): one float fill after normalizing,
            # as fast as mid-grey and the same float32 arithmetic as a pixel of value 0
            black = torch.zeros(1, device=device).sub_(self.offset[0]).div_(self.divisor[0])
            self.fill = float(black)

    def __call__(self, images: torch.Tensor, params: AugmentParams | None = None) -> torch.Tensor:
        return transform_batch(images, self.offset, self.divisor, self.pad, params, self.fill)
