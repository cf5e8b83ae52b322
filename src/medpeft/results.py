"""The on-disk contract: runs/<grid>/<run_id>/{result.json, predictions.jsonl, adapter/} and the grid summary.

Files are written to a temporary name and renamed, so an interrupted run never leaves a
half-written result. Summaries read only result.json files.
"""
from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

METRIC_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "accuracy", "macro_f1", "auroc")
COST_KEYS = ("trainable_params", "trainable_pct", "train_seconds", "eval_seconds", "train_tokens_per_second", "peak_memory_bytes", "adapter_bytes")


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer, so shards on several nodes sharing one runs directory never collide.
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_result(run_dir: Path) -> dict | None:
    """A run's result, or None when it has none (never run, or interrupted before the end)."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def is_finished(run_dir: Path) -> bool:
    result = read_result(run_dir)
    return bool(result) and result.get("status") == "ok"


def load_results(grid_dir: Path) -> list[dict]:
    return [r for d in sorted(Path(grid_dir).iterdir()) if d.is_dir() and (r := read_result(d)) is not None]


def summarize(results: list[dict]):
    """One row per (task, model, method): mean and std over seeds of every metric and cost."""
    import pandas as pd

    rows = []
    for r in results:
        if r.get("status") != "ok":
            continue
        row = {"task": r["task"], "model": r["model"], "method": r["method"], "seed": r["seed"]}
        row.update({k: v for k, v in r["metrics"].items() if k in METRIC_KEYS})
        row.update({k: r["efficiency"].get(k) for k in COST_KEYS})
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    keys = ["task", "model", "method"]
    values = [c for c in METRIC_KEYS + COST_KEYS if c in frame]
    grouped = frame.groupby(keys, sort=False)
    summary = grouped[values].agg(["mean", "std"])
    summary.columns = [f"{c}_{stat}" for c, stat in summary.columns]
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index()


def format_cell(mean, std, key: str) -> str:
    if mean != mean:  # NaN: the metric does not apply to this task
        return ""
    if key in METRIC_KEYS:
        text = f"{100 * mean:.2f}"
        return text + (f" ± {100 * std:.2f}" if std == std else "")
    if key == "trainable_pct":
        return f"{mean:.3g}%"
    if key in ("peak_memory_bytes", "adapter_bytes"):
        return format_bytes(mean)
    if key == "trainable_params":
        return f"{mean:,.0f}"
    return f"{mean:.1f}"


def format_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def summary_markdown(summary) -> str:
    """A markdown table per task; metrics ×100 as mean ± std over seeds."""
    if summary.empty:
        return "No finished runs.\n"
    parts = ["Metrics are ×100, mean ± std over seeds; ROUGE-L is `rougeL` (whole summary LCS), `rougeLsum` splits sentences. "
             "Peak memory is process RSS on CPU, allocator peak on GPU.\n"]
    for task, frame in summary.groupby("task", sort=False):
        keys = [k for k in METRIC_KEYS + COST_KEYS if f"{k}_mean" in frame and frame[f"{k}_mean"].notna().any()]
        header = ["model", "method", "seeds"] + keys
        lines = [f"\n### {task}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, row in frame.iterrows():
            cells = [row["model"], row["method"], str(row["seeds"])]
            cells += [format_cell(row[f"{k}_mean"], row[f"{k}_std"], k) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def failures_markdown(results: list[dict]) -> str:
    failed = [r for r in results if r.get("status") != "ok"]
    if not failed:
        return ""
    lines = [f"\n### Failed runs ({len(failed)})\n"] + [f"- `{r['run_id']}`: {r.get('error')}" for r in failed]
    return "\n".join(lines) + "\n"


def write_summary(grid_dir: Path) -> str:
    """Write summary.csv and summary.md for a grid directory; return the markdown."""
    results = load_results(grid_dir)
    summary = summarize(results)
    write_atomic(Path(grid_dir) / "summary.csv", summary.to_csv(index=False))
    text = summary_markdown(summary) + failures_markdown(results)
    write_atomic(Path(grid_dir) / "summary.md", f"# Summary of {Path(grid_dir).name}\n\n{text}")
    return text
