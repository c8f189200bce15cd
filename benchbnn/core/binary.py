"""Binary primitives shared by optimizers and architectures.

A binarized network has two kinds of trainable parameters: *binary weights*, which the forward
pass uses as -1/+1, and *real-valued parameters* (batch norm, full-precision first and last
layers, shortcuts). Binary optimizers (Bop and friends) flip binary weights that are exactly
+-1; latent-weight optimizers (Adam on latent weights) keep real values and let the forward pass
binarize them. This module gives architecture plugins the pieces to support both:

- :func:`sgn0`, :func:`ste_sign` (straight-through sign, gradient passes where ``|x| <= clip``)
  and :func:`approx_sign` (Bi-Real Net's piecewise-linear gradient ``2 - 2|x|``);
- :class:`BinaryConv2d` and :class:`BinaryLinear`, whose ``weight`` is the binary weight, with
  optional input binarization and optional per-output-channel scaling for latent training;
- :func:`set_latent_mode` to switch every binary layer of a model between the two regimes, and
  :func:`set_ste_window` to move the straight-through window of latent mode during training;
- :func:`set_binary_kernel` to let binary convolutions whose input and weight are exactly +-1
  run their forward pass as an int8 convolution (:mod:`benchbnn.core.int8`), bit-identical to
  the float one;
- :func:`split_parameters` and :func:`parameter_breakdown` for optimizers and reports.

Every binary layer convolves (or multiplies) with exactly +-1 weights; the per-channel scale of
latent training (mean ``|w|`` of each output filter, XNOR-Net / Bi-Real Net) is applied to the
layer's output, which is the same function as scaling the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchbnn.core.errors import HyperparameterError
from benchbnn.core.int8 import binary_conv2d_int8

#: 1 MB as reported by :func:`parameter_breakdown` (2**20 bytes, as larq's model summaries).
BYTES_PER_MB = 2**20


def sgn0(x: torch.Tensor) -> torch.Tensor:
    """Sign with 0 mapped to +1, so that every weight is exactly -1 or +1.

    Keeps ``x``'s dtype, device and memory format; NaN gives -1 (``NaN >= 0`` is false). The only
    full-size allocations are the comparison mask and the result, doubled and shifted in place:
    3.6x faster on the CPU than ``torch.where(x >= 0, 1, -1)`` (measured here: 1.56 against
    5.66 ms for 1.44 million float32 values), with the same values.
    """
    return (x >= 0).to(x.dtype).mul_(2).sub_(1)


# --- sign functions with surrogate gradients -------------------------------------------------


class SignSTE(torch.autograd.Function):
    """Forward ``sgn0(x)``; backward passes the gradient unchanged where ``|x| <= clip``.

    The straight-through estimator of Courbariaux et al. (BinaryNet): the sign has zero gradient
    almost everywhere, so training pretends it is the identity, cancelled where ``|x|`` is large
    (there a latent weight or activation is saturated). ``clip`` is a number or a 0-dim tensor
    (binary layers pass theirs as a tensor, so that a compiled model reads a scheduled window
    as a value instead of recompiling for each one); either compares in ``x``'s dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clip: float | torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x.abs() <= clip)  # a bool mask costs a quarter of saving x
        return sgn0(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (passes,) = ctx.saved_tensors
        return grad * passes, None


class ApproxSign(torch.autograd.Function):
    """Forward ``sgn0(x)``; backward ``2 - 2|x|`` on ``|x| <= 1``, else 0 (Bi-Real Net).

    The derivative of a piecewise quadratic that approximates the sign more closely than the
    straight-through estimator's box, as proposed by Liu et al. (2018).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sgn0(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


def ste_sign(x: torch.Tensor, clip: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``sgn0(x)`` with a straight-through gradient where ``|x| <= clip`` (a number or a
    0-dim tensor)."""
    return SignSTE.apply(x, clip if isinstance(clip, torch.Tensor) else float(clip))


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """``sgn0(x)`` with Bi-Real Net's ApproxSign gradient."""
    return ApproxSign.apply(x)


#: Activation quantizers a binary layer can apply to its input, by name.
INPUT_QUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ste_sign": ste_sign,
    "approx_sign": approx_sign,
}


def _input_quantizer(
    quantizer: str | Callable[[torch.Tensor], torch.Tensor] | None,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if quantizer is None or callable(quantizer):
        return quantizer
    if quantizer in INPUT_QUANTIZERS:
        return INPUT_QUANTIZERS[quantizer]
    raise HyperparameterError(
        f"unknown input quantizer {quantizer!r}; use one of {', '.join(INPUT_QUANTIZERS)}, "
        f"a callable, or None for real-valued inputs"
    )


def _check_clip(clip: float) -> float:
    try:
        value = float(clip)
    except (TypeError, ValueError):
        raise HyperparameterError(f"clip must be a positive number, got {clip!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise HyperparameterError(f"clip must be a positive finite number, got {clip!r}")
    return value


# --- binary layers -----------------------------------------------------------------------------


class BinaryLayer:
    """Mixin for layers whose ``weight`` parameter is a binary weight.

    ``latent`` selects how the forward pass reads the weight: False (binary mode) uses it as it
    is, because a binary optimizer keeps it at exactly +-1; True (latent mode) uses
    ``sgn0(weight)`` with a straight-through gradient clipped at ``clip``, times the optional
    per-output-channel scale. A new layer starts in latent mode: for weights that are already
    +-1 both modes give the same values and (with ``clip >= 1``) the same gradients, so the
    forward pass is right whichever optimizer trains it. :func:`split_parameters` and
    :func:`set_latent_mode` recognise binary weights by this mixin, so a third-party layer that
    subclasses it (and reads its weight through :meth:`binarized_weight`) works with both.
    """

    weight: torch.Tensor  # an nn.Parameter (typed as the layers that mix this in type it)
    latent: bool
    ste_clip: torch.Tensor  # the window as a 0-dim buffer (not saved), what forward reads
    _clip: float
    scale_weights: bool
    input_quantizer: Callable[[torch.Tensor], torch.Tensor] | None
    #: whether ``input_quantizer`` outputs exactly -1 or +1: True for the built-in ones
    #: (:data:`INPUT_QUANTIZERS`), False for a callable unless the caller sets it
    input_exact: bool
    #: whether the weight is exactly +-1 in binary mode (the optimizer's forward is "sign");
    #: False until told (:func:`set_binary_kernel`): "identity" optimizers feed real values
    sign_weights: bool
    #: "int8" (the exact integer forward where it applies: :meth:`int8_applies`) or "float"
    binary_kernel: str

    def _init_binary(
        self,
        input_quantizer: str | Callable[[torch.Tensor], torch.Tensor] | None,
        scale_weights: bool,
    ) -> None:
        self.input_quantizer = _input_quantizer(input_quantizer)
        self.input_exact = self.input_quantizer in INPUT_QUANTIZERS.values()
        self.sign_weights = False
        self.binary_kernel = "float"
        self.scale_weights = bool(scale_weights)
        self.latent = True
        assert isinstance(self, nn.Module), "BinaryLayer is mixed into an nn.Module"
        # not persistent: checkpoints and state_dicts stay as they were; the engine's schedule
        # sets the window again on resume
        self.register_buffer("ste_clip", torch.ones(()), persistent=False)
        self.clip = 1.0

    @property
    def clip(self) -> float:
        """The straight-through window of latent mode (gradients pass where ``|w| <= clip``).

        Setting it also fills the layer's ``ste_clip`` buffer in place, so that a compiled
        forward pass sees the new value without recompiling.
        """
        return self._clip

    @clip.setter
    def clip(self, value: float) -> None:
        self._clip = float(value)
        with torch.no_grad():
            self.ste_clip.fill_(self._clip)

    def binarized_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The +-1 weight the forward pass uses and the per-output-channel scale (or None).

        The scale, mean ``|w|`` over each output filter, is only used in latent mode and is not
        differentiated (as in XNOR-Net and Bi-Real Net).
        """
        w = self.weight
        if not self.latent:
            return w, None
        scale = None
        if self.scale_weights:
            scale = w.detach().abs().mean(dim=tuple(range(1, w.dim())))
        return ste_sign(w, self.ste_clip), scale

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    @property
    def binary_operands(self) -> bool:
        """Whether this layer multiplies +-1 inputs by +-1 weights: an input quantizer that
        outputs +-1 (``input_exact``) and a weight used as +-1 (latent mode binarizes it;
        binary mode only with ``sign_weights``)."""
        return self.input_exact and (self.latent or self.sign_weights)

    def exact_operands(self, x: torch.Tensor) -> bool:
        """Whether this forward pass multiplies exactly +-1 float32 values on the CPU with the
        int8 kernel asked for: ``binary_kernel == "int8"``, :attr:`binary_operands`, float32
        ``x`` and weight on the CPU, no autocast."""
        return (
            self.binary_kernel == "int8"
            and self.binary_operands
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
        )

    def binary_repr(self) -> str:
        name = getattr(self.input_quantizer, "__name__", repr(self.input_quantizer))
        mode = f"latent, clip={self.clip:g}" if self.latent else "binary"
        return f"input_quantizer={name}, scale_weights={self.scale_weights}, mode={mode}"


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    """A 2-D convolution with binary weights (no bias by default).

    ``input_quantizer`` binarizes the input first (``"ste_sign"``, ``"approx_sign"``, a callable,
    or None for a real-valued input such as the image); ``scale_weights`` multiplies each output
    channel by mean ``|w|`` of its filter in latent mode.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        *,
        input_quantizer: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
        scale_weights: bool = False,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self._init_binary(input_quantizer, scale_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, scale = self.binarized_weight()
        conv = binary_conv2d_int8 if self.int8_applies(x) else F.conv2d
        out = conv(
            self.quantize_input(x), w, None, self.stride, self.padding, self.dilation, self.groups
        )
        if scale is not None:
            out = out * scale.view(1, -1, 1, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def int8_applies(self, x: torch.Tensor) -> bool:
        """Whether this forward pass of ``x`` (N, C_in, H, W) runs as an exact int8 convolution:
        :meth:`~BinaryLayer.exact_operands`, zero padding given as numbers (not "same"/"valid"
        strings), a 4-D input."""
        return (
            self.exact_operands(x)
            and x.dim() == 4
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.binary_repr()}"


class BinaryLinear(BinaryLayer, nn.Linear):
    """A dense layer with binary weights (no bias by default); options as :class:`BinaryConv2d`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        input_quantizer: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
        scale_weights: bool = False,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_binary(input_quantizer, scale_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, scale = self.binarized_weight()
        out = F.linear(self.quantize_input(x), w)
        if scale is not None:
            out = out * scale
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.binary_repr()}"


# --- whole-model helpers -----------------------------------------------------------------------


def binary_layers(model: nn.Module) -> Iterator[tuple[str, BinaryLayer]]:
    """``(name, layer)`` for every binary layer of ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, BinaryLayer):
            yield name, module


def set_latent_mode(model: nn.Module, latent: bool, clip: float = 1.0) -> int:
    """Switch every binary layer of ``model`` to latent or binary mode; returns how many.

    Binary mode (``latent=False``) is for optimizers that keep binary weights at exactly +-1:
    the forward pass uses the weights as they are. Latent mode is for optimizers of real-valued
    latent weights: the forward pass uses ``sgn0(w)`` with a straight-through gradient passing
    where ``|w| <= clip``, times the architecture's per-channel scaling where it has one.
    """
    clip = _check_clip(clip)
    count = 0
    for _, layer in binary_layers(model):
        layer.latent = bool(latent)
        layer.clip = clip
        count += 1
    return count


def set_binary_kernel(model: nn.Module, kernel: str, sign_weights: bool) -> int:
    """Set how every binary layer of ``model`` convolves; returns how many layers.

    ``kernel`` "int8" lets a :class:`BinaryConv2d` run its forward pass as an int8 convolution
    (:mod:`benchbnn.core.int8`, bit-identical to the float one) whenever its operands are exactly
    +-1 (:meth:`BinaryConv2d.int8_applies`); "float" never. ``sign_weights`` says whether the
    weights are exactly +-1 in binary mode: True only for optimizers whose ``forward`` is
    "sign" (Bop and the other flip rules); "identity" optimizers (md-tanh, BayesBiNN) feed real
    values, which an int8 convolution would round. Raises HyperparameterError for another
    ``kernel`` (resolve "auto" with :func:`benchbnn.core.int8.resolve_binary_kernel` first).
    """
    if kernel not in ("int8", "float"):
        raise HyperparameterError(
            f"a binary layer's kernel is 'int8' or 'float', got {kernel!r} (resolve 'auto' "
            f"with benchbnn.core.int8.resolve_binary_kernel)"
        )
    count = 0
    for _, layer in binary_layers(model):
        layer.binary_kernel = kernel
        layer.sign_weights = bool(sign_weights)
        count += 1
    return count


def set_ste_window(layers: Iterable[BinaryLayer], clip: float) -> None:
    """Set the straight-through window ``clip`` of each of ``layers`` (no other change).

    Cheap enough for every optimizer step: it assigns one float per layer, and the next forward
    pass uses it. Raises HyperparameterError unless ``clip`` is a positive finite number.
    """
    clip = _check_clip(clip)
    for layer in layers:
        layer.clip = clip


def _binary_ids(model: nn.Module) -> set[int]:
    return {id(layer.weight) for _, layer in binary_layers(model) if layer.weight is not None}


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(binary, real)``: the model's trainable parameters, each in exactly one list.

    Binary weights are the ``weight`` of every :class:`BinaryLayer`; everything else that
    requires a gradient is real-valued. Both lists follow ``model.parameters()`` order, so the
    split is the same on every rank and after a restart.
    """
    binary_ids = _binary_ids(model)
    binary: list[nn.Parameter] = []
    real: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (binary if id(param) in binary_ids else real).append(param)
    return binary, real


def _state_size(module: nn.Module) -> int:
    """Floating-point buffers (batch-norm statistics) that inference needs, in values.

    Non-persistent buffers (a binary layer's training-time ``ste_clip``) are not stored and
    not counted.
    """
    transient: set[str] = getattr(module, "_non_persistent_buffers_set", set())
    return sum(
        b.numel()
        for name, b in module.named_buffers(recurse=False)
        if b.is_floating_point() and name not in transient
    )


def parameter_breakdown(model: nn.Module) -> dict[str, Any]:
    """Parameter counts and model size, in total and per layer.

    ``size_mb`` is the inference size with binary weights packed at one bit and every other
    value (real-valued parameters, frozen parameters, batch-norm statistics) at 32 bits, in
    MB of 2**20 bytes as larq's model summaries report it; ``float32_size_mb`` is the same model
    stored entirely in 32 bits.
    """
    binary_ids = _binary_ids(model)
    seen: set[int] = set()
    layers = []
    totals = {"binary_weights": 0, "real_parameters": 0, "frozen_parameters": 0, "state": 0}
    for name, module in model.named_modules():
        row: dict[str, Any] = {
            "name": name or "(model)",
            "type": type(module).__name__,
            "binary_weights": 0,
            "real_parameters": 0,
            "frozen_parameters": 0,
            "state": _state_size(module),
        }
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if not param.requires_grad:
                key = "frozen_parameters"
            elif id(param) in binary_ids:
                key = "binary_weights"
            else:
                key = "real_parameters"
            row[key] += param.numel()
        if any(row[k] for k in totals):
            layers.append(row)
            for k in totals:
                totals[k] += row[k]
    other = totals["real_parameters"] + totals["frozen_parameters"] + totals["state"]
    packed_bytes = math.ceil(totals["binary_weights"] / 8) + 4 * other
    float_bytes = 4 * (totals["binary_weights"] + other)
    return {
        **totals,
        "trainable_parameters": totals["binary_weights"] + totals["real_parameters"],
        "binary_layers": sum(1 for _ in binary_layers(model)),
        "size_mb": packed_bytes / BYTES_PER_MB,
        "float32_size_mb": float_bytes / BYTES_PER_MB,
        "compression": float_bytes / packed_bytes if packed_bytes else 1.0,
        "layers": layers,
    }
