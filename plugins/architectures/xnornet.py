"""XNOR-Net: the AlexNet-based binary network of Rastegari et al., in larq zoo's layout.

ImageNet (224x224)::

    conv96 11x11/4 (full precision) -> BN -> ReLU -> maxpool3/2
    -> BN -> binary conv256 5x5 -> maxpool3/2
    -> BN -> binary conv384 3x3 -> BN -> binary conv384 3x3
    -> BN -> binary conv256 3x3 -> maxpool3/2
    -> BN -> binary conv4096 6x6 valid -> BN -> binary conv4096 1x1 -> BN -> ReLU
    -> flatten -> dense(num_classes) (full precision, no bias)

Every binary convolution binarizes its input (sign of the preceding batch norm) and has no
bias. Under latent-weight training each binary filter is scaled by the mean ``|w|`` of that
output filter (not differentiated), XNOR-Net's weight scaling; binary optimizers train the
+-1 weights unscaled. At 224x224 it has 58,236,928 binary weights and 62,387,104 trainable
parameters (batch norm with scale and offset).

Batch-norm settings default to the authors' Keras code (``CuauSuarez/Bop2ndOrder``,
``bnn_optimization/models/xnor_batch.py``): ``BatchNormalization(momentum=0.9, scale=True)``
with epsilon 1e-5 after the stem convolution, 1e-4 in front of each of the six binary
convolutions and 1e-3 for the last one (before the ReLU and the classifier). Here that is
``bn_momentum=0.1`` (PyTorch's convention: Keras 0.9), ``bn_eps=1e-5,1e-4,1e-3`` (after the
stem, in front of the binary convolutions, last; one number sets every layer's) and
``bn_scale=true``. ``larq/zoo``'s XNOR-Net
(``larq_zoo/literature/xnornet.py``) has the same momentum and epsilons with ``scale=False``
(``bn_scale=false``).

CIFAR variant (32x32), a benchbnn choice, not from the papers: at 32x32 the ImageNet stem would
shrink the map to 1x1 before the 6x6 "FC6" convolution, so the stem becomes a 5x5 stride-1
valid convolution (32 -> 28) without the first max-pool. Everything after the stem is unchanged
(same binary layers, 58,236,928 binary weights at width 1.0, 1x1 before the classifier).

``width`` multiplies every channel count (1.0 is the paper's) so that the network fits a CPU.
The paper's L2 regularization of 5e-7 applies to the full-precision first and last layers
(``stem.conv`` and ``fc``).

timm: ``timm.create_model("xnornet", num_classes=1000, in_chans=3)``; ``xnornet.cifar10`` or
``img_size=32`` builds the CIFAR variant.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from torch import nn

import benchbnn
from benchbnn.core.binary import BinaryConv2d
from benchbnn.core.errors import HyperparameterError
from benchbnn_plugins.architectures import (
    BN_EPS_LIST,
    BN_MOMENTUM,
    BN_SCALE,
    CIFAR_MEAN,
    CIFAR_STD,
    WIDTH,
    BatchNormSettings,
    ClassifierHead,
    UnsupportedInputError,
    as_float,
    as_value,
    build_with_cfg,
    cfg_factory,
    check_channels,
    check_num_classes,
    image_hw,
    prefer_small_cfg,
    scaled,
)

ARCH = "xnornet"
INPUT_SIZES = (32, 224)
#: The authors' batch norm (Bop2ndOrder ``xnor_batch.py``): Keras momentum 0.9 = PyTorch 0.1,
#: ``scale=True``; the epsilon is per layer (:data:`AUTHORS_EPS`).
AUTHORS_MOMENTUM, AUTHORS_SCALE = 0.1, True
#: The authors' epsilon after the stem, in front of each binary convolution, and last.
AUTHORS_EPS = (1e-5, 1e-4, 1e-3)
EPS_GROUPS = ("stem", "block", "last")


def layer_eps(value: Any) -> dict[str, float]:
    """Option ``bn_eps`` (one epsilon, or one per group of :data:`EPS_GROUPS`) per group.

    Raises HyperparameterError for a value that is not one or three epsilons in (0, 1].
    """
    eps = as_value(ARCH, "bn_eps", value, BN_EPS_LIST)
    if len(eps) not in (1, len(EPS_GROUPS)):
        raise HyperparameterError(
            f"architecture {ARCH!r}: option 'bn_eps' takes one epsilon for every batch norm or "
            f"three (after the stem, in front of the binary convolutions, last), got {len(eps)} "
            f"({value!r}); accepted: such as '1e-5,1e-4,1e-3' (the authors') or '1e-5'"
        )
    return dict(zip(EPS_GROUPS, eps * 3 if len(eps) == 1 else eps))


# --- blocks ----------------------------------------------------------------------------------


class Stem(nn.Module):
    """The full-precision first convolution: ImageNet 11x11/4 + max-pool, or CIFAR 5x5/1."""

    def __init__(self, in_chans: int, out_chs: int, imagenet: bool, norm: nn.Module):
        super().__init__()
        if imagenet:
            self.conv = nn.Conv2d(in_chans, out_chs, 11, stride=4, padding=2, bias=False)
        else:
            self.conv = nn.Conv2d(in_chans, out_chs, 5, stride=1, padding=0, bias=False)
        self.bn = norm
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2) if imagenet else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class XnorBlock(nn.Module):
    """Batch norm, then a scaled binary convolution on the sign of it, then an optional pool."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel: int, *, padding: int, pool: bool, norm: nn.Module
    ):
        super().__init__()
        self.norm = norm
        self.conv = BinaryConv2d(
            in_chs,
            out_chs,
            kernel,
            padding=padding,
            input_quantizer="ste_sign",
            scale_weights=True,
        )
        self.pool = nn.MaxPool2d(3, stride=2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.norm(x)))


# --- model -----------------------------------------------------------------------------------


class XnorNet(ClassifierHead, nn.Module):
    """XNOR-Net for 224x224 (ImageNet stem) or 32x32 (CIFAR stem) inputs."""

    arch = ARCH
    head_attr = "fc"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        width: float = 1.0,
        bn_momentum: float = AUTHORS_MOMENTUM,
        bn_eps: Any = AUTHORS_EPS,
        bn_scale: bool = AUTHORS_SCALE,
    ):
        super().__init__()
        self.num_classes = check_num_classes(ARCH, num_classes)
        in_chans = check_channels(ARCH, in_chans)
        height, wide = image_hw(ARCH, img_size)
        if height != wide or height not in INPUT_SIZES:
            raise UnsupportedInputError(
                f"architecture {ARCH!r} does not support {height}x{wide} inputs; supported: "
                f"224x224 (ImageNet layout) and 32x32 (CIFAR stem), any channel count"
            )
        self.width = as_float(ARCH, "width", width)
        self.bn_eps = layer_eps(bn_eps)
        self.bn = BatchNormSettings.from_options(ARCH, bn_momentum, self.bn_eps["block"], bn_scale)
        self.input_size = (in_chans, height, wide)
        self.stem_type = "imagenet" if height == 224 else "cifar"

        c96, c256, c384, c4096 = (scaled(c, self.width) for c in (96, 256, 384, 4096))
        stem_norm = self.bn(c96, eps=self.bn_eps["stem"])
        self.stem = Stem(in_chans, c96, imagenet=self.stem_type == "imagenet", norm=stem_norm)

        def block(in_chs: int, out_chs: int, kernel: int, padding: int, pool: bool) -> XnorBlock:
            norm = self.bn(in_chs, eps=self.bn_eps["block"])
            return XnorBlock(in_chs, out_chs, kernel, padding=padding, pool=pool, norm=norm)

        self.blocks = nn.Sequential(
            block(c96, c256, 5, padding=2, pool=True),
            block(c256, c384, 3, padding=1, pool=False),
            block(c384, c384, 3, padding=1, pool=False),
            block(c384, c256, 3, padding=1, pool=True),
            block(c256, c4096, 6, padding=0, pool=False),  # "FC6": 6x6 valid -> 1x1
            block(c4096, c4096, 1, padding=0, pool=False),  # "FC7"
        )
        self.norm = self.bn(c4096, eps=self.bn_eps["last"])
        self.act = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1)
        self.num_features = c4096
        self.fc = self._make_head(self.num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return nn.Linear(self.num_features, num_classes, bias=False)

    def _head_like(self) -> nn.Module:
        # the full-precision classifier only follows device and dtype (the last batch norm has
        # no weight with bn_scale=false)
        return self.stem.conv

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.blocks(self.stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return super().forward_head(self.flatten(x), pre_logits)


def _create_xnornet(variant: str, pretrained: bool = False, **kwargs: Any) -> XnorNet:
    kwargs = prefer_small_cfg(kwargs, "cifar10", below=224)
    return build_with_cfg(XnorNet, variant, pretrained, **kwargs)


# --- default configs (before the entrypoints: timm reads them when registering) ---------------


_cfg = cfg_factory(
    num_classes=1000,
    input_size=(3, 224, 224),
    crop_pct=0.875,
    interpolation="bicubic",  # the authors' ImageNet pipeline (Bop2ndOrder data/imagenet.py)
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    first_conv="stem.conv",
    classifier="fc",
    paper_ids="arXiv:1603.05279",
)


default_cfgs = generate_default_cfgs(
    {
        "xnornet.in1k": _cfg(),
        "xnornet.cifar10": _cfg(
            num_classes=10,
            input_size=(3, 32, 32),
            crop_pct=1.0,
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
            notes=("CIFAR stem: 5x5 stride-1 valid convolution, no first max-pool (benchbnn)",),
        ),
    }
)


# --- timm entrypoints ------------------------------------------------------------------------


@register_model
def xnornet(pretrained: bool = False, **kwargs: Any) -> XnorNet:
    """XNOR-Net (Rastegari et al. 2016), AlexNet-based; ``width`` scales every layer."""
    return _create_xnornet("xnornet", pretrained=pretrained, **kwargs)


# --- benchbnn plugin -------------------------------------------------------------------------


def build(
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: float = 1.0,
    bn_momentum: float = AUTHORS_MOMENTUM,
    bn_eps: Any = AUTHORS_EPS,
    bn_scale: bool = AUTHORS_SCALE,
) -> XnorNet:
    """The same network as ``timm.create_model("xnornet", ...)`` with these arguments."""
    return _create_xnornet(
        "xnornet",
        num_classes=num_classes,
        in_chans=in_channels,
        img_size=image_size,
        width=width,
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
                "bn_momentum": AUTHORS_MOMENTUM,
                "bn_eps": list(AUTHORS_EPS),
                "bn_scale": AUTHORS_SCALE,
            },
            option_types={
                "width": WIDTH,
                "bn_momentum": BN_MOMENTUM,
                "bn_eps": BN_EPS_LIST,
                "bn_scale": BN_SCALE,
            },
            input_sizes=INPUT_SIZES,
            description=(
                "XNOR-Net (AlexNet-based, larq zoo layout) for 224x224; a 32x32 variant with a "
                "5x5/1 stem and no first max-pool; mean|w| filter scaling in latent training; "
                "BN momentum 0.1 (Keras 0.9), eps 1e-5/1e-4/1e-3 by layer as the authors'"
            ),
            reference="Rastegari et al. 2016, arXiv:1603.05279; larq zoo",
        )
    ]
