"""The input pipeline: whole batches from memory, augmented on the training device.

:func:`build_loaders` turns a dataset name into a :class:`DataBundle` of train / validation /
test loaders. Small data sets (a plugin's ``tensors`` function) stay as one uint8 tensor,
memory-mapped from the cache; every batch is gathered by index, moved to the device as uint8
(pinned, non-blocking on CUDA) and augmented and normalized there by a few tensor operations, so
no per-image Python runs in the loop. Large data sets (a plugin's ``loader``, e.g. ImageNet)
go through a multi-worker ``DataLoader`` with the same ordering and sharding rules.

Reproducibility rules (the same for both kinds of loader):

* The order and the augmentation of an epoch are a pure function of ``(seed, epoch)``; call
  ``set_epoch`` before iterating. An image's augmentation in an epoch does not depend on the
  rank, the world size or the batch size.
* ``subset`` (class-balanced) and the validation split (stratified, ``val_fraction`` of the
  subset or of the whole training split) use the fixed :data:`SPLIT_SEED`, not the run seed, so
  every run and every tuning trial trains and selects on the same images; the test split is
  never used for either.
* Training loaders shard every epoch: the epoch's permutation is cut to a multiple of the world
  size and rank r takes every world_size-th position from r, so ranks get disjoint, equal parts;
  each rank then drops its last partial batch, so every rank runs ``len(loader)`` steps.
* Evaluation loaders (validation, test) do not shuffle, augment or drop anything: rank r reads
  positions r, r + world_size, ... so every image is evaluated exactly once across ranks. Shards
  then differ by at most one image (and ranks may differ by one batch): sum correct counts and
  sample counts over ranks after the loop, not per batch.

``batch_size`` is per rank (as with PyTorch's ``DistributedSampler``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchbnn.core.config import check_budget
from benchbnn.core.errors import BenchbnnError, DataError
from benchbnn.core.plugins import get_dataset
from benchbnn.core.specs import DatasetSpec
from benchbnn.data.augment import CROP_FILL_OPTION, AugmentParams, Normalizer
from benchbnn.data.tensors import ImageTensors

#: Seed of the subset and validation splits: fixed, so they are the same for every run seed.
SPLIT_SEED = 20210617


def derived_generator(*keys: Any) -> torch.Generator:
    """A CPU generator seeded from ``keys`` by a stable hash (the same in every process)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


# --- choosing images: subsets, validation splits, shards --------------------------------------


def _grouped_by_class(labels: torch.Tensor, num_classes: int, seed: Any) -> list[torch.Tensor]:
    """Indices of each class, each list in a fixed random order."""
    order = torch.randperm(len(labels), generator=derived_generator("classes", seed))
    order = order[torch.argsort(labels[order], stable=True)]
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    return list(torch.split(order, counts))


def _fill_quotas(available: list[int], total: int) -> list[int]:
    """Spread ``total`` over classes as evenly as their sizes allow (lower classes first on
    ties)."""
    quotas = [0] * len(available)
    left = total
    while left > 0:
        open_ = [c for c, a in enumerate(available) if quotas[c] < a]
        share = max(1, left // len(open_))
        for c in open_:
            take = min(share, available[c] - quotas[c], left)
            quotas[c] += take
            left -= take
            if left == 0:
                break
    return quotas


def balanced_subset(
    labels: torch.Tensor, size: int, num_classes: int, seed: Any = SPLIT_SEED
) -> torch.Tensor:
    """Sorted indices of ``size`` images whose class counts are as equal as the data allows."""
    groups = _grouped_by_class(labels, num_classes, ("subset", seed))
    quotas = _fill_quotas([len(g) for g in groups], size)
    chosen = torch.cat([g[:q] for g, q in zip(groups, quotas)])
    return torch.sort(chosen).values


def stratified_split(
    labels: torch.Tensor, holdout: int, num_classes: int, seed: Any = SPLIT_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, held_out)`` sorted indices; ``holdout`` images set aside in class proportions.

    Each class gives ``floor(n_c * holdout / N)`` images, and the remaining ones go to the
    classes with the largest remainders (lower classes first on ties).
    """
    groups = _grouped_by_class(labels, num_classes, ("split", seed))
    total = len(labels)
    exact = [len(g) * holdout / total for g in groups]
    quotas = [math.floor(e) for e in exact]
    by_remainder = sorted(range(num_classes), key=lambda c: (-(exact[c] - quotas[c]), c))
    for c in by_remainder[: holdout - sum(quotas)]:
        quotas[c] += 1
    held = torch.cat([g[:q] for g, q in zip(groups, quotas)])
    kept = torch.cat([g[q:] for g, q in zip(groups, quotas)])
    return torch.sort(kept).values, torch.sort(held).values


def train_positions(n: int, seed: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's positions (into ``range(n)``) for one training epoch, in visiting order."""
    order = torch.randperm(n, generator=derived_generator("order", seed, epoch))
    per_rank = n // world_size
    return order[rank : per_rank * world_size : world_size]


def eval_positions(n: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's positions for evaluation: every image once across ranks, in order."""
    return torch.arange(n)[rank::world_size]


# --- loaders ----------------------------------------------------------------------------------


#: Intra-op threads for the pipeline's CPU work. Its tensors are small (a batch of images), and
#: between the model's parallel regions a multi-threaded pipeline mostly waits for threads to
#: wake up: on 2 busy cores one thread cut the loader's share of a BinaryNet training loop from
#: about 2.2% to 0.3% (benchmarks/bench_pipeline.py measures it).
PIPELINE_THREADS = 1


def _is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


@contextlib.contextmanager
def _pipeline_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    if threads <= PIPELINE_THREADS:
        yield
        return
    torch.set_num_threads(PIPELINE_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _ShardedLoader:
    """What both loaders share: which positions of ``indices`` this rank reads in an epoch."""

    def __init__(
        self,
        indices: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        train: bool,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.indices = indices
        self.batch_size = batch_size
        self.seed = seed
        self.train = train
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        #: images this loader serves over all ranks (before training drops remainders)
        self.dataset_size = len(indices)
        if train:
            self._batches = self.dataset_size // world_size // batch_size
            #: images this rank yields per epoch
            self.num_samples = self._batches * batch_size
        else:
            self.num_samples = len(range(rank, self.dataset_size, world_size))
            self._batches = math.ceil(self.num_samples / batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration produces."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._batches

    def _positions(self) -> torch.Tensor:
        if not self.train:
            return eval_positions(self.dataset_size, self.rank, self.world_size)
        positions = train_positions(
            self.dataset_size, self.seed, self.epoch, self.rank, self.world_size
        )
        return positions[: self.num_samples]

    def _augment_generator(self) -> torch.Generator:
        return derived_generator("augment", self.seed, self.epoch)


class BatchLoader(_ShardedLoader):
    """Batches ``(images float32 NCHW, labels int64)`` on ``device`` from an in-memory split.

    ``indices`` selects the images of ``data`` this loader serves (a subset or a validation
    split). Training loaders shuffle, augment, shard and drop the last partial batch; evaluation
    loaders do none of these (see the module docstring).
    """

    def __init__(
        self, data: ImageTensors, indices: torch.Tensor, normalizer: Normalizer, **kwargs: Any
    ):
        super().__init__(indices, **kwargs)
        self.data = data
        self.normalizer = normalizer

    def _batch(
        self, positions: torch.Tensor, params: AugmentParams | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices[positions]
        x = self.data.images.index_select(0, index)
        y = self.data.labels.index_select(0, index)
        if _is_cuda(self.device):
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
        batch_params = params.take(positions, self.device) if params is not None else None
        return self.normalizer(x, batch_params), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        positions = self._positions()
        params = None
        if self.train and self.normalizer.ops:
            params = AugmentParams.draw(
                self.normalizer.ops, self.dataset_size, self._augment_generator()
            )
        for start in range(0, len(positions), self.batch_size):
            with _pipeline_threads():
                batch = self._batch(positions[start : start + self.batch_size], params)
            yield batch  # outside the context: the model runs with all its threads


class _SeededItems(torch.utils.data.Dataset):
    """Reads ``dataset[index]`` with the CPU RNG seeded per item, so random transforms are a
    pure function of (seed, epoch, index) whatever the number of workers; names bad files."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int | None]):
        index, seed = item
        try:
            if seed is None:
                return self.dataset[index]
            rng = torch.random.default_generator
            state = rng.get_state()
            rng.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                rng.set_state(state)
        except BenchbnnError:
            raise
        except Exception as exc:
            samples = getattr(self.dataset, "samples", None)
            where = samples[index][0] if samples is not None else f"item {index}"
            raise DataError(f"cannot read {where}: {exc!r}") from None


class StreamLoader(_ShardedLoader):
    """The same interface as :class:`BatchLoader` over a torch ``Dataset`` read by workers."""

    def __init__(self, dataset: Any, indices: torch.Tensor, *, num_workers: int = 0, **kwargs: Any):
        super().__init__(indices, **kwargs)
        self.dataset = _SeededItems(dataset)
        self.num_workers = num_workers

    def _items(self) -> list[tuple[int, int | None]]:
        positions = self._positions()
        index = self.indices[positions].tolist()
        if not self.train:
            return [(i, None) for i in index]
        seeds = torch.randint(0, 2**62, (self.dataset_size,), generator=self._augment_generator())
        return list(zip(index, seeds[positions].tolist()))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._items(),
            num_workers=self.num_workers,
            pin_memory=_is_cuda(self.device),
            drop_last=self.train,
            persistent_workers=False,
            generator=derived_generator("workers", self.seed, self.epoch),  # not the global RNG
        )
        for x, y in loader:
            yield (
                x.to(self.device, non_blocking=True),
                torch.as_tensor(y, dtype=torch.int64).to(self.device, non_blocking=True),
            )


# --- the Dataset view of in-memory data (what DatasetSpec.load returns) -------------------------


# --- putting it together ----------------------------------------------------------------------


@dataclass
class DataBundle:
    """The loaders of one run and what the model needs to know about the data."""

    train: BatchLoader | StreamLoader
    val: BatchLoader | StreamLoader | None
    test: BatchLoader | StreamLoader
    num_classes: int
    image_shape: tuple[int, int, int]
    spec: DatasetSpec
    classes: tuple[str, ...] = field(default=())

    @property
    def sizes(self) -> dict[str, int]:
        """Images in each part over all ranks (before the training loader drops remainders)."""
        return {
            "train": self.train.dataset_size,
            "val": self.val.dataset_size if self.val is not None else 0,
            "test": self.test.dataset_size,
        }


def _check_arguments(
    batch_size: int,
    eval_batch_size: int,
    subset: int | None,
    val_fraction: float,
    rank: int,
    world_size: int,
) -> None:
    check_budget(batch_size=batch_size, subset=subset, val_fraction=val_fraction)
    for name, value in (("evaluation batch size", eval_batch_size), ("world size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BenchbnnError(f"{name} must be a positive whole number, got {value!r}")
    if not (isinstance(rank, int) and 0 <= rank < world_size):
        raise BenchbnnError(f"rank {rank!r} is outside [0, {world_size})")


def _select(
    labels: torch.Tensor | None,
    n: int,
    num_classes: int,
    subset: int | None,
    val_fraction: float,
    dataset: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training indices, validation indices or None) into a training split of ``n`` images."""
    if labels is None:  # a Dataset without targets: split without stratification
        labels, num_classes = torch.zeros(n, dtype=torch.int64), 1
    indices = torch.arange(n)
    if subset is not None:
        if subset > n:
            raise BenchbnnError(
                f"subset {subset} is larger than the training split of {dataset!r} ({n} images)"
            )
        indices = balanced_subset(labels, subset, num_classes)
    if not val_fraction:
        return indices, None
    holdout = min(max(1, round(len(indices) * val_fraction)), len(indices) - 1)
    kept, held = stratified_split(labels[indices], holdout, num_classes)
    return indices[kept], indices[held]


def default_num_workers() -> int:
    """Workers for streamed data sets: $BENCHBNN_NUM_WORKERS, else min(8, CPU count)."""
    configured = os.environ.get("BENCHBNN_NUM_WORKERS")
    if configured:
        try:
            return max(0, int(configured))
        except ValueError:
            raise BenchbnnError(
                f"BENCHBNN_NUM_WORKERS must be a whole number, got {configured!r}"
            ) from None
    return min(8, os.cpu_count() or 1)


def build_loaders(
    dataset: str | DatasetSpec,
    *,
    data_dir: str | Path | None = None,
    batch_size: int,
    seed: int,
    eval_batch_size: int | None = None,
    subset: int | None = None,
    val_fraction: float = 0.0,
    download: bool = False,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    options: Mapping[str, Any] | None = None,
    num_workers: int | None = None,
) -> DataBundle:
    """Train, validation and test loaders of ``dataset`` for one rank of a run.

    ``subset`` takes that many training images (class-balanced); ``val_fraction`` of them is
    held out as the validation split (stratified; ``val`` is None when it is 0). ``options`` are
    the data set's options plus ``augmentation`` (e.g. ``"none"``). ``num_workers`` only
    matters for streamed data sets (default :func:`default_num_workers`).
    """

    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    _check_arguments(batch_size, eval_batch_size, subset, val_fraction, rank, world_size)
    device = torch.device(device)
    loader_options, augmentation = spec.resolve_options(options)
    common = {"seed": seed, "device": device, "rank": rank, "world_size": world_size}
    train: BatchLoader | StreamLoader
    val: BatchLoader | StreamLoader | None
    test: BatchLoader | StreamLoader

    if spec.in_memory:
        train_data = spec.read_tensors(data_dir, "train", download, **loader_options)
        test_data = spec.read_tensors(data_dir, "test", download, **loader_options)
        if (
            test_data.image_shape != train_data.image_shape
            or test_data.num_classes != train_data.num_classes
        ):
            raise DataError(
                f"dataset {spec.name!r}: train and test splits differ in image shape "
                f"or number of classes (data directory: {data_dir})"
            )
        num_classes, shape = train_data.num_classes, train_data.image_shape
        train_idx, val_idx = _select(
            train_data.labels, len(train_data), num_classes, subset, val_fraction, spec.name
        )
        channels = shape[0]
        crop_fill = loader_options.get(CROP_FILL_OPTION)
        train_norm = Normalizer(spec, augmentation, channels, device, crop_fill=crop_fill)
        eval_norm = Normalizer(spec, "", channels, device)

        def make_batches(
            data: ImageTensors, idx: torch.Tensor, norm: Normalizer, bs: int, train: bool
        ) -> BatchLoader:
            return BatchLoader(data, idx, norm, batch_size=bs, train=train, **common)

        train = make_batches(train_data, train_idx, train_norm, batch_size, True)
        val = (
            make_batches(train_data, val_idx, eval_norm, eval_batch_size, False)
            if val_idx is not None
            else None
        )
        test = make_batches(
            test_data, torch.arange(len(test_data)), eval_norm, eval_batch_size, False
        )
        classes = train_data.classes
    else:
        augment = augmentation.strip().lower() not in ("", "none")
        train_set = spec.load(data_dir, "train", download, augment=augment, **options or {})
        test_set = spec.load(data_dir, "test", download, augment=False, **options or {})
        classes = tuple(getattr(train_set, "classes", ()) or ())
        num_classes = len(classes) or spec.num_classes
        targets = getattr(train_set, "targets", None)
        labels = torch.as_tensor(targets, dtype=torch.int64) if targets is not None else None
        train_idx, val_idx = _select(
            labels, len(train_set), num_classes, subset, val_fraction, spec.name
        )
        workers = default_num_workers() if num_workers is None else num_workers

        def make_stream(ds: Any, idx: torch.Tensor, bs: int, train: bool) -> StreamLoader:
            return StreamLoader(ds, idx, batch_size=bs, train=train, num_workers=workers, **common)

        train = make_stream(train_set, train_idx, batch_size, True)
        val = None
        if val_idx is not None:
            val_set = spec.load(data_dir, "train", download, augment=False, **options or {})
            val = make_stream(val_set, val_idx, eval_batch_size, False)
        test = make_stream(test_set, torch.arange(len(test_set)), eval_batch_size, False)
        shape = _stream_shape(spec, loader_options)

    if len(train) == 0:
        raise BenchbnnError(
            f"the training split of {spec.name!r} has {train.dataset_size} images"
            f"{' after the validation split' if val is not None else ''}, fewer than one batch of "
            f"{batch_size} per rank x {world_size} rank(s); "
            f"lower the batch size or raise the subset"
        )
    return DataBundle(train, val, test, num_classes, tuple(shape), spec, tuple(classes))


def _stream_shape(spec: DatasetSpec, options: Mapping[str, Any]) -> tuple[int, int, int]:
    """A streamed data set's image shape: an ``image_size`` option overrides the spec's H x W."""
    channels, height, width = spec.image_shape
    size = options.get("image_size")
    return (channels, int(size), int(size)) if size else (channels, height, width)
