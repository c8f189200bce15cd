"""The batch pipeline: what build_loaders promises about order, augmentation, splits and shards.

Most tests use a "counting" data set whose image i carries i in its first two pixels (and whose
normalization is the identity), so every yielded image can be traced back to its index.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import benchbnn
from benchbnn.core.errors import BenchbnnError, HyperparameterError, PluginError
from benchbnn.data.augment import AugmentParams, transform_batch
from benchbnn.data.pipeline import (
    SPLIT_SEED,
    balanced_subset,
    build_loaders,
    eval_positions,
    stratified_split,
    train_positions,
)
from benchbnn.data.tensors import ImageTensors


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHBNN_CACHE_DIR", str(tmp_path / "cache"))


def counting_spec(n_train=120, n_test=50, num_classes=4, augmentation="", size=6):
    """Image i has pixel (0,0,0) = i % 256 and (0,0,1) = i // 256; label i % num_classes."""

    def tensors(root=None, split="train", download=False):
        n = n_train if split == "train" else n_test
        images = torch.full((n, 1, size, size), 7, dtype=torch.uint8)
        ids = torch.arange(n)
        images[:, 0, 0, 0] = (ids % 256).to(torch.uint8)
        images[:, 0, 0, 1] = (ids // 256).to(torch.uint8)
        return ImageTensors(images, ids % num_classes, num_classes)

    return benchbnn.DatasetSpec(
        name="counting",
        loader=None,
        tensors=tensors,
        num_classes=num_classes,
        image_shape=(1, size, size),
        pixel_max=1.0,
        augmentation=augmentation,
        needs_data_dir=False,
    )


def ids_of(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0] + 256 * images[:, 0, 0, 1]).round().long().tolist()


def all_ids(loader) -> list[int]:
    return [i for x, _ in loader for i in ids_of(x)]


# --- the contract -------------------------------------------------------------------------------


def test_digits_bundle_is_the_documented_split_scaled_to_minus_one_one():
    bundle = build_loaders("digits", batch_size=64, seed=0)
    assert bundle.sizes == {"train": 1437, "val": 0, "test": 360}
    assert bundle.num_classes == 10 and bundle.image_shape == (1, 8, 8) and bundle.val is None
    assert len(bundle.train) == 1437 // 64 and len(bundle.test) == 6
    x, y = next(iter(bundle.train))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == -1.0 and x.max() == 1.0
    test_labels = torch.cat([y for _, y in bundle.test])
    assert len(test_labels) == 360 and set(torch.bincount(test_labels).tolist()) <= {35, 36, 37}


def test_train_loader_drops_the_last_partial_batch_and_eval_keeps_everything():
    bundle = build_loaders(counting_spec(), batch_size=32, eval_batch_size=16, seed=1)
    assert len(bundle.train) == 3 and bundle.train.num_samples == 96
    assert sum(len(y) for _, y in bundle.train) == 96
    assert sorted(all_ids(bundle.test)) == list(range(50))
    assert len(bundle.test) == 4 and bundle.test.num_samples == 50


def test_order_and_augmentation_are_a_pure_function_of_seed_and_epoch():
    def epoch(seed, e):
        bundle = build_loaders(
            "synthetic",
            batch_size=32,
            seed=seed,
            options={"train_size": 96, "size": 8, "augmentation": "crop:2,flip"},
        )
        bundle.train.set_epoch(e)
        return torch.cat([x for x, _ in bundle.train])

    first = epoch(0, 3)
    assert torch.equal(first, epoch(0, 3))
    assert not torch.equal(first, epoch(0, 4))
    assert not torch.equal(first, epoch(1, 3))


def test_set_epoch_goes_back_to_an_earlier_epoch():
    bundle = build_loaders(counting_spec(augmentation="flip"), batch_size=10, seed=5)
    bundle.train.set_epoch(2)
    before = [x for x, _ in bundle.train]
    bundle.train.set_epoch(7)
    list(bundle.train)
    bundle.train.set_epoch(2)
    after = [x for x, _ in bundle.train]
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(before, after))


def test_iterating_does_not_touch_the_global_rng():
    bundle = build_loaders(counting_spec(augmentation="crop:1,flip"), batch_size=10, seed=0)
    state = torch.random.get_rng_state()
    list(bundle.train)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("world_size", [2, 3])
def test_training_shards_are_disjoint_equal_and_cover_the_epoch(world_size):
    n, batch = 120, 5
    shards = []
    for rank in range(world_size):
        bundle = build_loaders(
            counting_spec(n_train=n), batch_size=batch, seed=4, rank=rank, world_size=world_size
        )
        bundle.train.set_epoch(1)
        shards.append(all_ids(bundle.train))
        assert len(bundle.train) == n // world_size // batch
    assert len({len(s) for s in shards}) == 1
    everything = [i for s in shards for i in s]
    assert len(set(everything)) == len(everything) == n


def test_ranks_run_the_same_number_of_steps_when_the_split_does_not_divide():
    lengths = {
        len(
            build_loaders(
                counting_spec(n_train=103), batch_size=8, seed=0, rank=r, world_size=3
            ).train
        )
        for r in range(3)
    }
    assert lengths == {103 // 3 // 8}


def test_evaluation_shards_read_every_image_exactly_once():
    seen = []
    for rank in range(3):
        bundle = build_loaders(
            counting_spec(n_test=50), batch_size=4, seed=0, rank=rank, world_size=3
        )
        seen += all_ids(bundle.test)
        assert bundle.test.num_samples in (16, 17)
    assert sorted(seen) == list(range(50))


def test_an_images_augmentation_does_not_depend_on_the_world_size():
    def epoch_rows(rank, world_size):
        bundle = build_loaders(
            "synthetic",
            batch_size=12,
            seed=9,
            rank=rank,
            world_size=world_size,
            options={"train_size": 48, "size": 6, "augmentation": "crop:2,flip"},
        )
        bundle.train.set_epoch(2)
        return [row for x, _ in bundle.train for row in x.flatten(1).tolist()]

    alone = sorted(epoch_rows(0, 1))
    together = sorted(epoch_rows(0, 2) + epoch_rows(1, 2))
    assert alone == together


def test_subset_is_class_balanced_and_the_same_for_every_seed():
    spec = counting_spec(n_train=120, num_classes=4)
    picked = [
        sorted(all_ids(build_loaders(spec, batch_size=1, seed=s, subset=22).train)) for s in (0, 1)
    ]
    assert picked[0] == picked[1] and len(picked[0]) == 22
    assert sorted(torch.bincount(torch.tensor(picked[0]) % 4).tolist()) == [5, 5, 6, 6]


def test_validation_split_is_stratified_fixed_and_disjoint_from_training():
    spec = counting_spec(n_train=120, num_classes=4)
    bundles = [build_loaders(spec, batch_size=1, seed=s, val_fraction=0.25) for s in (0, 3)]
    val = [sorted(all_ids(b.val)) for b in bundles]
    assert val[0] == val[1] and len(val[0]) == 30
    assert torch.bincount(torch.tensor(val[0]) % 4).tolist() == [8, 8, 7, 7]  # ties: lower classes
    train = set(all_ids(bundles[0].train))
    assert not train & set(val[0]) and len(train) == 90
    assert bundles[0].sizes == {"train": 90, "val": 30, "test": 50}


def test_validation_is_taken_from_the_subset_and_is_not_augmented():
    spec = counting_spec(n_train=120, augmentation="crop:3,flip")
    bundle = build_loaders(spec, batch_size=4, seed=0, subset=40, val_fraction=0.1)
    assert bundle.sizes["val"] == 4 and bundle.sizes["train"] == 36
    x, _ = next(iter(bundle.val))
    assert (x[:, :, 2:, 2:] == 7).all()  # untouched background: no crop, no flip


# --- augmentation -------------------------------------------------------------------------------


def reference_crop_flip(images, offset, divisor, pad, offsets, flips):
    """Per-image reference: normalize, zero-pad, slice the window, mirror."""
    out = []
    height, width = images.shape[2:]
    for image, (dy, dx), flip in zip(images, offsets.tolist(), flips.tolist()):
        normalized = (image.float() - offset.view(-1, 1, 1)) / divisor.view(-1, 1, 1)
        window = F.pad(normalized, (pad, pad, pad, pad))[:, dy : dy + height, dx : dx + width]
        out.append(window.flip(-1) if flip else window)
    return torch.stack(out)


@settings(max_examples=25, deadline=None)
@given(pad=st.integers(0, 4), seed=st.integers(0, 2**31), channels=st.sampled_from([1, 3]))
def test_vectorized_crop_and_flip_match_the_per_image_reference(pad, seed, channels):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (9, channels, 7, 5), generator=g, dtype=torch.uint8)
    offset, divisor = (
        torch.rand(channels, generator=g) * 200,
        torch.rand(channels, generator=g) * 100 + 1,
    )
    params = AugmentParams.draw((("crop", pad), ("flip", 0)), 9, g)
    got = transform_batch(images, offset, divisor, pad, params)
    want = reference_crop_flip(images, offset, divisor, pad, params.offsets, params.flips)
    assert torch.allclose(got, want)


def test_cifar_recipe_scales_to_exactly_minus_one_one_and_pads_with_zero():
    offset, divisor = benchbnn.get_dataset("cifar10").normalization()
    assert offset == divisor == [127.5] * 3
    images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    images[1] = 0
    params = AugmentParams(torch.tensor([[0, 8], [4, 4]]), torch.tensor([False, True]))
    out = transform_batch(images, torch.tensor(offset), torch.tensor(divisor), 4, params)
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, 28:] == 0).all()
    assert (out[0, :, 4:, :28] == 1).all() and (out[1] == -1).all()
    assert not torch.signbit(out[0]).any()  # padding is +0, not -0


# --- index selection properties ------------------------------------------------------------------

labels_strategy = st.lists(st.integers(0, 4), min_size=1, max_size=80)


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, data=st.data())
def test_balanced_subset_counts_differ_by_one_unless_a_class_ran_out(labels, data):
    labels = torch.tensor(labels)
    size = data.draw(st.integers(1, len(labels)))
    chosen = balanced_subset(labels, size, 5)
    assert len(chosen) == size == len(set(chosen.tolist()))
    got, available = (
        torch.bincount(labels[chosen], minlength=5),
        torch.bincount(labels, minlength=5),
    )
    for a in range(5):
        for b in range(5):
            if got[a] < got[b] - 1:
                assert got[a] == available[a]


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, data=st.data())
def test_stratified_split_partitions_and_keeps_class_shares(labels, data):
    labels = torch.tensor(labels)
    holdout = data.draw(st.integers(0, len(labels)))
    kept, held = stratified_split(labels, holdout, 5, seed=SPLIT_SEED)
    assert len(held) == holdout
    assert sorted(kept.tolist() + held.tolist()) == list(range(len(labels)))
    share = torch.bincount(labels, minlength=5).double() * holdout / len(labels)
    assert ((torch.bincount(labels[held], minlength=5) - share).abs() < 1).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 200),
    world_size=st.integers(1, 5),
    seed=st.integers(0, 10),
    epoch=st.integers(0, 5),
)
def test_positions_shard_disjointly(n, world_size, seed, epoch):
    train = [train_positions(n, seed, epoch, r, world_size).tolist() for r in range(world_size)]
    flat = [p for shard in train for p in shard]
    assert {len(s) for s in train} == {n // world_size}
    assert len(set(flat)) == len(flat) and all(0 <= p < n for p in flat)
    evaluation = sorted(
        p for r in range(world_size) for p in eval_positions(n, r, world_size).tolist()
    )
    assert evaluation == list(range(n))


# --- the Dataset view and the spec ----------------------------------------------------------------


def test_load_returns_a_torch_dataset_of_normalized_images():
    spec = benchbnn.get_dataset("synthetic")
    plain = spec.load(split="test", num_classes=3, size=5, test_size=30)
    image, label = plain[4]
    assert image.shape == (3, 5, 5) and image.dtype == torch.float32 and isinstance(label, int)
    assert len(plain) == 30 and image.min() >= -1.0 and image.max() <= 1.0
    augmented = benchbnn.get_dataset("cifar10")
    assert augmented.augmentation == "crop:4,flip"


def test_load_augments_the_training_split_per_item():
    spec = counting_spec(augmentation="crop:2")
    dataset = spec.load(split="train")
    torch.manual_seed(0)
    shifted = [dataset[0][0] for _ in range(20)]
    assert any(not torch.equal(shifted[0], s) for s in shifted)
    plain = spec.load(split="train", augment=False)
    assert torch.equal(plain[0][0], plain[0][0])


def test_synthetic_options_change_shape_and_classes():
    bundle = build_loaders(
        "synthetic",
        batch_size=8,
        seed=0,
        options={"num_classes": 3, "channels": 1, "size": 12, "train_size": 30},
    )
    assert bundle.num_classes == 3 and bundle.image_shape == (1, 12, 12)
    assert bundle.sizes["train"] == 30
    labels = torch.cat([y for _, y in bundle.train])
    assert labels.max() < 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": 8, "val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 8, "subset": 10_000}, "subset 10000 is larger"),
        ({"batch_size": 8, "rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 4096}, "fewer than one batch"),
        ({"batch_size": 8, "options": {"size": "big"}}, "size"),
        ({"batch_size": 8, "options": {"colour": 1}}, "no option 'colour'"),
        (
            {"batch_size": 8, "options": {"augmentation": "rotate:9"}},
            "unknown augmentation 'rotate'",
        ),
        ({"batch_size": 8, "options": {"train_size": 0}}, "train_size"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs, message):
    with pytest.raises(BenchbnnError, match=message):
        build_loaders("synthetic", seed=0, **kwargs)


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(BenchbnnError, match="cifar10"):
        build_loaders("cifar-10", batch_size=8, seed=0)


def test_a_dataset_that_needs_files_asks_for_a_data_directory():
    with pytest.raises(BenchbnnError, match="--data-dir"):
        build_loaders("cifar10", batch_size=8, seed=0)


def tensors_ok(root=None, split="train", download=False):
    return None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tensors": None}, "loader or a tensors function"),
        ({"augmentation": "crop"}, "needs a padding"),
        ({"std": (0.0,)}, "positive"),
        ({"mean": (0.1, 0.2)}, "mean needs 1 or 1 values"),
        ({"options": {"augmentation": "x"}}, "reserved"),
        ({"tensors": lambda root, split: None}, "does not accept"),
    ],
)
def test_malformed_dataset_specs_are_rejected_at_load_time(changes, message):
    fields = {
        "name": "bad",
        "loader": None,
        "tensors": tensors_ok,
        "num_classes": 2,
        "image_shape": (1, 4, 4),
        **changes,
    }
    with pytest.raises(PluginError, match=message):
        benchbnn.DatasetSpec(**fields).validate()


def test_spec_options_are_type_checked():
    with pytest.raises(HyperparameterError, match="size"):
        benchbnn.get_dataset("synthetic").resolve_options({"size": "x"})
    assert benchbnn.get_dataset("synthetic").resolve_options({"size": "16"})[0]["size"] == 16
