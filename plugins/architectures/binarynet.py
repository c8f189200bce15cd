"""BinaryNet for CIFAR-10, laid out as in the Bop and Bop2ndOrder code.

    conv128 3x3 valid -> BN -> conv128 -> maxpool2 -> BN -> conv256 -> BN -> conv256 -> maxpool2
    -> BN -> conv512 -> BN -> conv512 -> maxpool2 -> BN -> flatten -> dense1024 -> BN
    -> dense1024 -> BN -> dense(num_classes) -> BN

All nine weight layers are binary and have no bias; every layer but the first binarizes its
input (sign of the preceding normalization, straight-through gradient clipped at 1); batch norm
learns an offset but no scale, as in the original (Keras ``scale=False``). There is no
per-channel weight scaling. At width 1.0 on 32x32x3 inputs the network has 10,352,000 binary
weights (Courbariaux et al.'s original pads the first convolution too: 14,022,016).

Options: ``width`` multiplies every channel and unit count (1.0 is the paper's; 0.25 trains on a
CPU); ``norm="layer"`` replaces batch norm by layer normalization for the paper's Fig. 2, as the
authors' code does it (Keras ``LayerNormalization()``: each position's channel vector is
normalized, with a learned scale and offset per channel). Any image with sides of at least 10
pixels works (the first dense layer is sized from the input); MNIST's 28x28 gives the same
3x3x512 feature map as CIFAR's 32x32.

Normalization settings default to the authors' Keras code (``CuauSuarez/Bop2ndOrder``,
``bnn_optimization/models/binarynet_batch.py``: ``BatchNormalization(scale=False)`` with Keras's
defaults momentum 0.99 and epsilon 1e-3; ``binarynet.py``: ``LayerNormalization()``, epsilon
1e-3): ``bn_momentum=0.01`` (PyTorch's convention: Keras 0.99), ``bn_eps=1e-3`` (batch and
layer norm), ``bn_scale=False``. PyTorch's own defaults are ``bn_momentum=0.1, bn_eps=1e-5,
bn_scale=true``.

timm: ``timm.create_model("binarynet", num_classes=10, in_chans=3)``; the ``binarynet.mnist``
config builds the 1x28x28 variant.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

import benchbnn
from benchbnn.core.binary import BinaryConv2d, BinaryLinear
from benchbnn.core.values import Choice
from benchbnn_plugins.architectures import (
    BN_EPS,
    BN_MOMENTUM,
    BN_SCALE,
    WIDTH,
    BatchNormSettings,
    ClassifierHead,
    UnsupportedInputError,
    as_choice,
    as_float,
    build_with_cfg,
    cfg_factory,
    check_channels,
    check_num_classes,
    image_hw,
    scaled,
)

ARCH = "binarynet"
NORMS = ("batch", "layer")
MIN_SIDE = 10  # valid 3x3 conv, then three 2x2 max-pools must leave at least one pixel
#: The authors' normalization (Bop2ndOrder ``binarynet_batch.py``: Keras
#: ``BatchNormalization(scale=False)``, momentum 0.99 = PyTorch 0.01, epsilon 1e-3).
AUTHORS_BN = BatchNormSettings(momentum=0.01, eps=1e-3, scale=False)


# --- blocks ----------------------------------------------------------------------------------


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels at each position (Keras ``LayerNormalization()`` on NHWC)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return super().forward(x)
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _norm(kind: str, features: int, spatial: bool, bn: BatchNormSettings) -> nn.Module:
    """Layer norm with ``bn.eps`` (its momentum and scale do not apply: layer norm keeps no
    running statistics and always learns a scale), or batch norm as ``bn`` says."""
    if kind == "layer":
        return ChannelLayerNorm(features, eps=bn.eps)
    return bn(features, spatial=spatial)


class ConvBlock(nn.Module):
    """Binary 3x3 convolution, optional 2x2 max-pool, then normalization."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        first: bool,
        pool: bool,
        norm: str,
        bn: BatchNormSettings = AUTHORS_BN,
    ):
        super().__init__()
        self.conv = BinaryConv2d(
            in_chs,
            out_chs,
            3,
            padding=0 if first else 1,
            input_quantizer=None if first else "ste_sign",
        )
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm = _norm(norm, out_chs, spatial=True, bn=bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.pool(self.conv(x)))


class DenseBlock(nn.Module):
    """Binary dense layer on binarized inputs, then normalization."""

    def __init__(
        self, in_features: int, out_features: int, *, norm: str, bn: BatchNormSettings = AUTHORS_BN
    ):
        super().__init__()
        self.fc = BinaryLinear(in_features, out_features, input_quantizer="ste_sign")
        self.norm = _norm(norm, out_features, spatial=False, bn=bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


# --- model -----------------------------------------------------------------------------------


class BinaryNet(ClassifierHead, nn.Module):
    """BinaryNet with a width multiplier and a choice of batch or layer normalization."""

    arch = ARCH

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 32,
        width: float = 1.0,
        norm: str = "batch",
        bn_momentum: float = AUTHORS_BN.momentum,
        bn_eps: float = AUTHORS_BN.eps,
        bn_scale: bool = AUTHORS_BN.scale,
    ):
        super().__init__()
        self.num_classes = check_num_classes(ARCH, num_classes)
        in_chans = check_channels(ARCH, in_chans)
        height, wide = image_hw(ARCH, img_size)
        if min(height, wide) < MIN_SIDE:
            raise UnsupportedInputError(
                f"architecture {ARCH!r} does not support {height}x{wide} inputs: its valid 3x3 "
                f"convolution and three 2x2 max-pools need sides of at least {MIN_SIDE} pixels; "
                f"supported: images with both sides >= {MIN_SIDE} (32x32 as in the paper), any "
                f"channel count. Use 'bnn-mlp' for smaller inputs."
            )
        self.width = as_float(ARCH, "width", width)
        self.norm = as_choice(ARCH, "norm", norm, NORMS)
        self.bn = BatchNormSettings.from_options(ARCH, bn_momentum, bn_eps, bn_scale)
        self.input_size = (in_chans, height, wide)

        c1, c2, c3 = (scaled(c, self.width) for c in (128, 256, 512))
        conv = partial(ConvBlock, norm=self.norm, bn=self.bn)
        self.stages = nn.Sequential(
            conv(in_chans, c1, first=True, pool=False),
            conv(c1, c1, first=False, pool=True),
            conv(c1, c2, first=False, pool=False),
            conv(c2, c2, first=False, pool=True),
            conv(c2, c3, first=False, pool=False),
            conv(c3, c3, first=False, pool=True),
        )
        side_h, side_w = ((s - 2) // 8 for s in (height, wide))
        units = scaled(1024, self.width)
        self.flatten = nn.Flatten(1)
        self.hidden = nn.Sequential(
            DenseBlock(c3 * side_h * side_w, units, norm=self.norm, bn=self.bn),
            DenseBlock(units, units, norm=self.norm, bn=self.bn),
        )
        self.num_features = units
        self.head = self._make_head(self.num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return DenseBlock(self.num_features, num_classes, norm=self.norm, bn=self.bn)

    def _head_like(self) -> nn.Module:
        # a new binary head takes the mode of the one it replaces, or of the last hidden layer
        if isinstance(self.head, DenseBlock):
            return self.head.fc
        return cast(DenseBlock, self.hidden[-1]).fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.flatten(self.stages(x)))


def _create_binarynet(variant: str, pretrained: bool = False, **kwargs: Any) -> BinaryNet:
    return build_with_cfg(BinaryNet, variant, pretrained, **kwargs)


# --- default configs (before the entrypoints: timm reads them when registering) ---------------


_cfg = cfg_factory(
    num_classes=10,
    input_size=(3, 32, 32),
    mean=(0.5, 0.5, 0.5),  # inputs scaled to [-1, 1], as in the Bop code
    std=(0.5, 0.5, 0.5),
    first_conv="stages.0.conv",
    classifier="head.fc",
    paper_ids="arXiv:1602.02830",
)


default_cfgs = generate_default_cfgs(
    {
        "binarynet.cifar10": _cfg(),
        "binarynet.mnist": _cfg(input_size=(1, 28, 28), mean=(0.5,), std=(0.5,)),
    }
)


# --- timm entrypoints ------------------------------------------------------------------------


@register_model
def binarynet(pretrained: bool = False, **kwargs: Any) -> BinaryNet:
    """BinaryNet (Courbariaux et al. 2016) in the Bop papers' layout; ``width`` scales it."""
    return _create_binarynet("binarynet", pretrained=pretrained, **kwargs)


# --- benchbnn plugin -------------------------------------------------------------------------


def build(
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: float = 1.0,
    norm: str = "batch",
    bn_momentum: float = AUTHORS_BN.momentum,
    bn_eps: float = AUTHORS_BN.eps,
    bn_scale: bool = AUTHORS_BN.scale,
) -> BinaryNet:
    """The same network as ``timm.create_model("binarynet", ...)`` with these arguments."""
    return _create_binarynet(
        "binarynet",
        num_classes=num_classes,
        in_chans=in_channels,
        img_size=image_size,
        width=width,
        norm=norm,
        bn_momentum=bn_momentum,
        bn_eps=bn_eps,
        bn_scale=bn_scale,
    )


@benchbnn.hookimpl
def benchbnn_architectures() -> list[benchbnn.ArchitectureSpec]:
    return [
        benchbnn.ArchitectureSpec(
            name=ARCH,
            factory=build,
            options={
                "width": 1.0,
                "norm": "batch",
                "bn_momentum": AUTHORS_BN.momentum,
                "bn_eps": AUTHORS_BN.eps,
                "bn_scale": AUTHORS_BN.scale,
            },
            option_types={
                "width": WIDTH,
                "norm": Choice(NORMS),
                "bn_momentum": BN_MOMENTUM,
                "bn_eps": BN_EPS,
                "bn_scale": BN_SCALE,
            },
            description=(
                "BinaryNet as in the Bop/Bop2ndOrder code: 6 binary convs + 3 binary dense, "
                "BN without scale; width multiplies channels, norm=layer for the paper's Fig. 2; "
                "BN momentum 0.01 (Keras 0.99), eps 1e-3 as the authors'"
            ),
            reference="Courbariaux et al. 2016, arXiv:1602.02830; Helwegen et al. 2019",
        )
    ]
