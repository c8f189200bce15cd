"""Leaderboard tables from plain run records: layouts, statistics in cells, failures,
determinism."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random

import pytest

from benchbnn.bench.report import write, write_index
from benchbnn.bench.results import build
from benchbnn.bench.suites import Suite, SuiteEntry
from benchbnn.bench.tables import (
    INDEX_MARKER,
    render_csv,
    render_index,
    render_json,
    render_latex,
    render_markdown,
    to_data,
)
from benchbnn.core.config import RunConfig
from benchbnn.train.runs import RunRecord

BOP = SuiteEntry("bop", "bop", {"gamma": 1e-4, "threshold": 1e-8}, {})
B2O = SuiteEntry(
    "bop2ndorder-biased",
    "bop2ndorder",
    {"unbiased": False},
    {"gamma": {"schedule": "polynomial", "start": 1e-2, "end": 1e-5, "power": 1.0}},
)


def make_suite(archs=("binarynet",), paper=None, target=None, val_fraction=0.0) -> Suite:
    return Suite(
        name="demo",
        description="A demo suite\nfor tests.",
        dataset="cifar10",
        archs=tuple(archs),
        arch_options={},
        epochs=3,
        batch_size=50,
        seeds=(0, 1, 2),
        subset=None,
        val_fraction=val_fraction,
        dataset_options={},
        target_accuracy=target,
        baseline="bop",
        entries=(BOP, B2O),
        paper=paper or {},
    )


def plan_of(suite: Suite):
    return [
        (
            entry,
            arch,
            RunConfig(
                dataset=suite.dataset,
                arch=arch,
                optimizer=entry.optimizer,
                hparams=dict(entry.hparams),
                epochs=suite.epochs,
                seed=seed,
            ),
        )
        for entry in suite.entries
        for arch in suite.archs
        for seed in suite.seeds
    ]


def record(
    entry,
    arch,
    seed,
    train,
    test,
    status="FINISHED",
    failure=None,
    top5=None,
    split="test",
    epochs=3,
):
    """A run whose accuracies rise linearly to (train, test) at the last epoch, 2 s an epoch."""
    history = tuple(
        {
            "epoch": e,
            "train_top1": train * e / epochs,
            f"{split}_top1": test * e / epochs,
            f"{split}_top5": (top5 if top5 is not None else min(100.0, test + 5)) * e / epochs,
            "epoch_time_s": 2.0,
            "flip_log_ratio": -9.0 + e,
        }
        for e in range(1, epochs + 1)
    )
    return RunRecord(
        label=entry.label,
        optimizer=entry.optimizer,
        arch=arch,
        seed=seed,
        config_hash=f"{entry.label}-{arch}-{seed}",
        status=status,
        run_id=f"run-{entry.label}-{seed}",
        failure=failure,
        history=history,
        run_metrics={"state_bytes_per_binary_weight": 4.0 if entry.optimizer == "bop" else 8.0},
        hardware="Test CPU, 2 cores, torch 2.x, device cpu",
    )


def table1_records(suite):
    # bop test 90, 91, 92; biased 91, 92.2, 93.8 -> differences 1.0, 1.2, 1.8
    bop = [record(BOP, "binarynet", s, 96.0 + s, 90.0 + s) for s in range(3)]
    b2o = [record(B2O, "binarynet", s, 98.0, t) for s, t in enumerate((91.0, 92.2, 93.8))]
    return bop + b2o


def test_table1_layout_cells_are_mean_std_n_with_paper_and_difference():
    paper = {
        "source": "Suarez-Ramirez et al. 2021, Table 1",
        "bop": {"binarynet": {"train_top1": 96.7, "top1": 91.0}},
        "bop2ndorder-biased": {"binarynet": {"train_top1": 98.1, "top1": 91.9}},
    }
    suite = make_suite(paper=paper)
    lb = build(suite, plan_of(suite), table1_records(suite), "benchbnn leaderboard demo")
    md = render_markdown(lb)
    assert "## Results (Table 1 layout)" in md
    assert (
        "| Entry | Optimizer | Training accuracy (%) | Test accuracy (%) | "
        "Paper training (%) | Paper 'validation' (%) | Δ vs bop (95% CI) |"
    ) in md
    # bop: train 96, 97, 98 -> 97.00 ± 1.00; test 90, 91, 92 -> 91.00 ± 1.00
    assert "| bop | bop | 97.00 ± 1.00 (3) | 91.00 ± 1.00 (3) | 96.7 | 91.0 | baseline |" in md
    # differences 1.0, 1.2, 1.8: mean 1.3333, sd 0.41633, half-width 4.303 * 0.41633 / sqrt 3
    # = 1.0342 -> [+0.30, +2.37], excludes zero
    row = lb.row("bop2ndorder-biased", "binarynet")
    assert row.difference.mean == pytest.approx(4.0 / 3.0)
    assert row.difference.low == pytest.approx(4.0 / 3.0 - 1.0342, abs=1e-3)
    assert "+1.33 [+0.30, +2.37]*" in md
    assert "test split" in md and "Test CPU, 2 cores" in md
    assert "Regenerate from the tracking store: `benchbnn leaderboard demo`" in md


def test_the_data_copy_recorded_with_the_runs_is_named():
    suite = make_suite()
    records = [
        dataclasses.replace(r, data_note="CIFAR-10 (JPEG copy)") for r in table1_records(suite)
    ]
    lb = build(suite, plan_of(suite), records)
    assert "- Dataset: cifar10, read from CIFAR-10 (JPEG copy); " in render_markdown(lb)
    assert to_data(lb)["data_notes"] == ["CIFAR-10 (JPEG copy)"]


def test_details_show_time_state_and_time_to_target():
    suite = make_suite(target=60.0)
    lb = build(suite, plan_of(suite), table1_records(suite))
    md = render_markdown(lb)
    # bop reaches 60% test top-1 at epoch 2 (90 * 2/3 = 60) for every seed: 4 s of training;
    # these records carry no in-process timings and no steps per epoch: not measured, never 0
    assert (
        "| bop | binarynet | baseline | 2.00 ± 0.00 (3) | not measured | not measured | "
        "not measured | 4.0 | 2.0 (3/3) | not measured | 4.00 | 3/3 |"
    ) in md
    data = to_data(lb)
    bop = data["rows"][0]
    assert bop["time_to_target"]["epochs"]["mean"] == 2.0
    assert bop["state_bytes_per_binary_weight"] == 4.0


def test_table2_layout_has_top1_and_top5_per_architecture():
    paper = {
        "bop": {
            "xnornet": {"top1": 45.9, "top5": 70.0},
            "birealnet18": {"top1": 56.6, "top5": 79.4},
        }
    }
    suite = make_suite(archs=("xnornet", "birealnet18"), paper=paper)
    records = [
        record(entry, arch, s, 60.0, base + s, top5=base + 20 + s)
        for entry, shift in ((BOP, 0.0), (B2O, 1.0))
        for arch, base in (("xnornet", 45.0 + shift), ("birealnet18", 56.0 + shift))
        for s in range(3)
    ]
    lb = build(suite, plan_of(suite), records)
    md = render_markdown(lb)
    assert "## Results (Table 2 layout)" in md
    assert (
        "| Entry | Accuracy | xnornet | xnornet (paper) | birealnet18 | birealnet18 (paper) |" in md
    )
    assert "| bop | Top-1 | 46.00 ± 1.00 (3) | 45.9 | 57.00 ± 1.00 (3) | 56.6 |" in md
    assert "|  | Top-5 | 66.00 ± 1.00 (3) | 70.0 | 77.00 ± 1.00 (3) | 79.4 |" in md
    assert "| bop2ndorder-biased | Top-1 | 47.00 ± 1.00 (3) | - | 58.00 ± 1.00 (3) | - |" in md
    tex = render_latex(lb)
    assert "Top-5" in tex and r"\toprule" in tex
    assert [row["arch"] for row in to_data(lb)["rows"]] == ["xnornet", "birealnet18"] * 2
    # every difference is exactly +1.00 for every seed: zero spread, interval [1, 1]
    assert lb.row("bop2ndorder-biased", "xnornet").difference.excludes_zero


def test_failed_and_missing_runs_are_shown_never_dropped():
    suite = make_suite()
    records = table1_records(suite)
    records[5] = record(
        B2O,
        "binarynet",
        2,
        30.0,
        10.0,
        status="FAILED",
        failure="diverged: training loss is nan at epoch 2",
    )
    records = records[1:]  # bop seed 0 was never run
    lb = build(suite, plan_of(suite), records)
    md = render_markdown(lb)
    assert "- Runs: 4 finished, 1 failed, 1 not run; 0.5 min of training" in md
    assert "| bop2ndorder-biased | bop2ndorder | 98.00 ± 0.00 (2) | 91.60 ± 0.85 (2) |" in md
    assert (
        "2/3; 1 failed: diverged: training loss is nan at epoch 2 (seed 2)" in md
        and "2/3; 1 not run (seed 0)" in md
    )
    assert "## Runs without a result" in md
    assert (
        "| bop2ndorder-biased | binarynet | 2 | FAILED | "
        "diverged: training loss is nan at epoch 2 |" in md
    )
    assert "| bop | binarynet | 0 | MISSING | not run |" in md
    # the one seed both entries finished (seed 1) is the only pair
    assert lb.row("bop2ndorder-biased", "binarynet").difference.seeds == (1,)
    assert "+1.20 (1 pair)" in md
    rows = list(csv.DictReader(io.StringIO(render_csv(lb))))
    assert rows[1]["failed"] == "1" and "diverged" in rows[1]["problems"]
    runs = json.loads(render_json(lb))["rows"][1]["runs"]
    assert [r["status"] for r in runs] == ["FINISHED", "FINISHED", "FAILED"]


def test_an_entry_whose_runs_all_failed_shows_dashes_and_reasons():
    suite = make_suite()
    records = table1_records(suite)[:3] + [
        record(B2O, "binarynet", s, 10.0, 10.0, status="FAILED", failure="diverged")
        for s in range(3)
    ]
    md = render_markdown(build(suite, plan_of(suite), records))
    assert "| bop2ndorder-biased | bop2ndorder | - | - | - |" in md
    assert "0/3; 3 failed: diverged (seeds 0, 1, 2)" in md


def test_the_result_column_reads_the_test_split_even_when_the_suite_holds_one_out():
    suite = make_suite(val_fraction=0.1)
    records = []
    for e in (BOP, B2O):
        for s in range(3):
            run = record(e, "binarynet", s, 90.0, 80.0 + s, split="val")
            history = tuple({**h, "test_top1": 70.0 + s, "test_top5": 95.0} for h in run.history)
            records.append(dataclasses.replace(run, history=history))
    md = render_markdown(build(suite, plan_of(suite), records))
    assert "accuracies are measured on the test split (final epoch)" in md
    assert "| Test accuracy (%) |" in md and "Validation accuracy" not in md
    assert "71.00 ± 1.00 (3)" in md and "81.00 ± 1.00 (3)" not in md


def test_same_runs_give_byte_identical_files_whatever_their_order():
    suite = make_suite(target=50.0)
    records = table1_records(suite)
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    a = build(suite, plan_of(suite), records, "cmd")
    b = build(suite, plan_of(suite), shuffled, "cmd")
    for render in (render_markdown, render_csv, render_latex, render_json):
        assert render(a) == render(b)


def test_csv_has_one_row_per_entry_and_architecture_with_fixed_precision():
    suite = make_suite()
    rows = list(
        csv.DictReader(io.StringIO(render_csv(build(suite, plan_of(suite), table1_records(suite)))))
    )
    assert [(r["entry"], r["arch"]) for r in rows] == [
        ("bop", "binarynet"),
        ("bop2ndorder-biased", "binarynet"),
    ]
    assert rows[0]["eval_top1_mean"] == "91.0000" and rows[0]["eval_top1_std"] == "1.0000"
    assert rows[1]["diff_excludes_zero"] == "true" and rows[0]["diff_top1_mean"] == ""


def test_latex_escapes_and_marks_significant_differences():
    suite = make_suite()
    tex = render_latex(build(suite, plan_of(suite), table1_records(suite)))
    assert r"bop2ndorder-biased" in tex and r"$\pm$" in tex and "$^{*}$" in tex
    assert r"\label{tab:benchbnn-demo}" in tex
    assert "_" not in tex.replace(r"\_", "")


def test_write_creates_tables_and_plots(tmp_path):
    suite = make_suite()
    lb = build(suite, plan_of(suite), table1_records(suite))
    paths = write(lb, tmp_path / "leaderboards" / "demo")
    names = sorted(p.name for p in paths)
    assert names == [
        "curves.png",
        "flips.png",
        "leaderboard.csv",
        "leaderboard.json",
        "leaderboard.md",
        "leaderboard.tex",
    ]
    assert all(p.stat().st_size > 0 for p in paths)
    assert (tmp_path / "leaderboards" / "demo" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_index_lists_suites_with_headline_rows_and_definitions(tmp_path):
    suite = make_suite()
    write(build(suite, plan_of(suite), table1_records(suite)), tmp_path / "demo", plots=False)
    path = write_index(tmp_path, defined={"demo": "A demo", "big-one": "GPU scale"})
    text = path.read_text()
    assert text.startswith(INDEX_MARKER)
    assert (
        "| [demo](demo/leaderboard.md) | cifar10 | binarynet | "
        "3 epochs, 3 seeds, 6/6 runs finished |" in text
    )
    assert "| big-one | - | - | definition only: `benchbnn compare big-one` |" in text
    # ranked: the biased entry's paired differences to bop (1.0, 1.2, 1.8) exclude zero
    assert text.index("| 1 | bop2ndorder-biased |") < text.index("| 2 | bop |")
    again = render_index(
        {"demo": json.loads((tmp_path / "demo" / "leaderboard.json").read_text())},
        {"demo": "A demo", "big-one": "GPU scale"},
    )
    assert again == text
