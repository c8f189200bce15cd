"""The XNOR-popcount binary convolution: the same bits as ``F.conv2d``, where the int8 operator
uses it, and oneDNN's int8 kernel where it cannot be built.

Channel counts cross the kernel's word boundaries (32-bit words up to 32 channels, 64-bit words
above; 5, 20, 40, 70 and 130 leave unused bits in the last word; output channels that fill
whole vectors and leave a tail), and the geometries are those the
built-in networks use plus strides, dilation and uneven padding.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from benchbnn.core import int8, popcount
from benchbnn.core.int8 import binary_conv2d_int8

pytestmark = pytest.mark.skipif(
    not int8.int8_available() or popcount._extension() is None,
    reason="the popcount kernel is not built on this machine",
)

#: (batch, in channels, out channels, height, width, kernel, stride, padding, dilation)
SHAPES = [
    (4, 64, 24, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1)),  # BinaryNet's 3x3 'same'
    (4, 32, 16, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1)),  # one full 32-bit word
    (4, 5, 16, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1)),  # a few bits of one word
    (2, 20, 40, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1)),  # 40 outputs: vectors and a tail
    (3, 40, 16, 10, 7, (3, 3), (2, 2), (1, 1), (1, 1)),  # Bi-Real Net's downsampling, odd sides
    (2, 70, 40, 10, 10, (5, 5), (1, 1), (2, 2), (1, 1)),  # XNOR-Net's 5x5, two words
    (2, 130, 20, 6, 6, (6, 6), (1, 1), (0, 0), (1, 1)),  # XNOR-Net's "FC6": to a 1x1 map
    (3, 48, 8, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1)),  # "FC7": 1x1 on a 1x1 map
    (2, 33, 8, 9, 11, (3, 5), (2, 1), (1, 2), (1, 1)),  # uneven kernel, stride, padding
    (2, 64, 8, 12, 12, (3, 3), (1, 1), (2, 2), (2, 2)),  # dilated
]


def _signs(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(*shape, generator=generator) < 0.5, -1.0, 1.0)


def _case(shape: tuple, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    n, c_in, c_out, h, w, kernel, stride, padding, dilation = shape
    x = _signs(n, c_in, h, w, seed=11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = _signs(c_out, c_in, *kernel, seed=12)
    return x, weight, {"stride": stride, "padding": padding, "dilation": dilation}


@pytest.fixture
def popcount_calls(monkeypatch):
    calls: list[int] = []
    real = int8.conv2d_popcount

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(int8, "conv2d_popcount", counted)
    return calls


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s[1:]) for s in SHAPES])
def test_popcount_equals_float_convolution_bit_for_bit(shape, channels_last, popcount_calls):
    x, weight, geometry = _case(shape, channels_last)
    expected = F.conv2d(x, weight, None, **geometry)
    got = binary_conv2d_int8(x, weight, None, **geometry)
    assert popcount_calls == [1]
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    assert got.stride() == expected.stride()


def test_grouped_convolutions_stay_with_onednn(popcount_calls):
    grouped = _signs(16, 32, 3, 3, seed=13)
    x = _signs(2, 64, 8, 8, seed=14).contiguous(memory_format=torch.channels_last)
    expected = F.conv2d(x, grouped, None, 1, 1, 1, 2)
    assert torch.equal(binary_conv2d_int8(x, grouped, None, 1, 1, 1, 2), expected)
    assert popcount_calls == []


def test_gradients_are_the_float_convolutions():
    x, weight, geometry = _case(SHAPES[0], True)
    results = []
    for conv in (binary_conv2d_int8, F.conv2d):
        xi, wi = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = conv(xi, wi, None, **geometry)
        (out.square() * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), xi.grad, wi.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_a_failed_build_warns_once_and_falls_back_to_onednn(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: command not found")

    x, weight, geometry = _case(SHAPES[0], True)
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    popcount.KERNELS.reset()
    try:
        with pytest.warns(RuntimeWarning, match=r"could not be built \(Error building"):
            assert not popcount.popcount_applies(x, weight, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: the failure is remembered
            got = binary_conv2d_int8(x, weight, None, **geometry)
        assert torch.equal(got, F.conv2d(x, weight, None, **geometry))
    finally:
        popcount.KERNELS.reset()


def test_where_the_kernel_is_tried():
    x86 = popcount.platform.machine() == "x86_64"
    for flags in ({"avx512f", popcount.POPCOUNT_FLAG}, {"avx", "avx2"}):  # its two vector paths
        assert popcount.popcount_pays(frozenset(flags), "linux") == x86
        assert not popcount.popcount_pays(frozenset(flags), "darwin")
    assert not popcount.popcount_pays(frozenset({"avx512f"}), "linux")  # AVX-512 without AVX2
    assert not popcount.popcount_pays(frozenset({"sse4_2", "popcnt"}), "linux")


def test_the_build_name_changes_with_the_cpu(monkeypatch):
    from benchbnn.core import native

    name = popcount.KERNELS.build_name()
    assert name.startswith("benchbnn_popcount_")
    monkeypatch.setattr(native, "cpu_model", lambda: "another CPU")
    assert popcount.KERNELS.build_name() != name
