"""Data: the toolkit dataset plugins use, and the batch pipeline the engine feeds from.

:mod:`benchbnn.data.tensors` reads image data sets once into uint8 tensor caches
(:class:`ImageTensors`, :func:`cached_tensors`); :mod:`benchbnn.data.pipeline` serves them as
whole batches augmented on the training device (:func:`build_loaders`). A dataset plugin imports
what it needs from this package.
"""

from benchbnn.data.pipeline import (
    balanced_subset,
    build_loaders,
    derived_generator,
    stratified_split,
)
from benchbnn.data.tensors import (
    ImageTensors,
    TensorImageDataset,
    cached_tensors,
    data_error,
    decode_images,
    list_image_folder,
)

__all__ = [
    "ImageTensors",
    "TensorImageDataset",
    "balanced_subset",
    "build_loaders",
    "cached_tensors",
    "data_error",
    "decode_images",
    "derived_generator",
    "list_image_folder",
    "stratified_split",
]
