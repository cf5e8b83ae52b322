"""summary.md and summary.csv: the report's frame (frame.py) as a plain table per task.

The same rows as the report, so the two never disagree: one row per (task, model, method, variant),
seeds counted as runs, the task type's primary metric first.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from medpeft.report.tables import COSTS, format_score, md_code, md_text, row_label
from medpeft.run.metrics import METRICS, metric_label
from medpeft.run.record import COST_KEYS, RunResult, write_atomic

NOTE = "Metrics are ×100, mean ± std over seeds. Peak memory is process RSS on CPU, allocator peak on GPU."
ROUGE_NOTE = " ROUGE-L is `rougeL` (whole summary LCS), `rougeLsum` splits sentences."
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell that starts so as a formula (OWASP)
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def metric_keys(frame) -> list[str]:
    """The frame's metrics that have a value, the primary metric(s) first."""
    present = [k for k in METRICS if f"{k}_mean" in frame and frame[f"{k}_mean"].notna().any()]
    primary = list(dict.fromkeys(frame["primary"])) if len(frame) else []
    return [k for k in primary if k in present] + [k for k in present if k not in primary]


def summary_csv(frame) -> str:
    """One line per row: names, variant, seeds, primary metric, then mean and std of every metric and cost."""
    if frame.empty:
        return ""
    keys = metric_keys(frame) + [k for k in COST_KEYS if f"{k}_mean" in frame]
    columns = ["task", "task_type", "model", "method", "variant", "seeds", "primary", "primary_mean", "primary_std"]
    out = frame[columns + [f"{k}_{s}" for k in keys for s in ("mean", "std")]].copy()
    out.insert(5, "varying", [json.dumps(v, sort_keys=True, default=str) for v in frame["varying"]])
    return out.map(spreadsheet_safe).to_csv(index=False)


def spreadsheet_safe(value):
    """A text cell that a spreadsheet would run as a formula (a task named `=1+1`, a model `@SUM(A1)`), with a
    leading ' so it is shown, never run (OWASP's CSV injection rule); numbers, and text that is a plain number,
    as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def format_cell(mean, std, key: str) -> str:
    if mean != mean:  # NaN: the metric does not apply to this row
        return ""
    return format_score(mean, std) if key in METRICS else COSTS[key].format(mean)


def summary_markdown(frame) -> str:
    """A markdown table per task; metrics ×100 as mean ± std over seeds."""
    if frame.empty:
        return "No finished runs.\n"
    has_rouge = "rougeL_mean" in frame and frame["rougeL_mean"].notna().any()
    parts = [NOTE + (ROUGE_NOTE if has_rouge else "") + "\n"]
    for task, rows in frame.groupby("task", sort=False):
        keys = metric_keys(rows)
        costs = [k for k in COST_KEYS if f"{k}_mean" in rows and rows[f"{k}_mean"].notna().any()]
        header = ["model", "method", "seeds"] + [metric_label(k) + (" (primary)" if k == rows["primary"].iloc[0] else "")
                                                 for k in keys] + [COSTS[k].label for k in costs]
        lines = [f"\n### {md_text(task)} ({rows['task_type'].iloc[0]})\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in rows.iterrows():
            cells = [row["model"], row_label(row), str(row["seeds"])]
            cells += [format_cell(row[f"{k}_mean"], row[f"{k}_std"], k) for k in keys + costs]
            lines.append("| " + " | ".join(map(md_text, cells)) + " |")
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def failures_markdown(runs: list[RunResult]) -> str:
    failed = [r for r in runs if not r.ok]
    if not failed:
        return ""
    lines = [f"\n### Failed runs ({len(failed)})\n"] + [f"- {md_code(r.run_id)}: {md_text(r.error)}" for r in failed]
    return "\n".join(lines) + "\n"


def write_summary(grid_dir: Path, frame, runs: list[RunResult]) -> str:
    """Write summary.csv and summary.md of a grid from its frame; return the markdown."""
    write_atomic(Path(grid_dir) / "summary.csv", summary_csv(frame))
    text = summary_markdown(frame) + failures_markdown(runs)
    write_atomic(Path(grid_dir) / "summary.md", f"# Summary of {md_text(Path(grid_dir).name)}\n\n{text}")
    return text
