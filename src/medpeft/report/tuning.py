"""The report's account of tuning: whether each row was tuned, and every candidate's validation score.

Read from result.json files only: a tuned run's config records its group, what it was tuned over and
the chosen values; each trial's records its group, values and validation metrics.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

from medpeft.report.tables import describe_row, format_score, format_value, has_several_models, md_text
from medpeft.run.metrics import metric_label
from medpeft.run.record import LOSS_SCORE, RunResult, validation_score

CHOSE_BY_LOSS, CHOSE_BY_SCORE = "lowest validation loss", "highest validation score; a tie goes to the lower validation loss"
UNTUNED_WARNING = ("Each method ran at a fixed learning rate; add a tune: block to compare fairly "
                   "(`tune: auto` tries each method's learning-rate range on the validation split).")


def tuning_lines(frame) -> tuple[list[str], list[str]]:
    """(an answer line saying how the trained rows were tuned, warnings) for one task's rows."""
    trained = frame[~frame["is_baseline"]]
    if trained.empty:
        return [], []
    tuned = [r for _, r in trained.iterrows() if r.get("tuned")]
    if not tuned:
        return [], [UNTUNED_WARNING]
    over = tuned[0]["tuned"].over
    how = (f"Optuna, {over.trials} trials each" if over.search == "optuna" else "grid search")
    axes = ", ".join(f"`{a}`" for a in over.space)
    line = (f"**Tuned on validation data**: {axes} chosen per method by validation {score_name(over.metric)} "
            f"({how}); the test split played no part in the choice.")
    many = has_several_models(frame)
    untuned = [describe_row(r, many) for _, r in trained.iterrows() if not r.get("tuned")]
    warnings = [f"Not tuned (fixed learning rate): {', '.join(untuned)}; compare them with the tuned rows with care."] if untuned else []
    edges = [edge for r in tuned for edge in chosen_at_edge(r, many)]
    if edges:
        warnings.append(f"Chosen at the edge of the candidates: {'; '.join(edges)}. A better value may lie beyond it; "
                        "add candidates past that end (tune: {train.lr: [...]}) before calling the comparison tuned.")
    return [line], warnings


def chosen_at_edge(row, several_models: bool = False) -> list[str]:
    """'label axis=value (the highest of low–high)' for each numeric grid axis (three or more
    candidates) whose chosen value is its lowest or highest candidate."""
    record, out = row["tuned"], []
    for axis, candidates in record.over.space.items():
        value = record.chosen.get(axis)
        numeric = isinstance(candidates, list) and all(isinstance(c, (int, float)) for c in candidates)
        if not numeric or len(set(candidates)) < 3 or value not in (min(candidates), max(candidates)):
            continue
        end = "highest" if value == max(candidates) else "lowest"
        out.append(f"{describe_row(row, several_models)} {axis}={value:g} (the {end} of {min(candidates):g}–{max(candidates):g})")
    return out


def score_name(metric: str | None) -> str:
    return "loss" if metric == LOSS_SCORE else metric_label(metric) if metric else "score"


def candidate_rows(frame, trials: list[RunResult]) -> list[dict]:
    """One row per trial of each tuned group in this task: group label, values, validation score, chosen."""
    by_group: dict[str, list[RunResult]] = {}
    for t in trials:
        if t.tuning:
            by_group.setdefault(t.tuning.group, []).append(t)
    rows, many = [], has_several_models(frame)
    for _, row in frame[frame["tuned"].map(bool)].iterrows():
        record = row["tuned"]
        metric, chosen = record.over.metric, record.chosen
        for t in sorted(by_group.get(record.group, []), key=lambda t: sorted(t.tuning.values.items())):
            values = t.tuning.values
            rows.append({"label": describe_row(row, many), "method": row["method"], "model": row["model"], "values": values,
                         "score": validation_score(t, metric), "loss": validation_score(t, LOSS_SCORE), "metric": metric,
                         "chosen": values == chosen,
                         "error": None if t.ok else (t.error or "failed").split("\n")[0][:160]})
    return rows


def format_validation(score: float | None, metric: str) -> str:
    """A candidate's validation score: a loss as it is (nats/token), a metric as every score is printed."""
    if metric == LOSS_SCORE and score is not None:
        return f"{score:.4f}"
    return format_score(score, missing="—")


def tuning_section(frame, trials: list[RunResult], plot_path: Path) -> tuple[str, str, list[Path]]:
    """HTML and Markdown of the Tuning section (empty when nothing was tuned) and the plot it wrote."""
    rows = candidate_rows(frame, trials)
    if not rows:
        return "", "", []
    axes = list(rows[0]["values"])
    metric = rows[0]["metric"]
    header = ["Method", *axes, f"Validation {score_name(metric)}" + ("" if metric == LOSS_SCORE else " (×100)"),
              *(["Validation loss"] if metric != LOSS_SCORE else []), "Chosen"]
    cells = [[r["label"], *[format_value(r["values"].get(a)) for a in axes],
              format_validation(r["score"], metric) if r["error"] is None else f"failed: {r['error']}",
              *([format_validation(r["loss"], LOSS_SCORE)] if metric != LOSS_SCORE else []), "✓" if r["chosen"] else ""]
             for r in rows]
    note = (f"Each candidate trained once at the grid's first seed and was scored on the validation split; every seed "
            f"then ran with the chosen value ({CHOSE_BY_LOSS if metric == LOSS_SCORE else CHOSE_BY_SCORE}). "
            "Trials are stored in the grid folder with `tuning_trial: true` and never enter the tables above.")
    tied = tied_labels(rows)
    if tied and metric != LOSS_SCORE:
        note += (f" Every candidate of {', '.join(tied)} scored the same on validation, so the choice fell to the "
                 "validation loss; if they all predict one label, a larger training budget is what separates them.")
    written = []
    if len(axes) == 1 and all(isinstance(r["values"][axes[0]], (int, float)) for r in rows) and len(rows) > len(set(r["label"] for r in rows)):
        written.append(plot_candidates(rows, axes[0], plot_path, header[len(axes) + 1]))
    h = ["<h3>Tuning</h3><div class='scroll'><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>",
         *["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells], "</table></div>",
         f"<p class='note'>{html.escape(note)}</p>"]
    m = ["### Tuning\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
         *["| " + " | ".join(map(md_text, line)) + " |" for line in cells], "", md_text(note) + "\n"]
    if written:
        from medpeft.report.plots import image_html

        h.append(image_html(written[0], "Validation score of each candidate"))
        m.append(f"![Validation score of each candidate]({written[0].name})\n")
    return "\n".join(h), "\n".join(m), written


def tied_labels(rows: list[dict]) -> list[str]:
    """The rows (a method on a model: the label names the model when there are several) whose every
    candidate finished, two or more, with the same validation score."""
    scores: dict[tuple, list] = {}
    for r in rows:
        scores.setdefault((r["model"], r["label"]), []).append(r["score"] if r["error"] is None else None)
    return [label for (_, label), values in scores.items()
            if len(values) > 1 and None not in values and max(values) - min(values) < 1e-12]


def plot_candidates(rows: list[dict], axis: str, path: Path, ylabel: str) -> Path:
    """Validation score against the tuned value, a line per method; the chosen candidate starred."""
    from medpeft.report.plots import method_color, new_figure, save_figure, set_log_x

    fig, (ax,) = new_figure(6.5, 3.4)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))  # colour: the method; line style: the model
    scale = 1.0 if rows[0]["metric"] == LOSS_SCORE else 100.0
    for label in dict.fromkeys(r["label"] for r in rows):
        line = sorted((r for r in rows if r["label"] == label and r["score"] is not None), key=lambda r: r["values"][axis])
        if not line:
            continue
        color = method_color(line[0]["method"], methods)
        style = ("-", "--", ":", "-.")[models.index(line[0]["model"]) % 4]
        xs, ys = [r["values"][axis] for r in line], [scale * r["score"] for r in line]
        ax.plot(xs, ys, marker="o", color=color, ls=style, label=label)
        for r in line:
            if r["chosen"]:
                ax.plot([r["values"][axis]], [scale * r["score"]], marker="*", ms=15, color=color, ls="")
    values = [r["values"][axis] for r in rows]
    if min(values) > 0 and max(values) / min(values) >= 10:
        set_log_x(ax)
    ax.set_xlabel(axis)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if any(math.isfinite(r["score"] or math.nan) for r in rows):
        ax.set_title("★ chosen", fontsize=9, loc="right")
    return save_figure(fig, path)
