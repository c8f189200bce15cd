"""The plugin host: discovers plugins, validates what they register, answers look-ups.

Built-in plugins are found exactly like third-party ones, through the ``benchbnn`` entry-point
group, so this module never imports them. Extra plugin modules come from ``benchbnn -p MODULE``
or the ``BENCHBNN_PLUGINS`` environment variable (comma-separated); objects can also be
registered in-process with :func:`register_plugin`.

Environment:
    BENCHBNN_PLUGINS                    comma-separated modules to load as plugins
    BENCHBNN_DISABLE_PLUGIN_AUTOLOAD    skip entry points of other distributions (built-ins stay)
    BENCHBNN_STRICT_PLUGINS             raise on the first broken plugin instead of reporting it,
                                        and on the first warning (a module that registered
                                        nothing, a hook function left unmarked)
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as metadata
import os
import re
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pluggy

from benchbnn.core import hookspecs
from benchbnn.core.errors import (
    BenchbnnError,
    PluginError,
    UnknownNameError,
    unknown_name_message,
)
from benchbnn.core.specs import ArchitectureSpec, DatasetSpec, OptimizerSpec, SuiteSpec

PROJECT = "benchbnn"
ENTRY_POINT_GROUP = "benchbnn"
HOST_DISTRIBUTION = "benchbnn"

hookimpl = pluggy.HookimplMarker(PROJECT)

#: Every hook a plugin can implement (the functions of :mod:`benchbnn.core.hookspecs`).
HOOK_NAMES = tuple(sorted(name for name in vars(hookspecs) if name.startswith(f"{PROJECT}_")))


class PluginWarning(UserWarning):
    """A plugin that loaded but will not do what its author meant (e.g. registered nothing)."""


class _Record(Protocol):
    """What the host needs of every registered spec: a name, and a check of itself."""

    @property
    def name(self) -> str: ...

    def validate(self) -> None: ...


#: registration hook name -> (kind shown to users, record type)
KINDS: dict[str, tuple[str, type[_Record]]] = {
    "benchbnn_optimizers": ("optimizer", OptimizerSpec),
    "benchbnn_architectures": ("architecture", ArchitectureSpec),
    "benchbnn_datasets": ("dataset", DatasetSpec),
    "benchbnn_suites": ("suite", SuiteSpec),
}


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from: its registered name and the distribution that ships it."""

    name: str
    distribution: str
    version: str
    module: str
    hooks: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``dist version`` for installed distributions, just the origin otherwise."""
        return self.distribution if self.version == "-" else f"{self.distribution} {self.version}"


@dataclass(frozen=True)
class Entry:
    """A registered spec together with the plugin that provided it."""

    spec: Any
    plugin: PluginInfo


@dataclass(frozen=True)
class Failure:
    """A plugin (or one of its records) that could not be used, and why."""

    plugin: str
    distribution: str
    reason: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} (from {self.distribution}): {self.reason}"


@dataclass
class Registry:
    """Everything the installed plugins registered, validated, by kind and name."""

    plugin_manager: pluggy.PluginManager
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)
    clashes: dict[tuple[str, str], list[PluginInfo]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    #: plugins that loaded but look wrong (errors in strict mode), e.g. registered nothing
    warnings: list[Failure] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries.get(kind, {}))

    def entry(self, kind: str, name: str) -> Entry:
        if (kind, name) in self.clashes:
            owners = " and ".join(
                f"{p.label} (plugin {p.name!r})" for p in self.clashes[kind, name]
            )
            raise PluginError(
                f"{kind} name {name!r} is registered by more than one plugin: {owners}; "
                f"uninstall or disable one of them"
            )
        table = self.entries.get(kind, {})
        if name not in table:
            raise UnknownNameError(unknown_name_message(kind, name, table))
        return table[name]

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).spec


def _new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _truthy(value: str | None) -> bool:
    if not value:
        return False
    return value.strip().lower() not in {"0", "false", "no", ""}


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("unknown", "?")
    return (dist.metadata["Name"] or "unknown", dist.version or "?")


def _entry_points() -> list[metadata.EntryPoint]:
    seen: set[tuple[str, str]] = set()
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (_distribution_of(ep)[0], ep.name)
        if key not in seen:  # the same distribution can appear twice on odd sys.paths
            seen.add(key)
            found.append(ep)
    return found


#: The provenance ("distribution") of plugins no installed distribution provides: modules
#: loaded with ``-p`` or BENCHBNN_PLUGINS, and objects given to :func:`register_plugin`.
LOCAL_MODULE = "local module"
IN_PROCESS = "in-process"

#: How a failure to import a plugin module begins (``-p`` adds advice on module names to it
#: when Python found no module of that name).
IMPORT_FAILED = "failed to import:"


class _Loader:
    """Registers plugins into a fresh manager, collecting failures instead of stopping."""

    def __init__(self, strict: bool):
        self.pm = _new_plugin_manager()
        self.strict = strict
        self.registry = Registry(self.pm)

    def fail(self, plugin: str, distribution: str, reason: str) -> None:
        failure = Failure(plugin, distribution, reason)
        if self.strict:
            raise PluginError(str(failure))
        self.registry.failures.append(failure)

    def warn(self, plugin: str, distribution: str, reason: str) -> None:
        """Report a plugin that loaded but looks wrong: a warning, an error in strict mode."""
        failure = Failure(plugin, distribution, reason)
        if self.strict:
            raise PluginError(f"{failure} (an error because BENCHBNN_STRICT_PLUGINS is set)")
        self.registry.warnings.append(failure)
        warnings.warn(f"benchbnn: {failure}", PluginWarning, stacklevel=2)

    def register(self, obj: Any, name: str, distribution: str, version: str) -> None:
        if self.pm.is_registered(obj):
            return
        if self.pm.has_plugin(name):
            first = self.registry.plugins.get(name)
            owner = f"{first.module} from {first.distribution}" if first else "another plugin"
            self.fail(
                name,
                distribution,
                f"not loaded: the plugin name {name!r} is already taken by {owner}; rename the "
                f"entry point (its name before '=' in the '{ENTRY_POINT_GROUP}' group of the "
                f"distribution's pyproject.toml)",
            )
            return
        try:
            self.pm.register(obj, name=name)
        except pluggy.PluginValidationError as exc:
            self.fail(name, distribution, f"invalid hook implementation: {exc}")
            return
        module = getattr(obj, "__name__", type(obj).__name__)
        hooks = tuple(sorted(impl_name for impl_name in _hook_names(self.pm, obj)))
        self.registry.plugins[name] = PluginInfo(name, distribution, version, module, hooks)
        unmarked = _unmarked_hooks(obj)
        if not hooks:
            self.warn(
                name,
                distribution,
                f"{module} registered nothing: it has no function marked @benchbnn.hookimpl "
                f"named after a benchbnn hook ({', '.join(HOOK_NAMES)})"
                + (f"; {'; '.join(unmarked)}" if unmarked else ""),
            )
        else:
            for problem in unmarked:
                self.warn(name, distribution, problem)

    def load_entry_points(self, autoload: bool) -> None:
        for ep in _entry_points():
            distribution, version = _distribution_of(ep)
            if not autoload and distribution != HOST_DISTRIBUTION:
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                self.fail(ep.name, distribution, f"failed to import {ep.value}: {_why(exc)}")
                continue
            self.register(obj, ep.name, distribution, version)

    def load_modules(self, modules: Iterable[str]) -> None:
        for module_name in modules:
            module_name = module_name.strip()
            if not module_name:
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                self.fail(module_name, LOCAL_MODULE, f"{IMPORT_FAILED} {_why(exc)}")
                continue
            self.register(module, module_name, LOCAL_MODULE, "-")

    def check_pending(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            plugin = getattr(exc, "plugin", None)
            # check_pending() only reports registered plugins, which always have a name
            name = (self.pm.get_name(plugin) if plugin is not None else None) or "?"
            info = self.registry.plugins.get(name)
            reason = str(exc)
            unknown = re.search(r"unknown hook '([^']+)'", reason)
            close = unknown and difflib.get_close_matches(unknown.group(1), HOOK_NAMES, n=1)
            if close:
                reason += f" Did you mean {close[0]!r}?"
            self.fail(name, info.distribution if info else "?", reason)
            if plugin is not None:
                self.pm.unregister(plugin)
                self.registry.plugins.pop(name, None)
                self.check_pending()

    def collect(self) -> None:
        for hook_name, (kind, record_type) in KINDS.items():
            owners: dict[str, list[PluginInfo]] = {}
            table: dict[str, Entry] = {}
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                info = self.registry.plugins[impl.plugin_name]
                try:
                    records = impl.function()
                except Exception as exc:
                    self.fail(info.name, info.distribution, f"{hook_name}() raised {exc!r}")
                    continue
                if not isinstance(records, (list, tuple)):
                    self.fail(
                        info.name,
                        info.distribution,
                        f"{hook_name}() must return a list of {record_type.__name__}, "
                        f"got {type(records).__name__}",
                    )
                    continue
                for record in records:
                    if not isinstance(record, record_type):
                        self.fail(
                            info.name,
                            info.distribution,
                            f"{hook_name}() returned {record!r}, not a {record_type.__name__}",
                        )
                        continue
                    try:
                        record.validate()
                    except PluginError as exc:
                        self.fail(info.name, info.distribution, str(exc))
                        continue
                    owners.setdefault(record.name, []).append(info)
                    table.setdefault(record.name, Entry(record, info))
            for name, infos in owners.items():
                if len(infos) > 1:
                    table.pop(name, None)
                    self.registry.clashes[kind, name] = infos
                    both = " and ".join(f"{i.distribution} (plugin {i.name!r})" for i in infos)
                    self.fail(
                        infos[-1].name,
                        infos[-1].distribution,
                        f"{kind} name {name!r} is registered by {both}",
                    )
            self.registry.entries[kind] = table


def _hook_names(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    return [caller.name for caller in pm.get_hookcallers(plugin) or []]


def _why(exc: BaseException) -> str:
    """An import error as the user should read it: a BenchbnnError (e.g. a declaration refused
    when an optimizer class was defined) by its message, anything else by its repr."""
    return str(exc) if isinstance(exc, BenchbnnError) else repr(exc)


def _unmarked_hooks(obj: Any) -> list[str]:
    """What is wrong with functions of ``obj`` that look like hooks but will never be called:
    a hook's name without ``@benchbnn.hookimpl``, or a name close to a hook's."""
    members: dict[str, Any] = {}
    for source in (obj, *type(obj).__mro__[:-1]):
        try:
            members = {**dict(vars(source)), **members}
        except TypeError:  # objects without a __dict__
            continue
    marker = f"{PROJECT}_impl"
    problems = []
    for name, value in sorted(members.items()):
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if name.startswith("__") or not callable(value) or isinstance(value, type):
            continue
        marked = hasattr(value, marker)
        if name in HOOK_NAMES:
            if not marked:
                problems.append(
                    f"function {name} is not marked @benchbnn.hookimpl, so benchbnn never calls "
                    f"it; put @benchbnn.hookimpl above it"
                )
        elif not marked:
            close = difflib.get_close_matches(name.lower(), HOOK_NAMES, n=1, cutoff=0.85)
            if close:
                problems.append(
                    f"function {name} is not a benchbnn hook (did you mean {close[0]}?); "
                    f"name it {close[0]} and mark it @benchbnn.hookimpl"
                )
    return problems


_lock = threading.Lock()
_registry: Registry | None = None
_extra_modules: list[str] = []
_extra_objects: list[tuple[Any, str]] = []


def load_registry(
    modules: Iterable[str] = (), autoload: bool | None = None, strict: bool | None = None
) -> Registry:
    """Discover and validate every plugin now (entry points, modules, in-process objects)."""
    if autoload is None:
        autoload = not _truthy(os.environ.get("BENCHBNN_DISABLE_PLUGIN_AUTOLOAD"))
    if strict is None:
        strict = _truthy(os.environ.get("BENCHBNN_STRICT_PLUGINS"))
    loader = _Loader(strict)
    loader.load_entry_points(autoload)
    env_modules = os.environ.get("BENCHBNN_PLUGINS", "").split(",")
    loader.load_modules([*env_modules, *_extra_modules, *modules])
    for obj, name in _extra_objects:
        loader.register(obj, name, IN_PROCESS, "-")
    loader.check_pending()
    loader.collect()
    return loader.registry


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = load_registry()
        return _registry


def reset_registry() -> None:
    """Forget the loaded registry (the next look-up discovers plugins again)."""
    global _registry
    with _lock:
        _registry = None


def add_plugin_modules(modules: Iterable[str]) -> None:
    """Load these modules as plugins too (what ``benchbnn -p MODULE`` does)."""
    _extra_modules.extend(m for m in modules if m not in _extra_modules)
    reset_registry()


def check_plugin_modules(modules: Iterable[str]) -> None:
    """Raise PluginError when one of ``modules`` (given with ``-p``) could not be used as a
    plugin: it failed to import, its hooks are invalid, or a registration hook raised.

    The reason is the registry's (:attr:`Registry.failures`); loads the registry if needed.
    """
    wanted = {m.strip() for m in modules if m.strip()}
    for failure in get_registry().failures:
        if failure.plugin in wanted and failure.distribution == LOCAL_MODULE:
            advice = (
                "; pass the name of an importable module with benchbnn hooks (check its "
                "spelling and that its folder is on PYTHONPATH)"
                if _module_not_found(failure)
                else ""  # it was found: the reason itself says what to fix in the module
            )
            raise PluginError(f"-p {failure.plugin}: {failure.reason}{advice}")


def _module_not_found(failure: Failure) -> bool:
    """Whether a ``-p`` module failed because Python found no module (or package) of that
    name, rather than because its code raised while it was imported or checked."""
    parts = failure.plugin.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return failure.reason.startswith(IMPORT_FAILED) and any(
        f"No module named '{name}'" in failure.reason for name in names
    )


def register_plugin(obj: Any, name: str | None = None) -> str:
    """Register a module or object with hook implementations in this process."""
    name = name or getattr(obj, "__name__", None) or f"plugin-{id(obj)}"
    _extra_objects.append((obj, name))
    reset_registry()
    return name


def unregister_plugin(name: str) -> None:
    """Undo :func:`register_plugin` (useful in tests)."""
    _extra_objects[:] = [(o, n) for o, n in _extra_objects if n != name]
    reset_registry()


def get_optimizer(name: str) -> OptimizerSpec:
    """The optimizer spec called ``name``; an unknown name lists close matches."""
    return get_registry().get("optimizer", name)


def get_architecture(name: str) -> ArchitectureSpec:
    """The architecture spec called ``name``."""
    return get_registry().get("architecture", name)


def get_dataset(name: str) -> DatasetSpec:
    """The dataset spec called ``name``."""
    return get_registry().get("dataset", name)


def get_suite(name: str) -> SuiteSpec:
    """The suite spec called ``name``."""
    return get_registry().get("suite", name)


def list_optimizers() -> list[str]:
    return get_registry().names("optimizer")


def list_architectures() -> list[str]:
    return get_registry().names("architecture")


def list_datasets() -> list[str]:
    return get_registry().names("dataset")


def list_suites() -> list[str]:
    return get_registry().names("suite")


def provenance(kind: str, name: str) -> PluginInfo:
    """Which plugin and distribution provided a spec (recorded with every tracked run)."""
    return get_registry().entry(kind, name).plugin
