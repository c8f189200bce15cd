"""Data transforms that follow the authors' code: the random crop's padding value (CIFAR-10) and
ImageNet's bicubic resizes with the 224/256 evaluation crop (docs/architectures.md)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import benchbnn
from benchbnn.core.errors import HyperparameterError
from benchbnn.data.augment import CROP_FILL_OPTION, AugmentParams, Normalizer, transform_batch
from benchbnn.data.pipeline import build_loaders
from benchbnn.data.tensors import ImageTensors
from benchbnn_plugins.datasets.imagenet import CenterSquareCrop, transforms_for

CPU = torch.device("cpu")


def white_batch(n: int = 2) -> torch.Tensor:
    return torch.full((n, 3, 32, 32), 255, dtype=torch.uint8)


def crop_at(offsets: list[list[int]]) -> AugmentParams:
    return AugmentParams(torch.tensor(offsets), torch.zeros(len(offsets), dtype=torch.bool))


# --- CIFAR-10 crop padding -------------------------------------------------------------------


def test_cifar10_declares_black_padding_as_its_default_option():
    spec = benchbnn.get_dataset("cifar10")
    assert spec.options[CROP_FILL_OPTION] == "black"
    assert spec.resolve_options({"crop_fill": "Mid-Grey"})[0][CROP_FILL_OPTION] == "mid-grey"
    with pytest.raises(HyperparameterError, match="'crop_fill' must be one of black, mid-grey"):
        spec.resolve_options({"crop_fill": "white"})


def test_cifar10_crop_at_the_largest_offset_pads_with_minus_one_by_default():
    normalizer = Normalizer(benchbnn.get_dataset("cifar10"), "crop:4,flip", 3, CPU)
    out = normalizer(white_batch(), crop_at([[8, 8], [0, 0]]))
    # offset 8 of 2 * 4: the last 4 rows and columns lie outside the image
    assert (out[0, :, 28:, :] == -1).all() and (out[0, :, :, 28:] == -1).all()
    assert (out[0, :, :28, :28] == 1).all()
    # offset 0: the first 4 rows and columns are padding
    assert (out[1, :, :4, :] == -1).all() and (out[1, :, :, :4] == -1).all()
    assert (out[1, :, 4:, 4:] == 1).all()


def test_mid_grey_padding_is_zero_after_scaling():
    spec = benchbnn.get_dataset("cifar10")
    normalizer = Normalizer(spec, "crop:4", 3, CPU, crop_fill="mid-grey")
    out = normalizer(white_batch(1), crop_at([[8, 8]]))
    assert (out[0, :, 28:, :] == 0).all() and (out[0, :, :28, :28] == 1).all()
    assert not torch.signbit(out).any()  # +0, not -0


def test_unknown_padding_is_one_clear_error():
    with pytest.raises(HyperparameterError, match="dataset 'cifar10': option 'crop_fill'"):
        Normalizer(benchbnn.get_dataset("cifar10"), "crop:4", 3, CPU, crop_fill="white")


def test_black_is_a_pixel_of_value_zero_for_any_normalization():
    offset, divisor = torch.tensor([127.5, 20.0, 0.0]), torch.tensor([127.5, 64.0, 255.0])
    out = transform_batch(white_batch(1), offset, divisor, 4, crop_at([[0, 0]]), fill=None)
    assert [out[0, c, 0, 0].item() for c in range(3)] == [-1.0, -0.3125, 0.0]
    assert not torch.signbit(out[0, 2]).any()  # 0 - 0 is +0
    assert [out[0, c, 4, 4].item() for c in range(3)] == [1.0, 235 / 64, 1.0]
    grey = transform_batch(white_batch(1), offset, divisor, 4, crop_at([[0, 0]]), fill=0.0)
    assert (grey[0, :, :4, :] == 0).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), pad=st.integers(1, 4))
def test_black_padding_equals_padding_the_uint8_image_with_zero_then_scaling(seed, pad):
    """The authors' order (pad the uint8 image with 0, crop, flip, scale) gives the same
    numbers as benchbnn's vectorized crop, for per-channel normalizations too."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (6, 3, 7, 5), generator=g, dtype=torch.uint8)
    spec = dataclasses.replace(
        benchbnn.get_dataset("cifar10"), mean=(0.2, 0.5, 0.7), std=(0.3, 0.25, 0.5)
    )
    normalizer = Normalizer(spec, f"crop:{pad},flip", 3, CPU)
    assert normalizer.crop_fill == "black" and normalizer.fill is None  # per-channel black
    params = AugmentParams.draw(normalizer.ops, 6, g)
    got = normalizer(images, params)
    padded = F.pad(images, (pad, pad, pad, pad))  # uint8, value 0
    offset, divisor = (torch.tensor(v).view(1, 3, 1, 1) for v in spec.normalization())
    for i, ((dy, dx), flip) in enumerate(zip(params.offsets.tolist(), params.flips.tolist())):
        window = padded[i : i + 1, :, dy : dy + 7, dx : dx + 5]
        window = window.flip(-1) if flip else window
        want = (window.float() - offset) / divisor
        assert torch.allclose(got[i : i + 1], want, atol=1e-6)


def fake_cifar10():
    """cifar10's spec (options, normalization, augmentation) serving 20 white images."""

    def tensors(root, split, download=False, crop_fill="black"):
        labels = torch.arange(20) % 10
        return ImageTensors(torch.full((20, 3, 32, 32), 255, dtype=torch.uint8), labels, 10)

    return dataclasses.replace(
        benchbnn.get_dataset("cifar10"), tensors=tensors, needs_data_dir=False
    )


def training_values(**options) -> set[float]:
    bundle = build_loaders(fake_cifar10(), batch_size=10, seed=0, options=options)
    return set(torch.cat([x for x, _ in bundle.train]).unique().tolist())


def test_cifar10_training_batches_are_padded_black_by_default():
    assert training_values() == {-1.0, 1.0}
    assert training_values(augmentation="none") == {1.0}


def test_cifar10_training_batches_are_padded_mid_grey_when_chosen():
    assert training_values(crop_fill="mid-grey") == {0.0, 1.0}


# --- ImageNet evaluation and training transforms ---------------------------------------------


def test_imagenet_evaluation_crops_the_central_224_of_256_then_resizes_bicubically():
    crop = transforms_for(False, 224).transforms[0]
    assert isinstance(crop, CenterSquareCrop) and (crop.size, crop.padding) == (224, 32)
    # side int(224 / 256 * shorter side); offsets (extent - side + 1) // 2
    assert crop.box(500, 375) == (86, 24, 414, 352)  # side 328
    assert crop.box(256, 256) == (16, 16, 240, 240)  # side 224: no resize needed
    assert crop.box(300, 256) == (38, 16, 262, 240)


def test_imagenet_evaluation_output_is_pils_bicubic_resize_of_the_crop():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (375, 500, 3), generator=generator, dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy())
    got = CenterSquareCrop(224)(image)
    bicubic = image.crop((86, 24, 414, 352)).resize((224, 224), Image.Resampling.BICUBIC)
    bilinear = image.crop((86, 24, 414, 352)).resize((224, 224), Image.Resampling.BILINEAR)
    assert got.size == (224, 224) and got.tobytes() == bicubic.tobytes()
    assert got.tobytes() != bilinear.tobytes()
    tensor = transforms_for(False, 224)(image)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32


def test_imagenet_training_crop_is_bicubic_with_the_authors_ranges():
    from torchvision.transforms import InterpolationMode, RandomResizedCrop

    crop = transforms_for(True, 224).transforms[0]
    assert isinstance(crop, RandomResizedCrop) and crop.size == (224, 224)
    assert crop.interpolation == InterpolationMode.BICUBIC
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))


def test_imagenet_crop_follows_option_image_size():
    crop = transforms_for(False, 96).transforms[0]
    assert crop.size == 96
    assert crop.box(256, 256) == (32, 32, 224, 224)  # side int(96 / (96 + 32) * 256) = 192
