"""Bi-Real Net 18: a ResNet-18-shaped binary network with a real-valued shortcut per conv.

    stem: conv64 7x7/2 (full precision) -> BN -> maxpool3/2
    4 stages of 4 blocks (64, 128, 256, 512 channels; the first block of stages 2-4 has stride 2)
    block: out = BN(binary conv3x3(approx_sign(x))) + shortcut(x)
           shortcut = identity, or avgpool2 -> full-precision conv1x1 -> BN where the shape changes
    global average pool -> dense(num_classes) (full precision, with bias)

Activations are binarized with ApproxSign (forward sign, backward ``2 - 2|x|`` on ``|x| <= 1``);
under latent-weight training each binary filter is scaled by the mean ``|w|`` of that output
filter (magnitude-aware sign, scale not differentiated). At 224x224 with 1000 classes it has
10,985,472 binary weights and 11,689,512 trainable parameters (the same as ResNet-18).

CIFAR stem, chosen automatically for inputs smaller than 112 pixels (``stem="auto"``): a 3x3
stride-1 convolution and no max-pool, as is usual for ResNets on CIFAR-10 (11,173,962 trainable
parameters with 10 classes). ``stem="imagenet"`` or ``"cifar"`` forces one; ``width``
multiplies every channel count (1.0 is the paper's).

Batch-norm settings default to the authors' Keras code (``CuauSuarez/Bop2ndOrder``,
``bnn_optimization/models/birealnet_batch.py``, as ``larq/zoo``'s
``larq_zoo/literature/birealnet.py``): ``BatchNormalization(momentum=0.8)`` in the stem, every
block and every shortcut, with Keras's default epsilon 1e-3 and a learned scale and offset. Here
that is ``bn_momentum=0.2`` (PyTorch's convention: Keras 0.8), ``bn_eps=1e-3``,
``bn_scale=true``; PyTorch's own defaults are ``bn_momentum=0.1, bn_eps=1e-5``.

timm: ``timm.create_model("birealnet18", num_classes=1000, in_chans=3)``; ``img_size=32`` or
the ``birealnet18.cifar10`` config builds the CIFAR variant.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from torch import nn

import benchbnn
from benchbnn.core.binary import BinaryConv2d
from benchbnn.core.values import Choice
from benchbnn_plugins.architectures import (
    BN_EPS,
    BN_MOMENTUM,
    BN_SCALE,
    CIFAR_MEAN,
    CIFAR_STD,
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
    prefer_small_cfg,
    scaled,
)

ARCH = "birealnet18"
STEMS = ("auto", "imagenet", "cifar")
CIFAR_STEM_BELOW = 112  # stem="auto" picks the CIFAR stem for inputs smaller than this
MIN_SIDE = {"imagenet": 32, "cifar": 8}  # 5 (ImageNet) or 3 (CIFAR) halvings leave >= 1 pixel
#: The authors' batch norm (Bop2ndOrder ``birealnet_batch.py``: Keras
#: ``BatchNormalization(momentum=0.8)``, default epsilon 1e-3, scale and offset).
AUTHORS_BN = BatchNormSettings(momentum=0.2, eps=1e-3, scale=True)


# --- blocks ----------------------------------------------------------------------------------


class Stem(nn.Module):
    """Full-precision first convolution: ImageNet 7x7/2 + max-pool, or CIFAR 3x3/1."""

    def __init__(
        self, in_chans: int, out_chs: int, imagenet: bool, bn: BatchNormSettings = AUTHORS_BN
    ):
        super().__init__()
        if imagenet:
            self.conv = nn.Conv2d(in_chans, out_chs, 7, stride=2, padding=3, bias=False)
        else:
            self.conv = nn.Conv2d(in_chans, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn = bn(out_chs)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.conv(x)))


class BiRealBlock(nn.Module):
    """One binary 3x3 convolution with batch norm, plus its real-valued shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, bn: BatchNormSettings = AUTHORS_BN):
        super().__init__()
        self.conv = BinaryConv2d(
            in_chs,
            out_chs,
            3,
            stride=stride,
            padding=1,
            input_quantizer="approx_sign",
            scale_weights=True,
        )
        self.bn = bn(out_chs)
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                # ceil_mode keeps the shortcut's shape equal to the strided conv's on odd sizes
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity(),
                nn.Conv2d(in_chs, out_chs, 1, bias=False),
                bn(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


# --- model -----------------------------------------------------------------------------------


class BiRealNet(ClassifierHead, nn.Module):
    """Bi-Real Net with ``depths`` blocks per stage (4, 4, 4, 4 is Bi-Real Net 18)."""

    arch = ARCH
    head_attr = "fc"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        width: float = 1.0,
        stem: str = "auto",
        depths: tuple[int, ...] = (4, 4, 4, 4),
        bn_momentum: float = AUTHORS_BN.momentum,
        bn_eps: float = AUTHORS_BN.eps,
        bn_scale: bool = AUTHORS_BN.scale,
    ):
        super().__init__()
        self.num_classes = check_num_classes(ARCH, num_classes)
        in_chans = check_channels(ARCH, in_chans)
        height, wide = image_hw(ARCH, img_size)
        self.width = as_float(ARCH, "width", width)
        stem = as_choice(ARCH, "stem", stem, STEMS)
        if stem == "auto":
            stem = "cifar" if min(height, wide) < CIFAR_STEM_BELOW else "imagenet"
        if min(height, wide) < MIN_SIDE[stem]:
            raise UnsupportedInputError(
                f"architecture {ARCH!r} does not support {height}x{wide} inputs with the {stem} "
                f"stem; supported: sides >= {MIN_SIDE['imagenet']} with the ImageNet stem "
                f"(224x224 as in the paper), sides >= {MIN_SIDE['cifar']} with the CIFAR stem "
                f"(chosen automatically below {CIFAR_STEM_BELOW}), any channel count"
            )
        self.stem_type = stem
        self.bn = BatchNormSettings.from_options(ARCH, bn_momentum, bn_eps, bn_scale)
        self.input_size = (in_chans, height, wide)

        channels = [scaled(c, self.width) for c in (64, 128, 256, 512)]
        self.stem = Stem(in_chans, channels[0], imagenet=stem == "imagenet", bn=self.bn)
        stages, in_chs = [], channels[0]
        for index, (out_chs, depth) in enumerate(zip(channels, depths)):
            blocks = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BiRealBlock(in_chs, out_chs, stride, bn=self.bn))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.num_features = in_chs
        self.fc = self._make_head(self.num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def _head_like(self) -> nn.Module:
        return self.stem.conv  # the full-precision classifier only follows device and dtype

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return super().forward_head(self.flatten(self.global_pool(x)), pre_logits)


def _create_birealnet(variant: str, pretrained: bool = False, **kwargs: Any) -> BiRealNet:
    kwargs = prefer_small_cfg(kwargs, "cifar10", below=CIFAR_STEM_BELOW)
    return build_with_cfg(BiRealNet, variant, pretrained, **kwargs)


# --- default configs (before the entrypoints: timm reads them when registering) ---------------


_cfg = cfg_factory(  # fixed_input_size (common to all): the stem depends on the input size
    num_classes=1000,
    input_size=(3, 224, 224),
    crop_pct=0.875,
    interpolation="bicubic",  # the authors' ImageNet pipeline (Bop2ndOrder data/imagenet.py)
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    first_conv="stem.conv",
    classifier="fc",
    paper_ids="arXiv:1808.00278",
)


default_cfgs = generate_default_cfgs(
    {
        "birealnet18.in1k": _cfg(),
        "birealnet18.cifar10": _cfg(
            num_classes=10,
            input_size=(3, 32, 32),
            crop_pct=1.0,
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
            notes=("CIFAR stem: 3x3 stride-1 convolution, no max-pool",),
        ),
    }
)


# --- timm entrypoints ------------------------------------------------------------------------


@register_model
def birealnet18(pretrained: bool = False, **kwargs: Any) -> BiRealNet:
    """Bi-Real Net 18 (Liu et al. 2018); the stem follows the input size unless ``stem`` is set."""
    model_args = dict(depths=(4, 4, 4, 4))
    return _create_birealnet("birealnet18", pretrained=pretrained, **dict(model_args, **kwargs))


# --- benchbnn plugin -------------------------------------------------------------------------


def build(
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: float = 1.0,
    stem: str = "auto",
    bn_momentum: float = AUTHORS_BN.momentum,
    bn_eps: float = AUTHORS_BN.eps,
    bn_scale: bool = AUTHORS_BN.scale,
) -> BiRealNet:
    """The same network as ``timm.create_model("birealnet18", ...)`` with these arguments."""
    return _create_birealnet(
        "birealnet18",
        num_classes=num_classes,
        in_chans=in_channels,
        img_size=image_size,
        width=width,
        stem=stem,
        depths=(4, 4, 4, 4),
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
                "stem": "auto",
                "bn_momentum": AUTHORS_BN.momentum,
                "bn_eps": AUTHORS_BN.eps,
                "bn_scale": AUTHORS_BN.scale,
            },
            option_types={
                "width": WIDTH,
                "stem": Choice(STEMS),
                "bn_momentum": BN_MOMENTUM,
                "bn_eps": BN_EPS,
                "bn_scale": BN_SCALE,
            },
            description=(
                "Bi-Real Net 18: 16 binary 3x3 convs with real-valued shortcuts, ApproxSign, "
                "mean|w| scaling in latent training; CIFAR stem (3x3/1, no max-pool) below 112 "
                "px; BN momentum 0.2 (Keras 0.8), eps 1e-3 as the authors'"
            ),
            reference="Liu et al. 2018, arXiv:1808.00278; larq zoo",
        )
    ]
