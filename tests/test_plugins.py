"""The plugin host: discovery, listing, validation, clashes, look-up errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import benchbnn
from benchbnn.cli import main as cli_main
from benchbnn.core.errors import HyperparameterError, PluginError, UnknownNameError
from benchbnn.core.plugins import load_registry

pytestmark = pytest.mark.usefixtures("clean_registry")


def _sgd(binary_params, real_params, lr=0.1):
    return torch.optim.SGD([*binary_params, *real_params], lr=lr)


def _plugin(*optimizers, name="test-plugin"):
    module = types.ModuleType(name)

    @benchbnn.hookimpl
    def benchbnn_optimizers():
        return list(optimizers)

    module.benchbnn_optimizers = benchbnn_optimizers
    return module


def _spec(name="toy-sgd", **kwargs):
    kwargs.setdefault("hparams", (benchbnn.HParam("lr", 0.1, low=0.0, high=10.0),))
    return benchbnn.OptimizerSpec(name=name, factory=_sgd, **kwargs)


# --- built-ins come through the same entry points as everyone else ---------------------------


def test_builtins_are_registered_through_entry_points():
    registry = benchbnn.get_registry()
    builtin = {p.name: p for p in registry.plugins.values() if p.distribution == "benchbnn"}
    assert {"bop", "bop2ndorder", "pbop", "adam-latent"} <= set(builtin)
    assert all(p.version == benchbnn.__version__ for p in builtin.values())


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError) as info:
        benchbnn.get_optimizer("bop2ndordr")
    message = str(info.value)
    assert "unknown optimizer 'bop2ndordr'" in message
    assert "Did you mean 'bop2ndorder'" in message
    assert "Available:" in message
    assert message.endswith("with -p MODULE (or the BENCHBNN_PLUGINS environment variable).")


# --- in-process plugins ---------------------------------------------------------------------


def test_in_process_plugin_is_found_and_builds():
    benchbnn.register_plugin(_plugin(_spec()), name="toy")
    spec = benchbnn.get_optimizer("toy-sgd")
    assert spec.defaults == {"lr": 0.1}
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = spec.build([param], [], lr=0.5)
    assert optimizer.param_groups[0]["lr"] == 0.5
    assert benchbnn.core.plugins.provenance("optimizer", "toy-sgd").distribution == "in-process"


def test_clash_between_two_plugins_names_both():
    benchbnn.register_plugin(_plugin(_spec("same-name"), name="first"), name="first")
    benchbnn.register_plugin(_plugin(_spec("same-name"), name="second"), name="second")
    with pytest.raises(PluginError) as info:
        benchbnn.get_optimizer("same-name")
    assert "'first'" in str(info.value) and "'second'" in str(info.value)
    assert "in-process (plugin 'first')" in str(info.value)  # no version for unpackaged plugins
    assert any("same-name" in f.reason for f in benchbnn.get_registry().failures)


def test_clash_with_a_builtin_names_the_builtin_distribution():
    benchbnn.register_plugin(_plugin(_spec("bop")), name="impostor")
    with pytest.raises(PluginError, match=r"benchbnn .*'bop'.* and in-process"):
        benchbnn.get_optimizer("bop")


def test_a_second_plugin_under_a_taken_plugin_name_is_reported_not_dropped():
    benchbnn.register_plugin(_plugin(_spec("first-sgd"), name="one"), name="shared-name")
    benchbnn.register_plugin(_plugin(_spec("second-sgd"), name="two"), name="shared-name")
    registry = benchbnn.get_registry()
    assert "first-sgd" in registry.names("optimizer")
    assert "second-sgd" not in registry.names("optimizer")
    (failure,) = [f for f in registry.failures if f.plugin == "shared-name"]
    assert "already taken by one from in-process" in failure.reason
    assert "rename the entry point" in failure.reason


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (_spec("Not_Kebab"), "kebab-case"),
        (_spec(hparams=(benchbnn.HParam("momentum", 0.9),)), "does not accept"),
        (_spec(hparams=(benchbnn.HParam("lr", 20.0, low=0.0, high=10.0),)), "default out of range"),
        (
            _spec(
                hparams=(
                    benchbnn.HParam("lr", 0.1, low=0.0, high=1.0, search=(1e-3, 10.0), log=True),
                )
            ),
            "leaves its valid range",
        ),
    ],
)
def test_malformed_spec_is_reported_with_the_plugin_name(spec, reason):
    benchbnn.register_plugin(_plugin(spec), name="broken-plugin")
    registry = benchbnn.get_registry()
    failures = [f for f in registry.failures if f.plugin == "broken-plugin"]
    assert len(failures) == 1 and reason in failures[0].reason
    assert "bop" in registry.names("optimizer")  # the rest keep working


def test_hook_returning_a_non_list_is_reported():
    module = types.ModuleType("returns-dict")
    module.benchbnn_optimizers = benchbnn.hookimpl(lambda: {"not": "a list"})
    benchbnn.register_plugin(module, name="returns-dict")
    (failure,) = [f for f in benchbnn.get_registry().failures if f.plugin == "returns-dict"]
    assert "must return a list" in failure.reason


def test_misspelled_hook_is_caught_by_check_pending():
    module = types.ModuleType("typo")
    module.benchbnn_optimizer = benchbnn.hookimpl(lambda: [])  # singular: no such hook
    benchbnn.register_plugin(module, name="typo")
    (failure,) = [f for f in benchbnn.get_registry().failures if f.plugin == "typo"]
    assert "benchbnn_optimizer" in failure.reason


def test_strict_mode_raises_on_the_first_broken_plugin():
    benchbnn.register_plugin(_plugin(_spec("Bad Name")), name="strict-victim")
    with pytest.raises(PluginError, match="strict-victim"):
        load_registry(strict=True)


def test_module_that_fails_to_import_is_reported_by_name(monkeypatch):
    monkeypatch.setenv("BENCHBNN_PLUGINS", "no_such_module_for_benchbnn")
    benchbnn.core.plugins.reset_registry()
    registry = benchbnn.get_registry()
    (failure,) = [f for f in registry.failures if f.plugin == "no_such_module_for_benchbnn"]
    assert "failed to import" in failure.reason
    assert "bop" in registry.names("optimizer")


# --- hyperparameter errors through the public API -------------------------------------------


def test_bad_hyperparameters_raise_clear_errors():
    benchbnn.register_plugin(_plugin(_spec()), name="toy")
    spec = benchbnn.get_optimizer("toy-sgd")
    param = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(HyperparameterError, match=r"no hyperparameter 'lrr'.*Did you mean 'lr'"):
        spec.build([param], [], lrr=0.1)
    with pytest.raises(HyperparameterError, match=r"outside its valid range"):
        spec.build([param], [], lr=11.0)
    with pytest.raises(HyperparameterError, match=r"must be a number"):
        spec.build([param], [], lr="fast")


# --- command line ---------------------------------------------------------------------------


def test_plugins_command_lists_builtins(capsys):
    assert cli_main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"benchbnn {benchbnn.__version__}")
    assert "optimizer     bop2ndorder" in out


def test_plugins_json_lists_distributions_and_hyperparameters(capsys):
    assert cli_main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (dist,) = [d for d in data["distributions"] if d["distribution"] == "benchbnn"]
    optimizers = {o["name"]: o for p in dist["plugins"] for o in p.get("optimizers", [])}
    assert set(optimizers) >= {"bop", "bop2ndorder", "pbop", "adam-latent"}
    assert {h["name"] for h in optimizers["bop2ndorder"]["hyperparameters"]} >= {
        "gamma",
        "sigma",
        "threshold",
        "unbiased",
        "lr",
    }


def test_local_module_with_dash_p(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_local_plugin.py").write_text(
        textwrap.dedent(
            """
        import torch
        import benchbnn

        def _factory(binary_params, real_params, lr=0.1):
            return torch.optim.SGD([*binary_params, *real_params], lr=lr)

        @benchbnn.hookimpl
        def benchbnn_optimizers():
            return [benchbnn.OptimizerSpec("local-sgd", _factory, (benchbnn.HParam("lr", 0.1),))]
        """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert cli_main(["-p", "my_local_plugin", "plugins"]) == 0
        assert "optimizer     local-sgd" in capsys.readouterr().out
    finally:
        benchbnn.core.plugins._extra_modules.remove("my_local_plugin")


def test_unknown_command_option_exits_2():
    with pytest.raises(SystemExit) as info:
        cli_main(["plugins", "--no-such-flag"])
    assert info.value.code == 2


# --- a real third-party package, installed with pip -----------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "benchbnn-example-optimizer"


def _pip_install_target(source: Path, target: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def _run(code: str, pythonpath: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(pythonpath), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ)


@pytest.mark.slow
def test_installed_third_party_package_is_discovered(tmp_path):
    target = tmp_path / "site"
    _pip_install_target(EXAMPLE, target)
    listing = _run(
        "import sys; from benchbnn.cli import main; sys.exit(main(['plugins', '--json']))", target
    )
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    (dist,) = [
        d for d in data["distributions"] if d["distribution"] == "benchbnn-example-optimizer"
    ]
    assert dist["version"] == "0.1.0"
    names = [o["name"] for p in dist["plugins"] for o in p.get("optimizers", [])]
    assert names == ["momentum-flip"]
    built = _run(
        "import torch, benchbnn\n"
        "w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))\n"
        "opt = benchbnn.get_optimizer('momentum-flip').build([w], [])\n"
        "w.grad = torch.tensor([1.0, 1.0]); opt.step()\n"
        "print(w.tolist(), int(opt.flip_count))",
        target,
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.split() == ["[-1.0,", "-1.0]", "1"]
    disabled = _run(
        "import benchbnn; print(sorted(benchbnn.list_optimizers()))",
        target,
        BENCHBNN_DISABLE_PLUGIN_AUTOLOAD="1",
    )
    assert "momentum-flip" not in disabled.stdout and "'bop'" in disabled.stdout
