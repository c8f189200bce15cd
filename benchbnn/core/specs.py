"""The frozen records that plugins return from their registration hooks.

A plugin describes what it offers as data (names, defaults, valid ranges, search spaces) and a
factory that builds the real object. The host validates every record once, when plugins load,
so that a mistake in a plugin is reported with the plugin's name instead of surfacing mid-run.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from benchbnn.core.errors import BenchbnnError, HyperparameterError, PluginError, did_you_mean

_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def check_name(name: str, kind: str) -> None:
    """Plugin names are lower-case kebab-case so that they read the same in TOML, CLI and URLs."""
    if not isinstance(name, str) or not _KEBAB.match(name):
        raise PluginError(
            f"{kind} name {name!r} is not lower-case kebab-case (letters, digits and single dashes)"
        )


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default, the range a value must lie in, and how to search it.

    ``low``/``high`` bound every value a user may set (inclusive). ``search`` is the range an
    Optuna study explores by default (``log=True`` samples it log-uniformly); ``None`` means the
    hyperparameter is not tuned. Booleans are searched over ``(False, True)`` when ``search`` is
    set to any truthy value.
    """

    name: str
    default: Any
    low: float | None = None
    high: float | None = None
    search: tuple[float, float] | None = None
    log: bool = False
    help: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def schedulable(self) -> bool:
        """Only real-valued hyperparameters can follow a schedule."""
        return self.kind is float

    def coerce(self, value: Any, owner: str = "") -> Any:
        """Return ``value`` converted to this hyperparameter's type, or raise a clear error."""
        where = f" of {owner}" if owner else ""
        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
                return value.lower() in {"true", "1", "yes"}
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise HyperparameterError(
                f"hyperparameter {self.name!r}{where} must be true or false, got {value!r}"
            )
        if kind in (int, float):
            if isinstance(value, bool):
                raise HyperparameterError(
                    f"hyperparameter {self.name!r}{where} must be a number, got {value!r}"
                )
            try:
                number = kind(value) if not isinstance(value, str) else kind(float(value))
            except (TypeError, ValueError):
                raise HyperparameterError(
                    f"hyperparameter {self.name!r}{where} must be a number, got {value!r}"
                ) from None
            if kind is int and not isinstance(value, int) and float(value) != number:
                raise HyperparameterError(
                    f"hyperparameter {self.name!r}{where} must be a whole number, got {value!r}"
                )
            if isinstance(number, float) and not math.isfinite(number):
                raise HyperparameterError(
                    f"hyperparameter {self.name!r}{where} must be finite, got {value!r}"
                )
            self.check_range(number, owner)
            return number
        return value

    def check_range(self, value: float, owner: str = "") -> None:
        where = f" of {owner}" if owner else ""
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise HyperparameterError(
                f"hyperparameter {self.name!r}{where} = {value!r} is outside its valid range "
                f"[{self.low}, {self.high}]"
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind.__name__,
            "default": self.default,
            "low": self.low,
            "high": self.high,
            "search": list(self.search) if isinstance(self.search, tuple) else self.search,
            "log": self.log,
            "help": self.help,
        }


def _accepted_keywords(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``factory`` accepts, or None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def resolve_hparams(
    owner: str, hparams: Iterable[HParam], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Defaults updated with ``overrides``, every value checked for name, type and range."""
    table = {h.name: h for h in hparams}
    resolved = {name: h.default for name, h in table.items()}
    for key, value in overrides.items():
        if key not in table:
            raise HyperparameterError(
                f"{owner} has no hyperparameter {key!r}.{did_you_mean(key, table)} "
                f"Valid names: {', '.join(sorted(table)) or 'none'}."
            )
        resolved[key] = table[key].coerce(value, owner)
    return resolved


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer plugin: ``factory(binary_params, real_params, **hparams)`` -> Optimizer.

    ``latent_weights`` is True for optimizers whose "binary" parameters are real-valued latent
    weights (the forward pass binarizes them); False for optimizers that flip weights that are
    exactly +-1.
    """

    name: str
    factory: Callable[..., Any]
    hparams: tuple[HParam, ...]
    description: str = ""
    latent_weights: bool = False
    reference: str = ""

    @property
    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hparams}

    @property
    def search_space(self) -> dict[str, HParam]:
        return {h.name: h for h in self.hparams if h.search}

    def hparam(self, name: str) -> HParam:
        return {h.name: h for h in self.hparams}[name]

    def resolve(self, **overrides: Any) -> dict[str, Any]:
        return resolve_hparams(f"optimizer {self.name!r}", self.hparams, overrides)

    def build(self, binary_params: Iterable[Any], real_params: Iterable[Any] = (), **hparams: Any):
        """Build the optimizer for these parameters; unknown or bad hyperparameters raise."""
        return self.factory(list(binary_params), list(real_params), **self.resolve(**hparams))

    def validate(self) -> None:
        check_name(self.name, "optimizer")
        if not callable(self.factory):
            raise PluginError(f"optimizer {self.name!r}: factory is not callable")
        _validate_hparams(f"optimizer {self.name!r}", self.hparams, self.factory, skip=2)


def _validate_hparams(
    owner: str, hparams: Iterable[HParam], factory: Callable[..., Any], skip: int = 0
) -> None:
    hparams = tuple(hparams)
    names = [h.name for h in hparams]
    if len(set(names)) != len(names):
        raise PluginError(f"{owner} declares a hyperparameter twice: {names}")
    accepted = _accepted_keywords(factory)
    for h in hparams:
        if not isinstance(h, HParam):
            raise PluginError(f"{owner}: {h!r} is not a benchbnn.HParam")
        if accepted is not None and h.name not in accepted:
            raise PluginError(
                f"{owner} declares hyperparameter {h.name!r} that its factory does not accept"
            )
        if h.kind in (int, float):
            try:
                h.check_range(h.default, owner)
            except HyperparameterError as exc:
                raise PluginError(f"default out of range: {exc}") from None
        if h.search and h.kind in (int, float):
            low, high = h.search
            if not low < high:
                raise PluginError(f"{owner}: search range of {h.name!r} is empty: {h.search}")
            for bound in (low, high):
                try:
                    h.check_range(bound, owner)
                except HyperparameterError:
                    raise PluginError(
                        f"{owner}: search range of {h.name!r} {h.search} leaves its valid range "
                        f"[{h.low}, {h.high}]"
                    ) from None
            if h.log and low <= 0:
                raise PluginError(f"{owner}: log search range of {h.name!r} must be positive")


@dataclass(frozen=True)
class ArchitectureSpec:
    """An architecture plugin: ``factory(num_classes, in_channels, image_size, **options)``.

    ``input_sizes`` lists the image sizes the network is defined for (empty: any), and
    ``in_channels`` the channel counts (empty: any); ``build`` refuses others with a message
    naming what is supported.
    """

    name: str
    factory: Callable[..., Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    input_sizes: tuple[int, ...] = ()
    in_channels: tuple[int, ...] = ()
    reference: str = ""

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.options)

    def build(
        self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **options: Any
    ):

        resolved = self.resolve_options(options)
        if self.input_sizes and image_size not in self.input_sizes:
            raise BenchbnnError(
                f"architecture {self.name!r} does not support {image_size}x{image_size} inputs; "
                f"supported image sizes: {', '.join(map(str, self.input_sizes))}"
            )
        if self.in_channels and in_channels not in self.in_channels:
            raise BenchbnnError(
                f"architecture {self.name!r} does not support {in_channels} input channels; "
                f"supported: {', '.join(map(str, self.in_channels))}"
            )
        return self.factory(
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            **resolved,
        )

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The default options updated with ``options``; an unknown name is a clear error."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise HyperparameterError(
                f"architecture {self.name!r} has no option {unknown[0]!r}."
                f"{did_you_mean(unknown[0], self.options)} "
                f"Options: {', '.join(sorted(self.options)) or 'none'}."
            )
        return {**self.options, **options}

    def validate(self) -> None:
        check_name(self.name, "architecture")
        if not callable(self.factory):
            raise PluginError(f"architecture {self.name!r}: factory is not callable")
        accepted = _accepted_keywords(self.factory)
        if accepted is not None:
            missing = {"num_classes", "in_channels", "image_size", *self.options} - accepted
            if missing:
                raise PluginError(
                    f"architecture {self.name!r}: factory does not accept {sorted(missing)}"
                )


#: Augmentation operations the in-memory pipeline applies, vectorized per batch.
AUGMENTATION_OPS = {
    "crop": "crop:P pads every side by P pixels (value 0 after normalization) and takes a random "
    "crop of the original size",
    "flip": "flip mirrors each image horizontally with probability 1/2",
}


def parse_augmentation(text: str) -> tuple[tuple[str, int], ...]:
    """``"crop:4,flip"`` -> ``(("crop", 4), ("flip", 0))``; ``""`` or ``"none"`` -> ``()``.

    Raises ValueError naming the bad part.
    """
    ops: list[tuple[str, int]] = []
    text = (text or "").strip()
    if text.lower() in ("", "none"):
        return ()
    for part in text.split(","):
        name, _, arg = part.strip().partition(":")
        if name not in AUGMENTATION_OPS:
            raise ValueError(
                f"unknown augmentation {name!r} in {text!r}; known: "
                f"{'; '.join(AUGMENTATION_OPS.values())}"
            )
        if name == "crop":
            if not arg.isdigit():
                raise ValueError(f"augmentation {part.strip()!r} needs a padding: crop:P, P >= 0")
            ops.append((name, int(arg)))
        elif arg:
            raise ValueError(f"augmentation {name!r} takes no argument, got {part.strip()!r}")
        else:
            ops.append((name, 0))
        if [o for o, _ in ops].count(name) > 1:
            raise ValueError(f"augmentation {name!r} appears twice in {text!r}")
    return tuple(ops)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset plugin: what it is (classes, image shape, normalization) and how to load it.

    A plugin provides its data in one of two ways:

    * ``tensors(root, split, download=False, **options)`` returns a
      :class:`benchbnn.data.tensors.ImageTensors` (every image of the split as uint8 NCHW plus
      int64 labels). The host feeds these through its in-memory pipeline: whole batches,
      ``augmentation`` applied vectorized on the training device, normalized with
      ``(x / pixel_max - mean) / std`` per channel. For small data sets.
    * ``loader(root, split, download=False, augment=False, **options)`` returns a torch
      ``Dataset`` of ``(CxHxW float tensor, int label)`` pairs that already applies its own
      normalization, and its training augmentation when ``augment`` is true. The host reads it
      through a multi-worker ``DataLoader``. For data sets too large to hold in memory.

    ``load(root=, split=)`` returns a torch ``Dataset`` either way. ``num_classes`` and
    ``image_shape`` describe the data with the default ``options`` (a generated data set may
    change them through its options). ``augmentation`` is the default training augmentation: for
    ``tensors`` data sets operations from :data:`AUGMENTATION_OPS` (``"crop:4,flip"``); for
    ``loader`` data sets a description of what the loader does. ``needs_data_dir`` is False for
    datasets that are embedded or generated (they ignore ``root``).
    """

    name: str
    loader: Callable[..., Any] | None
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    description: str = ""
    needs_data_dir: bool = True
    splits: tuple[str, ...] = ("train", "test")
    augmentation: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    tensors: Callable[..., Any] | None = None
    pixel_max: float = 255.0
    reference: str = ""

    #: Options every data set accepts; the pipeline consumes them, the plugin never sees them.
    PIPELINE_OPTIONS = ("augmentation",)

    @property
    def in_memory(self) -> bool:
        """True when the data set hands the host uint8 tensors (the fast in-memory pipeline)."""
        return self.tensors is not None

    def normalization(self) -> tuple[list[float], list[float]]:
        """Per-channel ``(offset, divisor)``: the network input is ``(uint8 - offset) / divisor``.

        That is ``(x / pixel_max - mean) / std``, computed so that the ends of the range come
        out exact (0 and 255 give exactly -1 and 1 for mean = std = 0.5).
        """
        channels = int(self.image_shape[0])
        mean = list(self.mean) or [0.0]
        std = list(self.std) or [1.0]
        mean = mean * channels if len(mean) == 1 else mean
        std = std * channels if len(std) == 1 else std
        return [m * self.pixel_max for m in mean], [s * self.pixel_max for s in std]

    def resolve_options(
        self, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], str]:
        """``(loader options with defaults filled in, augmentation text)``; unknown names raise."""

        owner = f"dataset {self.name!r}"
        given = dict(options or {})
        augmentation = given.pop("augmentation", self.augmentation)
        if not isinstance(augmentation, str):
            raise BenchbnnError(
                f"{owner}: option 'augmentation' must be a string such as "
                f"'crop:4,flip' or 'none', got {augmentation!r}"
            )
        if self.in_memory:
            try:
                parse_augmentation(augmentation)
            except ValueError as exc:
                raise BenchbnnError(f"{owner}: {exc}") from None
        elif augmentation != self.augmentation and augmentation.strip().lower() not in ("", "none"):
            raise BenchbnnError(
                f"{owner}: its loader fixes the augmentation "
                f"({self.augmentation or 'none'}); only 'none' can turn it off"
            )
        resolved = dict(self.options.items())
        for key, value in given.items():
            if key not in self.options:
                valid = sorted([*self.options, *self.PIPELINE_OPTIONS])
                raise HyperparameterError(
                    f"{owner} has no option {key!r}.{did_you_mean(key, valid)} "
                    f"Options: {', '.join(valid)}."
                )
            resolved[key] = HParam(key, self.options[key]).coerce(value, owner)
        return resolved, augmentation

    def _check_request(self, root: str | Path | None, split: str) -> None:

        if split not in self.splits:
            raise BenchbnnError(
                f"dataset {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}"
            )
        if self.needs_data_dir and root is None:
            raise BenchbnnError(
                f"dataset {self.name!r} needs a data directory: pass --data-dir DIR "
                f"(or root=...) pointing at a copy of it, or --download when online"
            )

    def read_tensors(
        self,
        root: str | Path | None = None,
        split: str = "train",
        download: bool = False,
        **options: Any,
    ):
        """The split as :class:`~benchbnn.data.tensors.ImageTensors` (``tensors`` data sets only)."""

        if not self.in_memory:
            raise BenchbnnError(f"dataset {self.name!r} is read through its loader, not as tensors")
        self._check_request(root, split)
        resolved, _ = self.resolve_options(options)
        data = self.tensors(root=root, split=split, download=download, **resolved)
        data.check(f"dataset {self.name!r} ({split})")
        return data

    def load(
        self,
        root: str | Path | None = None,
        split: str = "train",
        download: bool = False,
        augment: bool | None = None,
        **options: Any,
    ):
        """A torch ``Dataset`` of ``(CxHxW float tensor, int label)`` for ``split``.

        ``augment`` (default: true for the training split) applies the training augmentation
        to every item read; the host's batch pipeline does not use it for ``tensors`` data sets.
        """
        self._check_request(root, split)
        resolved, augmentation = self.resolve_options(options)
        if augment is None:
            augment = split == "train"
        if augmentation.strip().lower() in ("", "none"):
            augment = False
        if self.in_memory:
            data = self.read_tensors(root=root, split=split, download=download, **resolved)
            return data.as_dataset(self, augmentation if augment else "")
        return self.loader(root=root, split=split, download=download, augment=augment, **resolved)

    def validate(self) -> None:
        check_name(self.name, "dataset")
        owner = f"dataset {self.name!r}"
        if self.loader is None and self.tensors is None:
            raise PluginError(f"{owner}: give a loader or a tensors function")
        bad = set(self.options) & set(self.PIPELINE_OPTIONS)
        if bad:
            raise PluginError(f"{owner}: option names {sorted(bad)} are reserved for the pipeline")
        for role in ("loader", "tensors"):
            factory = getattr(self, role)
            if factory is None:
                continue
            if not callable(factory):
                raise PluginError(f"{owner}: {role} is not callable")
            accepted = _accepted_keywords(factory)
            needed = {"root", "split", "download", *self.options}
            if role == "loader" and not self.in_memory:
                needed.add("augment")
            if accepted is not None and needed - accepted:
                raise PluginError(f"{owner}: {role} does not accept {sorted(needed - accepted)}")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 2):
            raise PluginError(f"{owner}: num_classes must be an int >= 2")
        shape = tuple(self.image_shape)
        if len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise PluginError(f"{owner}: image_shape must be (C, H, W) positive ints")
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (0, 1, shape[0]):
                raise PluginError(
                    f"{owner}: {label} needs 1 or {shape[0]} values, got {len(values)}"
                )
        if any(not s > 0 for s in self.std) or not self.pixel_max > 0:
            raise PluginError(f"{owner}: std and pixel_max must be positive")
        if self.in_memory:
            try:
                parse_augmentation(self.augmentation)
            except ValueError as exc:
                raise PluginError(f"{owner}: {exc}") from None


@dataclass(frozen=True)
class SuiteSpec:
    """A benchmark suite shipped by a plugin: a TOML file that ``benchbnn compare`` can run."""

    name: str
    path: Path
    description: str = ""

    def validate(self) -> None:
        check_name(self.name, "suite")
        if not Path(self.path).is_file():
            raise PluginError(f"suite {self.name!r}: file {self.path} does not exist")
