"""Built-in architecture plugins: BinaryNet, the BNN MLP, XNOR-Net and Bi-Real Net 18.

Each module is a timm model-family file (blocks, model class, ``_create_<family>`` builder,
default configs, registered entrypoints) that also registers a benchbnn
:class:`~benchbnn.ArchitectureSpec`. Importing a module registers its models with timm, so
after ``benchbnn.list_architectures()`` (or importing the module) ``timm.create_model`` knows
``binarynet``, ``bnn_mlp``, ``xnornet`` and ``birealnet18``.

The helpers below turn option values that arrive as text (``--set width=0.5``) into the types
the models take, and check the input shape, with errors that say what is supported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from benchbnn.errors import HyperparameterError, UnsupportedInputError

__all__ = [
    "UnsupportedInputError", "as_choice", "as_float", "as_sizes", "check_channels",
    "check_num_classes", "image_hw", "prefer_small_cfg", "scaled", "sync_pretrained_cfg",
]


def as_float(arch: str, name: str, value: Any, *, positive: bool = True) -> float:
    """``value`` as a finite float (strings accepted), or an error naming the option."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (positive and number <= 0):
        need = "a positive number" if positive else "a number"
        raise HyperparameterError(f"architecture {arch!r}: option {name!r} must be {need}, got {value!r}")
    return number


def as_choice(arch: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` as one of ``choices`` (case-insensitive), or an error listing them."""
    text = str(value).strip().lower()
    if text not in choices:
        raise HyperparameterError(
            f"architecture {arch!r}: option {name!r} must be one of {', '.join(choices)}, got {value!r}"
        )
    return text


def as_sizes(arch: str, name: str, value: Any) -> tuple[int, ...]:
    """A non-empty tuple of positive ints from a sequence or text such as ``"512,512"``."""
    items: Iterable[Any]
    if isinstance(value, str):
        items = [v for v in value.replace("x", ",").strip("()[] ").split(",") if v.strip()]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        items = value
    try:
        sizes = tuple(int(str(v).strip()) if isinstance(v, str) else v for v in items)
        ok = bool(sizes) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise HyperparameterError(
            f"architecture {arch!r}: option {name!r} must be one or more positive whole numbers "
            f"such as 4096,4096,4096, got {value!r}"
        )
    return sizes


def scaled(channels: int, width: float) -> int:
    """``channels`` times a width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def image_hw(arch: str, img_size: Any) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair (timm passes ``img_size`` as a pair)."""
    pair = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise UnsupportedInputError(
            f"architecture {arch!r}: image size must be a positive whole number or a pair, got {img_size!r}"
        )
    return pair  # type: ignore[return-value]


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
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 0):
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
