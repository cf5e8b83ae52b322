"""Report figures: quality-cost trade-offs with the Pareto front, sensitivity, model size, confusion.

Figures are built on matplotlib's object API (`Figure`, Agg canvas), never pyplot, so making a
report touches no global backend state and works on machines without a display.
"""
from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path

import numpy as np

from medpeft.files import temporary_path
from medpeft.methods import BASELINE, FULL
from medpeft.report.stats import pareto_front
from medpeft.report.tables import COSTS, format_value, memory_ranked

METHOD_COLORS = {FULL: "#222222", "lora": "#1f77b4", "dora": "#17becf", "ia3": "#2ca02c",
                 "prompt_tuning": "#d62728", "prefix_tuning": "#9467bd", "p_tuning": "#ff7f0e",
                 BASELINE: "#999999"}
SPARE_COLORS = ("#8c564b", "#e377c2", "#bcbd22", "#7f7f7f", "#aec7e8", "#98df8a")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# (cost, unit shown, divisor to it, log scale: always / when the range spans 10x / never); names: tables.COSTS
TRADEOFF_AXES = (("trainable_pct", "%", 1.0, "always"), ("peak_memory_bytes", "GiB", 2**30, "never"),
                 ("train_seconds", "s", 1.0, "wide"))


def method_color(method: str, methods: list[str]) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    unknown = [m for m in methods if m not in METHOD_COLORS]
    return SPARE_COLORS[unknown.index(method) % len(SPARE_COLORS)] if method in unknown else "#7f7f7f"


def model_marker(model: str, models: list[str]) -> str:
    return MARKERS[models.index(model) % len(MARKERS)] if model in models else "o"


def new_figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def save_figure(fig, path: Path) -> Path:
    """Write to a temporary name and rename, so concurrent grid shards never leave a torn PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    fig.savefig(tmp, format="png", metadata={"Software": None})  # no version stamp: reproducible bytes
    os.replace(tmp, path)
    return path


def y_error(row) -> tuple[float, float, bool]:
    """(below, above) error bar in points ×100: ± std over seeds, else the test-set 95% CI (flag True)."""
    mean, std = row["primary_mean"], row["primary_std"]
    if std == std:
        return 100 * std, 100 * std, False
    lo, hi = row["ci_examples"]
    if lo == lo:
        return bar_lengths(100 * mean, 100 * lo, 100 * hi) + (True,)
    return 0.0, 0.0, False


def bar_lengths(y: float, lo: float, hi: float) -> tuple[float, float]:
    """An error bar from y down to lo and up to hi; 0 on a side the interval does not reach. A percentile
    bootstrap CI of a metric that is not a mean (F1 over a small test set) can lie wholly on one side of
    the point estimate, and matplotlib refuses a negative length."""
    return max(0.0, y - lo), max(0.0, hi - y)


def add_legends(fig, frame) -> None:
    """One colour per method and, when there are several models, one marker per model."""
    from matplotlib.lines import Line2D

    methods, models = list(dict.fromkeys(frame["method"])), list(dict.fromkeys(frame["model"]))
    handles = [Line2D([], [], color=method_color(m, methods), marker="o", ls="", label=m) for m in methods]
    if len(models) > 1:
        handles += [Line2D([], [], color="black", marker=model_marker(m, models), ls="", label=m) for m in models]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)


def plot_tradeoffs(frame, path: Path, metric_label: str) -> Path:
    """Score against trainable %, peak memory and train time; baseline as a dashed line."""
    fig, axes = new_figure(13, 3.6, ncols=3)
    methods, models = list(dict.fromkeys(frame["method"])), list(dict.fromkeys(frame["model"]))
    trained = frame[~frame["is_baseline"]]
    for ax, (key, unit, scale, log) in zip(axes, TRADEOFF_AXES):
        xs, ys = [], []
        for _, row in trained.iterrows():
            x, y = row.get(f"{key}_mean", math.nan) / scale, 100 * row["primary_mean"]
            below, above, _ = y_error(row)
            xerr = row.get(f"{key}_std", math.nan) / scale
            ax.errorbar([x], [y], yerr=[[below], [above]], xerr=None if xerr != xerr else [xerr],
                        fmt=model_marker(row["model"], models), color=method_color(row["method"], methods), capsize=3, ms=7)
            xs.append(x)
            ys.append(y)
        if key != "peak_memory_bytes" or memory_ranked(frame):  # CPU peaks too uncertain to rank: no front either
            front = pareto_front(xs, ys)
            ax.plot([xs[i] for i in front], [ys[i] for i in front], ls="--", color="#bbbbbb", zorder=0, label="Pareto front")
        for _, row in frame[frame["is_baseline"]].iterrows():
            ax.axhline(100 * row["primary_mean"], color=METHOD_COLORS[BASELINE], ls=":", lw=1)
        positive = [x for x in xs if x == x and x > 0]
        if positive and (log == "always" or (log == "wide" and max(positive) >= 10 * min(positive))):
            set_log_x(ax)
        else:
            widen_narrow_x(ax)
        if ax is axes[0]:  # names on the first panel, where the methods are spread out the most
            for x, y, (_, row) in zip(xs, ys, trained.iterrows()):
                ax.annotate(row["method"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7, color="#444444")
        ax.set_xlabel(f"{COSTS[key].label.removesuffix(' %').lower()} ({unit})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric_label)
    add_legends(fig, frame)
    return save_figure(fig, path)


def widen_narrow_x(ax, share: float = 0.2) -> None:
    """Make a linear x axis at least `share` of its centre wide: matplotlib would zoom a lone point's
    small error bar (a peak-memory std of a few MiB) to fill the panel, which reads like a wide spread."""
    lo, hi = ax.get_xlim()
    centre, half = (lo + hi) / 2, share * abs(lo + hi) / 4
    if hi - lo < 2 * half:
        ax.set_xlim(centre - half, centre + half)


TICKS_AT_VALUES = 8  # a sweep of at most this many values is labelled at its own values


def set_log_x(ax, values=()) -> None:
    """Log x with plain tick labels (0.01, 1, 100), not 10^-2 or 5x10^1; a sweep's few `values` label the
    axis themselves (30, 120, 480 rather than a lone 100)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    values = sorted(set(values))
    if 0 < len(values) <= TICKS_AT_VALUES:
        ax.xaxis.set_major_locator(FixedLocator(values))
        ax.xaxis.set_minor_locator(NullLocator())


def numeric_or_none(values) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def plot_lines(rows, key: str, tied: tuple = ()) -> list[tuple[str, object]]:
    """(label, rows) of each line of a plot along `key`: one per (method, model) and every other setting
    that tells a method's rows apart (its other swept values, how it was tuned), so r=4 at 100 and at 1,000
    training examples are two lines, never one zig-zag. The label names the settings the line holds. `tied`:
    keys that change together with `key` in every row (lora_alpha = 2r), which move along the line."""
    lines: dict[str, list] = {}
    labels: dict[str, str] = {}
    for idx, row in rows.iterrows():
        others = {k: v for k, v in row["varying"].items() if k != key and k not in tied}
        tuned = row.get("tuned")
        ident = repr((row["method"], row["model"], sorted(others.items(), key=str), tuned is not None))
        held = [f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in others.items()] + (["tuned"] if tuned else [])
        labels[ident] = f"{row['method']} · {row['model']}" + (f" ({', '.join(held)})" if held else "")
        lines.setdefault(ident, []).append(idx)
    return [(labels[ident], rows.loc[members]) for ident, members in lines.items()]


def plot_sensitivity(frame, key: str, path: Path, metric_label: str, tied: tuple = ()) -> Path:
    """Score against one swept setting, a line per row setting (plot_lines); categorical x when not numeric."""
    fig, (ax,) = new_figure(6.5, 3.6)
    rows = frame[frame["varying"].map(lambda v: key in v)]
    methods, models = list(dict.fromkeys(frame["method"])), list(dict.fromkeys(frame["model"]))
    categories = list(dict.fromkeys(str(v[key]) for v in rows["varying"]))
    for label, line in plot_lines(rows, key, tied):
        raw = [v[key] for v in line["varying"]]
        xs = numeric_or_none(raw) or [categories.index(str(v)) for v in raw]
        order = np.argsort(xs, kind="stable")
        ys = 100 * line["primary_mean"].to_numpy()
        errs = np.array([y_error(r)[:2] for _, r in line.iterrows()]).T
        first = line.iloc[0]
        ax.errorbar(np.array(xs)[order], ys[order], yerr=errs[:, order], marker=model_marker(first["model"], models),
                    color=method_color(first["method"], methods), capsize=3, label=label)
    if numeric_or_none(categories) is None:
        ax.set_xticks(range(len(categories)), categories)
    elif min(numeric_or_none(categories)) > 0 and max(numeric_or_none(categories)) / min(numeric_or_none(categories)) >= 10:
        set_log_x(ax, numeric_or_none(categories))
    ax.set_xlabel(key)
    ax.set_ylabel(metric_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, path)


LEARNING_CURVE_KEYS = ("data.train_size", "data.per_class")


def plot_learning_curve(frame, key: str, path: Path, metric_label: str, tied: tuple = ()) -> Path:
    """Score against the training examples each row used, a line per row setting (plot_lines), with the
    seeds' 95% t-interval as error bars (the test-set bootstrap CI for single-seed rows); untrained dotted."""
    fig, (ax,) = new_figure(6.5, 3.6)
    rows = frame[frame["varying"].map(lambda v: key in v) & ~frame["is_baseline"]]
    methods, models = list(dict.fromkeys(frame["method"])), list(dict.fromkeys(frame["model"]))
    for label, line in plot_lines(rows, key, tied):
        line = line.sort_values("train_examples")
        ys = 100 * line["primary_mean"].to_numpy()
        bounds = [r["ci_seeds"] if r["seeds"] > 1 else r["ci_examples"] for _, r in line.iterrows()]
        errs = np.array([bar_lengths(y, 100 * lo, 100 * hi) if lo == lo else [0.0, 0.0] for y, (lo, hi) in zip(ys, bounds)]).T
        first = line.iloc[0]
        ax.errorbar(line["train_examples"].to_numpy(), ys, yerr=errs, marker=model_marker(first["model"], models),
                    color=method_color(first["method"], methods), capsize=3, label=label)
    for _, row in frame[frame["is_baseline"]].iterrows():
        ax.axhline(100 * row["primary_mean"], color=METHOD_COLORS[BASELINE], ls=":", lw=1, label=f"{BASELINE} · {row['model']}")
    xs = [x for x in rows["train_examples"] if x == x and x > 0]
    if xs and max(xs) >= 10 * min(xs):
        set_log_x(ax, xs)
    ax.set_xlabel(f"training examples (set by {key})")
    ax.set_ylabel(metric_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, path)


SIZES_APART = 1.1  # the largest model at least this many times the smallest: a model-size plot says something


def model_params(frame) -> dict:
    """Each model's own parameters: the fewest total parameters of its rows (full fine-tuning's, or the
    smallest adapter's), so that adapters do not spread one model over several sizes."""
    return frame.dropna(subset=["total_params"]).groupby("model")["total_params"].min().to_dict()


def sizes_differ(frame) -> bool:
    """Whether the task's models differ in size (not, say, a model and its domain-pretrained copy)."""
    sizes = list(model_params(frame).values())
    return len(sizes) > 1 and max(sizes) >= SIZES_APART * min(sizes)


def plot_model_size(frame, path: Path, metric_label: str) -> Path:
    """Score against the model's own parameters, a line per method (its best variant per model)."""
    fig, (ax,) = new_figure(6.5, 3.6)
    methods = list(dict.fromkeys(frame["method"]))
    best = frame.sort_values("primary_mean", ascending=False).drop_duplicates(["method", "model"])
    best = best.assign(model_params=best["model"].map(model_params(frame)))
    for method, line in best.groupby("method", sort=False):
        line = line.sort_values("model_params")
        errs = np.array([y_error(r)[:2] for _, r in line.iterrows()]).T
        ax.errorbar(line["model_params"] / 1e6, 100 * line["primary_mean"], yerr=errs, marker="o", capsize=3,
                    color=method_color(method, methods), ls=":" if line["is_baseline"].iloc[0] else "-", label=method)
    set_log_x(ax)
    ax.set_xlabel("model parameters (millions)")
    ax.set_ylabel(metric_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, path)


def plot_confusion(labels: list[str], matrix, path: Path, title: str) -> Path:
    """Counts of true (rows) against predicted (columns) labels."""
    matrix = np.asarray(matrix)
    fig, (ax,) = new_figure(1.2 + 0.75 * len(labels), 1.0 + 0.65 * len(labels))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > matrix.max() / 2 else "black")
    short = [label[:12] for label in labels]
    ax.set_xticks(range(len(labels)), short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), short, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def image_html(path: Path, alt: str) -> str:
    """The PNG embedded as a data URI, so report.html is one file that can be mailed or archived."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"
