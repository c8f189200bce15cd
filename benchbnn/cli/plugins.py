"""``benchbnn plugins``: what is installed, who provides it, and what is broken."""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchbnn.core.formatting import settings

NAME = "plugins"
HELP = (
    "list installed plugin distributions and the optimizers, architectures, datasets and suites "
    "they provide"
)
ORDER = 10
#: A ``-p MODULE`` that cannot be loaded is listed under "problems" here, not refused: this
#: command is where a user looks at what is broken.
REPORTS_PLUGIN_FAILURES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")


def _describe(kind: str, spec: Any) -> dict[str, Any]:
    if kind == "optimizer":
        return {
            "name": spec.name,
            "description": spec.description,
            "latent_weights": spec.latent_weights,
            "forward": spec.forward,
            "needs_closure": spec.needs_closure,
            "defaults": spec.defaults,
            "hyperparameters": [h.as_dict() for h in spec.hparams],
            "search_space": sorted(spec.search_space),
            "default_schedules": _default_schedules(spec),
            "reference": spec.reference,
        }
    if kind == "architecture":
        return {
            "name": spec.name,
            "description": spec.description,
            "options": dict(spec.options),
            "input_sizes": list(spec.input_sizes),
            "in_channels": list(spec.in_channels),
            "reference": spec.reference,
        }
    if kind == "dataset":
        return {
            "name": spec.name,
            "description": spec.description,
            "num_classes": spec.num_classes,
            "image_shape": list(spec.image_shape),
            "needs_data_dir": spec.needs_data_dir,
            "splits": list(spec.splits),
            "augmentation": spec.augmentation,
        }
    return {"name": spec.name, "description": spec.description, "path": str(spec.path)}


def _default_schedules(spec: Any) -> dict[str, str]:
    """An optimizer's default schedules in the compact form (``{"lr": "cosine:0.0001:1e-16"}``);
    a declaration that cannot be read is shown as declared (its plugin failed to load)."""
    from benchbnn.optim.schedules import parse_schedule

    shown = {}
    for name, raw in dict(spec.default_schedules).items():
        try:
            shown[name] = parse_schedule(raw).describe()
        except ValueError:
            shown[name] = str(raw)
    return shown


def listing() -> dict[str, Any]:
    """The plugin listing as plain data (what ``--json`` prints)."""
    from benchbnn.core.plugins import get_registry
    from benchbnn.optim import schedules  # noqa: F401 - checks default schedules at load

    registry = get_registry()
    distributions: dict[str, dict[str, Any]] = {}
    for info in registry.plugins.values():
        dist = distributions.setdefault(
            info.distribution,
            {"distribution": info.distribution, "version": info.version, "plugins": []},
        )
        provides: dict[str, list[dict[str, Any]]] = {}
        for kind, table in registry.entries.items():
            for entry in table.values():
                if entry.plugin.name == info.name:
                    provides.setdefault(kind + "s", []).append(_describe(kind, entry.spec))
        dist["plugins"].append(
            {"name": info.name, "module": info.module, "hooks": list(info.hooks), **provides}
        )
    return {
        "distributions": sorted(distributions.values(), key=lambda d: d["distribution"]),
        "failures": [
            {"plugin": f.plugin, "distribution": f.distribution, "reason": f.reason}
            for f in registry.failures
        ],
        "warnings": [
            {"plugin": f.plugin, "distribution": f.distribution, "reason": f.reason}
            for f in getattr(registry, "warnings", [])
        ],
    }


def main(args: argparse.Namespace) -> int:
    data = listing()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return 0
    for dist in data["distributions"]:
        print(f"{dist['distribution']} {dist['version']}")
        for plugin in dist["plugins"]:
            print(f"  {plugin['name']} ({plugin['module']})")
            for opt in plugin.get("optimizers", []):
                defaults = settings(opt["defaults"], empty="none")
                print(f"    optimizer     {opt['name']}: {defaults}")
                if opt["default_schedules"]:
                    scheduled = settings(opt["default_schedules"], empty="none")
                    print(f"                  default schedules: {scheduled}")
                by_run = [
                    h["name"] for h in opt["hyperparameters"] if h["search"] == "depends on the run"
                ]
                if by_run:
                    print(f"                  search range depends on the run: {', '.join(by_run)}")
            for arch in plugin.get("architectures", []):
                options = ", ".join(f"{k}={v}" for k, v in arch["options"].items())
                print(f"    architecture  {arch['name']}" + (f": {options}" if options else ""))
            for ds in plugin.get("datasets", []):
                shape = "x".join(map(str, ds["image_shape"]))
                print(f"    dataset       {ds['name']}: {ds['num_classes']} classes, {shape}")
            for suite in plugin.get("suites", []):
                print(f"    suite         {suite['name']}: {suite['description']}")
    if data["failures"]:
        print("\nproblems:")
        for f in data["failures"]:
            print(f"  {f['plugin']} (from {f['distribution']}): {f['reason']}")
    if data["warnings"]:
        print("\nwarnings:")
        for f in data["warnings"]:
            print(f"  {f['plugin']} (from {f['distribution']}): {f['reason']}")
    return 0
