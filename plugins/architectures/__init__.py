"""Built-in architecture plugins: BinaryNet, the BNN MLP, XNOR-Net and Bi-Real Net 18.

Each module is a timm model-family file (blocks, model class, ``_create_<family>`` builder,
default configs, registered entrypoints) that also registers a benchbnn
:class:`~benchbnn.ArchitectureSpec`. Importing a module registers its models with timm, so
after ``benchbnn.list_architectures()`` (or importing the module) ``timm.create_model`` knows
``binarynet``, ``bnn_mlp``, ``xnornet`` and ``birealnet18``.

The helpers below turn option values that arrive as text (``--set width=0.5``) into the types
the models take, with the declared types each family's spec names in ``option_types`` (so the
host checks a value before anything builds, with the same message), and check the input shape,
with errors that say what is supported; the parts
every family shares (timm's default-config fields, the builder, the classifier interface) are
here too, so each family file holds only what makes its network different.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.models import build_model_with_cfg
from torch import nn

from benchbnn.core.binary import BinaryLayer, set_latent_mode
from benchbnn.core.errors import HyperparameterError, UnsupportedInputError
from benchbnn.core.values import (
    Choice,
    Flag,
    ListOf,
    Number,
    ValueType,
    convert,
    option_label,
)

#: CIFAR-10 training-set channel statistics, for the default configs of the 32x32 variants
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

__all__ = [
    "BN_EPS",
    "BN_EPS_LIST",
    "BN_MOMENTUM",
    "BN_SCALE",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "MAX_UNITS",
    "MAX_WIDTH",
    "SIZES",
    "WIDTH",
    "BatchNormSettings",
    "CenteredBatchNorm1d",
    "CenteredBatchNorm2d",
    "ClassifierHead",
    "UnsupportedInputError",
    "as_choice",
    "as_float",
    "as_sizes",
    "as_value",
    "build_with_cfg",
    "cfg_factory",
    "check_channels",
    "check_num_classes",
    "image_hw",
    "prefer_small_cfg",
    "scaled",
    "sync_pretrained_cfg",
]


#: Width multipliers stay below MAX_WIDTH and a layer has at most MAX_UNITS units; what a whole
#: network may hold is bounded by its parameter count (benchbnn.core.limits.MAX_PARAMETERS),
#: which a width just below MAX_WIDTH already exceeds (so no message offers that end).
MAX_WIDTH = 64.0
MAX_UNITS = 2**20
#: Declared type of the width multipliers (``ArchitectureSpec.option_types``).
WIDTH = Number(float, positive=True, high=MAX_WIDTH, high_open=True)
#: Declared type of layer sizes such as ``512,512`` (``ArchitectureSpec.option_types``).
SIZES = ListOf(Number(int, positive=True, high=MAX_UNITS), nonempty=True)
#: Declared type of option ``bn_momentum``: PyTorch's convention, the weight of the new batch's
#: statistic in the running average, in (0, 1]. A Keras momentum ``m`` is PyTorch's ``1 - m``.
BN_MOMENTUM = Number(float, low=0.0, high=1.0, low_open=True)
#: Declared type of option ``bn_eps``: the epsilon added to the variance, in (0, 1].
BN_EPS = Number(float, positive=True, high=1.0)
#: ``bn_eps`` as one epsilon per group of layers, or one for every layer (XNOR-Net).
BN_EPS_LIST = ListOf(BN_EPS, nonempty=True)
#: Declared type of option ``bn_scale``: whether batch norm learns a scale (Keras ``scale``).
BN_SCALE = Flag()


def as_float(arch: str, name: str, value: Any, *, positive: bool = True) -> float:
    """``value`` (text or a number) as a finite float, positive unless ``positive=False``.

    Raises HyperparameterError naming the architecture, the option, the value and the accepted
    form (the converter of :mod:`benchbnn.core.values`).
    """
    declared = WIDTH if positive else Number(float)
    return convert(value, declared, option_label(f"architecture {arch!r}", name))


def as_choice(arch: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` as one of ``choices`` (case-insensitive).

    Raises HyperparameterError naming the option and offering every choice.
    """
    return convert(value, Choice(tuple(choices)), option_label(f"architecture {arch!r}", name))


def as_sizes(arch: str, name: str, value: Any, example: Any = None) -> tuple[int, ...]:
    """A non-empty tuple of positive ints from a sequence, one int, or text such as
    ``"512,512"`` or ``"64x64"``.

    Raises HyperparameterError naming the option and offering ``example`` (or a sample).
    """
    declared = SIZES.with_example(example) if example is not None else SIZES
    return tuple(convert(value, declared, option_label(f"architecture {arch!r}", name)))


def as_value(arch: str, name: str, value: Any, declared: ValueType) -> Any:
    """``value`` (text or typed) converted to ``declared``.

    Raises HyperparameterError naming the architecture, the option and the accepted form.
    """
    return convert(value, declared, option_label(f"architecture {arch!r}", name))


def scaled(channels: int, width: float) -> int:
    """``channels`` times a width multiplier, rounded, at least 1."""
    return max(1, round(channels * width))


def image_hw(arch: str, img_size: Any) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair (timm passes ``img_size`` as a pair)."""
    pair = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair
    ):
        raise UnsupportedInputError(
            f"architecture {arch!r}: image size must be a positive whole number or a pair, "
            f"got {img_size!r}"
        )
    return pair


def check_channels(arch: str, in_chans: Any) -> int:
    """Every built-in network takes any number of input channels (its first layer sees them)."""
    if not (isinstance(in_chans, int) and not isinstance(in_chans, bool) and in_chans >= 1):
        raise UnsupportedInputError(
            f"architecture {arch!r} needs at least one input channel, got {in_chans!r}; "
            f"supported: any channel count >= 1"
        )
    return in_chans


def check_num_classes(arch: str, num_classes: Any) -> int:
    """A class count >= 1, or 0 for a network without classifier (timm's feature extractor)."""
    if not (
        isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 0
    ):
        raise HyperparameterError(
            f"architecture {arch!r}: num_classes must be a whole number >= 0, got {num_classes!r}"
        )
    return num_classes


def sync_pretrained_cfg(model: Any) -> Any:
    """Make a timm-built model's ``pretrained_cfg`` describe the network actually built.

    None of these models ships weights, so the config's input size and class count are only
    useful if they match the model (``timm.data.resolve_data_config`` reads them).
    """
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(input_size=model.input_size, num_classes=model.num_classes)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's older alias
    return model


def prefer_small_cfg(kwargs: dict[str, Any], tag: str, below: int) -> dict[str, Any]:
    """Use the ``tag`` default config (e.g. CIFAR's) when an image smaller than ``below`` is asked
    for and the caller named no config, so that the model's mean/std fit its variant."""
    size = kwargs.get("img_size")
    if size is not None and not kwargs.get("pretrained_cfg"):
        sides = (size, size) if isinstance(size, int) else tuple(size)
        if all(isinstance(v, int) for v in sides) and min(sides) < below:
            kwargs = {**kwargs, "pretrained_cfg": tag}
    return kwargs


def build_with_cfg(
    model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any
) -> Any:
    """timm's ``build_model_with_cfg`` for a family's model, with its config synced to it."""
    return sync_pretrained_cfg(build_model_with_cfg(model_cls, variant, pretrained, **kwargs))


def cfg_factory(**family: Any) -> Callable[..., dict[str, Any]]:
    """A family's ``_cfg(**overrides)``: timm default-config fields common to every built-in
    network (no weights, fixed input size, no crop, bilinear), then ``family``'s, then the
    overrides of one tag (e.g. a CIFAR variant's input size and statistics)."""
    common = {"url": "", "fixed_input_size": True, "crop_pct": 1.0, "interpolation": "bilinear"}

    def _cfg(**overrides: Any) -> dict[str, Any]:
        return {**common, **family, **overrides}

    return _cfg


# --- batch norm ------------------------------------------------------------------------------


class _CenteredBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with a learned offset and no learned scale (Keras ``scale=False``).

    A mixin placed before ``nn.BatchNorm1d`` / ``nn.BatchNorm2d``, which share this base. Its
    state is ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked``.
    """

    def __init__(self, num_features: int, **kwargs: Any):
        super().__init__(num_features, affine=False, **kwargs)
        self.bias = nn.Parameter(torch.zeros(num_features))  # F.batch_norm adds it

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"scale=False, center=True"
        )


class CenteredBatchNorm1d(_CenteredBatchNorm, nn.BatchNorm1d):
    """:class:`_CenteredBatchNorm` over (N, C) or (N, C, L) inputs."""


class CenteredBatchNorm2d(_CenteredBatchNorm, nn.BatchNorm2d):
    """:class:`_CenteredBatchNorm` over (N, C, H, W) inputs."""


@dataclass(frozen=True)
class BatchNormSettings:
    """The batch-norm hyperparameters of one network, in PyTorch's convention.

    ``momentum`` is the weight of a batch's statistic in the running average (Keras's
    ``momentum=m`` is ``1 - m`` here: Keras updates ``moving = m * moving + (1 - m) * batch``);
    ``eps`` is added to the variance; ``scale`` False drops the learned scale and keeps the
    learned offset (Keras ``scale=False``, ``center=True``). Every layer learns an offset.
    """

    momentum: float
    eps: float
    scale: bool = True

    @classmethod
    def from_options(
        cls, arch: str, momentum: Any, eps: Any, scale: Any = True
    ) -> BatchNormSettings:
        """Settings from option values (text or typed).

        Raises HyperparameterError naming the option when a value does not fit
        :data:`BN_MOMENTUM`, :data:`BN_EPS` or :data:`BN_SCALE`.
        """
        return cls(
            as_value(arch, "bn_momentum", momentum, BN_MOMENTUM),
            as_value(arch, "bn_eps", eps, BN_EPS),
            as_value(arch, "bn_scale", scale, BN_SCALE),
        )

    def __call__(
        self, features: int, *, spatial: bool = True, eps: float | None = None
    ) -> nn.Module:
        """A batch norm over ``features`` channels: 2d (N, C, H, W) if ``spatial``, else 1d
        (N, C); ``eps`` overrides this network's epsilon for one layer."""
        epsilon = self.eps if eps is None else eps
        if self.scale:
            full = nn.BatchNorm2d if spatial else nn.BatchNorm1d
            return full(features, eps=epsilon, momentum=self.momentum)
        centred = CenteredBatchNorm2d if spatial else CenteredBatchNorm1d
        return centred(features, eps=epsilon, momentum=self.momentum)


class ClassifierHead:
    """timm's classifier interface for a model that keeps its classifier in one attribute.

    The model sets ``arch`` (its benchbnn name, for error messages), ``head_attr`` (the
    attribute holding the classifier, so parameter names stay the family's own: ``head`` or
    ``fc``), and defines ``_make_head(num_classes)`` (``nn.Identity`` for 0 classes),
    ``_head_like()`` (a layer whose device, dtype and, if binary, latent mode a new classifier
    takes) and ``forward_features``. It overrides ``forward_head`` when the features need
    pooling before the classifier.
    """

    arch: str
    head_attr: str = "head"

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_attr)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` (0: none) on the model's device and mode."""
        like = self._head_like()  # type: ignore[attr-defined]
        self.num_classes = check_num_classes(self.arch, num_classes)
        head = self._make_head(num_classes)  # type: ignore[attr-defined]
        head = head.to(like.weight.device, like.weight.dtype)
        if isinstance(like, BinaryLayer):
            set_latent_mode(head, like.latent, like.clip)
        setattr(self, self.head_attr, head)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]
