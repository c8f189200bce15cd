"""Claim-by-claim statements in leaderboards (benchbnn.bench.claims): the suite schema of
``[[claims]]`` and ``[ablation]``, the verdicts with hand-computed intervals on run records built
by hand, and one end-to-end comparison of a tiny suite."""

from __future__ import annotations

import csv
import io
import json

import pytest

from benchbnn.bench.claims import (
    CONTRADICTED,
    NOT_MEASURED,
    NOT_RESOLVED,
    SUPPORTED,
    evaluate,
)
from benchbnn.bench.results import build
from benchbnn.bench.suite_checks import SuiteError
from benchbnn.bench.suite_file import parse_suite
from benchbnn.bench.tables import render_claims_csv, render_markdown, to_data
from benchbnn.train.runs import RunRecord

HEAD = """\
name = "claims-demo"
dataset = "digits"
arch = "bnn-mlp"
epochs = 3
batch_size = 64
seeds = 3
val_fraction = 0.1
target_accuracy = 80.0
baseline = "bop"
[arch_options]
hidden = [16]
[[entries]]
label = "bop"
optimizer = "bop"
[entries.hparams]
gamma = 1e-3
threshold = 1e-6
[[entries]]
label = "unbiased"
optimizer = "bop2ndorder"
[entries.hparams]
unbiased = true
gamma = 1e-7
sigma = 1e-3
threshold = 1e-6
[[entries]]
label = "biased"
optimizer = "bop2ndorder"
[entries.hparams]
gamma = 1e-7
sigma = 1e-3
threshold = 1e-6
[[entries]]
label = "adam"
optimizer = "adam-latent"
[ablation]
entries = ["unbiased", "biased"]
hparams = ["gamma"]
factors = [-1, 1]
"""

CLAIMS = """\
[[claims]]
kind = "accuracy"
a = "unbiased"
b = "bop"
paper = "Table 1: higher accuracy than Bop"
[[claims]]
kind = "accuracy"
a = "biased"
b = "bop"
paper = "Table 1: the biased rule too"
[[claims]]
kind = "accuracy"
a = "adam"
b = "bop"
paper = "a claim the data contradict"
[[claims]]
kind = "convergence"
a = "unbiased"
b = "bop"
paper = "abstract: converges faster"
[[claims]]
kind = "convergence"
a = "unbiased"
b = "biased"
paper = "faster than the biased rule"
[[claims]]
kind = "robustness"
a = "unbiased"
b = "biased"
paper = "section 5.1.2: the biased rule is more sensitive"
"""


def demo_suite(claims: str = CLAIMS):
    return parse_suite(HEAD + claims, "claims-demo.toml")


def record(label: str, optimizer: str, seed: int, test: float, val=(50.0, 60.0, 70.0)):
    """Three epochs: validation top-1 ``val`` per epoch, final test top-1 ``test``."""
    history = tuple(
        {"epoch": e, "val_top1": v, "test_top1": test if e == 3 else 10.0, "epoch_time_s": 2.0}
        for e, v in enumerate(val, start=1)
    )
    return RunRecord(
        label,
        optimizer,
        "bnn-mlp",
        seed,
        f"h-{label}-{seed}",
        "FINISHED",
        f"{label}-{seed}",
        history=history,
    )


def records():
    """Final test top-1 per seed (hand-chosen so each claim gets a known verdict)."""
    out = []
    finals = {
        ("bop", "bop"): (88.0, 88.0, 89.0),
        ("unbiased", "bop2ndorder"): (90.0, 91.0, 92.0),  # vs bop: 2, 3, 3
        ("biased", "bop2ndorder"): (89.0, 87.0, 92.0),  # vs bop: 1, -1, 3
        ("adam", "adam-latent"): (86.0, 85.0, 86.0),  # vs bop: -2, -3, -3
        ("unbiased@gamma-1", "bop2ndorder"): (89.0, 91.0, 90.0),  # |change| 1, 0, 2
        ("unbiased@gamma+1", "bop2ndorder"): (90.0, 89.0, 92.0),  # 0, 2, 0
        ("biased@gamma-1", "bop2ndorder"): (85.0, 84.0, 88.0),  # 4, 3, 4
        ("biased@gamma+1", "bop2ndorder"): (87.0, 85.0, 90.0),  # 2, 2, 2
    }
    # validation curves: unbiased reaches 80% at epochs 1, 1, 2; biased at 3, 3, 3; bop never
    val = {
        "unbiased": ((81.0, 85.0, 88.0), (82.0, 85.0, 88.0), (70.0, 81.0, 85.0)),
        "biased": ((60.0, 70.0, 80.0),) * 3,
    }
    for (label, optimizer), tests in finals.items():
        for seed, test in enumerate(tests):
            curves = val.get(label)
            out.append(
                record(label, optimizer, seed, test, curves[seed] if curves else (50.0, 60.0, 70.0))
            )
    return out


def board(suite, runs):
    plan = suite.run_configs()
    return build(suite, plan, runs)


def by_statement(results):
    return {(r.claim.kind, r.claim.a, r.claim.b): r for r in results}


def test_each_verdict_from_hand_computed_intervals():
    results = by_statement(evaluate(board(demo_suite(), records())))
    # unbiased - bop = 2, 3, 3: mean 8/3, sd 0.57735, t(2) 4.302653 -> half 1.434218
    r = results["accuracy", "unbiased", "bop"]
    assert r.verdict == SUPPORTED and r.unit == "points" and r.difference.n == 3
    assert (r.difference.mean, r.difference.low, r.difference.high) == pytest.approx(
        (8 / 3, 1.232449, 4.100884), abs=1e-6
    )
    # biased - bop = 1, -1, 3: mean 1, sd 2 -> half 4.968275
    r = results["accuracy", "biased", "bop"]
    assert r.verdict == NOT_RESOLVED
    assert (r.difference.low, r.difference.high) == pytest.approx((-3.968275, 5.968275), abs=1e-6)
    # adam - bop = -2, -3, -3
    r = results["accuracy", "adam", "bop"]
    assert r.verdict == CONTRADICTED
    assert (r.difference.low, r.difference.high) == pytest.approx((-4.100884, -1.232449), abs=1e-6)
    # bop never reaches 80% on the validation split: no pair, no interval
    r = results["convergence", "unbiased", "bop"]
    assert r.verdict == NOT_MEASURED and r.difference is None
    assert (
        r.reason == "0 seeds with runs of both entries that reached the target; an interval needs 2"
    )
    # biased epochs - unbiased epochs = 2, 2, 1: mean 5/3, sd 0.57735
    r = results["convergence", "unbiased", "biased"]
    assert r.verdict == SUPPORTED and r.unit == "epochs"
    assert (r.difference.mean, r.difference.low) == pytest.approx((5 / 3, 0.232449), abs=1e-6)
    # per seed, biased's mean |change| (3, 2.5, 3) minus unbiased's (0.5, 1, 1) = 2.5, 1.5, 2
    r = results["robustness", "unbiased", "biased"]
    assert r.verdict == SUPPORTED
    assert (r.difference.mean, r.difference.low, r.difference.high) == pytest.approx(
        (2.0, 0.757932, 3.242068), abs=1e-6
    )


def test_a_missing_sweep_run_leaves_the_seed_out_and_two_seeds_remain():
    runs = [r for r in records() if not (r.label == "biased@gamma+1" and r.seed == 1)]
    r = by_statement(evaluate(board(demo_suite(), runs)))["robustness", "unbiased", "biased"]
    # seeds 0 and 2 only: 2.5 and 2.0 -> mean 2.25, sd 0.353553, t(1) 12.706205 -> half 3.176551
    assert r.difference.seeds == (0, 2)
    assert (r.difference.low, r.difference.high) == pytest.approx((-0.926551, 5.426551), abs=1e-6)
    assert r.verdict == NOT_RESOLVED


def test_no_runs_means_not_measured_never_supported():
    results = evaluate(board(demo_suite(), []))
    assert {r.verdict for r in results} == {NOT_MEASURED}


def test_markdown_json_and_csv_carry_the_claims():
    lb = board(demo_suite(), records())
    md = render_markdown(lb)
    section = md.split("## Claims", 1)[1].split("## Entries", 1)[0]
    assert (
        "| unbiased: higher final test top-1 than bop | Table 1: higher accuracy than Bop | "
        "+2.67 [+1.23, +4.10] points | 3 | supported |" in section
    )
    assert "| 0 | not measured (0 seeds with runs of both entries that reached" in section
    data = to_data(lb)
    assert [c["verdict"] for c in data["claims"]] == [
        SUPPORTED,
        NOT_RESOLVED,
        CONTRADICTED,
        NOT_MEASURED,
        SUPPORTED,
        SUPPORTED,
    ]
    assert data["claims"][5]["seeds"] == [0, 1, 2] and data["claims"][5]["low"] == 0.757931
    rows = list(csv.DictReader(io.StringIO(render_claims_csv(lb))))
    assert [(r["kind"], r["advantage"], r["n"]) for r in rows][:2] == [
        ("accuracy", "2.6667", "3"),
        ("accuracy", "1.0000", "3"),
    ]
    assert rows[3]["advantage"] == "" and rows[3]["verdict"] == NOT_MEASURED


def test_a_suite_without_claims_gets_no_claims_section():
    lb = board(demo_suite(claims=""), records())
    assert "## Claims" not in render_markdown(lb)
    assert "claims" not in to_data(lb)


def test_the_sweep_adds_one_entry_per_point_with_the_base_values_written_out():
    suite = demo_suite()
    labels = [e.label for e in suite.entries]
    assert labels[4:] == [
        "unbiased@gamma-1",
        "unbiased@gamma+1",
        "biased@gamma-1",
        "biased@gamma+1",
    ]
    point = suite.entry("biased@gamma+1")
    assert point.hparams == {"gamma": 1e-6, "sigma": 1e-3, "threshold": 1e-6}
    assert suite.ablation.factors == (-1, 1) and suite.ablation.entries == ("unbiased", "biased")


def test_sweep_entries_are_the_runs_benchbnn_ablate_plans():
    from benchbnn.tune.ablation import plan_ablation

    suite = demo_suite()
    points = plan_ablation(suite, optimizers=["unbiased"], hparams=["gamma"], factors=(-1, 1))
    ablate = {(p.factor, c.seed): c.config_hash() for p in points for c in p.configs}
    plan = suite.run_configs(optimizers=["unbiased", "unbiased@gamma-1", "unbiased@gamma+1"])
    mine = {}
    for entry, _arch, config in plan:
        if not entry.label.startswith("unbiased"):
            continue  # the baseline, always kept
        factor = 0 if entry.label == "unbiased" else int(entry.label.rsplit("gamma", 1)[1])
        mine[factor, config.seed] = config.config_hash()
    assert {k: v for k, v in mine.items() if k[0] in (-1, 0, 1)} == ablate


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[[claims]]\nkind = "speed"\na = "bop"\nb = "adam"\npaper = "x"\n',
            "unknown claim kind 'speed'",
        ),
        (
            '[[claims]]\nkind = "accuracy"\na = "bopp"\nb = "adam"\npaper = "x"\n',
            "'bopp' is not an entry label",
        ),
        ('[[claims]]\nkind = "accuracy"\na = "bop"\nb = "bop"\npaper = "x"\n', "both are 'bop'"),
        ('[[claims]]\nkind = "accuracy"\na = "bop"\nb = "adam"\n', "claim has no 'paper'"),
        (
            '[[claims]]\nkind = "accuracy"\na = "bop"\nb = "adam"\npaper = "x"\n'
            'measure = "epochs"\n',
            "only a convergence claim has a measure",
        ),
        (
            '[[claims]]\nkind = "robustness"\na = "unbiased"\nb = "bop"\npaper = "x"\n',
            "add 'bop' to the entries of the suite's [ablation] table",
        ),
    ],
)
def test_bad_claims_are_refused_with_the_key(extra, message):
    with pytest.raises(SuiteError, match="key claims") as info:
        demo_suite(claims=extra)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("factors = [-1, 1]", "factors = [0, 1]", "whole non-zero power of ten"),
        ('hparams = ["gamma"]', 'hparams = ["beta"]', "no entry of the sweep (unbiased, biased)"),
        ('entries = ["unbiased", "biased"]', 'entries = ["nope"]', "'nope' is not an entry label"),
    ],
)
def test_bad_ablation_tables_are_refused(old, new, message):
    with pytest.raises(SuiteError, match="key ablation") as info:
        parse_suite(HEAD.replace(old, new), "claims-demo.toml")
    assert message in str(info.value)


def test_a_scheduled_hyperparameter_cannot_be_swept():
    text = HEAD.replace(
        'label = "biased"\noptimizer = "bop2ndorder"\n',
        'label = "biased"\noptimizer = "bop2ndorder"\n[entries.schedules]\n'
        'sigma = "polynomial:1e-3:1e-4"\n',
    ).replace('hparams = ["gamma"]', 'hparams = ["gamma", "sigma"]')
    with pytest.raises(SuiteError, match="entry 'biased' schedules 'sigma'"):
        parse_suite(text, "claims-demo.toml")


@pytest.mark.slow
def test_end_to_end_a_tiny_suite_writes_its_claims(tmp_path, monkeypatch):
    from benchbnn.bench.compare import compare

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "claims-demo.toml"
    path.write_text(HEAD + CLAIMS, encoding="utf-8")
    result = compare(
        str(path),
        seeds=2,
        epochs=1,
        overrides={"subset": 200},
        optimizers=None,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        out=tmp_path / "lb",
        plots=False,
        echo=None,
        quiet=True,
    )
    assert result is not None
    md = (tmp_path / "lb" / "leaderboard.md").read_text(encoding="utf-8")
    assert md.count("| unbiased: ") == 4  # three claims with A = unbiased, one per row
    data = json.loads((tmp_path / "lb" / "leaderboard.json").read_text(encoding="utf-8"))
    assert len(data["claims"]) == 6
    assert all(
        c["verdict"] in (SUPPORTED, CONTRADICTED, NOT_RESOLVED, NOT_MEASURED)
        for c in data["claims"]
    )
    # every verdict other than 'not measured' rests on an interval over both seeds
    assert all(
        c["low"] is not None and len(c["seeds"]) == 2
        for c in data["claims"]
        if c["verdict"] != NOT_MEASURED
    )
    rows = list(csv.DictReader(io.StringIO((tmp_path / "lb" / "claims.csv").read_text())))
    assert len(rows) == 6


def _tiny_cifar(root):
    """``root/{train,test}/<class>/<i>.png``: 4 random 32x32 images per CIFAR-10 class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    for split in ("train", "test"):
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                pixels[..., c % 3] = 25 * (c + 1)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10-cpu", "cifar10-cpu-sweep"])
def test_the_cpu_evidence_suites_run_end_to_end_with_tiny_overrides(name, tmp_path):
    from benchbnn.bench.compare import compare
    from benchbnn.bench.suite_file import load_suite

    data_dir = _tiny_cifar(tmp_path / "cifar")
    result = compare(
        name,
        seeds=2,
        epochs=1,
        overrides={"subset": None, "batch_size": 10, "arch_options": {"width": 0.0625}},
        data_dir=data_dir,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        out=tmp_path / "out",
        checkpoint_dir=tmp_path / "ckpt",
        plots=False,
        quiet=True,
        echo=None,
        compile="off",
    )
    suite = load_suite(name)
    assert result.trained == 2 * len(suite.entries)
    data = json.loads((tmp_path / "out" / "leaderboard.json").read_text(encoding="utf-8"))
    assert [(c["kind"], c["a"], c["b"]) for c in data["claims"]] == [
        (c.kind, c.a, c.b) for c in suite.claims
    ]
    for claim in data["claims"]:
        if claim["kind"] != "convergence":  # the target may not be reached in one tiny epoch
            assert claim["seeds"] == [0, 1] and claim["low"] is not None, claim
    assert (tmp_path / "out" / "claims.csv").is_file()


def test_a_claim_on_an_entry_left_out_or_without_target_is_not_measured():
    suite = demo_suite().select(["unbiased"])  # keeps the baseline bop, drops biased and adam
    results = by_statement(evaluate(board(suite, records())))
    r = results["accuracy", "biased", "bop"]
    assert (r.verdict, r.reason) == (NOT_MEASURED, "entry biased is not in this leaderboard")
    assert results["accuracy", "unbiased", "bop"].verdict == SUPPORTED
    no_target = demo_suite().override({"target_accuracy": None})
    r = by_statement(evaluate(board(no_target, records())))["convergence", "unbiased", "biased"]
    assert (r.verdict, r.reason) == (NOT_MEASURED, "the suite sets no target_accuracy")
