"""Suite files: parsing, validation with file/line/key in errors, expansion into run configs."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import benchbnn
from benchbnn.bench.suite_checks import SuiteError
from benchbnn.bench.suite_file import load_suite, parse_suite
from benchbnn.bench.suites import Suite
from benchbnn.core.config import RunConfig
from benchbnn.core.errors import BenchbnnError

BUILT_IN = [
    "quick",
    "cifar10-cpu",
    "cifar10-binarynet",
    "cifar10-base-point",
    "imagenet-xnornet-birealnet",
    "cifar10-norm",
    "cifar10-schedules",
    "cifar10-curves",
    "imagenet-unbiased-300",
]

MINIMAL = """\
name = "tiny"
dataset = "digits"
arch = "bnn-mlp"
epochs = 2
seeds = 2

[arch_options]
hidden = [32]

[[entries]]
label = "bop"
optimizer = "bop"

[[entries]]
label = "b2o"
optimizer = "bop2ndorder"
[entries.hparams]
gamma = 1e-4
unbiased = true
[entries.schedules]
threshold = "polynomial:1e-5:1e-8"
"""


def parse(text: str, name: str = "tiny.toml") -> Suite:
    return parse_suite(textwrap.dedent(text), Path("/suites") / name)


def error_of(text: str) -> str:
    with pytest.raises(SuiteError) as info:
        parse(text)
    return str(info.value)


# --- the built-in suites ------------------------------------------------------------------------


def test_every_built_in_suite_is_registered_and_loads():
    assert set(BUILT_IN) <= set(benchbnn.list_suites())
    for name in BUILT_IN:
        suite = load_suite(name)
        assert suite.name == name and suite.entries and suite.description
        assert suite.baseline in [e.label for e in suite.entries]


def test_the_plugin_listing_shows_each_suites_whole_first_sentence():
    from benchbnn_plugins.suites import _description

    cut = Path(benchbnn.get_suite("cifar10-cpu-sweep").path)
    assert _description(cut).startswith("The paper's Fig. 3 ablation (section 5.1.2) cut to run")
    for name in BUILT_IN:
        shown = _description(Path(benchbnn.get_suite(name).path))
        assert shown.endswith(".") and not re.search(r"\b(Fig|e\.g|i\.e)\.$", shown), shown


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_run_configs_are_already_canonical(name):
    """The engine would hash them the same way, so compare finds the runs it trained."""
    from benchbnn.train.engine import canonical_config

    for _entry, _arch, config in load_suite(name).run_configs():
        assert canonical_config(config) == config


def test_quick_runs_every_built_in_optimizer_on_digits_with_three_seeds():
    suite = load_suite("quick")
    assert suite.dataset == "digits" and suite.archs == ("bnn-mlp",)
    assert {e.optimizer for e in suite.entries} >= {"bop", "bop2ndorder", "pbop", "adam-latent"}
    assert suite.seeds == (0, 1, 2)
    assert "small problem" in suite.description


def test_table1_suite_has_the_authors_settings_and_paper_values():
    suite = load_suite("cifar10-binarynet")
    assert (suite.dataset, suite.archs, suite.epochs, suite.batch_size) == (
        "cifar10",
        ("binarynet",),
        500,
        50,
    )
    biased = suite.entry("bop2ndorder-biased")
    assert biased.hparams == {"unbiased": False}
    poly = {k: (v["start"], v["end"]) for k, v in biased.schedules.items()}
    assert poly == {
        "threshold": (1e-5, 1e-8),
        "gamma": (1e-2, 1e-5),
        "sigma": (1e-7, 1e-2),
        "lr": (1e-2, 1e-3),
    }
    assert suite.entry("bop2ndorder-unbiased").hparams == {"unbiased": True}
    bop = suite.entry("bop")
    assert bop.hparams["threshold"] == 1e-8
    assert bop.schedules["gamma"]["schedule"] == "step"
    assert suite.paper["bop2ndorder-biased"]["binarynet"] == {"train_top1": 98.1, "top1": 91.9}
    assert suite.paper["bop2ndorder-unbiased"]["binarynet"] == {"train_top1": 98.3, "top1": 91.5}
    assert suite.paper["bop"]["binarynet"] == {"train_top1": 96.7, "top1": 91.0}
    assert {e.optimizer for e in suite.entries} == {"bop", "bop2ndorder", "adam-latent", "pbop"}


def test_table2_suite_has_both_architectures_per_arch_budget_and_paper_values():
    suite = load_suite("imagenet-xnornet-birealnet")
    assert suite.archs == ("xnornet", "birealnet18") and suite.batch_size == 1024
    assert (suite.epochs_for("xnornet"), suite.epochs_for("birealnet18")) == (100, 150)
    assert (suite.l2_for("xnornet"), suite.l2_for("birealnet18")) == (5e-7, 0.0)
    assert suite.paper["bop2ndorder"]["birealnet18"] == {"top1": 57.2, "top5": 79.5}
    assert suite.paper["adam-latent"]["xnornet"] == {"top1": 44.2, "top5": 69.2}
    configs = {(a, c.epochs, c.l2) for _, a, c in suite.run_configs()}
    assert configs == {("xnornet", 100, 5e-7), ("birealnet18", 150, 0.0)}


def test_base_point_suite_matches_section_5_1():
    suite = load_suite("cifar10-base-point")
    assert (suite.epochs, suite.batch_size) == (100, 100)
    # both taus: the paper's text (1e-6, unsuffixed labels) and the authors' code (1e-5)
    for label, unbiased, tau in (
        ("bop2ndorder-unbiased", True, 1e-6),
        ("bop2ndorder-biased", False, 1e-6),
        ("bop2ndorder-unbiased-tau-code", True, 1e-5),
        ("bop2ndorder-biased-tau-code", False, 1e-5),
    ):
        assert suite.entry(label).hparams == {
            "gamma": 1e-7,
            "sigma": 1e-3,
            "threshold": tau,
            "lr": 0.01,
            "unbiased": unbiased,
        }
    assert len(suite.entries) == 4
    assert set(suite.tune["bop2ndorder"]) == {"gamma", "sigma", "threshold"}


def test_cpu_suite_says_what_was_cut():
    suite = load_suite("cifar10-cpu")
    assert suite.arch_options == {"width": 0.25} and suite.epochs < 10
    # at least 20,000 training images once the validation split is held out, 3 seeds
    assert suite.subset is not None and suite.subset * (1 - suite.val_fraction) >= 20_000
    assert suite.val_fraction > 0 and suite.target_accuracy is not None
    assert len(suite.seeds) == 3
    assert "cut" in suite.description and "as the authors' code" in suite.description
    # Every entry of the paper's Table 1 suite, in its order, then every other built-in binary
    # optimizer (the paper did not have them), each saying so in its note.
    table1 = [e.label for e in load_suite("cifar10-binarynet").entries]
    labels = [e.label for e in suite.entries]
    others = ["cema", "sgdat", "bayesbinn", "md-tanh"]
    assert labels == table1 + others
    assert all("not in cifar10-binarynet" in suite.entry(x).note for x in others)
    assert {e.optimizer for e in suite.entries} == set(benchbnn.list_optimizers())
    assert {c.kind for c in suite.claims} == {"accuracy", "convergence"}


def test_cpu_suite_keeps_the_papers_schedule_proportions():
    """Bop's gamma /10 every 100 of 500 epochs -> every fifth of the run's steps."""
    suite = load_suite("cifar10-cpu")
    assert suite.subset is not None
    steps = round(suite.subset * (1 - suite.val_fraction)) // suite.batch_size * suite.epochs
    gamma = suite.entry("bop").schedules["gamma"]
    assert gamma["every_steps"] * 5 == steps == 2000
    # MD-tanh's beta: the authors' total growth 1.01^1000 over the run
    md = suite.entry("md-tanh").hparams
    assert md["beta_scale"] ** (steps // md["beta_interval"]) == pytest.approx(1.01**1000, rel=1e-6)


def test_cpu_sweep_suite_adds_the_fig3_points_and_robustness_claims():
    suite = load_suite("cifar10-cpu-sweep")
    assert suite.ablation is not None and suite.ablation.factors == (-1, 1)
    # 6 points for each Bop2ndOrder base entry (gamma, sigma, tau), 4 for Bop (no sigma)
    assert len(suite.entries) == 3 + 6 + 6 + 4
    assert suite.entry("bop2ndorder-unbiased@sigma+1").hparams["sigma"] == pytest.approx(1e-2)
    assert {c.kind for c in suite.claims} == {"robustness"}


@pytest.mark.slow
def test_built_in_suites_load_after_a_non_editable_install_from_any_directory(tmp_path):
    """The TOML files are package data of benchbnn_plugins, found without the source tree."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the working tree
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("benchbnn", "plugins"):
        shutil.copytree(repo / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    script = (
        "import benchbnn.bench.suite_file as s, benchbnn_plugins;"
        "suite = s.load_suite('quick');"
        "print(suite.path.is_file(), suite.path.parent.parent)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", str(site / "benchbnn_plugins")]
    # the C++ sources are package data too (built on first use from the installed copy)
    assert (site / "benchbnn" / "core" / "popcount.cpp").is_file()
    assert (site / "benchbnn_plugins" / "optimizers" / "md_tanh.cpp").is_file()


# --- parsing and expansion ------------------------------------------------------------------------


def test_minimal_suite_defaults_and_expansion():
    suite = parse(MINIMAL)
    assert suite.baseline == "bop"  # the first entry when none is named
    assert suite.seeds == (0, 1) and suite.batch_size == 100 and suite.subset is None
    plan = suite.run_configs()
    assert [(e.label, a, c.seed) for e, a, c in plan] == [
        ("bop", "bnn-mlp", 0),
        ("bop", "bnn-mlp", 1),
        ("b2o", "bnn-mlp", 0),
        ("b2o", "bnn-mlp", 1),
    ]
    b2o = plan[2][2]
    assert isinstance(b2o, RunConfig)
    assert b2o.hparams == {"gamma": 1e-4, "unbiased": True}
    assert b2o.schedules == {
        "threshold": {"schedule": "polynomial", "start": 1e-5, "end": 1e-8, "power": 1.0}
    }
    assert b2o.arch_options == {"hidden": [32]} and b2o.epochs == 2


def test_compact_and_table_schedules_give_the_same_config_hash():
    table = MINIMAL.replace(
        'threshold = "polynomial:1e-5:1e-8"',
        'threshold = { schedule = "polynomial", start = 1e-5, end = 1e-8 }',
    )
    a, b = parse(MINIMAL).run_configs(), parse(table).run_configs()
    assert [c.config_hash() for *_, c in a] == [c.config_hash() for *_, c in b]


def test_integer_written_float_hyperparameter_hashes_like_the_float():
    a = parse(MINIMAL.replace("gamma = 1e-4", "lr = 1"))
    b = parse(MINIMAL.replace("gamma = 1e-4", "lr = 1.0"))
    assert a.run_configs()[2][2].config_hash() == b.run_configs()[2][2].config_hash()


def test_nested_arrays_on_their_own_lines_are_not_taken_for_tables():
    text = MINIMAL.replace("hidden = [32]", "hidden = [\n  [32],\n]").replace(
        "gamma = 1e-4", "gama = 1e-4"
    )
    assert "line 20, key entries[2].hparams.gama" in error_of(text)


def test_seed_counts_lists_epochs_and_overrides():
    suite = parse(MINIMAL.replace("seeds = 2", "seeds = [3, 7]"))
    assert [c.seed for *_, c in suite.run_configs()][:2] == [3, 7]
    assert [c.seed for *_, c in suite.run_configs(seeds=3)][:3] == [3, 7, 8]
    assert [c.seed for *_, c in suite.run_configs(seeds=1)][:1] == [3]
    assert [c.seed for *_, c in suite.run_configs(seeds=[5])] == [5, 5]
    configs = suite.run_configs(
        epochs=1, overrides={"subset": 100, "arch_options": {"hidden": [8]}}
    )
    assert {(c.epochs, c.subset, tuple(c.arch_options["hidden"])) for *_, c in configs} == {
        (1, 100, (8,))
    }
    with pytest.raises(BenchbnnError, match=r"cannot override 'epoch'.*Did you mean 'epochs'"):
        suite.run_configs(overrides={"epoch": 1})
    with pytest.raises(BenchbnnError, match="positive integer"):
        suite.run_configs(overrides={"epochs": 0})


def test_overriding_epochs_replaces_per_architecture_epochs():
    suite = load_suite("imagenet-xnornet-birealnet")
    assert {c.epochs for *_, c in suite.run_configs(epochs=1)} == {1}


def test_optimizers_filter_keep_the_baseline_and_add_missing_optimizers():
    suite = parse(MINIMAL)
    assert [e.label for e in suite.select("b2o").entries] == ["bop", "b2o"]
    assert [e.label for e in suite.select(["bop2ndorder"]).entries] == ["bop", "b2o"]
    added = suite.select("bop,pbop")
    assert [e.label for e in added.entries] == ["bop", "pbop"]
    assert added.entry("pbop").hparams == {}  # the optimizer's defaults
    assert [e.label for e in suite.select("+adam-latent").entries] == ["bop", "b2o", "adam-latent"]
    with pytest.raises(BenchbnnError, match=r"unknown optimizer 'bopp'.*Did you mean"):
        suite.select("bopp")


# --- errors: file, line and key -------------------------------------------------------------------


def test_malformed_toml_reports_the_line():
    text = MINIMAL.replace("epochs = 2", "epochs = = 2")
    message = error_of(text)
    assert message.startswith("suite /suites/tiny.toml, line 4, column")
    assert "invalid TOML" in message


@pytest.mark.parametrize(
    "old, new, line, key, fragment",
    [
        (
            'optimizer = "bop2ndorder"',
            'optimizer = "bop2ndordr"',
            16,
            "entries[2].optimizer",
            "unknown optimizer 'bop2ndordr'. Did you mean 'bop2ndorder'",
        ),
        (
            "gamma = 1e-4",
            "gama = 1e-4",
            18,
            "entries[2].hparams.gama",
            "has no hyperparameter 'gama'. Did you mean 'gamma'",
        ),
        ("gamma = 1e-4", "gamma = -1.0", 18, "entries[2].hparams.gamma", "outside its valid range"),
        (
            "unbiased = true",
            'unbiased = "maybe"',
            19,
            "entries[2].hparams.unbiased",
            "true or false",
        ),
        ("epochs = 2", "epochs = 2.5", 4, "epochs", "positive integer"),
        ("seeds = 2", "sedes = 2", 5, "sedes", "unknown key 'sedes'. Did you mean 'seeds'"),
        ('arch = "bnn-mlp"', 'arch = "bnn-mpl"', 3, "arch", "unknown architecture 'bnn-mpl'"),
        ('dataset = "digits"', 'dataset = "digit"', 2, "dataset", "unknown dataset 'digit'"),
        ("hidden = [32]", "hiden = [32]", 8, "arch_options.hiden", "has no option 'hiden'"),
        (
            'threshold = "polynomial:1e-5:1e-8"',
            'treshold = "polynomial:1e-5:1e-8"',
            21,
            "entries[2].schedules.treshold",
            "treshold",
        ),
        (
            'threshold = "polynomial:1e-5:1e-8"',
            'threshold = "polynomal:1e-5:1e-8"',
            21,
            "entries[2].schedules.threshold",
            "polynomal",
        ),
    ],
)
def test_bad_values_name_file_line_and_key(old, new, line, key, fragment):
    assert old in MINIMAL
    message = error_of(MINIMAL.replace(old, new))
    assert message.startswith(f"suite /suites/tiny.toml, line {line}, key {key}: "), message
    assert fragment in message


def test_missing_baseline_label_is_reported_with_close_matches():
    message = error_of('baseline = "b20"\n' + MINIMAL)
    assert message.startswith("suite /suites/tiny.toml, line 1, key baseline: ")
    assert "'b20' is not an entry label. Did you mean 'b2o'" in message


def test_duplicate_labels_missing_entries_and_missing_keys():
    assert "label 'bop' is used by two entries" in error_of(
        MINIMAL.replace('label = "b2o"', 'label = "bop"')
    )
    assert "missing [[entries]]" in error_of(MINIMAL.split("[[entries]]")[0])
    assert "missing key 'dataset'" in error_of(MINIMAL.replace('dataset = "digits"\n', ""))
    assert "not both" in error_of(
        MINIMAL.replace('arch = "bnn-mlp"', 'arch = "bnn-mlp"\narchs = ["bnn-mlp"]')
    )


def test_paper_and_tune_tables_are_checked():
    message = error_of(MINIMAL + "\n[paper.bopp]\ntop1 = 90.0\n")
    assert "key paper.bopp" in message and "Did you mean 'bop'" in message
    message = error_of(MINIMAL + "\n[paper.bop]\ntop_1 = 90.0\n")
    assert "paper.bop" in message
    message = error_of(MINIMAL + "\n[tune.bop]\ngama = [1e-5, 1e-3]\n")
    assert re.search(r"line \d+, key tune\.bop\.gama: .*Did you mean 'gamma'", message)
    suite = parse(MINIMAL + '\n[paper]\nsource = "x"\n[paper.bop]\ntop1 = 90.0\n')
    assert suite.paper == {"source": "x", "bop": {"bnn-mlp": {"top1": 90.0}}}


def test_unknown_suite_name_and_missing_file():
    with pytest.raises(
        BenchbnnError, match=re.escape("unknown suite 'quik'. Did you mean 'quick'")
    ):
        load_suite("quik")
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite("no/such/suite.toml")


def test_suite_file_on_disk_keeps_its_path_and_name(tmp_path):
    path = tmp_path / "my-suite.toml"
    path.write_text(MINIMAL.replace('name = "tiny"\n', ""))
    suite = load_suite(str(path))
    assert suite.name == "my-suite" and suite.path == path.resolve()


def test_suite_is_frozen():
    suite = parse(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        suite.epochs = 3  # type: ignore[misc]
