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

from benchbnn.errors import HyperparameterError, PluginError, close_matches

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
            hint = close_matches(key, table)
            did_you_mean = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
            raise HyperparameterError(
                f"{owner} has no hyperparameter {key!r}.{did_you_mean} "
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
        from benchbnn.errors import BenchbnnError

        unknown = sorted(set(options) - set(self.options))
        if unknown:
            hint = close_matches(unknown[0], self.options)
            did_you_mean = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
            raise HyperparameterError(
                f"architecture {self.name!r} has no option {unknown[0]!r}.{did_you_mean} "
                f"Options: {', '.join(sorted(self.options)) or 'none'}."
            )
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
            **{**self.options, **options},
        )

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


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset plugin: what it is (classes, image shape, normalization) and how to load it.

    ``loader(root, split, download=False, **options)`` returns a torch ``Dataset`` of
    ``(CxHxW float tensor, int label)`` pairs. ``needs_data_dir`` is False for datasets that are
    embedded or generated (they ignore ``root``).
    """

    name: str
    loader: Callable[..., Any]
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

    def load(
        self, root: str | Path | None = None, split: str = "train", download: bool = False,
        **options: Any,
    ):
        from benchbnn.errors import BenchbnnError

        if split not in self.splits:
            raise BenchbnnError(
                f"dataset {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}"
            )
        if self.needs_data_dir and root is None:
            raise BenchbnnError(
                f"dataset {self.name!r} needs a data directory: pass --data-dir DIR "
                f"(or root=...) pointing at a copy of it, or --download when online"
            )
        return self.loader(root=root, split=split, download=download, **{**self.options, **options})

    def validate(self) -> None:
        check_name(self.name, "dataset")
        if not callable(self.loader):
            raise PluginError(f"dataset {self.name!r}: loader is not callable")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 2):
            raise PluginError(f"dataset {self.name!r}: num_classes must be an int >= 2")
        if len(tuple(self.image_shape)) != 3:
            raise PluginError(f"dataset {self.name!r}: image_shape must be (C, H, W)")


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
