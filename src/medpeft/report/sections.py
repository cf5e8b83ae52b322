"""The report's per-task prose and evidence: answer first, warnings, significance, examples, failures.

Each function returns text in a tiny Markdown subset (**bold**, `code`) or an (html, markdown) pair.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from medpeft.methods import Role
from medpeft.report.compare import SEEDS_FOR_A_CLAIM, VS_BASE, VS_FULL, VS_UNTRAINED, format_p
from medpeft.report.frame import example_scores
from medpeft.report.plots import image_html, plot_confusion
from medpeft.report.stats import ALPHA, statistic
from medpeft.report.tables import (describe_row, format_cost, format_points, format_score, has_several_models, md_code,
                                   md_text, memory_ranked, row_label)
from medpeft.run.metrics import metric_label, single_label
from medpeft.run.record import RunResult

# (cost, budget): the budgets the answer names the cheapest row near the best for
BUDGETS = (("trainable_pct", "Fewest trainable parameters"), ("peak_memory_bytes", "Least peak memory"),
           ("train_seconds", "Fastest training"))
SOURCE_CHARS, OUTPUT_CHARS = 700, 600


def format_mean(row) -> str:
    return format_score(row["primary_mean"], row["primary_std"]) + f" ({row['seeds']} seed{'s' if row['seeds'] != 1 else ''})"


def p_text(p: float) -> str:
    """'p = 0.121' or 'p < 0.001', for prose."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def answer_first(frame, comparisons: list[dict], within_points: float) -> list[str]:
    """What to pick for this task: the best row, the best parameter-efficient one, the cheapest near the best."""
    trained = frame[~frame["is_baseline"] & frame["primary_mean"].notna()]
    if trained.empty:
        return ["No trained run finished for this task."]
    name, many = metric_label(frame["primary"].iloc[0]), has_several_models(frame)
    best_idx = trained["primary_mean"].idxmax()
    best = trained.loc[best_idx]
    lines = [f"**Best {name}: {describe_row(best, many)}**, {format_mean(best)}, {cost_text(best)}."]
    peft = trained[trained["role"] != Role.FULL]
    named = {best_idx}  # rows already recommended: not repeated below
    if best["role"] == Role.FULL and not peft.empty:
        pick = peft["primary_mean"].idxmax()
        named.add(pick)
        lines.append(f"**Best parameter-efficient: {describe_row(trained.loc[pick], many)}**, {format_mean(trained.loc[pick])}, "
                     f"{cost_text(trained.loc[pick])}; {versus(comparisons, pick, best_idx)}."
                     + close_behind(peft, pick, within_points, many))
    elif best["role"] != Role.FULL:
        full = [c for c in comparisons if c["row"] == best_idx and VS_FULL in c["against"]]
        if full:
            lines.append(f"Against full fine-tuning ({format_score(frame.loc[full[0]['ref'], 'primary_mean'])}): "
                         f"{format_points(full[0]['delta'])} points, {p_text(full[0]['p_examples'])}: {full[0]['verdict']}.")
    lines.append(cheapest_near_best(trained, best_idx, within_points, name, many))
    def trainable(idx) -> float:
        value = frame.loc[idx].get("trainable_pct_mean", float("inf"))
        return float("inf") if value != value else value

    tied = [c for c in comparisons if c["ref"] == best_idx and c["p_examples"] >= ALPHA and c["row"] != best_idx
            and trainable(c["row"]) < trainable(best_idx)]  # only a row cheaper than the best is worth naming
    cheap = min(tied, key=lambda c: trainable(c["row"])) if tied else None
    if cheap and cheap["row"] not in named:
        row = frame.loc[cheap["row"]]
        lines.append(f"Cheapest not significantly worse than the best ({p_text(cheap['p_examples'])}): "
                     f"**{describe_row(row, many)}**, {name} {format_score(row['primary_mean'])}, {cost_text(row)}"
                     f"{untrained_caveat(comparisons, cheap['row'])}.")
    lines += against_base_models(frame, comparisons)
    refs = [(f"{r['model']} " if many else "") + format_score(r["primary_mean"])
            + (f" (no model ran: {r['baseline_words']}, since a new head is random before training)"
               if isinstance(r.get("baseline_words"), str) else "")
            for _, r in frame.iterrows() if r["is_baseline"]]
    if refs:
        lines.append("Untrained baseline: " + "; ".join(refs) + "." + against_untrained(frame, comparisons, best_idx, many))
    lines += baseline_beats_training(frame, trained, name)
    return lines


def untrained_caveat(comparisons: list[dict], row_idx: int) -> str:
    """'; but not detectably better than ...' when a row named for its cost is no better than its model's
    untrained baseline on the test set (its verdict, compare.py's rule): tied with the best need not mean it
    learned anything."""
    found = [c for c in comparisons if c["row"] == row_idx and c["against"] == VS_UNTRAINED]
    if not found or found[0]["verdict"].startswith("better"):
        return ""
    return (f"; but not detectably better than the untrained baseline either ({format_points(found[0]['delta'])} points, "
            f"{p_text(found[0]['p_examples'])}): no recommendation")


def against_base_models(frame, comparisons: list[dict]) -> list[str]:
    """One line per model pre-trained from another of the grid: each method's difference from the same
    method on its base, with the verdict's first words (the table below has the p-values)."""
    parts: dict[tuple, list[str]] = {}
    for c in comparisons:
        if VS_BASE in c["against"]:
            row, base = frame.loc[c["row"]], frame.loc[c["ref"]]
            verdict = c["verdict"].split(" (")[0]
            parts.setdefault((row["model"], base["model"]), []).append(f"{row_label(row)} {format_points(c['delta'])} ({verdict})")
    return [f"**{model} against its base {base}**, each method at the same settings: {'; '.join(items)}."
            for (model, base), items in parts.items()]


def against_untrained(frame, comparisons: list[dict], best_idx: int, many: bool) -> str:
    """The best row's difference from its model's untrained baseline, and how many trained rows are
    detectably better than theirs (a claim: both tests and enough seeds): does training pay at all?"""
    found = [c for c in comparisons if c["against"] == VS_UNTRAINED]
    if not found:
        return ""
    whose = f"{frame.loc[best_idx, 'model']}'s" if many else "it"
    text = "".join(f" Against {whose}, the best row: {format_points(c['delta'])} points, {p_text(c['p_examples'])}: {c['verdict']}."
                   for c in found if c["row"] == best_idx)
    above = sum(c["verdict"] == "better" for c in found)
    few = sum(frame.loc[c["row"], "seeds"] < SEEDS_FOR_A_CLAIM for c in found)
    unjudged = f" ({few} with fewer than {SEEDS_FOR_A_CLAIM} seeds not judged)" if few else ""
    theirs = "their model's" if many else "it"
    return text + f" {above} of {len(found)} trained rows detectably better than {theirs}{unjudged}."


def baseline_beats_training(frame, trained, name: str) -> list[str]:
    """A warning when a model's untrained baseline scores at least as well as every trained row of it."""
    out = []
    for _, base in frame[frame["is_baseline"]].iterrows():
        rows = trained[trained["model"] == base["model"]]
        if len(rows) and base["primary_mean"] >= rows["primary_mean"].max():
            whose = f"every trained {base['model']} row" if trained["model"].nunique() > 1 else "every trained row"
            out.append(f"**The untrained {base['model']} ({format_score(base['primary_mean'])}) scores at least as high as "
                       f"{whose} on {name}**: at these budgets training did not improve the headline metric; "
                       "read the other metrics and the examples before choosing a method.")
    return out


def cost_text(row) -> str:
    """The row's share of trainable parameters and the weights it stores, in prose."""
    values = {key: row.get(f"{key}_mean") for key in ("trainable_pct", "adapter_bytes")}
    return ", ".join(format_cost(key, v) for key, v in values.items() if v is not None and v == v)


def versus(comparisons: list[dict], row_idx: int, ref_idx: int) -> str:
    found = [c for c in comparisons if c["row"] == row_idx and c["ref"] == ref_idx]
    if not found:
        return "not compared"
    c = found[0]
    return f"{format_points(c['delta'])} points vs the best, {p_text(c['p_examples'])}: {c['verdict']}"


def close_behind(rows, pick: int, within_points: float, many: bool) -> str:
    """' Within 1 point of it: lora, 44.33 ± 1.01 (3 seeds), not compared with it by any test here.' for the other
    rows that close to `pick`: "best parameter-efficient" is then an order of means, not a finding."""
    floor = rows.loc[pick, "primary_mean"] - within_points / 100 - 1e-12
    close = rows[(rows.index != pick) & (rows["primary_mean"] >= floor)].sort_values("primary_mean", ascending=False)
    if close.empty:
        return ""
    named = "; ".join(f"{describe_row(row, many)}, {format_mean(row)}" for _, row in close.iterrows())
    return f" Within {within_points:g} point of it: {named}, not compared with it by any test here."


def cheapest_near_best(trained, best_idx: int, within_points: float, name: str, many: bool) -> str:
    """The cheapest row per budget (parameters, memory, time) among rows within `within_points` of the best."""
    near = trained[trained["primary_mean"] >= trained.loc[best_idx, "primary_mean"] - within_points / 100 - 1e-12]
    picks: dict[int, list[str]] = {}
    for key, budget in BUDGETS:
        if key == "peak_memory_bytes" and not memory_ranked(trained):
            continue
        column = f"{key}_mean"
        values = near[column].dropna() if column in near else near.iloc[0:0]
        if not values.empty and values.idxmin() != best_idx:
            picks.setdefault(values.idxmin(), []).append(budget.lower())
    if not picks:
        return f"Nothing cheaper than the best comes within {within_points:g} point of it."
    return " ".join(f"Within {within_points:g} point of the best, {' / '.join(budgets)}: **{describe_row(trained.loc[i], many)}**, "
                    f"{name} {format_score(trained.loc[i, 'primary_mean'])}, {cost_text(trained.loc[i])}." for i, budgets in picks.items())


def warnings_for(frame) -> list[str]:
    """Plain-language reasons to be careful with this task's numbers."""
    out = []
    seeds = frame.loc[~frame["is_baseline"], "seeds"]
    if len(seeds) and seeds.max() == 1:
        out.append("Every row has a **single seed**: no ± std, no seed CI, and the tests below measure test-set "
                   "sampling only, not training randomness. Run at least 3 seeds (`seed: [0, 1, 2]`) before "
                   "claiming one method beats another.")
    elif len(seeds) and seeds.min() < SEEDS_FOR_A_CLAIM:
        many = has_several_models(frame)
        few = ", ".join(describe_row(r, many) for _, r in frame[~frame["is_baseline"]].iterrows() if r["seeds"] < SEEDS_FOR_A_CLAIM)
        out.append(f"Fewer than {SEEDS_FOR_A_CLAIM} seeds for: {few}. Differences involving them are not yet claims.")
    for _, row in frame.iterrows():
        for seed in row.get("duplicate_seeds") or []:
            out.append(f"In {describe_row(row, has_several_models(frame))}, seed {seed} ran more than once (run folders "
                       f"{', '.join(md_code(r) for r in row['run_ids'])}): each run counts as a seed, but two runs of one "
                       "seed are not independent, so the spread over seeds is understated. Remove the copies.")
    n = int(frame["n_examples"].max()) if len(frame) else 0
    if 0 < n < 100:
        out.append(f"Only **{n} test examples**: differences of a few points can be noise; read the test-set CIs.")
    return out


def one_label_rows(frame, runs_by_id: dict) -> list[str]:
    """A warning per classification row whose every seed predicted one label for every test example:
    each seed's accuracy is then its label's share of the test set, whatever it learned (an imbalanced
    task at too small a budget). Rows with a seed whose predictions are missing are not judged; the
    untrained baseline is not named (it often does this)."""
    if not single_label(frame["task_type"].iloc[0]):
        return []
    out = []
    for _, row in frame[~frame["is_baseline"]].iterrows():
        per_seed = [{p["prediction"] for p in runs_by_id[rid].predictions()} for rid in row["run_ids"]]
        if not per_seed or any(len(labels) != 1 for labels in per_seed):
            continue
        labels = sorted(set().union(*per_seed))
        seeds = f"all {len(per_seed)} seeds" if len(per_seed) > 1 else "its one seed"
        said = " or ".join(repr(label) for label in labels)
        out.append(f"**{describe_row(row, has_several_models(frame))} predicts {said} for every test example** "
                   f"({seeds}, one label each): its accuracy {format_score(row['primary_mean'])} is the test set's share of "
                   "that label, not something learned. Raise the training budget (examples, epochs) or read macro-F1 and AUROC.")
    return out


def example_section(frame, runs_by_id: dict, confusion_path: Path) -> tuple[str, str]:
    if single_label(frame["task_type"].iloc[0]):
        return confusion_section(frame, runs_by_id, confusion_path)
    return summary_examples(frame, runs_by_id)


def example_score(value) -> float:
    """One example's score: its number, or the F1 of its [tp, fp, fn]. An example with no entity (or label)
    to find and none found has no F1 of its own: nan (shown as —)."""
    if isinstance(value, (list, tuple, np.ndarray)) and not np.asarray(value).sum():
        return math.nan
    return statistic([value])


def pick_examples(scores: dict[str, float], ids: list[str], k: int = 3) -> list[str]:
    """Test ids at evenly spaced quantiles (25/50/75% for k=3) of a row's scores: typical, not cherry-picked."""
    ranked = sorted(ids, key=lambda i: (s if (s := scores.get(i, 0.0)) == s else 1.0, i))  # nothing to find: nothing missed
    if len(ranked) <= k:
        return ranked
    return list(dict.fromkeys(ranked[int(q * (len(ranked) - 1))] for q in np.linspace(0, 1, k + 2)[1:-1]))


def one_line(text: str) -> str:
    """Newlines in a model's output would end a Markdown list item."""
    return " ".join(str(text).split())


def clip(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + " …"


def summary_examples(frame, runs_by_id: dict) -> tuple[str, str]:
    """Three test examples: source, reference and every row's output (its first seed) side by side."""
    rows = [r for _, r in frame.iterrows()]
    runs = [runs_by_id[r["run_ids"][0]] for r in rows]
    preds = [{str(p["id"]): p for p in run.predictions()} for run in runs]
    ids = [i for i in preds[0] if all(i in p for p in preds[1:])]
    if not ids:
        return "", ""
    scored = frame[~frame["is_baseline"]]["primary_mean"].dropna()  # a row with no score (read as missing) is no best
    best = scored.idxmax() if len(scored) else 0
    metric = frame["primary"].iloc[0]
    scores = [example_scores(run, metric) for run in runs]
    chosen = pick_examples({i: example_score(v) for i, v in scores[best].items()}, ids)
    name, many = metric_label(metric), has_several_models(frame)
    intro = (f"Test examples at the 25th, 50th and 75th percentile of the best row's per-example {name}; "
             f"outputs from each row's first seed, with their {name} (×100).")
    h, m = [f"<div class='examples'><h3>Examples</h3><p class='note'>{intro}</p>"], ["### Examples\n", intro + "\n"]
    for n, i in enumerate(chosen, 1):
        ex = preds[0][i]
        source = clip(show(ex.get("input", "")), SOURCE_CHARS)
        reference = clip(show(ex.get("reference", ""), ex.get("input", "")), OUTPUT_CHARS)  # cut as the outputs beside it
        h.append(f"<div class='ex'><b>Example {n}</b> <code>{html.escape(i)}</code><div class='src'>"
                 f"<div><span class='label'>Source</span><br>{html.escape(source)}</div>"
                 f"<div><span class='label'>Reference</span><br>{html.escape(reference)}</div></div>"
                 "<div class='outs'>")
        m += [f"**Example {n}** ({md_code(i)})\n", f"- *Source*: {md_text(one_line(source))}",
              f"- *Reference*: {md_text(one_line(reference))}"]
        for row, p, s in zip(rows, preds, scores):
            score = example_score(s[i]) if i in s else math.nan
            label = f"{describe_row(row, many)} · " + format_score(score, missing="—")
            output = clip(show(p[i].get("prediction", ""), p[i].get("input", "")), OUTPUT_CHARS)
            h.append(f"<div><span class='label'>{html.escape(label)}</span><br>{html.escape(output)}</div>")
            m.append(f"- *{md_text(label)}*: {md_text(one_line(output))}")
        h.append("</div></div>")
        m.append("")
    h.append("</div>")
    return "".join(h), "\n".join(m).replace("\n\n\n", "\n\n") + "\n"


def show(value, words=None) -> str:
    """A text or a list of words, a label set ("a; b", "(none)") or a tag sequence over its words
    ("aspirin [B-Chemical] ...")."""
    if not isinstance(value, list):
        return str(value)
    if words is None:  # the source of a NER example: its words
        return " ".join(map(str, value))
    if isinstance(words, list) and len(words) == len(value):
        return " ".join(f"{w} [{tag}]" if tag != "O" else str(w) for w, tag in zip(words, value))
    return "; ".join(map(str, value)) if value else "(none)"


def label_order(predictions: list[dict]) -> list[str]:
    """Labels in the model's own index order, recovered from argmax of `probs`.

    Labels never predicted have no known index: they fill the free slots in sorted order, so a
    matrix still reads in (nearly) the task's order. Only the display order depends on this guess.
    """
    by_index = {}
    for p in predictions:
        if p.get("probs"):
            by_index.setdefault(int(np.argmax(p["probs"])), p["prediction"])
    seen = {p["reference"] for p in predictions} | {p["prediction"] for p in predictions}
    rest = iter(sorted(seen - set(by_index.values())))
    size = max([len(p.get("probs") or []) for p in predictions] + [len(seen)])
    order = [by_index[i] if i in by_index else next(rest, None) for i in range(size)]
    return [label for label in order if label is not None] + list(rest)


def confusion_section(frame, runs_by_id: dict, path: Path) -> tuple[str, str]:
    """Confusion matrix of the best trained row, summed over its seeds."""
    trained = frame[~frame["is_baseline"] & frame["primary_mean"].notna()]
    if trained.empty:
        return "", ""
    row = frame.loc[trained["primary_mean"].idxmax()]
    predictions = [p for rid in row["run_ids"] for p in runs_by_id[rid].predictions()]
    if not predictions:
        return "", ""
    labels = runs_by_id[row["run_ids"][0]].labels or label_order(predictions)  # older results lack labels
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for p in predictions:
        matrix[labels.index(p["reference"]), labels.index(p["prediction"])] += 1
    seeds = f"{row['seeds']} seeds summed" if row["seeds"] > 1 else f"seed {runs_by_id[row['run_ids'][0]].seed}"
    title = f"{describe_row(row, has_several_models(frame))}, {seeds}"
    plot_confusion(labels, matrix, path, title)
    intro = f"Confusion matrix of the best row ({title}): rows are true labels, columns predicted."
    md_rows = ["| true \\ predicted | " + " | ".join(map(md_text, labels)) + " |", "|" + "---|" * (len(labels) + 1)]
    md_rows += [f"| {md_text(label)} | " + " | ".join(str(v) for v in matrix[i]) + " |" for i, label in enumerate(labels)]
    h = f"<h3>Confusion matrix</h3><p class='note'>{html.escape(intro)}</p>{image_html(path, 'confusion matrix')}"
    return h, "### Confusion matrix\n\n" + md_text(intro) + "\n\n" + "\n".join(md_rows) + f"\n\n![confusion matrix]({path.name})\n"


def failure_section(runs: list[RunResult], incomplete: list[str]) -> tuple[str, str]:
    """Every failed run with its error (never dropped silently), and run folders with no result yet."""
    failed = [r for r in runs if not r.ok]
    h, m = [f"<section id='failures'><h2>Failures ({len(failed)})</h2>"], [f"\n## Failures ({len(failed)})\n"]
    if not failed:
        h.append("<p>No failed runs.</p>")
        m.append("No failed runs.\n")
    for r in failed:
        what = f"{r.task} · {r.model} · {r.method} · seed {r.seed}"
        h.append(f"<div class='fail'><b>{html.escape(r.run_id)}</b> ({html.escape(what)})<br>"
                 f"{html.escape(str(r.error))}<details><summary>traceback</summary>"
                 f"<pre>{html.escape(str(r.traceback or ''))}</pre></details></div>")
        m.append(f"- {md_code(r.run_id)} ({md_text(what)}): {md_text(r.error)}")
    if incomplete:
        text = f"Unfinished ({len(incomplete)}; no readable result.json: still running, interrupted, or a broken file): "
        h.append(f"<p class='note'>{html.escape(text)}{', '.join(f'<code>{html.escape(d)}</code>' for d in incomplete)}</p>")
        m.append("\n" + text + ", ".join(map(md_code, incomplete)))
    h.append("</section>")
    return "".join(h), "\n".join(m) + "\n"
