"""The BNN paper's MNIST multilayer perceptron.

    flatten -> 3 x (binary dense 4096 -> BN -> sign) -> binary dense(num_classes) -> BN

The first dense layer sees the real-valued pixels; every later layer binarizes its input (sign
of the preceding batch norm, straight-through gradient clipped at 1). Weights are binary without
bias or scaling; batch norm learns a scale and an offset, as in Courbariaux et al.'s code. With
784 inputs and the default hidden sizes it has 36,806,656 binary weights.

``hidden`` sets the hidden layer sizes (any number of layers). Any input works: images are
flattened, so the input layer has ``in_channels * height * width`` units; for data that is
already flat use ``in_channels=features, image_size=1``.

timm: the benchbnn name ``bnn-mlp`` is kebab-case, but timm model names are Python identifiers,
so the entrypoint is ``timm.create_model("bnn_mlp", num_classes=10, in_chans=1)`` (1x28x28 MNIST
by default; ``img_size`` changes the input).
"""

from __future__ import annotations

import itertools
from typing import Any, cast

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

import benchbnn
from benchbnn.core.binary import BinaryLinear
from benchbnn_plugins.architectures import (
    SIZES,
    ClassifierHead,
    as_sizes,
    build_with_cfg,
    cfg_factory,
    check_channels,
    check_num_classes,
    image_hw,
)

ARCH = "bnn-mlp"
DEFAULT_HIDDEN = (4096, 4096, 4096)


# --- blocks ----------------------------------------------------------------------------------


class DenseBlock(nn.Module):
    """Binary dense layer (on binarized inputs unless it is the first layer), then batch norm."""

    def __init__(self, in_features: int, out_features: int, *, binarize_input: bool):
        super().__init__()
        self.fc = BinaryLinear(
            in_features, out_features, input_quantizer="ste_sign" if binarize_input else None
        )
        self.norm = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


# --- model -----------------------------------------------------------------------------------


class BnnMlp(ClassifierHead, nn.Module):
    """Binary MLP on flattened inputs with configurable hidden sizes."""

    arch = ARCH

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | tuple[int, int] = 28,
        hidden: Any = DEFAULT_HIDDEN,
    ):
        super().__init__()
        self.num_classes = check_num_classes(ARCH, num_classes)
        in_chans = check_channels(ARCH, in_chans)
        height, width = image_hw(ARCH, img_size)
        self.hidden_sizes = as_sizes(ARCH, "hidden", hidden, example=DEFAULT_HIDDEN)
        self.input_size = (in_chans, height, width)

        sizes = (in_chans * height * width, *self.hidden_sizes)
        self.flatten = nn.Flatten(1)
        self.blocks = nn.Sequential(
            *(
                DenseBlock(n_in, n_out, binarize_input=i > 0)
                for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes))
            )
        )
        self.num_features = self.hidden_sizes[-1]
        self.head = self._make_head(self.num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return DenseBlock(self.num_features, num_classes, binarize_input=True)

    def _head_like(self) -> nn.Module:
        # a new binary head takes the last hidden layer's mode
        return cast(DenseBlock, self.blocks[-1]).fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.flatten(x))


def _create_bnn_mlp(variant: str, pretrained: bool = False, **kwargs: Any) -> BnnMlp:
    return build_with_cfg(BnnMlp, variant, pretrained, **kwargs)


# --- default configs (before the entrypoints: timm reads them when registering) ---------------


_cfg = cfg_factory(
    num_classes=10,
    input_size=(1, 28, 28),
    mean=(0.1307,),
    std=(0.3081,),
    first_conv="blocks.0.fc",
    classifier="head.fc",
    paper_ids="arXiv:1602.02830",
)


default_cfgs = generate_default_cfgs({"bnn_mlp.mnist": _cfg()})


# --- timm entrypoints ------------------------------------------------------------------------


@register_model
def bnn_mlp(pretrained: bool = False, **kwargs: Any) -> BnnMlp:
    """The BNN paper's MLP (benchbnn name ``bnn-mlp``); ``hidden`` sets the layer sizes."""
    return _create_bnn_mlp("bnn_mlp", pretrained=pretrained, **kwargs)


# --- benchbnn plugin -------------------------------------------------------------------------


def build(
    num_classes: int, in_channels: int, image_size: int, hidden: Any = DEFAULT_HIDDEN
) -> BnnMlp:
    """The same network as ``timm.create_model("bnn_mlp", ...)`` with these arguments."""
    return _create_bnn_mlp(
        "bnn_mlp",
        num_classes=num_classes,
        in_chans=in_channels,
        img_size=image_size,
        hidden=hidden,
    )


@benchbnn.hookimpl
def benchbnn_architectures() -> list[benchbnn.ArchitectureSpec]:
    return [
        benchbnn.ArchitectureSpec(
            name=ARCH,
            factory=build,
            options={"hidden": DEFAULT_HIDDEN},
            option_types={"hidden": SIZES},
            description=(
                "BNN paper's MLP: flatten -> binary dense + BN per hidden size (default "
                "3 x 4096) -> binary dense + BN; any input size (timm name: bnn_mlp)"
            ),
            reference="Courbariaux et al. 2016, arXiv:1602.02830",
        )
    ]
