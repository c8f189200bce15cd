"""Option values: one converter reads every option by its declared type, on the command line and
in suite files alike, and every value an error message offers is accepted.

The registry-wide test provokes the error of every registered architecture option, data-set
option and optimizer hyperparameter with bad values, reads the values the message offers (the
single-quoted values after its ``; accepted: ``) and feeds each back through ``benchbnn run``'s
command line, a suite file (as text and as the typed value) and the plugin itself.
"""

from __future__ import annotations

import argparse
import json
import math
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import benchbnn
from benchbnn.bench.suite_file import parse_suite
from benchbnn.cli import build_parser
from benchbnn.cli import main as cli_main
from benchbnn.cli.compare import override_value
from benchbnn.cli.run import build_config
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError, HyperparameterError, PluginError
from benchbnn.core.values import (
    Choice,
    Flag,
    ListOf,
    Nullable,
    Number,
    Text,
    ValueType,
    convert,
    offered_values,
)
from benchbnn.train.engine import canonical_config

#: The plugins a probe uses for the parts it does not probe (no data directory needed).
OTHERS = {"arch": "bnn-mlp", "dataset": "synthetic", "optimizer": "bop"}
FLAGS = {"arch": "--arch-option", "dataset": "--dataset-option", "optimizer": "--set"}
#: Bad values as command-line text and as TOML literals; each is refused or accepted, and a
#: refusal must offer values.
PROBE_TEXTS = ("%bad%", "", "0", "1.5", "-1e308", "1e308", "nan", "[[1]]")
PROBE_TOML = ('"%bad%"', "true", "0", "1.5", "-1e308", "1e308", "nan", "{ a = 1 }", "[[1]]")


def _targets() -> list[tuple[str, str, str]]:
    """Every registered option and hyperparameter, as ``(kind, plugin, name)``."""
    found = []
    for arch in benchbnn.list_architectures():
        found += [("arch", arch, k) for k in benchbnn.get_architecture(arch).value_types()]
    for dataset in benchbnn.list_datasets():
        found += [("dataset", dataset, k) for k in benchbnn.get_dataset(dataset).value_types()]
    for optimizer in benchbnn.list_optimizers():
        hparams = benchbnn.get_optimizer(optimizer).hparams
        found += [("optimizer", optimizer, h.name) for h in hparams]
    return found


TARGETS = _targets()


def _plugins(kind: str, name: str) -> dict[str, str]:
    return {**OTHERS, kind: name}


def cli_config(kind: str, name: str, key: str, text: str) -> RunConfig:
    """The run configuration ``benchbnn run ... FLAG key=text`` describes (nothing trains)."""
    plugins = _plugins(kind, name)
    argv = ["run", "--dataset", plugins["dataset"], "--arch", plugins["arch"]]
    argv += ["--optimizer", plugins["optimizer"], FLAGS[kind], f"{key}={text}"]
    return build_config(build_parser().parse_args(argv))


def suite_config(kind: str, name: str, key: str, literal: str) -> RunConfig:
    """The canonical run configuration of a one-run suite with ``key = literal`` (TOML)."""
    plugins = _plugins(kind, name)
    text = f'dataset = "{plugins["dataset"]}"\narch = "{plugins["arch"]}"\n'
    if kind == "arch":
        text += f"[arch_options]\n{key} = {literal}\n"
    if kind == "dataset":
        text += f"[dataset_options]\n{key} = {literal}\n"
    text += f'[[entries]]\noptimizer = "{plugins["optimizer"]}"\n'
    if kind == "optimizer":
        text += f"[entries.hparams]\n{key} = {literal}\n"
    ((_entry, _arch, config),) = parse_suite(text, Path("/suites/probe.toml")).run_configs()
    return canonical_config(config)


def toml_literal(value: Any) -> str:
    """``value`` (text, bool, number or list of them) as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    assert isinstance(value, str), value
    return json.dumps(value)  # a TOML basic string for this ASCII text


def option_of(config: RunConfig, kind: str, key: str) -> Any:
    table = {"arch": config.arch_options, "dataset": config.dataset_options}
    return table.get(kind, config.hparams)[key]


def offers(attempt: Callable[[], Any]) -> list[str] | None:
    """The values the error of ``attempt()`` offers (never none), or None when it succeeds."""
    try:
        attempt()
    except BenchbnnError as exc:
        message = str(exc)
        found = offered_values(message)
        assert found, f"the error offers no value: {message}"
        return found
    return None


def plugin_accepts(kind: str, name: str, key: str, value: Any) -> None:
    """The plugin itself takes ``value``: the network builds (on the meta device), the optimizer
    builds, a data set that needs no files generates its test split."""
    if kind == "arch":
        spec = benchbnn.get_architecture(name)
        size = spec.input_sizes[0] if spec.input_sizes else 32
        with torch.device("meta"):
            spec.build(num_classes=10, in_channels=3, image_size=size, **{key: value})
    elif kind == "optimizer":
        weight = torch.nn.Parameter(torch.ones(4))
        benchbnn.get_optimizer(name).build([weight], [], **{key: value})
    else:
        spec = benchbnn.get_dataset(name)
        if spec.in_memory and not spec.needs_data_dir and name == "synthetic":
            spec.read_tensors(split="test", **{key: value})


@pytest.mark.parametrize(("kind", "name", "key"), TARGETS, ids=[":".join(t) for t in TARGETS])
def test_every_value_an_error_message_offers_is_accepted(kind, name, key):
    offered: list[str] = []
    refusals = 0
    attempts = [lambda t=t: cli_config(kind, name, key, t) for t in PROBE_TEXTS]
    attempts += [lambda lit=lit: suite_config(kind, name, key, lit) for lit in PROBE_TOML]
    for attempt in attempts:
        found = offers(attempt)
        if found is not None:
            refusals += 1
            offered += [v for v in found if v not in offered]
    assert refusals, "no bad value was refused"
    for text in offered:
        by_cli = cli_config(kind, name, key, text)
        value = option_of(by_cli, kind, key)
        by_text = suite_config(kind, name, key, toml_literal(text))
        by_value = suite_config(kind, name, key, toml_literal(value))
        assert option_of(by_text, kind, key) == value == option_of(by_value, kind, key), text
        assert by_cli.config_hash() == by_text.config_hash() == by_value.config_hash(), text
        plugin_accepts(kind, name, key, value)


def test_the_registry_test_covers_every_kind_of_option():
    kinds = {(kind, name) for kind, name, _ in TARGETS}
    assert ("arch", "bnn-mlp") in kinds and ("optimizer", "pbop") in kinds
    assert ("dataset", "cifar10", "augmentation") in TARGETS
    assert ("dataset", "imagenet", "augmentation") in TARGETS


# --- augmentation=none, through the real command line ------------------------------------------


def _run_argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--dataset",
        "digits",
        "--arch",
        "bnn-mlp",
        "--arch-option",
        "hidden=16",
        "--optimizer",
        "bop",
        "--epochs",
        "1",
        "--subset",
        "100",
        "--batch-size",
        "50",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        "--checkpoint-dir",
        str(tmp_path),
        "--quiet",
        *extra,
    ]


def test_augmentation_none_trains_through_the_command_line(tmp_path, capsys):
    code = cli_main(_run_argv(tmp_path, "--dataset-option", "augmentation=none"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("FINISHED")


def test_a_bad_augmentation_offers_values_the_command_line_accepts(tmp_path, capsys):
    code = cli_main(_run_argv(tmp_path, "--dataset-option", "augmentation=rotate:9"))
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert "--dataset-option augmentation=rotate:9: dataset 'digits': option 'augmentation'" in err
    assert "unknown augmentation 'rotate'" in err
    offered = offered_values(err.strip())
    assert {"none", "", "crop:4,flip"} <= set(offered)
    for text in offered:
        config = cli_config("dataset", "digits", "augmentation", text)
        assert config.dataset_options == {"augmentation": text}
    assert not (tmp_path / "m.db").exists()  # nothing started


def test_augmentation_none_is_the_word_none_on_the_command_line_and_in_a_suite():
    by_cli = cli_config("dataset", "cifar10", "augmentation", "none")
    by_suite = suite_config("dataset", "cifar10", "augmentation", '"none"')
    assert by_cli.dataset_options == {"augmentation": "none"} == by_suite.dataset_options
    assert by_cli.config_hash() == by_suite.config_hash()
    empty = cli_config("dataset", "cifar10", "augmentation", "")
    assert empty.dataset_options == {"augmentation": ""}
    spec = benchbnn.get_dataset("cifar10")
    assert spec.resolve_options({"augmentation": "none"}) == ({"crop_fill": "black"}, "none")
    fixed = benchbnn.get_dataset("imagenet")
    assert fixed.resolve_options({"augmentation": "none"})[1] == "none"
    with pytest.raises(HyperparameterError, match="only 'none' can turn it off"):
        fixed.resolve_options({"augmentation": "crop:4"})


# --- exact values by declared type --------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "text", "expected"),
    [
        (Flag(), "yes", True),
        (Flag(), "TRUE", True),
        (Flag(), "0", False),
        (Flag(), "no", False),
        (Number(int), "12", 12),
        (Number(int), "1e3", 1000),
        (Number(int), "9223372036854775807", 9223372036854775807),
        (Number(float), "1e-3", 0.001),
        (Number(float), " 7 ", 7.0),
        (ListOf(Number(int)), "64,64", [64, 64]),
        (ListOf(Number(int)), "64x64", [64, 64]),
        (ListOf(Number(int)), "[64, 64]", [64, 64]),
        (ListOf(Number(int)), "(8)", [8]),
        (ListOf(Number(int)), "", []),
        (ListOf(Number(float)), "0.5,2", [0.5, 2.0]),
        (ListOf(Text()), "max,mean", ["max", "mean"]),
        (ListOf(Text()), "maxpool", ["maxpool"]),  # an x splits numbers only
        (Choice(("batch", "layer")), " LAYER ", "layer"),
        (Text(), "none", "none"),
        (Text(), "null", "null"),
        (Text(), "1e3", "1e3"),
        (Nullable(Number(int)), "none", None),
        (Nullable(Number(int)), "null", None),
        (Nullable(Number(int)), "", None),
        (Nullable(Number(int)), "5", 5),
    ],
)
def test_text_is_read_by_the_declared_type(declared, text, expected):
    value = convert(text, declared, "option 'x'")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("declared", "value", "expected"),
    [
        (Flag(), 1, True),
        (Number(float), 1, 1.0),
        (Number(int), 2.0, 2),
        (ListOf(Number(int)), (1, 2), [1, 2]),
        (ListOf(Number(int)), 5, [5]),
        (ListOf(Number(int)), ["3", 4], [3, 4]),
        (Nullable(Number(float)), None, None),
    ],
)
def test_typed_values_are_converted_by_the_declared_type(declared, value, expected):
    converted = convert(value, declared, "option 'x'")
    assert converted == expected and type(converted) is type(expected)


@pytest.mark.parametrize(
    ("declared", "value", "message"),
    [
        (
            Number(int, low=1, example=4),
            "1.5",
            "dataset 'toy': option 'x' must be a whole number, got '1.5'; "
            "accepted: a whole number in [1, inf), such as '4', '1'",
        ),
        (
            Number(float, low=0.0, high=1.0, example=0.5),
            2,
            "dataset 'toy': option 'x' = 2.0 is outside its valid range [0.0, 1.0]; "
            "accepted: a number in [0.0, 1.0], such as '0.5', '0.0', '1.0'",
        ),
        (
            Number(float, positive=True, example=1.0),
            "0",
            "dataset 'toy': option 'x' must be a positive number, got '0'; "
            "accepted: a positive number, such as '1.0'",
        ),
        (
            Flag(),
            "maybe",
            "dataset 'toy': option 'x' must be true or false, got 'maybe'; "
            "accepted: 'true' or 'false' (also 'yes', 'no', '1', '0')",
        ),
        (
            Choice(("batch", "layer")),
            True,
            "dataset 'toy': option 'x' must be one of batch, layer, got True; "
            "accepted: 'batch', 'layer'",
        ),
        (
            ListOf(Number(int, positive=True), nonempty=True, example=(64, 64)),
            "64,a",
            "dataset 'toy': option 'x' must be one or more positive whole numbers, got '64,a'; "
            "accepted: positive whole numbers separated by commas or x, such as '64,64' or "
            "'64x64'",
        ),
        (
            Nullable(Number(int, low=1)),
            "many",
            "dataset 'toy': option 'x' must be a whole number or none, got 'many'; "
            "accepted: a whole number in [1, inf), such as '1', or 'none' (also 'null' or '')",
        ),
        (
            Text(example="auto"),
            3,
            "dataset 'toy': option 'x' must be text, got 3; accepted: any text, such as 'auto'",
        ),
    ],
)
def test_errors_name_the_option_the_value_and_the_accepted_form(declared, value, message):
    with pytest.raises(HyperparameterError) as info:
        convert(value, declared, "dataset 'toy': option 'x'")
    assert str(info.value) == message
    for offered in offered_values(message):
        convert(offered, declared, "dataset 'toy': option 'x'")  # each offered value is accepted


def test_offered_values_are_read_after_the_last_accepted_marker():
    message = "option 'a' (see 'b') must be x, got 'c'; accepted: 'd', '' or 'e:1,f'"
    assert offered_values(message) == ["d", "", "e:1,f"]
    assert offered_values("no marker 'here'") == []


# --- the command line and suites agree ----------------------------------------------------------


def test_set_lr_and_suite_lr_give_the_same_configuration_hash():
    by_cli = cli_config("optimizer", "bop", "lr", "1e-3")
    assert by_cli.hparams == {"lr": 0.001}
    for literal in ("1e-3", "0.001", '"1e-3"'):
        assert suite_config("optimizer", "bop", "lr", literal).config_hash() == by_cli.config_hash()


@pytest.mark.parametrize(
    ("kind", "name", "key", "text", "expected", "literal"),
    [
        ("optimizer", "bop2ndorder", "unbiased", "yes", True, "true"),
        ("optimizer", "bop2ndorder", "unbiased", "0", False, "false"),
        ("optimizer", "pbop", "seed", "9223372036854775807", 2**63 - 1, "9223372036854775807"),
        ("optimizer", "pbop", "seed", "1e3", 1000, "1000"),
        ("optimizer", "bop", "gamma", "1e-5", 1e-5, "1e-5"),
        ("arch", "bnn-mlp", "hidden", "64x64", [64, 64], "[64, 64]"),
        ("arch", "bnn-mlp", "hidden", "64,32", [64, 32], '"64, 32"'),
        ("arch", "bnn-mlp", "hidden", "128", [128], "128"),
        ("arch", "binarynet", "norm", "LAYER", "layer", '"layer"'),
        ("arch", "binarynet", "width", "1", 1.0, "1"),
        ("arch", "birealnet18", "stem", "cifar", "cifar", '"CIFAR"'),
        ("dataset", "synthetic", "size", "16", 16, "16.0"),
        ("dataset", "synthetic", "augmentation", "crop:2,flip", "crop:2,flip", '"crop:2,flip"'),
        ("dataset", "imagenet", "image_size", "64", 64, "64"),
    ],
)
def test_exact_values_on_the_command_line_and_in_a_suite(kind, name, key, text, expected, literal):
    by_cli = cli_config(kind, name, key, text)
    value = option_of(by_cli, kind, key)
    assert value == expected and type(value) is type(expected)
    by_suite = suite_config(kind, name, key, literal)
    assert option_of(by_suite, kind, key) == expected
    assert by_suite.config_hash() == by_cli.config_hash()


@pytest.mark.parametrize(
    ("flag", "assignment", "fragment"),
    [
        ("--set", "unbiased=maybe", "'unbiased' of optimizer 'bop2ndorder' must be true or false"),
        ("--set", "seed=1.5", "'seed' of optimizer 'pbop' must be a whole number, got '1.5'"),
        ("--arch-option", "hidden=64,a", "option 'hidden' must be one or more positive whole"),
        ("--arch-option", "width=0", "option 'width' must be a positive number, got '0'"),
        ("--dataset-option", "size=0", "option 'size' = 0 is outside its valid range [1, inf)"),
    ],
)
def test_command_line_errors_name_flag_option_owner_value_and_form(flag, assignment, fragment):
    optimizer = "pbop" if assignment.startswith("seed") else "bop2ndorder"
    arch = "binarynet" if assignment.startswith("width") else "bnn-mlp"
    argv = ["run", "--dataset", "synthetic", "--arch", arch, "--optimizer", optimizer]
    with pytest.raises(BenchbnnError) as info:
        build_config(build_parser().parse_args([*argv, flag, assignment]))
    message = str(info.value)
    assert message.startswith(f"{flag} {assignment}: ") and fragment in message
    assert offered_values(message)


def test_describe_reads_set_by_the_declared_types(capsys):
    argv = ["describe", "binarynet", "--set", "width=0.25", "--set", "norm=LAYER", "--json"]
    assert cli_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["options"] == {
        "width": 0.25,
        "norm": "layer",
        "bn_momentum": 0.01,
        "bn_eps": 0.001,
        "bn_scale": False,
    }
    assert cli_main(["describe", "bnn-mlp", "--set", "hidden=64x64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["options"] == {"hidden": [64, 64]}
    assert cli_main(["describe", "binarynet", "--set", "norm=group"]) == 2
    err = capsys.readouterr().err
    assert "--set norm=group: architecture 'binarynet': option 'norm'" in err
    assert offered_values(err.split(" (see ")[0].strip()) == ["batch", "layer"]


# --- compare --override -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("batch_size=10", ("batch_size", 10)),
        ("l2=1e-4", ("l2", 1e-4)),
        ("subset=none", ("subset", None)),
        ("target_accuracy=null", ("target_accuracy", None)),
        ("target_accuracy=80", ("target_accuracy", 80.0)),
        ("seeds=0,1", ("seeds", (0, 1))),
        ("seeds=3", ("seeds", 3)),
        ('arch_options={"width": 0.25}', ("arch_options", {"width": 0.25})),
    ],
)
def test_override_reads_scalars_by_declared_type_and_structures_as_json(text, expected):
    assert override_value(text) == expected


def test_override_errors_offer_accepted_values():
    with pytest.raises(argparse.ArgumentTypeError) as info:
        override_value("batch_size=many")
    message = str(info.value)
    assert "protocol key 'batch_size' must be a whole number, got 'many'" in message
    for offered in offered_values(message):
        assert override_value(f"batch_size={offered}")[1] >= 1


def test_override_option_values_are_converted_by_the_options_types():
    suite = parse_suite(
        'dataset = "synthetic"\narch = "binarynet"\n[[entries]]\noptimizer = "bop"\n',
        Path("/suites/o.toml"),
    )
    changed = suite.override({"arch_options": {"width": "0.5", "norm": "Layer"}})
    assert changed.arch_options == {"width": 0.5, "norm": "layer"}
    with pytest.raises(BenchbnnError, match=r"key arch_options\.width: .*positive number"):
        suite.override({"arch_options": {"width": -1}})


# --- declarations in plugins --------------------------------------------------------------------


def _toy(num_classes, in_channels, image_size, mode="none", limit=None, pool="max"):
    return torch.nn.Linear(1, 1)


def _arch_plugin(**spec: Any) -> types.ModuleType:
    module = types.ModuleType("toy-arch")

    @benchbnn.hookimpl
    def benchbnn_architectures():
        return [benchbnn.ArchitectureSpec(name="toy-arch", factory=_toy, **spec)]

    module.benchbnn_architectures = benchbnn_architectures
    return module


@pytest.mark.usefixtures("clean_registry")
def test_text_options_stay_text_and_declared_optional_values_may_be_none():
    benchbnn.register_plugin(
        _arch_plugin(
            options={"mode": "none", "limit": None, "pool": "max"},
            option_types={"limit": Nullable(Number(int, low=1)), "pool": Choice(("max", "avg"))},
        ),
        name="toy-arch",
    )
    spec = benchbnn.get_architecture("toy-arch")
    assert spec.coerce_options({"mode": "none", "limit": "none", "pool": "AVG"}) == {
        "mode": "none",
        "limit": None,
        "pool": "avg",
    }
    assert spec.coerce_options({"mode": "null", "limit": "3"}) == {"mode": "null", "limit": 3}
    config = cli_config("arch", "toy-arch", "mode", "none")
    assert config.arch_options == {"mode": "none"}
    with pytest.raises(BenchbnnError) as info:
        cli_config("arch", "toy-arch", "pool", "min")
    assert offered_values(str(info.value)) == ["max", "avg"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"options": {"limit": None}}, "cannot declare a type by the default None"),
        ({"options": {"mode": "x"}, "option_types": {"mod": Text()}}, "names 'mod'"),
        ({"options": {"pool": "sum"}, "option_types": {"pool": Choice(("max",))}}, "does not fit"),
        ({"options": {"mode": "x"}, "option_types": {"mode": "text"}}, "not a benchbnn"),
    ],
)
def test_malformed_option_declarations_are_plugin_errors(spec, message):
    with pytest.raises(PluginError, match=message):
        benchbnn.ArchitectureSpec(name="toy-arch", factory=_toy, **spec).validate()


def test_every_built_in_declaration_is_a_value_type():
    for arch in benchbnn.list_architectures():
        declared = benchbnn.get_architecture(arch).value_types().values()
        assert all(isinstance(t, ValueType) for t in declared)
    for dataset in benchbnn.list_datasets():
        types_ = benchbnn.get_dataset(dataset).value_types()
        assert "augmentation" in types_ and all(isinstance(t, ValueType) for t in types_.values())
    for optimizer in benchbnn.list_optimizers():
        for h in benchbnn.get_optimizer(optimizer).hparams:
            assert h.coerce(h.default) == h.default or math.isnan(h.default)
