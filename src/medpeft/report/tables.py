"""The report's main table as one list of columns, rendered to HTML, Markdown and LaTeX.

Building the cells once and rendering them three ways keeps the formats in agreement: the same
values, the same best-in-column marks.
"""
from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from medpeft.run.metrics import METRICS, metric_label


@dataclass(frozen=True)
class Cost:
    """One cost figure of a run (result.json `efficiency`): how every output names, orders and prints it."""

    key: str  # key in result.json "efficiency"; the frame's columns are f"{key}_mean" and f"{key}_std"
    label: str  # column header
    unit: str  # of the raw value, for an axis
    format: Callable[[float], str]  # the value as the report prints it
    noun: str = ""  # what the formatted value is, in prose: "0.5% trainable", "1.2 GiB peak"
    table: bool = True  # a column of the main table (the others are in summary.csv only)
    lower_is_better: bool = True


def format_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def format_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def format_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


# The one cost table: every output (main table, summary, answer lines, plots, model card) reads it.
COSTS: dict[str, Cost] = {c.key: c for c in (
    Cost("trainable_params", "Trainable params", "parameters", format_count, "trainable parameters"),
    Cost("trainable_pct", "Trainable %", "%", lambda v: f"{v:.3g}%", "trainable"),
    Cost("train_seconds", "Train time", "s", format_seconds, "training"),
    Cost("eval_seconds", "Eval time", "s", format_seconds, "evaluation", table=False),
    Cost("train_tokens_per_second", "Train tokens/s", "tokens/s", lambda v: f"{v:,.0f}", "tokens/s", table=False,
         lower_is_better=False),
    Cost("peak_memory_bytes", "Peak memory", "bytes", format_bytes, "peak"),
    Cost("earlier_runs_resident_bytes", "Left by earlier runs", "bytes", format_bytes, "left resident by earlier runs",
         table=False),
    Cost("adapter_bytes", "Adapter size", "bytes", format_bytes, "on disk"),
    Cost("adapter_folder_bytes", "Adapter folder", "bytes", format_bytes, "folder on disk", table=False),
    Cost("forgetting", "Forgetting (Δ LM loss)", "nats/token", lambda v: f"{v:+.3f}", "forgetting"),
)}


SHARED_MEMORY_BYTES = 2**30 // 10  # CPU: earlier runs' memory above this makes peaks too uncertain to rank


def shared_memory_bytes(frame) -> float:
    """The most any trained row's runs found left resident by earlier runs of their process (CPU), 0 if none.
    A run's peak leaves it out, yet can still be off by about as much from the run's peak alone in a fresh
    process (the allocator reuses some of it), so peak memory differences below it are not ranked."""
    return max(left_by_earlier_runs(frame), default=0.0)


def left_by_earlier_runs(frame) -> list[float]:
    """Each trained row's mean memory left resident by earlier runs of its process, where recorded (CPU on Linux)."""
    column = frame.loc[~frame["is_baseline"], "earlier_runs_resident_bytes_mean"] if (
        "earlier_runs_resident_bytes_mean" in frame) else []
    return [v for v in column if v == v]


def memory_ranked(frame) -> bool:
    """Whether the task's peak memory column may be ranked (bold, least-memory answers)."""
    return shared_memory_bytes(frame) <= SHARED_MEMORY_BYTES


def format_cost(key: str, value: float) -> str:
    """'0.5% trainable', '1.2 GiB peak': a cost in prose."""
    cost = COSTS[key]
    return f"{cost.format(value)} {cost.noun}".strip()


ROUGE_L_NOTE = ("ROUGE-L is `rougeL` (longest common subsequence over the whole summary); ROUGE-Lsum is "
                "`rougeLsum` (sentence-split, what most summarization papers print). They can differ by more "
                "than 10 points on long summaries, so both are shown.")


def format_score(mean: float | None, std: float = math.nan, missing: str = "") -> str:
    """The one score format: ×100 with two decimals, as the papers print them; ± std only when there are
    >= 2 seeds; `missing` for a score that is not there (None or nan)."""
    if mean is None or mean != mean:
        return missing
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None and std == std else "")


def format_ci(ci, seeds: int | None = None) -> str:
    lo, hi = ci
    if lo != lo:
        return "n/a (1 seed)" if seeds == 1 else "n/a"
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def row_label(row) -> str:
    return row["method"] + (f" ({row['variant']})" if row.get("variant") else "")


def format_value(value) -> str:
    """A setting's value as the grid file wrote it: 2.0 (a dataclass float) reads 2, 0.0003 stays 0.0003."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_points(delta: float) -> str:
    """A difference of two scores (fractions) in signed points; float noise around zero reads +0.00, not -0.00;
    n/a when a score is missing (a NaN per-example score)."""
    return "n/a" if delta != delta else f"{round(100 * delta, 2) + 0.0:+.2f}"


def has_several_models(frame) -> bool:
    """Whether one task's rows come from more than one model (then a row's label must name its model)."""
    return frame["model"].nunique() > 1


def describe_row(row, several_models: bool) -> str:
    """The row's label, with its model when the task has several (a label alone would be ambiguous)."""
    return row_label(row) + (f" · {row['model']}" if several_models else "")


def best_indices(values: list[float], trained: list[bool], higher: bool) -> set[int]:
    """Positions of the best value among trained rows (ties all marked); the baseline never wins."""
    pool = [v for v, t in zip(values, trained) if t and v == v]
    if not pool:
        return set()
    target = max(pool) if higher else min(pool)
    return {i for i, (v, t) in enumerate(zip(values, trained)) if t and v == v and math.isclose(v, target, rel_tol=1e-9)}


def table_columns(frame) -> list[dict]:
    """Columns of one task's main table: {header, cells, best (row positions)}."""
    trained = [not b for b in frame["is_baseline"]]
    rows = list(frame.to_dict("records"))
    cols = [{"header": "Model", "cells": [r["model"] for r in rows], "best": set()},
            {"header": "Method", "cells": [row_label(r) for r in rows], "best": set()}]
    first = rows[0]["primary"] if rows else None
    for key in sorted(METRICS, key=lambda k: k != first):  # the headline metric first (Micro-F1 before Macro-F1)
        metric = METRICS[key]
        means = [r.get(f"{key}_mean", math.nan) for r in rows]
        if all(m != m for m in means):
            continue
        cells = [format_score(m, r.get(f"{key}_std", math.nan)) for m, r in zip(means, rows)]
        cols.append({"header": metric.label, "cells": cells, "best": best_indices(means, trained, higher=metric.higher_is_better)})
    primary = metric_label(rows[0]["primary"]) if rows else ""
    if any(r["seeds"] > 1 for r in rows):  # with one seed everywhere the column would only say n/a
        cols.append({"header": f"{primary} 95% CI, seeds", "cells": [format_ci(r["ci_seeds"], r["seeds"]) for r in rows], "best": set()})
    cols.append({"header": f"{primary} 95% CI, test set", "cells": [format_ci(r["ci_examples"]) for r in rows], "best": set()})
    cols.append({"header": "Seeds", "cells": [str(r["seeds"]) for r in rows], "best": set()})
    for cost in (c for c in COSTS.values() if c.table):
        means = [r.get(f"{cost.key}_mean", math.nan) for r in rows]
        if cost.key == "forgetting" and all(m != m for m in means):  # an optional measurement: no column unless measured
            continue
        cells = ["—" if not t else (cost.format(m) if m == m else "") for m, t in zip(means, trained)]
        ranked = cost.key != "peak_memory_bytes" or memory_ranked(frame)
        cols.append({"header": cost.label, "cells": cells,
                     "best": best_indices(means, trained, higher=not cost.lower_is_better) if ranked else set()})
    return cols


def table_html(cols: list[dict], baseline_rows: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(c['header'])}</th>" for c in cols)
    body = []
    for i in range(len(cols[0]["cells"])):
        cells = "".join(f"<td class='best'>{html.escape(c['cells'][i])}</td>" if i in c["best"]
                        else f"<td>{html.escape(c['cells'][i])}</td>" for c in cols)
        body.append(f"<tr class='baseline'>{cells}</tr>" if i in baseline_rows else f"<tr>{cells}</tr>")
    return f"<table class='main'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def table_markdown(cols: list[dict]) -> str:
    lines = ["| " + " | ".join(c["header"] for c in cols) + " |", "|" + "---|" * len(cols)]
    for i in range(len(cols[0]["cells"])):
        cells = [md_text(c["cells"][i]) for c in cols]  # a model's name or a row's label: user text
        cells = [f"**{cell}**" if i in c["best"] and cell else cell for cell, c in zip(cells, cols)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


# Raw HTML a Markdown viewer would run: `<` opening a tag, a closing tag, a comment or a declaration
# (CommonMark's raw HTML), and `&` opening an entity. `a < b` and a blockquote's `>` stay as they are.
HTML_START = re.compile(r"<(?=[A-Za-z/!?])|&(?=#?[A-Za-z0-9]+;)")


def md_text(text) -> str:
    """Text a user wrote (a task or model name, a label, a model's output, an error) for Markdown, where a
    viewer would run HTML in it (a label `<script>`): every tag and entity start escaped, so it is shown as
    written. For a code span use md_code, whose text is shown as it is."""
    return HTML_START.sub(lambda m: "&lt;" if m.group() == "<" else "&amp;", str(text))


def md_code(text) -> str:
    """`text` as a Markdown code span, shown character for character: its fence is one backtick longer than
    any run of backticks in it, so a backtick it holds cannot end the span early (CommonMark)."""
    text = str(text)
    ticks = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def md_fence(text, info: str = "") -> str:
    """A fenced code block that `text` cannot close: its fence is longer than any run of backticks in it."""
    ticks = "`" * max(3, max(map(len, re.findall("`+", str(text))), default=0) + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$", "—": "--"}


def latex_escape(text: str) -> str:
    """Character by character, so an escape's own backslash or braces are never escaped again."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def table_latex(cols: list[dict], caption: str, label: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); best values in bold."""
    spec = "ll" + "r" * (len(cols) - 2)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c["header"]) for c in cols) + r" \\", r"\midrule"]
    for i in range(len(cols[0]["cells"])):
        cells = [latex_escape(c["cells"][i]) for c in cols]
        cells = [rf"\textbf{{{cell}}}" if i in c["best"] and cell else cell for cell, c in zip(cells, cols)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(caption)}}}", rf"\label{{{label}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"
