"""Leaderboard text: Markdown, CSV, LaTeX and JSON renderings and the index of all suites.

Every function here is a pure function of a :class:`benchbnn.bench.report.Leaderboard` (or of the
JSON data written from one): rows come in suite order, results are printed with a fixed number
of digits, settings (hyperparameters, schedules, options) exactly, and nothing depends on the
clock or the machine, so the same runs always give byte-identical files. Accuracy columns are
named by the split they measure, and rankings are printed only where the seeds resolve them
(:func:`benchbnn.bench.stats.resolved_ranks`; docs/protocols.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from benchbnn.bench.claims import ClaimResult
from benchbnn.bench.claims import evaluate as evaluate_claims
from benchbnn.bench.results import Leaderboard, Row
from benchbnn.bench.stats import Summary, resolved_ranks
from benchbnn.bench.suites import Suite, SuiteEntry
from benchbnn.core.formatting import fixed, setting, signed
from benchbnn.core.names import FAILED, FAILURE_STOPPED, FINISHED, MISSING
from benchbnn.train.runs import RunRecord

# --- formatting helpers -----------------------------------------------------------------------


def cell(summary: Summary | None, digits: int = 2, pm: str = "±") -> str:
    """``mean ± std (n)``; ``mean (1)`` for a single run; ``-`` when nothing finished."""
    if summary is None:
        return "-"
    if summary.n == 1:
        return f"{fixed(summary.mean, digits)} (1)"
    return f"{fixed(summary.mean, digits)} {pm} {fixed(summary.std, digits)} ({summary.n})"


def difference_text(row: Row, star: str = "*") -> str:
    """``+0.45 [+0.12, +0.78]*`` (star when the interval excludes zero)."""
    if row.is_baseline:
        return "baseline"
    d = row.difference
    if d is None:
        return "-"
    if d.low is None or d.high is None:
        return f"{signed(d.mean)} (1 pair)"
    mark = star if d.excludes_zero else ""
    return f"{signed(d.mean)} [{signed(d.low)}, {signed(d.high)}]{mark}"


def runs_text(row: Row) -> str:
    """``3/3`` or ``2/3; 1 failed: <reason> (seed 2)``."""
    total = len(row.records)
    text = f"{row.finished}/{total}"
    problems: dict[str, list[int]] = {}
    for r in row.unfinished:
        problems.setdefault(_problem(r), []).append(r.seed)
    for what, seeds in sorted(problems.items()):
        text += (
            f"; {len(seeds)} {what} (seed{'s' if len(seeds) > 1 else ''} "
            f"{', '.join(map(str, seeds))})"
        )
    return text


def _short_status(record: RunRecord) -> str:
    if record.failure_class == FAILURE_STOPPED:  # KILLED on purpose by a plugin (pruned)
        return "stopped"
    return {MISSING: "not run", FAILED: "failed"}.get(record.status, record.status.lower())


def _problem(record: RunRecord) -> str:
    """``failed: <reason>``, a stopped run's reason (``pruned: <why>``; first line, shortened)
    or the short status."""
    what = _short_status(record)
    if (record.status == FAILED or what == "stopped") and record.failure:
        reason = record.failure.strip().splitlines()[0]
        reason = reason if len(reason) <= 60 else reason[:57] + "..."
        return reason if what == "stopped" else f"{what}: {reason}"
    return what


NOT_MEASURED = "not measured"


def significant(value: float | None, digits: int = 3, missing: str = NOT_MEASURED) -> str:
    """``value`` with ``digits`` significant digits in fixed notation (``0.0461``, ``114``), so
    that a small measured time never prints as ``0.0``; ``missing`` for None."""
    if value is None or not math.isfinite(value):
        return missing
    if value == 0:
        return fixed(0.0, digits - 1)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return fixed(value, min(decimals, 6))


def target_text(row: Row, suite: Suite) -> tuple[str, str, str]:
    """(epochs, optimizer steps, seconds to target) cells, means over the runs that reached it.

    A row none of whose runs reached the target says ``not reached (0/n)`` (never 0); steps or
    seconds that were not recorded say ``not measured``.
    """
    if suite.target_accuracy is None:
        return "-", "-", "-"
    done = row.finished
    if done == 0:
        return "-", "-", "-"
    if row.target_reached == 0:
        return f"not reached (0/{done})", "not reached", "not reached"
    epochs = row.target_epochs
    assert epochs is not None
    steps = row.target_steps
    seconds = row.target_seconds
    return (
        f"{fixed(epochs.mean, 1)} ({row.target_reached}/{done})",
        NOT_MEASURED if steps is None else fixed(steps.mean, 0),
        significant(None if seconds is None else seconds.mean),
    )


#: Marks a timing measured while the machine's load average exceeded its usable cores.
LOAD_MARK = "†"


def cost_text(row: Row) -> tuple[str, str, str]:
    """(optimizer step s/epoch, forward+backward s/epoch, step time vs the baseline) cells,
    each marked with :data:`LOAD_MARK` when measured under load; ``not measured`` for runs
    that did not record them."""
    mark = LOAD_MARK if row.under_load else ""
    step = row.optimizer_step
    fb = row.forward_backward
    if step is None or (row.step_ratio is None and not row.is_baseline):
        ratio = NOT_MEASURED
    elif row.is_baseline:
        ratio = "baseline"
    else:
        ratio = significant(row.step_ratio) + "x" + mark
    return (
        NOT_MEASURED if step is None else significant(step.mean) + mark,
        NOT_MEASURED if fb is None else significant(fb.mean) + mark,
        ratio,
    )


def exact_setting(value: Any) -> str:
    """A setting as :func:`benchbnn.core.formatting.setting` prints it (``1e-08``, ``0.01``),
    except that a float whose 6 significant digits do not give it back is printed in full
    (``0.0012345678``): hyperparameters are settings, never rounded like results."""
    if isinstance(value, float) and math.isfinite(value) and float(f"{value:g}") != value:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(exact_setting(v) for v in value) + "]"
    return setting(value)


def options_text(options: Mapping[str, Any]) -> str:
    """``key=value`` pairs sorted by key, values exact (:func:`exact_setting`)."""
    return ", ".join(f"{k}={exact_setting(v)}" for k, v in sorted(options.items())) or "defaults"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def schedule_text(data: Mapping[str, Any]) -> str:
    """A schedule as one compact line (``polynomial 1e-05 -> 1e-08``)."""
    kind = data.get("schedule", "?")
    rest = {k: v for k, v in data.items() if k != "schedule"}
    if "start" in rest and "end" in rest:
        extra = {k: v for k, v in rest.items() if k not in ("start", "end")}
        text = f"{kind} {exact_setting(rest['start'])} -> {exact_setting(rest['end'])}"
        return text + (f" ({options_text(extra)})" if extra else "")
    return f"{kind} ({options_text(rest)})" if rest else str(kind)


def entry_settings(entry: SuiteEntry) -> str:
    """Hyperparameters, schedules and the entry's own architecture options, exactly."""
    parts = [options_text(entry.hparams)] if entry.hparams else []
    if entry.arch_options:
        parts.append(f"architecture: {options_text(entry.arch_options)}")
    parts += [f"{k}: {schedule_text(v)}" for k, v in sorted(entry.schedules.items())]
    return "; ".join(parts) or "optimizer defaults"


def budget_lines(suite: Suite) -> list[str]:
    """The protocol in words, one line per architecture."""
    lines = []
    for arch in suite.archs:
        opts = suite.arch_options_for(arch)
        subset = f"{suite.subset} training images" if suite.subset else "the full training split"
        l2 = f", L2 {exact_setting(suite.l2_for(arch))}" if suite.l2_for(arch) else ""
        lines.append(
            f"{arch}"
            + (f" ({options_text(opts)})" if opts else "")
            + f": {_plural(suite.epochs_for(arch), 'epoch')}, batch {suite.batch_size_for(arch)}, "
            f"{len(suite.seeds)} seed{'s' if len(suite.seeds) != 1 else ''} "
            f"({', '.join(map(str, suite.seeds))}), {subset}{l2}"
        )
    return lines


# --- Markdown ---------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(r) for r in rows)]


def main_table(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """The paper-layout table as header and rows of text cells (shared by Markdown and LaTeX)."""
    suite = lb.suite
    paper = bool(suite.paper)
    if lb.layout == "table1":
        header = ["Entry", "Optimizer", "Training accuracy (%)", f"{lb.split_title} accuracy (%)"]
        if paper:
            header += ["Paper training (%)", "Paper 'validation' (%)"]
        header += [f"Δ vs {suite.baseline} (95% CI)"]
        rows = []
        for row in lb.rows:
            cells = [
                row.entry.label,
                row.entry.optimizer,
                cell(row.train_top1),
                cell(row.eval_top1),
            ]
            if paper:
                cells += [fixed(row.paper.get("train_top1"), 1), fixed(row.paper.get("top1"), 1)]
            rows.append(cells + [difference_text(row)])
        return header, rows
    header = ["Entry", "Accuracy"]
    for arch in suite.archs:
        header += [arch] + ([f"{arch} (paper)"] if paper else [])
    rows = []
    for entry in suite.entries:
        for k, name in (("top1", "Top-1"), ("top5", "Top-5")):
            cells = [entry.label if k == "top1" else "", name]
            for arch in suite.archs:
                row = lb.row(entry.label, arch)
                cells.append(cell(row.eval_top1 if k == "top1" else row.eval_top5))
                if paper:
                    cells.append(fixed(row.paper.get(k), 1))
            rows.append(cells)
    return header, rows


def details_table(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    suite = lb.suite
    target = suite.target_accuracy
    header = [
        "Entry",
        "Architecture",
        f"Δ top-1 vs {suite.baseline} (95% CI)",
    ]
    header += [
        "Time / epoch (s)",
        "Optimizer step (s / epoch)",
        "Forward + backward (s / epoch)",
        f"Optimizer step vs {suite.baseline}",
        "State bytes / binary weight",
    ]
    if target is not None:
        where = suite.target_split
        header += [
            f"Epochs to {target:g}% ({where})",
            f"Steps to {target:g}% ({where})",
            f"Seconds to {target:g}% ({where})",
        ]
    header += ["Runs finished"]
    rows = []
    for row in lb.rows:
        cells = [row.entry.label, row.arch, difference_text(row)]
        cells += [cell(row.epoch_time), *cost_text(row), fixed(row.state_bytes, 1)]
        if target is not None:
            cells += list(target_text(row, suite))
        rows.append(cells + [runs_text(row)])
    return header, rows


def ruleset_lines(lb: Leaderboard) -> list[str]:
    """The ruleset, its version and every entry's budget, and the refusal line when the
    budgets differ (docs/rulesets.md)."""
    rules = lb.ruleset
    if rules is None:
        return []
    sampler = f", {rules.sampler} sampler" if rules.sampler else ""
    out = [f"- Ruleset: {rules.name} v{rules.version}{sampler} (see docs/rulesets.md)."]
    if any(b.studies for b in rules.budgets):
        out.append(
            "- Tuning budgets: " + "; ".join(f"{b.label}: {b.describe()}" for b in rules.budgets)
        )
        out[-1] += "."
    refusal = lb.refusal
    if refusal:
        out.append(f"- **{refusal}.**")
    return out


def load_lines(lb: Leaderboard) -> list[str]:
    """A line saying which timings were taken under load, or that none was recorded."""
    loaded = [row for row in lb.rows if row.under_load]
    if loaded:
        names = ", ".join(f"{row.entry.label} ({fixed(row.max_load, 1)})" for row in loaded)
        return [
            f"- {LOAD_MARK} Timings taken under load (1-minute load average above the "
            f"machine's usable cores, largest value in brackets): {names}; they are not clean "
            "measurements."
        ]
    if any(row.max_load is not None for row in lb.rows):
        return []
    if any(row.finished for row in lb.rows):
        return ["- Machine load while timing: not recorded by these runs."]
    return []


def environment_lines(lb: Leaderboard) -> list[str]:
    """The markdown line naming the runs' numerical environment, or saying that they mix
    several (with the runs in each); none when no run recorded its environment."""
    if not lb.environments:
        return []
    if not lb.mixed_environments:
        return [f"- Environment: {lb.environments[0][0]}."]
    parts = [f"{env} ({_plural(n, 'run')})" for env, n in lb.environments]
    return [
        f"- Environments: **mixed**, the runs come from {len(parts)} numerical environments "
        f"(figures of different environments are not bit-comparable): {'; '.join(parts)}."
    ]


def render_markdown(lb: Leaderboard) -> str:
    suite = lb.suite
    out = [f"# Leaderboard: {suite.name}", ""]
    if suite.description:
        out += [" ".join(suite.description.split()), ""]
    eval_split = f"accuracies are measured on the {lb.eval_name}"
    out += [
        f"- Dataset: {suite.dataset}"
        + (f" ({options_text(suite.dataset_options)})" if suite.dataset_options else "")
        + (f", read from {' and '.join(lb.data_notes)}" if lb.data_notes else "")
        + f"; {eval_split}.",
        "- Budget: " + "; ".join(budget_lines(suite)) + ".",
        "- Hardware: " + ("; ".join(lb.hardware) if lb.hardware else "not recorded") + ".",
        *environment_lines(lb),
        f"- Baseline: {suite.baseline}."
        + (
            f" Target accuracy: {suite.target_accuracy:g}% top-1 on the {lb.target_name}."
            if suite.target_accuracy is not None
            else ""
        ),
        f"- Runs: {_run_counts(lb)}; {_compute_time(lb)}.",
        *ruleset_lines(lb),
        *load_lines(lb),
    ]
    if lb.changes:
        out.append("- Changed from the suite file: " + "; ".join(lb.changes) + ".")
    if suite.paper.get("source"):
        out.append(f"- Paper values: {suite.paper['source']}.")
    out.append(f"- Ranking: {ranking_text(to_data(lb))}")
    title = "Table 1 layout" if lb.layout == "table1" else "Table 2 layout"
    out += ["", f"## Results ({title})", ""]
    out += markdown_table(*main_table(lb))
    out += ["", "## Details", ""]
    out += markdown_table(*details_table(lb))
    problems = [r for r in lb.records if not r.finished]
    if problems:
        out += ["", "## Runs without a result", ""]
        out += markdown_table(
            ["Entry", "Architecture", "Seed", "Status", "Reason"],
            [[r.label, r.arch, str(r.seed), r.status, r.outcome()] for r in problems],
        )
    if suite.claims:
        out += ["", "## Claims", ""]
        out += claims_markdown(lb, evaluate_claims(lb))
    out += ["", "## Entries", ""]
    for entry in suite.entries:
        note = f" ({entry.note})" if entry.note else ""
        out.append(f"- **{entry.label}**: `{entry.optimizer}`, {entry_settings(entry)}{note}")
    out += [
        "",
        "Cells are mean ± sample standard deviation over seeds (n finished runs), final epoch. "
        f"Δ is the mean difference in top-1 to {suite.baseline}, paired by seed, with a 95% "
        "Student t interval; `*` marks an interval that excludes zero. Training accuracy is "
        "measured on the final epoch's training batches, augmentation included (as Keras "
        "reports it). Time per epoch is training plus evaluation wall time. The optimizer "
        "step and forward + backward columns are in-process timings summed over an epoch's "
        "steps (the optimizer step is what differs between entries), with the step's ratio "
        f"to {suite.baseline}'s; `not measured`: runs tracked before these timings existed. "
        "Time to the target counts the first epoch whose top-1 on the "
        f"{lb.target_name} reaches it: epochs, optimizer steps (epochs x steps per epoch) and "
        "the wall seconds of the epochs up to it (training plus evaluation), means over the "
        "runs that reached it (n of the finished runs in brackets).",
    ]
    if lb.command:
        out += ["", f"Regenerate from the tracking store: `{lb.command}`"]
    return "\n".join(out) + "\n"


def advantage_text(result: ClaimResult) -> str:
    """``+1.20 [+0.30, +2.10] points``, ``+2.00 (1 pair) epochs`` or ``-``."""
    d = result.difference
    if d is None:
        return "-"
    if d.low is None or d.high is None:
        return f"{signed(d.mean)} (1 pair) {result.unit}"
    return f"{signed(d.mean)} [{signed(d.low)}, {signed(d.high)}] {result.unit}"


def claims_markdown(lb: Leaderboard, results: Sequence[ClaimResult]) -> list[str]:
    """The Claims section: one row per claim (and architecture, with several), then how each
    advantage is measured (docs/protocols.md, "Claims")."""
    several = len(lb.suite.archs) > 1
    header = [
        "Claim",
        *(["Architecture"] if several else []),
        "The paper",
        "A's advantage (95% CI)",
    ]
    header += ["Seeds", "Verdict"]
    rows = []
    for r in results:
        seeds = str(r.difference.n) if r.difference is not None else "0"
        why = f" ({r.reason})" if r.reason else ""
        cells = [r.statement, *([r.arch] if several else []), r.claim.paper, advantage_text(r)]
        rows.append([*cells, seeds, f"{r.verdict}{why}"])
    target = (
        f"{lb.suite.target_accuracy:g}% top-1 on the {lb.target_name}"
        if lb.suite.target_accuracy is not None
        else "no target set"
    )
    note = (
        "A's advantage is oriented so that a positive value is what the paper claims: "
        "accuracy, A's final test top-1 minus B's; convergence, B's time to reach "
        f"{target} minus A's, over the seeds on which both reached it; robustness, B's mean "
        "absolute change of final test top-1 from its base point over the ablation sweep points "
        "A and B share, minus A's (each point against the base run of the same seed). Each is "
        "a mean over seeds with a 95% Student t interval paired by seed. Supported: the "
        "interval lies above zero; contradicted: below zero; not resolved at this budget: it "
        "contains zero; not measured: fewer than 2 seeds give a pair."
    )
    return [*markdown_table(header, rows), "", note]


def claims_data(results: Sequence[ClaimResult]) -> list[dict[str, Any]]:
    """The claims as plain data (the JSON file's ``claims`` and the rows of ``claims.csv``)."""
    out = []
    for r in results:
        d = r.difference
        out.append(
            {
                "kind": r.claim.kind,
                "a": r.claim.a,
                "b": r.claim.b,
                "arch": r.arch,
                "measure": r.claim.measure if r.claim.kind == "convergence" else None,
                "paper": r.claim.paper,
                "statement": r.statement,
                "advantage": None if d is None else d.mean,
                "low": None if d is None else d.low,
                "high": None if d is None else d.high,
                "seeds": [] if d is None else list(d.seeds),
                "unit": r.unit,
                "verdict": r.verdict,
                "reason": r.reason,
            }
        )
    return out


CLAIM_CSV_FIELDS = (
    "kind",
    "a",
    "b",
    "arch",
    "measure",
    "advantage",
    "low",
    "high",
    "unit",
    "n",
    "verdict",
    "reason",
    "paper",
)


def render_claims_csv(lb: Leaderboard) -> str:
    """``claims.csv``: one row per claim and architecture (numbers with 4 decimals, empty
    when not measured)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CLAIM_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for item in claims_data(evaluate_claims(lb)):
        number = {
            k: "" if item[k] is None else f"{item[k]:.4f}" for k in ("advantage", "low", "high")
        }
        writer.writerow(
            {
                **{k: item[k] for k in ("kind", "a", "b", "arch", "unit", "verdict", "reason")},
                **number,
                "measure": item["measure"] or "",
                "n": len(item["seeds"]),
                "paper": item["paper"],
            }
        )
    return buffer.getvalue()


def total_seconds(lb: Leaderboard) -> float:
    """Training and evaluation time of every tracked epoch of the suite's runs."""
    return math.fsum(
        row.get("epoch_time_s", 0.0)
        for r in lb.records
        for row in r.history
        if math.isfinite(row.get("epoch_time_s", 0.0))
    )


def _compute_time(lb: Leaderboard) -> str:
    seconds = total_seconds(lb)
    return f"{fixed(seconds / 60, 1)} min of training and evaluation in all (sum of epoch times)"


def _run_counts(lb: Leaderboard) -> str:
    counts: dict[str, int] = {}
    for r in lb.records:
        key = "finished" if r.finished else _short_status(r)
        counts[key] = counts.get(key, 0) + 1
    order = ["finished", "failed", "stopped", "killed", "running", "not run"]
    keys = sorted(counts, key=lambda k: (order.index(k) if k in order else len(order), k))
    return ", ".join(f"{counts[k]} {k}" for k in keys)


# --- CSV --------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "suite",
    "entry",
    "optimizer",
    "arch",
    "runs",
    "finished",
    "failed",
    "not_finished",
    "train_top1_mean",
    "train_top1_std",
    "train_top5_mean",
    "train_top5_std",
    "eval_top1_mean",
    "eval_top1_std",
    "eval_top5_mean",
    "eval_top5_std",
    "n",
    "paper_train_top1",
    "paper_top1",
    "paper_top5",
    "diff_top1_mean",
    "diff_top1_low",
    "diff_top1_high",
    "diff_pairs",
    "diff_excludes_zero",
    "epoch_time_s_mean",
    "epoch_time_s_std",
    "state_bytes_per_binary_weight",
    "target_accuracy",
    "target_reached",
    "epochs_to_target_mean",
    "seconds_to_target_mean",
    "problems",
    "test_top1_mean",
    "test_top1_std",
    "optimizer_step_s_mean",
    "forward_backward_s_mean",
    "optimizer_step_ratio",
    "max_load_average",
    "under_load",
    "steps_to_target_mean",
    "ruleset",
    "ruleset_version",
    "budget",
    "ranked",
    "eval_split",
)


def _mean(summary: Summary | None) -> float | None:
    return summary.mean if summary is not None else None


def _std(summary: Summary | None) -> float | None:
    return summary.std if summary is not None else None


def csv_rows(lb: Leaderboard) -> list[dict[str, str]]:
    rows = []
    for row in lb.rows:
        d = row.difference
        failed = sum(r.status == FAILED for r in row.records)
        rows.append(
            {
                "suite": lb.suite.name,
                "entry": row.entry.label,
                "optimizer": row.entry.optimizer,
                "arch": row.arch,
                "runs": str(len(row.records)),
                "finished": str(row.finished),
                "failed": str(failed),
                "not_finished": str(len(row.records) - row.finished - failed),
                "train_top1_mean": fixed(_mean(row.train_top1), 4, missing=""),
                "train_top1_std": fixed(_std(row.train_top1), 4, missing=""),
                "train_top5_mean": fixed(_mean(row.train_top5), 4, missing=""),
                "train_top5_std": fixed(_std(row.train_top5), 4, missing=""),
                "eval_top1_mean": fixed(_mean(row.eval_top1), 4, missing=""),
                "eval_top1_std": fixed(_std(row.eval_top1), 4, missing=""),
                "eval_top5_mean": fixed(_mean(row.eval_top5), 4, missing=""),
                "eval_top5_std": fixed(_std(row.eval_top5), 4, missing=""),
                "n": str(row.eval_top1.n if row.eval_top1 else 0),
                "paper_train_top1": fixed(row.paper.get("train_top1"), 1, missing=""),
                "paper_top1": fixed(row.paper.get("top1"), 1, missing=""),
                "paper_top5": fixed(row.paper.get("top5"), 1, missing=""),
                "diff_top1_mean": fixed(d.mean if d else None, 4, missing=""),
                "diff_top1_low": fixed(d.low if d else None, 4, missing=""),
                "diff_top1_high": fixed(d.high if d else None, 4, missing=""),
                "diff_pairs": str(d.n) if d else "",
                "diff_excludes_zero": ("true" if d.excludes_zero else "false") if d else "",
                "epoch_time_s_mean": fixed(_mean(row.epoch_time), 3, missing=""),
                "epoch_time_s_std": fixed(_std(row.epoch_time), 3, missing=""),
                "state_bytes_per_binary_weight": fixed(row.state_bytes, 2, missing=""),
                "target_accuracy": fixed(lb.suite.target_accuracy, 2, missing=""),
                "target_reached": str(row.target_reached)
                if lb.suite.target_accuracy is not None
                else "",
                "epochs_to_target_mean": fixed(_mean(row.target_epochs), 2, missing=""),
                "seconds_to_target_mean": fixed(_mean(row.target_seconds), 2, missing=""),
                "problems": "; ".join(
                    f"seed {r.seed}: {r.status} {r.outcome()}" for r in row.unfinished
                ),
                **_new_csv_cells(lb, row),
            }
        )
    return rows


def _new_csv_cells(lb: Leaderboard, row: Row) -> dict[str, str]:
    """The time-to-result, cost and ruleset cells (empty: not measured or not applicable)."""
    rules = lb.ruleset
    budget = rules.budget(row.entry.label) if rules is not None else None
    return {
        "test_top1_mean": fixed(_mean(row.test_top1), 4, missing=""),
        "test_top1_std": fixed(_std(row.test_top1), 4, missing=""),
        "optimizer_step_s_mean": fixed(_mean(row.optimizer_step), 6, missing=""),
        "forward_backward_s_mean": fixed(_mean(row.forward_backward), 6, missing=""),
        "optimizer_step_ratio": fixed(row.step_ratio, 4, missing=""),
        "max_load_average": fixed(row.max_load, 2, missing=""),
        "under_load": ("true" if row.under_load else "false") if row.max_load is not None else "",
        "steps_to_target_mean": fixed(_mean(row.target_steps), 1, missing=""),
        "ruleset": rules.name if rules else "",
        "ruleset_version": str(rules.version) if rules else "",
        "budget": budget.describe() if budget else "",
        "ranked": "" if rules is None else ("false" if lb.refusal else "true"),
        "eval_split": lb.suite.eval_split,
    }


def render_csv(lb: Leaderboard) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(lb))
    return buffer.getvalue()


# --- LaTeX ------------------------------------------------------------------------------------

_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def render_latex(lb: Leaderboard) -> str:
    """The paper-layout table as a booktabs ``table`` environment."""
    header, rows = main_table(lb)
    header = [tex_escape(h) for h in header]
    body = []
    for cells in rows:
        cells = [tex_escape(c) for c in cells]
        cells = [c[:-1] + "$^{*}$" if c.endswith("]*") else c for c in cells]
        body.append(" & ".join(cells) + r" \\")
    suite = lb.suite
    caption = (
        tex_escape(f"{suite.name}: {suite.dataset}, " + "; ".join(budget_lines(suite)) + ".")
        + r" Mean $\pm$ std over seeds ($n$ finished runs); accuracies measured on the "
        + tex_escape(lb.eval_name)
        + "."
    )
    if lb.layout == "table1":
        caption += (
            r" $^{*}$: the 95\% interval of the difference to "
            + tex_escape(suite.baseline)
            + ", paired by seed, excludes zero."
        )
    return "\n".join(
        [
            "% generated by benchbnn; needs \\usepackage{booktabs}",
            r"\begin{table}[t]",
            r"\centering",
            r"\begin{tabular}{" + "l" * 2 + "r" * (len(header) - 2) + "}",
            r"\toprule",
            " & ".join(header) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\caption{" + caption + "}",
            r"\label{tab:benchbnn-" + lb.suite.name + "}",
            r"\end{table}",
            "",
        ]
    )


# --- JSON -------------------------------------------------------------------------------------


def _round(value: Any, digits: int = 6) -> Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _round(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    return value


def _summary(summary: Summary | None) -> dict[str, Any] | None:
    return None if summary is None else {"mean": summary.mean, "std": summary.std, "n": summary.n}


def to_data(lb: Leaderboard) -> dict[str, Any]:
    """The whole leaderboard as plain data (what the JSON file holds)."""
    suite = lb.suite
    metric = f"{suite.eval_split}_top"
    rows = []
    for row in lb.rows:
        d = row.difference
        reached = None
        if suite.target_accuracy is not None:
            reached = {
                "reached": row.target_reached,
                "epochs": _summary(row.target_epochs),
                "seconds": _summary(row.target_seconds),
                "steps": _summary(row.target_steps),
                "split": suite.target_split,
                "per_run": _per_run_targets(row, suite),
            }
        rows.append(
            {
                "entry": row.entry.label,
                "optimizer": row.entry.optimizer,
                "arch": row.arch,
                "baseline": row.is_baseline,
                "hparams": dict(row.entry.hparams),
                "schedules": {k: dict(v) for k, v in row.entry.schedules.items()},
                "train_top1": _summary(row.train_top1),
                "train_top5": _summary(row.train_top5),
                "eval_top1": _summary(row.eval_top1),
                "eval_top5": _summary(row.eval_top5),
                "paper": dict(row.paper),
                "difference_top1": None
                if d is None
                else {
                    "mean": d.mean,
                    "low": d.low,
                    "high": d.high,
                    "pairs": d.n,
                    "seeds": list(d.seeds),
                    "excludes_zero": d.excludes_zero,
                },
                "epoch_time_s": _summary(row.epoch_time),
                "state_bytes_per_binary_weight": row.state_bytes,
                "time_to_target": reached,
                "test_top1": _summary(row.test_top1),
                "optimizer_step_s": _summary(row.optimizer_step),
                "forward_backward_s": _summary(row.forward_backward),
                "optimizer_step_ratio": row.step_ratio,
                "max_load_average": row.max_load,
                "under_load": row.under_load if row.max_load is not None else None,
                "runs": [
                    {
                        "seed": r.seed,
                        "status": r.status
                        if not (r.status == FINISHED and not r.finished)
                        else "EMPTY",
                        "config_hash": r.config_hash,
                        "run_id": r.run_id,
                        "reason": None if r.finished else r.outcome(),
                        "epochs": len(r.history),
                        "train_top1": r.final("train_top1"),
                        "eval_top1": r.final(metric + "1"),
                        "eval_top5": r.final(metric + "5"),
                    }
                    for r in sorted(row.records, key=lambda r: r.seed)
                ],
            }
        )
    data = {
        "suite": suite.name,
        "description": " ".join(suite.description.split()),
        "dataset": suite.dataset,
        "dataset_options": dict(suite.dataset_options),
        "archs": list(suite.archs),
        "layout": lb.layout,
        "eval_split": suite.eval_split,
        "eval_name": lb.eval_name,
        "protocol": {
            arch: {
                "epochs": suite.epochs_for(arch),
                "batch_size": suite.batch_size_for(arch),
                "arch_options": suite.arch_options_for(arch),
                "l2": suite.l2_for(arch),
            }
            for arch in suite.archs
        },
        "seeds": list(suite.seeds),
        "subset": suite.subset,
        "val_fraction": suite.val_fraction,
        "baseline": suite.baseline,
        "target_accuracy": suite.target_accuracy,
        "paper_source": suite.paper.get("source"),
        "total_epoch_time_s": total_seconds(lb),
        "hardware": list(lb.hardware),
        "data_notes": list(lb.data_notes),
        "command": lb.command,
        "changes": list(lb.changes),
        "rows": rows,
    }
    if lb.ruleset is not None:
        rules = lb.ruleset
        data["ruleset"] = {
            "name": rules.name,
            "version": rules.version,
            "sampler": rules.sampler,
            "budgets": [
                {
                    "entry": b.label,
                    "trials": list(b.trials),
                    "studies": list(b.studies),
                    "chosen": b.chosen,
                }
                for b in rules.budgets
            ],
            "ranked": lb.refusal is None,
            "refusal": lb.refusal,
        }
    if suite.claims:  # absent for suites that declare none (their files stay as they were)
        data["claims"] = claims_data(evaluate_claims(lb))
    if lb.environments:  # absent for runs tracked before environments were recorded
        data["environments"] = [{"environment": e, "runs": n} for e, n in lb.environments]
        data["mixed_environments"] = lb.mixed_environments
    return _with_exact_settings(_round(data), lb)


def _exact(value: Any) -> Any:
    """A setting as JSON data, never rounded (mappings to dicts, tuples to lists; a non-finite
    float, which JSON cannot hold, as null like :func:`_round` writes it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _exact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_exact(v) for v in value]
    return value


def _with_exact_settings(data: dict[str, Any], lb: Leaderboard) -> dict[str, Any]:
    """``data`` (rounded by :func:`_round`, which suits results) with every setting written
    exactly: hyperparameters, schedules, the protocol and dataset options, the validation
    fraction and the target. A threshold of 1e-8 or an L2 of 5e-7 would otherwise read 0.0."""
    suite = lb.suite
    for out, row in zip(data["rows"], lb.rows, strict=True):
        out["hparams"] = _exact(row.entry.hparams)
        out["schedules"] = _exact(row.entry.schedules)
        if row.entry.arch_options:  # absent for entries without their own options
            out["arch_options"] = _exact(row.entry.arch_options)
    data["dataset_options"] = _exact(suite.dataset_options)
    data["val_fraction"] = suite.val_fraction
    data["target_accuracy"] = suite.target_accuracy
    for arch in suite.archs:
        data["protocol"][arch]["l2"] = suite.l2_for(arch)
        data["protocol"][arch]["arch_options"] = _exact(suite.arch_options_for(arch))
    return data


def _per_run_targets(row: Row, suite: Suite) -> dict[str, Any]:
    """Per seed: the epoch the run first reached the target on (None: not reached)."""
    from benchbnn.bench.stats import time_to_target

    assert suite.target_accuracy is not None
    metric = f"{suite.target_split}_top1"
    out: dict[str, Any] = {}
    for r in sorted(row.records, key=lambda r: r.seed):
        if r.finished:
            hit = time_to_target(r.history, metric, suite.target_accuracy)
            out[str(r.seed)] = None if hit is None else hit.epoch
    return out


def render_json(lb: Leaderboard) -> str:
    return json.dumps(to_data(lb), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def protocol_changes(original: Suite, used: Suite) -> list[str]:
    """How the protocol the runs used differs from the suite file, in words."""
    changes = []
    for arch in used.archs:
        for what, get in (
            ("epochs", Suite.epochs_for),
            ("batch size", Suite.batch_size_for),
            ("L2", Suite.l2_for),
            ("options", Suite.arch_options_for),
        ):
            before, after = get(original, arch), get(used, arch)
            if before != after:
                changes.append(f"{arch} {what} {setting(before)} -> {setting(after)}")
    for what, old, new in (
        ("seeds", original.seeds, used.seeds),
        ("subset", original.subset or "all", used.subset or "all"),
        ("validation fraction", original.val_fraction, used.val_fraction),
        ("dataset options", dict(original.dataset_options), dict(used.dataset_options)),
        ("target accuracy", original.target_accuracy, used.target_accuracy),
    ):
        if old != new:
            changes.append(f"{what} {setting(old)} -> {setting(new)}")
    labels = {e.label: e for e in original.entries}
    kept = [e.label for e in used.entries if e.label in labels]
    dropped = [label for label in labels if label not in kept]
    added = [e.label for e in used.entries if e.label not in labels]
    if dropped:
        changes.append(f"entries left out: {', '.join(dropped)}")
    if added:
        changes.append(f"entries added: {', '.join(added)}")
    for entry in used.entries:
        if entry.label in labels and entry != labels[entry.label]:
            changes.append(f"{entry.label} hyperparameters: {entry_settings(entry)}")
    return changes


# --- the index of all suites ------------------------------------------------------------------

INDEX_FILE = "README.md"
#: First line of a generated index; an existing README.md without it is never overwritten.
INDEX_MARKER = "<!-- generated by benchbnn leaderboard: edits are overwritten -->"


def seed_results(data: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """Per entry, its top-1 (%) on the evaluation split per seed, from leaderboard data.

    With several architectures a seed's value is the mean over them, and only seeds finished on
    every architecture count (the pairing stays one run per architecture per side).
    """
    archs = data["archs"]
    per_arch: dict[str, dict[int, list[float]]] = {}
    for row in data["rows"]:
        seeds = per_arch.setdefault(row["entry"], {})
        for run in row["runs"]:
            value = run.get("eval_top1")
            if run["status"] == FINISHED and value is not None and math.isfinite(value):
                seeds.setdefault(run["seed"], []).append(float(value))
    return {
        label: {seed: math.fsum(v) / len(v) for seed, v in seeds.items() if len(v) == len(archs)}
        for label, seeds in per_arch.items()
    }


def ranking(data: Mapping[str, Any]) -> dict[str, int] | None:
    """The entries' ranks under the rule of :func:`benchbnn.bench.stats.resolved_ranks`, or
    None when the ruleset refuses a ranking (unequal tuning budgets) or no pair is resolved."""
    if data.get("ruleset", {}).get("refusal"):
        return None
    return resolved_ranks(seed_results(data))


#: The one line a table prints instead of a ranking when no two entries are separated.
NOT_RESOLVED = (
    "not resolved at this budget: the 95% intervals of the paired differences (over seeds) do "
    "not separate the entries into ordered groups, so no entry is ranked above another"
)


def ranking_text(data: Mapping[str, Any]) -> str:
    """One line: the rank groups (``1: a, b; 3: c``), :data:`NOT_RESOLVED`, or the refusal."""
    if data.get("ruleset", {}).get("refusal"):
        return "not ranked (the tuning budgets differ; see the ruleset line)."
    ranks = ranking(data)
    if ranks is None:
        return NOT_RESOLVED + "."
    groups: dict[int, list[str]] = {}
    for label, rank in ranks.items():
        groups.setdefault(rank, []).append(label)
    text = "; ".join(f"{rank}: {', '.join(groups[rank])}" for rank in sorted(groups))
    unranked = [label for label in seed_results(data) if label not in ranks]
    text += f"; without a result: {', '.join(unranked)}" if unranked else ""
    return (
        f"{text} (a group is above another only when the 95% t interval of A - B, paired by "
        "seed, lies above zero for every A in it and every B below; docs/protocols.md)."
    )


def _headline(data: Mapping[str, Any]) -> list[str]:
    """The suite's rows, with a Rank column only when the seeds resolve a ranking
    (:func:`ranking`): ordered by rank then suite order; in suite order with the
    :data:`NOT_RESOLVED` line otherwise."""
    archs = data["archs"]
    by_entry: dict[str, dict[str, Any]] = {}
    for row in data["rows"]:
        by_entry.setdefault(row["entry"], {})[row["arch"]] = row
    ranks = ranking(data)
    order = list(by_entry)
    if ranks is not None:
        order.sort(key=lambda label: ranks.get(label, len(order) + 1))
    header = (["Rank"] if ranks else []) + ["Entry"] + [f"{a} top-1 (%)" for a in archs]
    header += [
        f"Δ vs {data['baseline']}" if len(archs) == 1 else f"Δ vs {data['baseline']} ({archs[0]})"
    ]
    lines = []
    for label in order:
        rows = by_entry[label]
        cells = ([str(ranks.get(label, "-"))] if ranks else []) + [label]
        for arch in archs:
            r = rows.get(arch)
            s = r and r["eval_top1"]
            failed = r and sum(run["status"] != FINISHED for run in r["runs"])
            text = cell(Summary(s["mean"], s["std"], s["n"])) if s else "-"
            cells.append(text + (f", {failed} without result" if failed else ""))
        first = rows.get(archs[0], {})
        cells.append(_json_difference(first))
        lines.append(cells)
    return markdown_table(header, lines) + ["", f"Ranking: {ranking_text(data)}"]


def _json_difference(row: Mapping[str, Any]) -> str:
    if row.get("baseline"):
        return "baseline"
    d = row.get("difference_top1")
    if not d:
        return "-"
    if d["low"] is None:
        return f"{signed(d['mean'])} (1 pair)"
    mark = "*" if d["excludes_zero"] else ""
    return f"{signed(d['mean'])} [{signed(d['low'])}, {signed(d['high'])}]{mark}"


def render_index(results: Mapping[str, Mapping[str, Any]], defined: Mapping[str, str]) -> str:
    """``leaderboards/README.md``: every suite, with headline rows where results exist."""
    out = [
        INDEX_MARKER,
        "# Leaderboards",
        "",
        "One folder per suite, written by `benchbnn compare SUITE` and regenerated from the "
        "tracking store by `benchbnn leaderboard SUITE` (this index too). Cells are mean ± std "
        "over seeds (n) of top-1 on the split each suite evaluates on (its accuracy line "
        "names it); Δ is the difference in that top-1 to the suite's baseline, paired by seed, "
        "with a 95% t interval (`*`: it excludes zero). Entries are ranked only where such "
        "intervals separate them (docs/protocols.md, Ranking).",
        "",
        "| Suite | Dataset | Architectures | Results |",
        "| --- | --- | --- | --- |",
    ]
    names = sorted(set(results) | set(defined))
    for name in names:
        data = results.get(name)
        if data is not None:
            notes = data.get("data_notes") or []
            dataset = data["dataset"] + (f" ({', '.join(notes)})" if notes else "")
            out.append(
                f"| [{name}]({name}/leaderboard.md) | {dataset} | "
                f"{', '.join(data['archs'])} | {_budget_summary(data)} |"
            )
        else:
            out.append(f"| {name} | - | - | definition only: `benchbnn compare {name}` |")
    for name in names:
        data = results.get(name)
        out += ["", f"## {name}", ""]
        if data is None:
            out.append(defined[name] or "(no description)")
            out += ["", f"No committed results; run `benchbnn compare {name}`."]
            continue
        if data["description"]:
            out += [data["description"], ""]
        out.append(
            f"Accuracies measured on the {data['eval_name']}. Hardware: "
            + ("; ".join(data["hardware"]) or "not recorded")
            + "."
        )
        out.append("")
        out += _headline(data)
        out += ["", f"Full tables and plots: [{name}/leaderboard.md]({name}/leaderboard.md)."]
    return "\n".join(out) + "\n"


def _budget_summary(data: Mapping[str, Any]) -> str:
    runs = [run for row in data["rows"] for run in row["runs"]]
    done = sum(run["status"] == FINISHED for run in runs)
    epochs = sorted({p["epochs"] for p in data["protocol"].values()})
    return (
        f"{'/'.join(map(str, epochs))} epochs, {len(data['seeds'])} seeds, "
        f"{done}/{len(runs)} runs finished"
    )
