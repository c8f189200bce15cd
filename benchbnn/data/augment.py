"""Normalization and augmentation of uint8 image batches, on whatever device holds them.

:func:`transform_batch` scales, crops and flips a whole batch with a few tensor operations (one
gather), so no per-image Python runs in the training loop; :class:`AugmentParams` holds one
epoch's random draws; :class:`Normalizer` binds a dataset's normalization and augmentation to a
device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbnn.core.specs import DatasetSpec, parse_augmentation


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
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(images - offset) / divisor`` (per channel), cropped and
    flipped by ``params``.

    A crop pads every side by ``pad`` pixels of value 0 in the normalized space (the BNN papers
    pad after scaling to [-1, 1]) and takes the H x W window at ``params.offsets``; a flip
    mirrors the window. Both are one gather over the batch, on whatever device ``images`` is.
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
    out = gathered.view(batch, channels, height, width).to(torch.float32).sub_(offset).div_(divisor)
    if offsets is not None and pad > 0:
        outside = ((rows < 0) | (rows >= height))[:, :, None] | ((cols < 0) | (cols >= width))[
            :, None, :
        ]
        out.masked_fill_(outside[:, None], 0.0)
    return out


class Normalizer:
    """A spec's normalization and augmentation, ready to run on one device."""

    def __init__(self, spec: DatasetSpec, augmentation: str, channels: int, device: torch.device):
        offset, divisor = spec.normalization()
        if len(offset) != channels:  # a generated data set with another channel count
            offset, divisor = offset[:1] * channels, divisor[:1] * channels
        self.offset = torch.tensor(offset, dtype=torch.float32, device=device)
        self.divisor = torch.tensor(divisor, dtype=torch.float32, device=device)
        self.ops = parse_augmentation(augmentation)
        self.pad = dict(self.ops).get("crop", 0)

    def __call__(self, images: torch.Tensor, params: AugmentParams | None = None) -> torch.Tensor:
        return transform_batch(images, self.offset, self.divisor, self.pad, params)
