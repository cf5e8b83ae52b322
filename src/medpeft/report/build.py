"""`medpeft report runs/<grid>`: one self-contained report.html, report.md and report.tex per grid.

Reads only the grid's result.json and predictions.jsonl files. Per task, the report opens with
the answer ("which method on which budget"), then the evidence: main table, significance,
trade-off, sensitivity and model-size plots, examples; failed runs are always listed.
Narrative text is written once in a tiny Markdown subset (**bold**, `code`) and converted for HTML.
"""
from __future__ import annotations

import hashlib
import html
import re
import time
from collections import Counter
from pathlib import Path

from medpeft.report import plots
from medpeft.report.compare import SEEDS_FOR_A_CLAIM, compare_task, comparison_table
from medpeft.report.frame import aggregate, collect_runs, split_trials
from medpeft.report.plots import image_html
from medpeft.report.stats import ALPHA
from medpeft.report.sections import (answer_first, example_section, failure_section, one_label_rows,
                                      warnings_for)
from medpeft.report.summary import write_summary
from medpeft.report.tuning import tuning_lines, tuning_section
from medpeft.report.tables import (ROUGE_L_NOTE, format_bytes, md_text, left_by_earlier_runs, memory_ranked, shared_memory_bytes, table_columns,
                                   table_html, table_latex, table_markdown)
from medpeft.run.metrics import MACRO_NOTE, single_label
from medpeft.run.metrics import metric_label as label_of
from medpeft.run.record import write_atomic

ADJUSTED = "(Holm-adjusted over each task's comparisons)"
UNADJUSTED = "(not adjusted for multiple comparisons: medpeft report --unadjusted)"
ONE_LINE_EACH = ("One line per method, model and value of the other settings the grid varied (named in the legend, "
                 "held along the line).")
CI_NOTE = ("95% CI, seeds: Student-t interval over the seed scores (mean ± t·s/√n); 95% CI, test set: "
           "percentile bootstrap over the test examples.")
FORGETTING_NOTE = ("Forgetting: the change in language-model loss (nats/token, adapted minus base) on held-out "
                   "MEDLINE abstracts in no split of the task; above 0, the method cost general medical language ability.")
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1b1b1b;max-width:1360px;margin:24px auto;padding:0 20px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:20px;border-bottom:2px solid #1f77b4;padding-bottom:4px;margin-top:36px}
h3{font-size:16px;margin:22px 0 8px}.meta{color:#555;margin:0 0 12px}
.answer{background:#eef5fc;border-left:5px solid #1f77b4;padding:10px 16px;margin:10px 0 6px}
.answer ul{margin:4px 0;padding-left:20px}.answer li{margin:3px 0}
.warn{background:#fff6e0;border-left:5px solid #e0a000;padding:6px 14px;margin:8px 0;font-size:13px}
.warn ul{margin:2px 0;padding-left:18px}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border-bottom:1px solid #ddd;padding:4px 7px;text-align:right;white-space:nowrap}th{white-space:normal;vertical-align:bottom;min-width:60px}
th{background:#f3f3f3;position:sticky;top:0}td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}
td.best{font-weight:700;background:#e3f3e3}tr.baseline td{color:#666;font-style:italic}
table.cmp td:last-child,table.cmp th:last-child{text-align:left;white-space:normal;max-width:520px}
.note{color:#555;font-size:12.5px;margin:4px 0 10px}img{max-width:100%;border:1px solid #eee}
.examples .ex{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:10px 0}
.src{display:grid;grid-template-columns:3fr 2fr;gap:12px;font-size:12.5px}
.outs{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:8px;margin-top:8px;font-size:12.5px}
.outs div,.src div{background:#fafafa;padding:6px 8px;border-radius:4px}.label{font-weight:600;color:#1f4e79}
.fail{background:#fdecea;border-left:5px solid #c62828;padding:6px 14px;margin:6px 0}pre{white-space:pre-wrap;font-size:11px}
nav a{margin-right:14px}
"""


def inline_html(text: str) -> str:
    """The Markdown subset used in narrative text (**bold**, `code`) as escaped HTML."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def bullets_html(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{inline_html(line)}</li>" for line in lines) + "</ul>"


SLUG_MAX = 64  # characters kept of a long name; the hash keeps it apart from others


def slug(text: str) -> str:
    """`text` as a file-name and anchor part: lowercase ASCII letters, digits and '-' (the separators '_', '.'
    and ' ' become '-'). When that loses more (capitals, other scripts: 病历 and 心脏 would both be empty,
    other punctuation) or the name is long, 8 hex digits of its hash follow, so two tasks never share a file."""
    plain = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    if re.fullmatch(r"[a-z0-9 ._-]*", text) and plain and len(plain) <= SLUG_MAX:
        return plain
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{plain[:SLUG_MAX]}-{digest}".lstrip("-")


def metric_label(frame) -> str:
    return f"{label_of(frame['primary'].iloc[0])} (×100)"


def make_task_plots(frame, task: str, plot_dir: Path) -> list[tuple[str, Path, str]]:
    """(title, png, caption) of every figure this task supports, as plot_dir/report-<task>-<kind>.png.

    Files, not a folder: every sub-folder of a grid directory is a run. A row with no score (every seed's
    metric missing, as a NaN one reads) is left out: no figure at all when no row has one.
    """
    label, name = metric_label(frame), "report-" + slug(task)
    frame = frame[frame["primary_mean"].notna()]
    if frame.empty:
        return []
    out = [("Quality against cost", plots.plot_tradeoffs(frame, plot_dir / f"{name}-tradeoff.png", label),
            "Error bars: ± std over seeds; a row with one seed shows its 95% test-set bootstrap CI instead. "
            "Dashed grey: Pareto front (nothing else is both cheaper and better)"
            + ("" if memory_ranked(frame) else "; none for peak memory, which is not ranked here (see the main table's note)")
            + ". Dotted: untrained baseline.")]
    keys = list(dict.fromkeys(k for v in frame["varying"] for k in v))  # the grid's order: `r` leads `lora_alpha`
    tied = tied_keys(list(frame["varying"]), keys)
    for key in keys:
        if key in tied:
            continue
        companions = [k for k, leader in tied.items() if leader == key]
        along = f" (with {', '.join(f'`{k}`' for k in companions)}, set together with it in every row)" if companions else ""
        if key in plots.LEARNING_CURVE_KEYS:
            path = plots.plot_learning_curve(frame, key, plot_dir / f"{name}-learning-curve.png", label, tuple(companions))
            out.append((f"Learning curve{along}", path, "Score against the training examples used. " + ONE_LINE_EACH
                        + " Error bars: 95% CI over seeds (Student t; the test-set bootstrap CI for a single seed). "
                        "Dotted: untrained baseline."))
            continue
        path = plots.plot_sensitivity(frame, key, plot_dir / f"{name}-sensitivity-{slug(key)}.png", label, tuple(companions))
        out.append((f"Sensitivity to `{key}`{along}", path, f"{ONE_LINE_EACH} Error bars as above."))
    if plots.sizes_differ(frame):
        path = plots.plot_model_size(frame, plot_dir / f"{name}-model-size.png", label)
        out.append(("Model size", path, "Best variant of each method per model; error bars as above."))
    return out


def tied_keys(varying: list[dict], keys: list[str]) -> dict[str, str]:
    """Swept keys that only ever change together with an earlier one (as `lora_alpha = 2r` with `r` in a
    rank sweep: each value of one always beside the same value of the other): key -> the key whose
    plot already shows it, so the report draws one sensitivity plot, not two identical ones."""
    tied = {}
    for i, key in enumerate(keys):
        for leader in keys[:i]:
            if leader not in tied and moves_with(varying, leader, key):
                tied[key] = leader
                break
    return tied


def moves_with(varying: list[dict], a: str, b: str) -> bool:
    """Whether `a` and `b` appear in the same rows with values paired one to one."""
    forward, backward = {}, {}
    for row in varying:
        if (a in row) != (b in row):
            return False
        if a in row:
            x, y = repr(row[a]), repr(row[b])
            if forward.setdefault(x, y) != y or backward.setdefault(y, x) != x:
                return False
    return True


NO_EXAMPLES = "Examples left out (medpeft report --no-examples): this report holds no source, reference or prediction text."


def task_sections(task: str, frame, runs_by_id: dict, plot_dir: Path, opts: dict, trials: list = ()) -> dict:
    """One task's html, md and tex, its answer lines, and the plots it wrote."""
    comparisons = compare_task(frame, runs_by_id, opts["n_resamples"], opts["seed"], opts.get("adjust", True))
    tuned_lines, tuning_warnings = tuning_lines(frame)
    answer = answer_first(frame, comparisons, opts["within_points"]) + tuned_lines
    warnings = tuning_warnings + warnings_for(frame) + one_label_rows(frame, runs_by_id)
    tune_html, tune_md, tune_plots = tuning_section(frame, list(trials), plot_dir / f"report-{slug(task)}-tuning.png")
    cols = table_columns(frame)
    baseline_rows = {i for i, b in enumerate(frame["is_baseline"]) if b}
    n_test = int(frame["n_examples"].max())
    heading = f"{task} ({frame['task_type'].iloc[0]}, {n_test} test examples)"
    has_rouge = "rougeL_mean" in frame and frame["rougeL_mean"].notna().any()
    table_note = ("Metrics ×100, mean ± std over seeds. **Bold**: best among trained rows (highest score, "
                  "lowest cost); the untrained baseline (italic) is never marked. "
                  + (ROUGE_L_NOTE + " " if has_rouge else "")
                  + (MACRO_NOTE + " " if "macro_f1_mean" in frame and frame["macro_f1_mean"].notna().any() else "")
                  + (FORGETTING_NOTE + " " if "forgetting_mean" in frame and frame["forgetting_mean"].notna().any() else "")
                  + CI_NOTE + " " + memory_note(frame))
    cmp_html, cmp_md = comparison_table(frame, comparisons)
    figures = make_task_plots(frame, task, plot_dir)
    confusion = plot_dir / f"report-{slug(task)}-confusion.png"
    if opts.get("examples", True) or single_label(frame["task_type"].iloc[0]):  # a confusion matrix holds no text
        ex_html, ex_md = example_section(frame, runs_by_id, confusion)
    else:
        ex_html, ex_md = f"<p class='note'>{NO_EXAMPLES}</p>", f"{NO_EXAMPLES}\n"

    h = [f"<section id='{slug(task)}'><h2>{html.escape(heading)}</h2>",
         f"<div class='answer'><b>Answer first</b>{bullets_html(answer)}</div>",
         f"<div class='warn'>{bullets_html(warnings)}</div>" if warnings else "",
         "<h3>Main table</h3>", f"<div class='scroll'>{table_html(cols, baseline_rows)}</div>", f"<p class='note'>{inline_html(table_note)}</p>",
         "<h3>Is the difference real?</h3>", cmp_html, tune_html]
    # the answer and warnings name tasks, models and settings a user wrote: HTML in them is shown, not run
    m = [f"\n## {md_text(heading)}\n", "**Answer first**\n", *[f"- {md_text(a)}" for a in answer], "",
         *[f"> ⚠ {md_text(w)}" for w in warnings], "", "### Main table\n", table_markdown(cols), table_note + "\n",
         "### Is the difference real?\n", cmp_md, tune_md]
    for title, path, caption in figures:
        h += [f"<h3>{inline_html(title)}</h3>", image_html(path, title), f"<p class='note'>{inline_html(caption)}</p>"]
        m += [f"### {md_text(title)}\n", f"![{md_text(title)}]({path.name})\n", caption + "\n"]
    h += [ex_html, "</section>"]
    m += [ex_md]
    caption = (f"{task}: metrics ×100, mean ± std over seeds; best in bold."
               + (" ROUGE-L is rougeL (summary-level LCS), ROUGE-Lsum is rougeLsum (sentence-split)." if has_rouge else ""))
    tex = table_latex(cols, caption, f"tab:{slug(task)}")
    written = tune_plots + [path for _, path, _ in figures] + ([confusion] if ex_html and single_label(frame["task_type"].iloc[0]) else [])
    return {"html": "\n".join(h), "md": "\n".join(m), "tex": tex, "answer": answer, "plots": written}


def glance_section(answers: dict[str, list[str]], failed: int) -> tuple[str, str]:
    """Every task's verdict in two lines at the top of the page: the ten-second read."""
    lines = [f"**{task}**: " + " ".join(answer[:2]) for task, answer in answers.items()]
    if failed:
        lines.append(f"**{failed} failed run(s)**: see Failures at the end.")
    if not lines:
        return "", ""
    return (f"<div class='answer'><b>At a glance</b>{bullets_html(lines)}</div>",
            "**At a glance**\n\n" + "\n".join(f"- {md_text(line)}" for line in lines) + "\n")


def incomplete_runs(grid_dir: Path, runs: list[dict]) -> list[str]:
    """Run folders without a readable result.json: still running, killed before the end, or a broken file."""
    done = {r.run_id for r in runs}
    return sorted(d.name for d in Path(grid_dir).iterdir()
                  if d.is_dir() and d.name not in done and not d.name.startswith("."))


def report_header(grid_dir: Path, runs: list[dict], frame, opts: dict) -> tuple[str, str]:
    ok = sum(r.ok for r in runs)
    failed = len(runs) - ok
    tasks = list(dict.fromkeys(frame["task"])) if not frame.empty else []
    meta = (f"{len(runs)} runs: {ok} finished, {failed} failed{opts.get('trials_note', '')}. Uncertainty from {opts['n_resamples']} bootstrap / "
            f"randomisation resamples (RNG seed {opts['seed']}); a difference is called real only at p < {ALPHA:g} "
            f"{ADJUSTED if opts.get('adjust', True) else UNADJUSTED}, on the test set and over seeds, with at least "
            f"{SEEDS_FOR_A_CLAIM} seeds per row.") + how_they_ran(runs)
    nav = "".join(f"<a href='#{slug(t)}'>{html.escape(t)}</a>" for t in tasks) + "<a href='#failures'>failures</a>"
    h = (f"<h1>medpeft report: {html.escape(grid_dir.name)}</h1><p class='meta'>{inline_html(meta)}</p>"
         f"<nav>{nav}</nav>")
    return h, f"# medpeft report: {md_text(grid_dir.name)}\n\n{meta}\n"


def how_they_ran(runs: list) -> str:
    """' Trained on <device> in <precision>; torch, transformers and peft versions; medpeft <commit>.' for the
    finished runs: each value that occurs, with its count of runs where they differ."""
    done = [r.provenance for r in runs if r.ok]
    device, precision = tally(p.device for p in done), tally(p.precision_words() for p in done)
    packages = {name: tally(dict(p.versions).get(name) for p in done) for name in ("torch", "transformers", "peft")}
    commit = tally(p.commit[:7] + ("+dirty" if p.commit.endswith("+dirty") else "") for p in done if p.commit)
    where = " ".join(x for x in (device and f"on {device}", precision and f"in {precision}") if x)
    said = [x for x in (where, *(f"{name} {version}" for name, version in packages.items() if version), commit and f"medpeft {commit}") if x]
    return f" Trained {'; '.join(said)}." if said else ""


def tally(values) -> str:
    """The values that occur, by how often ('bf16 (11 runs), fp32 (2 runs)'), or the one value alone; '' for none."""
    counts = Counter(v for v in values if v)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in counts.most_common())


def memory_note(frame) -> str:
    """What the peak memory column means here, and why it is not ranked when CPU runs shared a process."""
    text = ("Peak memory is the allocator's peak on a GPU; on CPU the process's resident peak during the run, less "
            "what earlier runs of the same process left resident.")
    if memory_ranked(frame):
        left = left_by_earlier_runs(frame)
        if left and max(left) == 0:  # e.g. --backend processes: each run in a process of its own
            text += " No run here found memory left by earlier runs (each ran first in its process), so no peak includes theirs."
        return text
    return text + (f" These runs shared one process, which held up to {format_bytes(shared_memory_bytes(frame))} of "
                   "earlier runs' memory (kernel caches, heap); left out of each peak, it still moves a run's peak by up "
                   "to about as much from the run alone in a fresh process, so the column is not ranked. For exact "
                   "peaks, each run in a process of its own (about as fast: the libraries are imported once): "
                   "`medpeft run GRID.yaml --backend processes`.")


def trials_note(runs: list, trials: list) -> str:
    """' (and N tuning trials, scored on validation)', not counting trials of a group no run uses now (a
    grid re-run with other settings leaves its old trials in the folder; the tables ignore them too)."""
    groups = {r.tuning.group for r in runs if r.tuning}
    used = sum(t.tuning is not None and t.tuning.group in groups for t in trials)
    unused = f"; {len(trials) - used} more from settings no run uses now, left out" if used < len(trials) else ""
    return f" (and {used} tuning trials, scored on validation{unused})"


def build_report(grid_dir: Path, *, n_resamples: int = 2000, seed: int = 0, within_points: float = 1.0,
                 examples: bool = True, adjust: bool = True, on_summary=lambda text: None) -> dict:
    """Write report.html, report.md, report.tex and report-*.png into grid_dir; return their paths.
    `examples=False` leaves out every source, reference and prediction text (a report to share);
    `adjust=False` leaves the p-values unadjusted for each task's multiple comparisons (Holm by default)."""
    grid_dir = Path(grid_dir)
    started = time.time()
    opts = {"n_resamples": n_resamples, "seed": seed, "within_points": within_points, "examples": examples, "adjust": adjust}
    runs, trials = split_trials(collect_runs(grid_dir))
    if trials:
        opts["trials_note"] = trials_note(runs, trials)
    frame = aggregate(runs, n_resamples, seed)
    summary_text = write_summary(grid_dir, frame, runs)  # first: the plain table survives a failing figure
    on_summary(summary_text)
    runs_by_id = {r.run_id: r for r in runs}
    head_html, head_md = report_header(grid_dir, runs, frame, opts)
    parts_html, parts_md, parts_tex, answers, written = [head_html], [head_md], [], {}, []
    for task, task_frame in (frame.groupby("task", sort=False) if not frame.empty else []):
        part = task_sections(task, task_frame.reset_index(drop=True), runs_by_id, grid_dir, opts, trials)
        parts_html.append(part["html"])
        parts_md.append(part["md"])
        parts_tex.append(part["tex"])
        answers[task] = part["answer"]
        written += part["plots"]
    glance_html, glance_md = glance_section(answers, sum(not r.ok for r in runs))
    parts_html.insert(1, glance_html)
    parts_md.insert(1, glance_md)
    if frame.empty:
        parts_html.append("<p>No finished runs yet.</p>")
        parts_md.append("\nNo finished runs yet.\n")
    fail_html, fail_md = failure_section(runs, incomplete_runs(grid_dir, runs + trials))
    parts_html.append(fail_html)
    parts_md.append(fail_md)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>medpeft report: "
            f"{html.escape(grid_dir.name)}</title><style>{CSS}</style></head><body>{''.join(parts_html)}</body></html>\n")
    paths = {"html": grid_dir / "report.html", "md": grid_dir / "report.md", "tex": grid_dir / "report.tex"}
    write_atomic(paths["html"], page)
    write_atomic(paths["md"], "\n".join(parts_md))
    write_atomic(paths["tex"], "% medpeft main tables; needs \\usepackage{booktabs}\n" + "\n".join(parts_tex))
    paths["plots"] = written
    paths["summary"], paths["summary_text"] = grid_dir / "summary.md", summary_text
    remove_stale_figures(grid_dir, started)
    return paths


def remove_stale_figures(grid_dir: Path, started: float) -> None:
    """Delete the report-*.png an earlier rendering drew and this one did not (a plot no longer made,
    a task gone from the grid), so the folder holds only what the report shows. Older than the
    rendering's start by 2 s: file systems that keep whole seconds never lose a figure just drawn."""
    for path in grid_dir.glob("report-*.png"):
        if path.stat().st_mtime < started - 2:
            path.unlink(missing_ok=True)
