"""Reporting fidelity (benchbnn issue 14): settings written exactly, columns named by the split
they measure, and rankings printed only where the seeds resolve them."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

from test_leaderboard import B2O, BOP, make_suite, plan_of, record

from benchbnn.bench.results import build
from benchbnn.bench.stats import resolved_ranks
from benchbnn.bench.suites import SuiteEntry
from benchbnn.bench.tables import (
    NOT_RESOLVED,
    render_csv,
    render_index,
    render_json,
    render_latex,
    render_markdown,
    to_data,
)

# --- exact settings -----------------------------------------------------------------------------

TINY_VALUES = SuiteEntry(
    "tiny-values",
    "bop",
    {"threshold": 1e-8, "gamma": 1.2345678e-3},
    {"lr": {"schedule": "polynomial", "start": 2.5e-3, "end": 5e-9, "power": 1.0}},
)


def test_a_1e_8_hyperparameter_round_trips_through_leaderboard_json():
    suite = dataclasses.replace(make_suite(), entries=(BOP, TINY_VALUES), l2=5e-7)
    records = [record(e, "binarynet", s, 90.0, 80.0) for e in (BOP, TINY_VALUES) for s in range(3)]
    data = json.loads(render_json(build(suite, plan_of(suite), records)))
    row = {r["entry"]: r for r in data["rows"]}["tiny-values"]
    assert row["hparams"] == {"threshold": 1e-8, "gamma": 1.2345678e-3}
    assert row["schedules"]["lr"]["end"] == 5e-9
    assert data["protocol"]["binarynet"]["l2"] == 5e-7
    # results keep their rounding (6 decimals in JSON)
    assert row["eval_top1"]["mean"] == 80.0


def test_markdown_lists_settings_exactly_and_keeps_short_forms():
    suite = dataclasses.replace(make_suite(), entries=(BOP, TINY_VALUES), l2=5e-7)
    md = render_markdown(build(suite, plan_of(suite), []))
    assert "gamma=0.0012345678, threshold=1e-08; lr: polynomial 0.0025 -> 5e-09" in md
    assert "L2 5e-07" in md
    assert "**bop**: `bop`, gamma=0.0001, threshold=1e-08" in md


# --- columns named by their split ---------------------------------------------------------------


def test_columns_say_test_when_the_suite_evaluates_on_the_test_split():
    suite = make_suite()
    records = [record(e, "binarynet", s, 90.0, 80.0 + s) for e in (BOP, B2O) for s in range(3)]
    lb = build(suite, plan_of(suite), records)
    md, tex = render_markdown(lb), render_latex(lb)
    assert "| Test accuracy (%) |" in md and "Validation accuracy" not in md
    assert "accuracies are measured on the test split" in md
    assert "Test accuracy (\\%)" in tex and "accuracies measured on the test split" in tex
    assert {r["eval_split"] for r in csv.DictReader(io.StringIO(render_csv(lb)))} == {"test"}
    assert to_data(lb)["eval_split"] == "test"
    index = render_index({"demo": to_data(lb)}, {})
    assert "Accuracies measured on the test split" in index and "Validation column" not in index


def test_a_held_out_split_times_the_target_and_the_test_split_is_the_result():
    suite = make_suite(val_fraction=0.1, target=50.0)
    records = [
        record(e, "binarynet", s, 90.0, 80.0 + s, split="val") for e in (BOP, B2O) for s in range(3)
    ]
    lb = build(suite, plan_of(suite), records)
    md = render_markdown(lb)
    assert "| Test accuracy (%) |" in md and "Validation accuracy" not in md
    assert "Epochs to 50% (val)" in md
    assert "top-1 on the validation split (0.1 of the training split held out)" in md
    assert {r["eval_split"] for r in csv.DictReader(io.StringIO(render_csv(lb)))} == {"test"}


# --- rank only when resolved --------------------------------------------------------------------


def test_rank_groups_are_separated_by_intervals_that_exclude_zero():
    # a - b = 10, 8, 14 and a - c = 13, 14, 15: intervals above zero; b - c = 3, 6, 1: the t
    # interval (3.33 +- 6.26) spans zero, so b and c share a group below a
    values = {
        "a": {0: 20.0, 1: 21.0, 2: 22.0},
        "b": {0: 10.0, 1: 13.0, 2: 8.0},
        "c": {0: 7.0, 1: 7.0, 2: 7.0},
        "no-result": {0: None},
    }
    assert resolved_ranks(values) == {"a": 1, "b": 2, "c": 2}


def test_a_separation_that_does_not_split_the_order_is_no_ranking():
    # a beats c (3, 4, 5), but neither a vs b (4, -2, 4) nor b vs c (-1, 6, 1) is resolved: no
    # boundary in the order a, b, c has every entry above it beating every entry below it
    values = {
        "a": {0: 10.0, 1: 11.0, 2: 12.0},
        "b": {0: 6.0, 1: 13.0, 2: 8.0},
        "c": {0: 7.0, 1: 7.0, 2: 7.0},
    }
    assert resolved_ranks(values) is None
    # one seed: no interval, no ranking at all
    assert resolved_ranks({"a": {0: 99.0}, "b": {0: 1.0}}) is None


def test_overlapping_intervals_print_no_ranking():
    suite = make_suite()
    # differences 1.0, -1.0, 0.5: the interval contains zero
    records = [record(BOP, "binarynet", s, 90.0, 90.0) for s in range(3)]
    records += [record(B2O, "binarynet", s, 90.0, t) for s, t in enumerate((91.0, 89.0, 90.5))]
    lb = build(suite, plan_of(suite), records)
    index = render_index({"demo": to_data(lb)}, {})
    assert "| Rank |" not in index
    assert index.count(NOT_RESOLVED) == 1
    assert index.index("| bop |") < index.index("| bop2ndorder-biased |")  # suite order
    md = render_markdown(lb)
    assert f"- Ranking: {NOT_RESOLVED}." in md


def test_separated_entries_get_a_rank_column_in_rank_order():
    suite = make_suite()
    records = [record(BOP, "binarynet", s, 90.0, 90.0 + s) for s in range(3)]
    records += [record(B2O, "binarynet", s, 90.0, t) for s, t in enumerate((91.0, 92.2, 93.8))]
    lb = build(suite, plan_of(suite), records)
    index = render_index({"demo": to_data(lb)}, {})
    assert "| Rank | Entry |" in index
    assert index.index("| 1 | bop2ndorder-biased |") < index.index("| 2 | bop |")
    assert "- Ranking: 1: bop2ndorder-biased; 2: bop (a group is above another only" in (
        render_markdown(lb)
    )
