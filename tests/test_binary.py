"""Binary layer primitives: sign functions, binary layers, latent/binary modes, parameter split."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import benchbnn
from benchbnn.core.binary import (
    BinaryConv2d,
    BinaryLinear,
    approx_sign,
    parameter_breakdown,
    set_latent_mode,
    sgn0,
    split_parameters,
    ste_sign,
)
from benchbnn.core.errors import BenchbnnError

floats = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, width=32)
vectors = st.lists(floats, min_size=1, max_size=64).map(lambda v: torch.tensor(v))


# --- sign functions ----------------------------------------------------------------------------


def test_sgn0_maps_zero_to_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0])
    assert sgn0(x).tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0, 1.0]


@settings(max_examples=50, deadline=None)
@given(vectors)
def test_sgn0_is_plus_or_minus_one_with_the_sign_of_x(x):
    s = sgn0(x)
    assert set(s.unique().tolist()) <= {-1.0, 1.0}
    assert torch.all(s * x >= 0)


@settings(max_examples=50, deadline=None)
@given(vectors, st.floats(min_value=0.1, max_value=3.0))
def test_ste_sign_passes_gradient_exactly_where_abs_x_within_clip(x, clip):
    x = x.clone().requires_grad_(True)
    upstream = torch.arange(1, x.numel() + 1, dtype=torch.float32)
    y = ste_sign(x, clip)
    y.backward(upstream)
    assert torch.equal(y, sgn0(x.detach()))
    expected = torch.where(x.detach().abs() <= clip, upstream, torch.zeros_like(upstream))
    assert torch.equal(x.grad, expected)


def test_ste_sign_boundary_is_inclusive():
    x = torch.tensor([-1.0, 1.0, 1.0000001, -1.25], requires_grad=True)
    ste_sign(x, 1.0).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


@settings(max_examples=50, deadline=None)
@given(vectors)
def test_approx_sign_gradient_is_two_minus_two_abs_x_inside_unit_interval(x):
    x = x.clone().requires_grad_(True)
    y = approx_sign(x)
    y.sum().backward()
    assert torch.equal(y, sgn0(x.detach()))
    inside = x.detach().abs() <= 1
    expected = torch.where(inside, 2 - 2 * x.detach().abs(), torch.zeros_like(x))
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-6)


def test_approx_sign_hand_values():
    x = torch.tensor([0.0, 0.5, -0.25, 1.0, 1.5], requires_grad=True)
    approx_sign(x).sum().backward()
    assert x.grad.tolist() == [2.0, 1.0, 1.5, 0.0, 0.0]


# --- binary layers -----------------------------------------------------------------------------


def _conv(**kwargs) -> BinaryConv2d:
    torch.manual_seed(0)
    return BinaryConv2d(3, 4, 3, padding=1, **kwargs)


def test_new_binary_layer_is_in_latent_mode_without_bias():
    layer = _conv()
    assert layer.latent and layer.clip == 1.0
    assert layer.bias is None
    assert BinaryLinear(5, 2).bias is None


def test_latent_forward_uses_sign_of_weights():
    layer = _conv()
    x = torch.randn(2, 3, 5, 5)
    expected = F.conv2d(x, sgn0(layer.weight.detach()), padding=1)
    torch.testing.assert_close(layer(x), expected)


def test_binary_mode_uses_weights_as_they_are():
    layer = _conv()
    set_latent_mode(layer, False)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight.detach(), padding=1))


def test_latent_scaling_multiplies_each_output_channel_by_mean_abs_weight():
    layer = _conv(scale_weights=True)
    x = torch.randn(2, 3, 5, 5)
    w = layer.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3))
    expected = F.conv2d(x, sgn0(w) * alpha.view(-1, 1, 1, 1), padding=1)
    torch.testing.assert_close(layer(x), expected)


def test_latent_scale_is_not_differentiated():
    layer = _conv(scale_weights=True)
    x = torch.randn(2, 3, 5, 5)
    upstream = torch.randn(2, 4, 5, 5)
    layer(x).backward(upstream)
    w = layer.weight.detach()
    alpha = w.abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
    # d/dw of conv(x, sign(w)) * alpha with alpha constant and the STE: alpha * d/dW conv.
    w_free = sgn0(w).requires_grad_(True)
    F.conv2d(x, w_free, padding=1).backward(upstream)
    torch.testing.assert_close(layer.weight.grad, alpha * w_free.grad * (w.abs() <= 1))


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("clip", [1.0, 1.5])
def test_both_modes_agree_on_plus_minus_one_weights(scale, clip):
    torch.manual_seed(1)
    latent = BinaryLinear(6, 3, input_quantizer="ste_sign", scale_weights=scale)
    with torch.no_grad():
        latent.weight.copy_(sgn0(latent.weight))
    binary = copy.deepcopy(latent)
    set_latent_mode(latent, True, clip=clip)
    set_latent_mode(binary, False)
    x = torch.randn(5, 6)
    out_latent, out_binary = latent(x), binary(x)
    assert torch.equal(out_latent, out_binary)
    out_latent.square().sum().backward()
    out_binary.square().sum().backward()
    assert torch.equal(latent.weight.grad, binary.weight.grad)


def test_latent_clip_cancels_gradient_of_saturated_weights():
    layer = BinaryLinear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 1.4]]))
    set_latent_mode(layer, True, clip=1.25)
    layer(torch.ones(1, 2)).sum().backward()
    assert layer.weight.grad.tolist() == [[1.0, 0.0]]


def test_input_quantizer_binarizes_inputs_with_straight_through_gradient():
    layer = BinaryLinear(3, 1, input_quantizer="ste_sign")
    set_latent_mode(layer, False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 1.0]]))
    x = torch.tensor([[0.3, -2.0, 0.0]], requires_grad=True)
    out = layer(x)
    assert out.item() == 1.0 + 1.0 + 1.0  # sign(x) = (1, -1, 1)
    out.backward()
    assert x.grad.tolist() == [[1.0, 0.0, 1.0]]  # |x| > 1 gets no gradient


def test_unknown_input_quantizer_is_a_clear_error():
    with pytest.raises(BenchbnnError, match="unknown input quantizer 'tanh'"):
        BinaryLinear(2, 2, input_quantizer="tanh")


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan"), "x"])
def test_set_latent_mode_rejects_bad_clip(clip):
    with pytest.raises(BenchbnnError, match="clip"):
        set_latent_mode(_conv(), True, clip=clip)


# --- whole-model helpers -----------------------------------------------------------------------


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3)
        self.conv = BinaryConv2d(2, 4, 3, input_quantizer="ste_sign")
        self.bn = nn.BatchNorm2d(4)
        self.fc = BinaryLinear(4, 3, bias=True)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_split_parameters_partitions_trainable_parameters():
    model = _Toy()
    binary, real = split_parameters(model)
    assert [id(p) for p in binary] == [id(model.conv.weight), id(model.fc.weight)]
    assert {id(p) for p in real} == {
        id(model.stem.weight),
        id(model.stem.bias),
        id(model.bn.weight),
        id(model.bn.bias),
        id(model.fc.bias),
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(map(id, binary + real)) == sorted(map(id, trainable))
    assert benchbnn.split_parameters is split_parameters


def test_split_parameters_is_deterministic_and_survives_copies():
    model = _Toy()
    clone = copy.deepcopy(model)
    names = {id(p): n for n, p in model.named_parameters()}
    clone_names = {id(p): n for n, p in clone.named_parameters()}
    for mine, theirs in zip(split_parameters(model), split_parameters(clone)):
        assert [names[id(p)] for p in mine] == [clone_names[id(p)] for p in theirs]


def test_set_latent_mode_switches_every_binary_layer():
    model = _Toy()
    assert set_latent_mode(model, False) == 2
    assert not model.conv.latent and not model.fc.latent
    assert set_latent_mode(model, True, clip=1.5) == 2
    assert model.conv.latent and model.fc.clip == 1.5


def test_parameter_breakdown_counts_and_packed_size():
    model = _Toy()
    info = parameter_breakdown(model)
    assert info["binary_weights"] == 2 * 4 * 9 + 4 * 3
    assert info["real_parameters"] == (2 * 9 + 2) + (4 + 4) + 3
    assert info["frozen_parameters"] == 3 * 3 + 3
    assert info["state"] == 4 + 4  # running mean and variance; the int counter is not a value
    assert info["trainable_parameters"] == info["binary_weights"] + info["real_parameters"]
    assert info["binary_layers"] == 2
    other = info["real_parameters"] + info["frozen_parameters"] + info["state"]
    assert info["size_mb"] == (-(-info["binary_weights"] // 8) + 4 * other) / 2**20
    assert info["float32_size_mb"] == 4 * (info["binary_weights"] + other) / 2**20
    rows = {row["name"]: row for row in info["layers"]}
    assert rows["conv"]["binary_weights"] == 72 and rows["conv"]["type"] == "BinaryConv2d"
    assert rows["fc"]["binary_weights"] == 12 and rows["fc"]["real_parameters"] == 3
    assert sum(r["binary_weights"] for r in info["layers"]) == info["binary_weights"]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.booleans())
def test_binary_weights_in_breakdown_equal_split(n_in, n_out, bias):
    model = nn.Sequential(BinaryLinear(n_in, n_out, bias=bias), nn.BatchNorm1d(n_out))
    binary, real = split_parameters(model)
    info = parameter_breakdown(model)
    assert info["binary_weights"] == sum(p.numel() for p in binary) == n_in * n_out
    assert info["real_parameters"] == sum(p.numel() for p in real)
