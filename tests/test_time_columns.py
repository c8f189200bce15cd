"""Time to result on the validation split, the in-process cost columns and the ruleset lines,
from run records built by hand; where a run's steps per epoch come from, with one real run."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest
from engine_support import fresh_store, tiny_config

from benchbnn.bench.report import steps_per_epoch_of
from benchbnn.bench.results import Budget, RulesetInfo, build
from benchbnn.bench.stats import time_to_target
from benchbnn.bench.suites import Suite, SuiteEntry
from benchbnn.bench.tables import (
    render_csv,
    render_index,
    render_markdown,
    significant,
    to_data,
)
from benchbnn.core.config import RunConfig
from benchbnn.core.names import TAG_STEPS_PER_EPOCH
from benchbnn.train.engine import train
from benchbnn.train.runs import RunRecord, record_of
from benchbnn.train.tracking import client_for

BOP = SuiteEntry("bop", "bop", {"gamma": 1e-4}, {})
ADAM = SuiteEntry("adam-latent", "adam-latent", {"lr": 1e-2}, {})


def suite(val_fraction=0.1, target=80.0) -> Suite:
    return Suite(
        name="demo",
        description="",
        dataset="digits",
        archs=("bnn-mlp",),
        arch_options={},
        epochs=3,
        batch_size=64,
        seeds=(0, 1, 2),
        subset=None,
        val_fraction=val_fraction,
        dataset_options={},
        target_accuracy=target,
        baseline="bop",
        entries=(BOP, ADAM),
    )


def plan(s: Suite):
    return [
        (e, "bnn-mlp", RunConfig(dataset="digits", arch="bnn-mlp", optimizer=e.optimizer, seed=k))
        for e in s.entries
        for k in s.seeds
    ]


def run(entry, seed, val, test=95.0, timing=None, load=None, hardware="CPU, 2 cores"):
    """Three epochs with validation top-1 ``val`` (one value per epoch), 0.046 s each; test
    top-1 rises to ``test``; ``timing`` = (optimizer step, forward+backward) seconds per epoch."""
    history = []
    for e, v in enumerate(val, start=1):
        row = {"epoch": e, "val_top1": v, "test_top1": test * e / 3, "epoch_time_s": 0.046}
        if timing is not None:
            row["optimizer_step_s"], row["forward_backward_s"] = timing
        if load is not None:
            row["load_average"] = load[e - 1]
        history.append(row)
    return RunRecord(
        entry.label,
        entry.optimizer,
        "bnn-mlp",
        seed,
        f"h-{entry.label}-{seed}",
        status="FINISHED",
        run_id=f"{entry.label}-{seed}",
        history=tuple(history),
        hardware=hardware,
    )


def details_row(md: str, label: str) -> list[str]:
    lines = md.split("## Details", 1)[1].splitlines()
    line = next(x for x in lines if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def header(md: str) -> list[str]:
    lines = md.split("## Details", 1)[1].splitlines()
    line = next(x for x in lines if x.startswith("| Entry |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_time_to_target_counts_steps_and_only_measured_seconds():
    history = [
        {"epoch": 1, "val_top1": 50.0, "epoch_time_s": 1.5},
        {"epoch": 2, "val_top1": 85.0, "epoch_time_s": 2.0},
    ]
    hit = time_to_target(history, "val_top1", 80.0, steps_per_epoch=17)
    assert (hit.epoch, hit.seconds, hit.steps) == (2, 3.5, 34)
    # an epoch without a time: the seconds are not measured (None), never a partial sum
    partial = [dict(history[0]), {"epoch": 2, "val_top1": 85.0}]
    assert time_to_target(partial, "val_top1", 80.0).seconds is None
    assert time_to_target(history, "val_top1", 90.0) is None


def test_time_to_result_is_measured_on_validation_and_never_zero():
    s = suite()
    # bop's validation top-1 reaches 80 at epoch 2 for every seed; its *test* top-1 reaches 80
    # only at epoch 3 (95 * 3/3): the validation curve decides. adam-latent never reaches 80.
    records = [run(BOP, k, [60.0, 81.0, 90.0]) for k in range(3)]
    records += [run(ADAM, k, [50.0, 60.0, 70.0]) for k in range(3)]
    steps = {f"bop-{k}": 25 for k in range(3)}
    lb = build(s, plan(s), records, steps_per_epoch=steps)
    md = render_markdown(lb)
    cols = header(md)
    bop = dict(zip(cols, details_row(md, "bop")))
    adam = dict(zip(cols, details_row(md, "adam-latent")))
    assert bop["Epochs to 80% (val)"] == "2.0 (3/3)"
    assert bop["Steps to 80% (val)"] == "50"
    assert bop["Seconds to 80% (val)"] == "0.0920"  # 2 x 0.046 s, not rounded to 0.0
    assert adam["Epochs to 80% (val)"] == "not reached (0/3)"
    assert adam["Steps to 80% (val)"] == adam["Seconds to 80% (val)"] == "not reached"
    # the result is the test split's top-1 at the final epoch, in the main table
    main = md.split("## Results", 1)[1].split("## Details", 1)[0].splitlines()
    assert any(x.startswith("| bop |") and "| 95.00 ± 0.00 (3) |" in x for x in main)
    assert "Validation accuracy" not in md
    row = next(
        r for r in csv.DictReader(io.StringIO(render_csv(lb))) if r["entry"] == "adam-latent"
    )
    assert (row["target_reached"], row["seconds_to_target_mean"]) == ("0", "")
    data = to_data(lb)["rows"]
    assert data[0]["time_to_target"]["steps"]["mean"] == 50.0
    assert data[1]["time_to_target"]["per_run"] == {"0": None, "1": None, "2": None}


def test_significant_digits():
    assert significant(0.046) == "0.0460"
    assert significant(114.4) == "114"
    assert significant(None) == "not measured"


def test_cost_columns_from_recorded_step_times():
    s = suite()
    records = [run(BOP, k, [90.0] * 3, timing=(0.2, 1.0), load=[0.5, 1.0, 1.5]) for k in range(3)]
    records += [run(ADAM, k, [90.0] * 3, timing=(0.5, 1.2), load=[2.5, 3.0, 1.0]) for k in range(3)]
    lb = build(s, plan(s), records)
    md = render_markdown(lb)
    cols = header(md)
    bop = dict(zip(cols, details_row(md, "bop")))
    adam = dict(zip(cols, details_row(md, "adam-latent")))
    assert bop["Optimizer step (s / epoch)"] == "0.200"
    assert bop["Forward + backward (s / epoch)"] == "1.00"
    assert bop["Optimizer step vs bop"] == "baseline"
    # adam-latent was timed with a load average of 3.0 on 2 cores: marked, and said below
    assert adam["Optimizer step (s / epoch)"] == "0.500†"
    assert adam["Forward + backward (s / epoch)"] == "1.20†"
    assert adam["Optimizer step vs bop"] == "2.50x†"
    assert "- † Timings taken under load" in md and "adam-latent (3.0)" in md
    row = next(
        r for r in csv.DictReader(io.StringIO(render_csv(lb))) if r["entry"] == "adam-latent"
    )
    assert (row["optimizer_step_ratio"], row["under_load"], row["max_load_average"]) == (
        "2.5000",
        "true",
        "3.00",
    )


def test_runs_without_step_times_show_not_measured():
    s = suite()
    records = [run(BOP, k, [90.0] * 3) for k in range(3)]
    records += [run(ADAM, k, [90.0] * 3, timing=(0.5, 1.2)) for k in range(3)]
    lb = build(s, plan(s), records)
    md = render_markdown(lb)
    bop = dict(zip(header(md), details_row(md, "bop")))
    adam = dict(zip(header(md), details_row(md, "adam-latent")))
    assert bop["Optimizer step (s / epoch)"] == "not measured"
    assert bop["Optimizer step vs bop"] == "not measured"
    assert adam["Optimizer step (s / epoch)"] == "0.500"
    assert adam["Optimizer step vs bop"] == "not measured"  # no baseline timing to divide by
    assert "Machine load while timing: not recorded" in md
    assert to_data(lb)["rows"][0]["optimizer_step_s"] is None


def test_ruleset_and_budgets_are_written_and_mixed_budgets_refused():
    s = suite()
    records = [run(e, k, [90.0] * 3) for e in s.entries for k in range(3)]
    names = tuple(f"demo-bop-external-{k}" for k in range(3))
    equal = RulesetInfo(
        "external",
        1,
        (
            Budget("bop", (2, 2, 2), names, names[1]),
            Budget("adam-latent", (2, 2, 2), tuple(n.replace("bop", "adam") for n in names)),
        ),
        sampler="tpe",
    )
    md = render_markdown(build(s, plan(s), records, ruleset=equal))
    assert "- Ruleset: external v1, tpe sampler (see docs/rulesets.md)." in md
    assert (
        "bop: 3 studies x 2 trials (demo-bop-external-0, demo-bop-external-1, "
        "demo-bop-external-2); median study: demo-bop-external-1" in md
    )
    assert "Not ranked" not in md
    mixed = RulesetInfo("external", 1, (equal.budgets[0], Budget("adam-latent", (4, 4, 4), names)))
    lb = build(s, plan(s), records, ruleset=mixed)
    md = render_markdown(lb)
    refusals = [line for line in md.splitlines() if "Not ranked" in line]
    assert len(refusals) == 1
    assert "adam-latent: 3 studies x 4 trials" in refusals[0]
    data = to_data(lb)
    assert data["ruleset"]["ranked"] is False
    assert {r["budget"] for r in csv.DictReader(io.StringIO(render_csv(lb)))} == {
        equal.budgets[0].describe(),
        mixed.budgets[1].describe(),
    }
    index = render_index({"demo": data}, {})
    # no ranks in the index either: no Rank column, and the refusal in one line
    assert "| Rank |" not in index and "| bop |" in index
    assert "Ranking: not ranked (the tuning budgets differ" in index


@pytest.mark.parametrize(
    "val_fraction, where",
    [(0.1, "validation split (0.1 of the training split held out)"), (0.0, "test split")],
)
def test_the_split_time_to_result_uses_is_named(val_fraction, where):
    s = suite(val_fraction=val_fraction)
    lb = build(s, plan(s), [])
    assert lb.target_name == where
    assert f"top-1 on the {where} reaches it" in render_markdown(lb)


def test_steps_per_epoch_are_a_tag_and_need_no_artifact_store(tmp_path):
    """The engine tags each run with its steps per epoch, so steps-to-target columns survive
    an artifact store that is gone (a committed runs.db moved to another machine); runs
    tracked before the tag fall back to their config.json artifact while it exists."""
    store = fresh_store(tmp_path / "store")
    result = train(
        tiny_config(epochs=1), tracking_uri=store, quiet=True, checkpoint_dir=tmp_path / "ck"
    )
    client = client_for(store)
    run = client.get_run(result.run_id)
    artifacts = tmp_path / "config"
    config_file = client.download_artifacts(run.info.run_id, "config.json", str(artifacts))
    written = json.loads(Path(config_file).read_text())["steps_per_epoch"]
    assert written == 22  # the digits training split in batches of 64
    assert run.data.tags[TAG_STEPS_PER_EPOCH] == "22"

    entry = SimpleNamespace(label="bop2ndorder", optimizer="bop2ndorder")

    def steps() -> dict[str, int]:
        record = record_of(client, client.get_run(run.info.run_id), entry, "bnn-mlp", 0)
        return steps_per_epoch_of([record], store)

    client.delete_tag(run.info.run_id, TAG_STEPS_PER_EPOCH)  # as before the tag existed
    assert steps() == {run.info.run_id: 22}  # from the artifact
    client.set_tag(run.info.run_id, TAG_STEPS_PER_EPOCH, "22")
    shutil.rmtree(urlparse(run.info.artifact_uri).path)
    assert steps() == {run.info.run_id: 22}  # from the tag alone
    client.delete_tag(run.info.run_id, TAG_STEPS_PER_EPOCH)
    assert steps() == {}  # neither: not measured, never a guess
