"""The exact integer forward of binary convolutions: same bits as float32, where it applies.

A convolution of exactly +-1 inputs and weights sums integers, so oneDNN's int8 convolution
(:mod:`benchbnn.core.int8`) must give outputs ``torch.equal`` to ``F.conv2d``, gradients equal
to autograd's, and whole training runs whose weights, state and metrics equal the float runs'.
The shapes are those of BinaryNet (3x3, padding 1), XNOR-Net (5x5 padding 2; its 6x6 "FC6" and
1x1 "FC7" convolutions on small maps) and Bi-Real Net (3x3 stride 2).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from engine_support import TINY_BINARYNET, computed, fresh_store

import benchbnn
import benchbnn.core.binary as binary_module
from benchbnn.core import int8, popcount
from benchbnn.core.binary import (
    BinaryConv2d,
    set_binary_kernel,
    set_latent_mode,
    ste_sign,
)
from benchbnn.core.errors import BenchbnnError, HyperparameterError
from benchbnn.core.int8 import TAG_BINARY_KERNEL, binary_conv2d_int8, resolve_binary_kernel
from benchbnn.train.engine import TAG_COMPILE, train

pytestmark = pytest.mark.skipif(not int8.int8_available(), reason="no oneDNN int8 convolution")

#: (batch, in channels, out channels, side, kernel, stride, padding)
SHAPES = [
    (6, 16, 24, 12, 3, 1, 1),  # BinaryNet
    (4, 16, 24, 9, 3, 2, 1),  # Bi-Real Net, downsampling block
    (4, 8, 16, 10, 5, 1, 2),  # XNOR-Net, 5x5
    (4, 16, 8, 6, 6, 1, 0),  # XNOR-Net "FC6": 6x6 valid to a 1x1 map
    (4, 16, 8, 1, 1, 1, 0),  # XNOR-Net "FC7": 1x1 on a 1x1 map
    (4, 8, 8, 7, 1, 2, 0),  # 1x1 stride 2 (a downsampling shortcut's shape)
]

#: tests/engine_support.py's tiny BinaryNet, 2 epochs
CONV = {**TINY_BINARYNET, "epochs": 2}


@pytest.fixture(params=["default", "onednn"])
def integer_path(request, monkeypatch):
    """The integer kernel the operator picks here (XNOR-popcount where it is built), and
    oneDNN's int8 kernel alone (what runs where popcount cannot be built). Returns, for the
    default path, the list that gets one entry per popcount convolution; None for oneDNN's."""
    popcount_calls: list[int] = []
    if request.param == "onednn":
        monkeypatch.setattr(int8, "popcount_applies", lambda *args: False)
        return None
    real = int8.conv2d_popcount

    def counted(*args: Any) -> torch.Tensor:
        popcount_calls.append(1)
        return real(*args)

    monkeypatch.setattr(int8, "conv2d_popcount", counted)
    return popcount_calls


def _signs(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(*shape, generator=generator) < 0.5, -1.0, 1.0)


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_forward_equals_float_convolution_bit_for_bit(shape, channels_last, integer_path):
    n, c_in, c_out, side, k, stride, padding = shape
    x = _signs(n, c_in, side, side, seed=1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = _signs(c_out, c_in, k, k, seed=2)
    expected = F.conv2d(x, w, None, stride, padding)
    got = binary_conv2d_int8(x, w, None, stride, padding)
    assert torch.equal(got, expected)
    assert got.stride() == expected.stride()  # later kernels choose their path by strides


@pytest.mark.parametrize("groups,dilation", [(2, 1), (4, 1), (1, 2), (2, 2)])
def test_grouped_and_dilated_convolutions_are_exact_too(groups, dilation, integer_path):
    """Not used by the built-in networks, but accepted by oneDNN and exact as well."""
    x = _signs(3, 8, 9, 9, seed=3).contiguous(memory_format=torch.channels_last)
    w = _signs(12, 8 // groups, 3, 3, seed=4)
    expected = F.conv2d(x, w, None, 1, 1, dilation, groups)
    assert torch.equal(binary_conv2d_int8(x, w, None, 1, 1, dilation, groups), expected)


@pytest.mark.parametrize("padding", [(1, 2), (0, 1), (2, 0)], ids=str)
def test_uneven_padding_strides_and_kernels_are_exact(padding, integer_path):
    """The padding is written into the codes, side by side: each side's own amount, with a
    kernel, stride and image that differ between height and width."""
    x = _signs(3, 8, 9, 11, seed=7).contiguous(memory_format=torch.channels_last)
    w = _signs(12, 8, 3, 5, seed=8)
    expected = F.conv2d(x, w, None, (2, 1), padding)
    got = binary_conv2d_int8(x, w, None, (2, 1), padding)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def test_exact_after_the_shape_was_prepacked_with_another_zero_point(monkeypatch):
    """PyTorch caches the packed weight format per shape, whatever zero point made it first: a
    shape first prepacked with source zero point 1 (zero-point compensation in the packed
    weight, as benchbnn packed before) still gives the exact convolution."""
    monkeypatch.setattr(int8, "popcount_applies", lambda *args: False)  # oneDNN's kernel
    x = _signs(4, 24, 10, 10, seed=5).contiguous(memory_format=torch.channels_last)
    w = _signs(40, 24, 3, 3, seed=6)
    ones = torch.ones(1)
    torch.ops.onednn.qconv_prepack(
        w.to(torch.int8), ones, 1.0, 1, [1, 1], [1, 1], [1, 1], 1, [4, 24, 10, 10]
    )
    assert torch.equal(binary_conv2d_int8(x, w, None, 1, 1), F.conv2d(x, w, None, 1, 1))


def _layer_pass(layer: BinaryConv2d, x0: torch.Tensor, kernel: str) -> list[torch.Tensor]:
    """Output, input gradient and weight gradient of ``layer`` (then batch norm and a weighted
    sum of squares, so that every output element gets its own gradient) with ``kernel``."""
    set_binary_kernel(layer, kernel, sign_weights=True)
    layer.weight.grad = None
    x = x0.clone().requires_grad_()
    out = layer(x.contiguous(memory_format=torch.channels_last))
    y = F.batch_norm(out, None, None, training=True)
    (y.square() * torch.linspace(0, 1, y.numel()).view_as(y)).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    return [out.detach(), x.grad, layer.weight.grad.clone()]


@pytest.mark.parametrize(
    "quantizer,scale,latent",
    [
        ("ste_sign", False, True),
        ("approx_sign", True, True),
        ("ste_sign", True, True),
        ("ste_sign", False, False),
    ],
)
@pytest.mark.parametrize("shape", SHAPES[:4], ids=[str(s) for s in SHAPES[:4]])
def test_layer_gradients_equal_the_float_path(shape, quantizer, scale, latent):
    """Gradients wrt the real-valued input and the latent (or binary) weight, bit for bit."""
    n, c_in, c_out, side, k, stride, padding = shape
    torch.manual_seed(0)
    layer = BinaryConv2d(
        c_in, c_out, k, stride, padding, input_quantizer=quantizer, scale_weights=scale
    )
    set_latent_mode(layer, latent, clip=1.0)
    with torch.no_grad():
        layer.weight.mul_(20.0)  # some latent weights outside the straight-through window
        if not latent:
            layer.weight.copy_(torch.where(layer.weight >= 0, 1.0, -1.0))
    x0 = torch.randn(n, c_in, side, side) * 1.5  # some inputs outside |x| <= 1
    calls = _count_int8(layer)
    floats = _layer_pass(layer, x0, "float")
    assert calls == []
    ints = _layer_pass(layer, x0, "int8")
    assert len(calls) == 1
    for a, b in zip(floats, ints, strict=True):
        assert torch.equal(a, b)


def _count_int8(layer: BinaryConv2d) -> list[int]:
    """A list that grows by one every time ``layer``'s forward uses the int8 kernel."""
    calls: list[int] = []
    original = layer.int8_applies

    def counted(x: torch.Tensor) -> bool:
        applies = original(x)
        if applies:
            calls.append(1)
        return applies

    layer.int8_applies = counted  # type: ignore[method-assign]
    return calls


def _layer(**options: Any) -> BinaryConv2d:
    layer = BinaryConv2d(4, 4, 3, padding=options.pop("padding", 1), **options)
    set_binary_kernel(layer, "int8", sign_weights=True)
    return layer


X = torch.randn(2, 4, 5, 5)


def test_applies_to_exact_operands_only():
    assert _layer(input_quantizer="ste_sign").int8_applies(X)
    assert _layer(input_quantizer="approx_sign").int8_applies(X)
    assert not _layer(input_quantizer=None).int8_applies(X)  # the real-valued first layer
    custom = _layer(input_quantizer=torch.tanh)
    assert not custom.int8_applies(X)  # a callable is not known to give +-1 ...
    custom.input_exact = True
    assert custom.int8_applies(X)  # ... unless the layer is told so
    assert not _layer(input_quantizer="ste_sign", padding="same").int8_applies(X)
    assert not _layer(input_quantizer="ste_sign").int8_applies(X.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _layer(input_quantizer="ste_sign").int8_applies(X)


def test_binary_mode_needs_sign_weights():
    """Binary mode feeds the weights as they are: int8 only when they are +-1 (forward="sign"),
    never for "identity" optimizers' real values; latent mode binarizes them."""
    layer = _layer(input_quantizer="ste_sign")
    set_binary_kernel(layer, "int8", sign_weights=False)
    assert layer.int8_applies(X)  # latent mode
    set_latent_mode(layer, False)
    assert not layer.int8_applies(X)
    set_binary_kernel(layer, "int8", sign_weights=True)
    assert layer.int8_applies(X)
    set_binary_kernel(layer, "float", sign_weights=True)
    assert not layer.int8_applies(X)


def test_set_binary_kernel_refuses_auto():
    with pytest.raises(HyperparameterError, match="resolve 'auto'"):
        set_binary_kernel(_layer(), "auto", sign_weights=True)


def test_switch_resolution_and_errors(monkeypatch):
    cpu, vnni = torch.device("cpu"), frozenset({"avx512_vnni"})
    assert resolve_binary_kernel("float", cpu) == "float"
    assert resolve_binary_kernel("int8", cpu) == "int8"
    assert resolve_binary_kernel("auto", cpu, flags=frozenset({"sse4_2"})) == "float"
    if int8.int8_pays(vnni):  # an x86 machine
        assert resolve_binary_kernel("auto", cpu, flags=vnni) == "int8"
        linux = popcount.native_builds_here()
        # AVX2 without VNNI: the popcount kernel pays (on Linux, where it is built)
        assert resolve_binary_kernel("auto", cpu, flags=frozenset({"avx2"})) == (
            "int8" if linux else "float"
        )
    assert resolve_binary_kernel("auto", torch.device("meta"), flags=vnni) == "float"
    assert int8.int8_pays(vnni, machine="x86_64")
    assert int8.int8_pays(frozenset({"avx_vnni"}), machine="AMD64")
    assert not int8.int8_pays(vnni, machine="aarch64")
    assert not int8.int8_pays(frozenset({"avx512f"}), machine="x86_64")
    with pytest.raises(BenchbnnError, match="one of auto, int8, float, got 'int4'"):
        resolve_binary_kernel("int4", cpu)
    with pytest.raises(BenchbnnError, match=r"runs on the CPU .*not on meta"):
        resolve_binary_kernel("int8", torch.device("meta"))
    monkeypatch.setattr(int8, "int8_available", lambda: False)
    with pytest.raises(BenchbnnError, match=r"qconv2d_pointwise.*--binary-kernel auto or float"):
        resolve_binary_kernel("int8", cpu)
    assert resolve_binary_kernel("auto", cpu, flags=vnni) == "float"


def test_the_command_line_offers_the_same_kernels():
    from benchbnn.cli._common import BINARY_KERNELS

    assert BINARY_KERNELS == int8.BINARY_KERNELS


def test_train_refuses_an_unknown_kernel_before_starting(tmp_path):
    with pytest.raises(BenchbnnError, match="binary_kernel must be one of"):
        train(CONV, quiet=True, tracking_uri=fresh_store(tmp_path), binary_kernel="fast")


# --- whole runs --------------------------------------------------------------------------------


class Capture:
    """The final state_dict and tags, and how many times a binary layer used int8."""

    def __init__(self) -> None:
        self.int8_calls = 0

    @benchbnn.hookimpl
    def benchbnn_run_end(self, run: Any, result: Any) -> None:
        self.state = {k: v.clone() for k, v in run.model.state_dict().items()}
        self.tags = dict(run.tags)


def _run(
    tmp_path, name: str, config: dict, monkeypatch: Any, **options: Any
) -> tuple[Any, Capture]:
    """Train ``config``; with ``monkeypatch``, count the binary layers' int8 convolutions."""
    capture = Capture()

    def counting(*args: Any) -> torch.Tensor:
        capture.int8_calls += 1
        return binary_conv2d_int8(*args)

    if monkeypatch is not None:
        monkeypatch.setattr(binary_module, "binary_conv2d_int8", counting)
    result = train(
        config,
        quiet=True,
        tracking_uri=fresh_store(tmp_path / name),
        checkpoint_dir=tmp_path / name / "ckpt",
        plugins=[capture],
        **options,
    )
    assert result.status == "FINISHED", result.error
    return result, capture


def _assert_same_training(a: tuple[Any, Capture], b: tuple[Any, Capture]) -> None:
    assert computed(a[0].history) == computed(b[0].history)
    assert a[1].state.keys() == b[1].state.keys()
    for key, value in a[1].state.items():
        assert torch.equal(value, b[1].state[key]), key


@pytest.mark.parametrize("optimizer", ["bop", "adam-latent"])
def test_eager_runs_are_bit_identical(tmp_path, monkeypatch, optimizer, integer_path):
    """BinaryNet trained 2 epochs (8 steps, 2 evaluations): 5 binary convolutions of 6 use int8
    (the first has a real-valued input), every weight, statistic and metric as with float;
    where the popcount kernel is built, it computes every one of them in the default path."""
    config = {**CONV, "optimizer": optimizer}
    ints = _run(tmp_path, "i", config, monkeypatch, compile="off", binary_kernel="int8")
    popcount_calls = None if integer_path is None else len(integer_path)
    floats = _run(tmp_path, "f", config, monkeypatch, compile="off", binary_kernel="float")
    assert floats[1].int8_calls == 0
    assert ints[1].int8_calls >= 5 * 8  # 5 layers x 8 steps, plus the evaluations
    if integer_path is not None and popcount.popcount_ready():  # default path, kernel built
        assert popcount_calls == ints[1].int8_calls  # every binary convolution
        assert len(integer_path) == popcount_calls  # and none with the float kernel
    _assert_same_training(ints, floats)
    assert ints[1].tags[TAG_BINARY_KERNEL] == "int8"
    assert floats[1].tags[TAG_BINARY_KERNEL] == "float"


def test_identity_forward_optimizer_never_uses_int8(tmp_path, monkeypatch):
    """md-tanh feeds real-valued weights in binary mode: never int8, whatever the switch."""
    config = {**CONV, "optimizer": "md-tanh", "epochs": 1}
    _, capture = _run(tmp_path, "m", config, monkeypatch, compile="off", binary_kernel="int8")
    assert capture.int8_calls == 0
    assert capture.tags[TAG_BINARY_KERNEL].startswith("float (no binary convolution")


@pytest.mark.slow
def test_compiled_runs_are_bit_identical(tmp_path, monkeypatch):
    """As eager, compiled: the int8 convolution is one opaque operator, so the graph around it
    is the float convolution's and fuses the same way. Its body runs as Python at every call
    (the layers are traced, not called): its memory-format test is counted there."""
    packs: list[int] = []
    channels_last = int8._channels_last

    def counted(t: torch.Tensor) -> bool:
        packs.append(1)
        return channels_last(t)

    monkeypatch.setattr(int8, "_channels_last", counted)
    torch._dynamo.reset()  # the same start whatever this process compiled before
    ints = _run(tmp_path, "i", CONV, None, compile="on", binary_kernel="int8")
    assert ints[1].tags[TAG_BINARY_KERNEL] == "int8" and len(packs) >= 5 * 8
    assert ints[1].tags[TAG_COMPILE] == "compiled"
    calls = len(packs)
    floats = _run(tmp_path, "f", CONV, None, compile="on", binary_kernel="float")
    assert len(packs) == calls
    _assert_same_training(ints, floats)


def test_ste_sign_output_is_exactly_plus_minus_one():
    """What the int8 path relies on: the built-in quantizers give only -1.0 and +1.0 (0 -> +1)."""
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0])
    assert ste_sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]
