"""Is a difference real? Each trained row against full fine-tuning (same model), against the same
method and settings on its base model (a model `medpeft pretrain` made from another model of the
grid), against the task's best row and against the untrained baseline (zero-shot, or the majority
class): paired over shared test examples, and over seeds; a verdict in plain words; the table of them."""
from __future__ import annotations

import html
import math

import numpy as np

from medpeft.methods import Role
from medpeft.report.frame import group_example_scores
from medpeft.report.stats import (ALPHA, holm, one_sample_p, paired_bootstrap_ci, paired_randomization_p, statistic,
                                  welch_p)
from medpeft.report.tables import describe_row, format_points, has_several_models, md_text
from medpeft.run.metrics import metric_label

SEEDS_FOR_A_CLAIM = 3  # fewer seeds than this per row and a difference is not called real
# what a row is compared against (a comparison's `against`, several joined by " & " when one row is both)
VS_FULL, VS_BASE, VS_BEST, VS_UNTRAINED = "full", "base model", "best", "untrained"


def compare_rows(row_a: dict, row_b: dict, runs_by_id: dict, n_resamples: int, seed: int) -> dict:
    """Row a against row b on the primary metric: paired over shared test ids, and over seeds. Δ, its CI
    and p all come from the same shared ids (two rows on different test sets would otherwise give a Δ
    of one set and a CI of another, even of the other sign). An untrained baseline b is one deterministic
    run: a's seeds are tested against its score (one-sample t)."""
    metric = row_a["primary"]
    a = group_example_scores([runs_by_id[i] for i in row_a["run_ids"]], metric)
    b = group_example_scores([runs_by_id[i] for i in row_b["run_ids"]], metric)
    ids = [i for i in a if i in b]
    va, vb = np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
    seeds_a = seed_scores(row_a, runs_by_id, metric)
    seeds_b = seed_scores(row_b, runs_by_id, metric)
    # an untrained baseline is one run (or several that agree): no training noise on that side
    fixed = bool(row_b.get("is_baseline")) and np.ptp(seeds_b) == 0
    p_seeds = one_sample_p(seeds_a, float(np.mean(seeds_b))) if fixed else welch_p(seeds_a, seeds_b)
    p_examples = paired_randomization_p(va, vb, n_resamples, seed)
    return {
        "metric": metric, "n_examples": len(ids), "ids_differ": len(ids) < max(len(a), len(b)),
        "delta": statistic(va) - statistic(vb) if ids else float(np.mean(seeds_a) - np.mean(seeds_b)),
        "delta_ci": paired_bootstrap_ci(va, vb, n_resamples, seed),
        "p_examples": p_examples, "p_examples_raw": p_examples, "p_seeds": p_seeds, "p_seeds_raw": p_seeds,
        "seed_test": "one-sample t" if fixed else "Welch",
        "seeds": (len(seeds_a),) if fixed else (len(seeds_a), len(seeds_b)),
    }


def seed_scores(row: dict, runs_by_id: dict, metric: str) -> list[float]:
    """The row's seeds' scores, leaving out a seed whose result has none (read as missing: record.py)."""
    return [score for i in row["run_ids"] if (score := runs_by_id[i].metrics.get(metric)) is not None]


def direction(delta: float) -> str:
    return "better" if delta > 0 else "worse" if delta < 0 else "no detectable difference"


def describe_comparison(cmp: dict, alpha: float = ALPHA) -> str:
    """The comparison in plain words, with the caveat a reader needs before quoting it."""
    p = cmp["p_examples"]
    if cmp["n_examples"] == 0 or p != p:
        return "no shared per-example scores: not tested" if cmp["n_examples"] == 0 else "no p-value (a score is missing): not tested"
    verdict = direction(cmp["delta"]) if p < alpha else "no detectable difference"
    significant = verdict != "no detectable difference"  # a zero Δ has no direction to claim, whatever its p
    few = min(cmp["seeds"])
    seeds = f"{few} seed" + ("s" if few != 1 else "")
    p_seeds, test = cmp["p_seeds"], cmp.get("seed_test", "Welch")
    seed_p = f"{'Holm-adjusted ' if cmp.get('adjusted') else ''}{test} p = {format_p(p_seeds)}"  # the table's p (seeds)
    if significant and p_seeds == p_seeds and p_seeds >= alpha:
        # the test set says yes, the seeds say it could be training noise: both must agree for a claim
        return f"{verdict} on this test set, but within seed noise ({seed_p}): not a claim"
    if few < SEEDS_FOR_A_CLAIM and significant:
        if p_seeds == p_seeds:  # measured, on too few seeds to rest a claim on
            return f"{verdict} on this test set and over seeds ({seed_p}), but only {seeds}: not yet a claim"
        return f"{verdict} on this test set, but only {seeds}: training noise unmeasured, not yet a claim"
    if few < SEEDS_FOR_A_CLAIM:
        return f"{verdict} (only {seeds})"
    if p_seeds != p_seeds:  # >= 2 seeds each, yet untestable: every seed of both rows scored the same
        within = "" if test == "one-sample t" else " within either row"  # a baseline has no seeds
        return f"{verdict} (seed scores do not vary{within}: no seed-level test)"
    return verdict


def best_rows(frame) -> tuple[int | None, dict]:
    """Index of the best trained row of one task's frame, and of the best `full` row per model."""
    trained = frame[~frame["is_baseline"]]
    scores = trained["primary_mean"].dropna() if "primary_mean" in trained else trained.iloc[0:0]
    best = int(scores.idxmax()) if len(scores) else None
    full = {}
    for idx in scores.index:
        row = frame.loc[idx]
        if row["role"] == Role.FULL and (row["model"] not in full or scores[idx] > scores[full[row["model"]]]):
            full[row["model"]] = int(idx)
    return best, full


def compare_task(frame, runs_by_id: dict, n_resamples: int = 2000, seed: int = 0, adjust: bool = True) -> list[dict]:
    """Each trained row of one task against `full` (same model), against its method and settings on its
    base model (a pre-trained model's rows only), against the task's best row and against its model's
    untrained baseline. `adjust`: Holm's adjustment over the task's comparisons (the best row was itself
    picked on this test set, and a task makes many comparisons), applied before the verdicts."""
    best, full = best_rows(frame)
    scored = frame["primary_mean"].notna()  # a row whose every seed lacks the metric has nothing to compare
    trained = frame[~frame["is_baseline"] & scored]
    untrained = {row["model"]: int(idx) for idx, row in frame[frame["is_baseline"]].iterrows()}
    by_setting = {(row["model"], row["method"], row.get("setting")): int(idx) for idx, row in trained.iterrows()}
    out = []
    for idx, row in trained.iterrows():
        refs: dict[int, list[str]] = {}
        on_base = by_setting.get((row.get("adapted_from"), row["method"], row.get("setting")))
        for kind, ref in ((VS_FULL, full.get(row["model"])), (VS_BASE, on_base), (VS_BEST, best),
                          (VS_UNTRAINED, untrained.get(row["model"]))):
            if ref is not None and ref != idx and scored[ref]:
                refs.setdefault(ref, []).append(kind)  # full may also be the best: one test, both labels
        for ref, kinds in refs.items():
            cmp = compare_rows(row.to_dict(), frame.loc[ref].to_dict(), runs_by_id, n_resamples, seed)
            cmp.update(row=int(idx), ref=int(ref), against=" & ".join(kinds), adjusted=adjust)
            out.append(cmp)
    if adjust:
        adjust_family(out)
    for cmp in out:
        cmp["verdict"] = describe_comparison(cmp)
    return out


def adjust_family(comparisons: list[dict]) -> None:
    """Holm-adjust the task's test-set p-values and, as a second family, its seed p-values, in place.
    One hypothesis per pair of rows: a against b and b against a (full that is also the best) count once."""
    pairs = list(dict.fromkeys(frozenset((c["row"], c["ref"])) for c in comparisons))
    for key in ("p_examples", "p_seeds"):
        raw = {pair: math.nan for pair in pairs}
        for c in comparisons:
            raw[frozenset((c["row"], c["ref"]))] = c[f"{key}_raw"]
        adjusted = dict(zip(pairs, holm([raw[pair] for pair in pairs])))
        for c in comparisons:
            c[key] = adjusted[frozenset((c["row"], c["ref"]))]


def format_p(p: float) -> str:
    return "n/a" if p != p else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def comparison_table(frame, comparisons: list[dict]) -> tuple[str, str]:
    """Each method against full fine-tuning, against its method on its base model (a model
    pre-trained from another of the grid), against the best row and against its model's untrained
    baseline: Δ, its CI and p-values."""
    if not comparisons:
        text = "Only one trained row: nothing to compare."
        return f"<p class='note'>{text}</p>", text + "\n"
    many = has_several_models(frame)
    header = ["Method", "vs", "Δ points", "95% CI of Δ (test set)", "p (test set)", "p (seeds)", "Verdict"]
    rows = [comparison_cells(frame, c, many) for c in comparisons]
    note = ("Δ, its CI and p (test set) are over the test ids both rows scored. p (test set): two-sided paired approximate "
            f"randomisation on per-example {metric_label(comparisons[0]['metric'])} (seed-averaged). p (seeds): Welch's "
            "t-test over seed scores, needs >= 2 seeds each; against the untrained baseline (one run, no training noise), a "
            f"one-sample t-test of the row's seed scores against its score. {adjustment_note(comparisons)}")
    differ = [c for c in comparisons if c["ids_differ"]]
    if differ:
        note += (f" {len(differ)} comparison(s) are of rows scored on different test examples (marked; only the "
                 "shared ones are compared): their Δ is not the difference of the two rows' means in the main table.")
    h = ("<table class='cmp'><thead><tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in header) + "</tr></thead><tbody>"
         + "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in rows)
         + f"</tbody></table><p class='note'>{html.escape(note)}</p>")
    m = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(md_text, r)) + " |" for r in rows]
    return h, "\n".join(m) + "\n\n" + note + "\n"


def adjustment_note(comparisons: list[dict]) -> str:
    """How the p-values were adjusted for the task's many comparisons, in one sentence."""
    if not comparisons[0].get("adjusted"):
        return (f"p-values are not adjusted for multiple comparisons (medpeft report --unadjusted): with "
                f"{len(comparisons)} comparisons, some p < {ALPHA:g} are expected by chance.")
    pairs = len({frozenset((c["row"], c["ref"])) for c in comparisons})
    return (f"Both p-values are Holm-adjusted over this task's {pairs} comparisons, each family on its own (the raw p "
            f"in brackets where it differs); a difference is called real at adjusted p < {ALPHA:g}.")


def comparison_cells(frame, c: dict, many: bool) -> list[str]:
    """One comparison's cells: labels, Δ, its CI, both p-values (adjusted, raw beside) and the verdict."""
    lo, hi = c["delta_ci"]
    if c["p_seeds"] == c["p_seeds"]:
        p_seeds = adjusted_p(c, "p_seeds")
    else:
        p_seeds = f"n/a ({min(c['seeds'])} seed)" if min(c["seeds"]) < 2 else "n/a (no seed variance)"
    ref = describe_row(frame.loc[c["ref"]], many) + (" (best)" if VS_BEST in c["against"] else "")
    shared = f"n={c['n_examples']} shared; different test examples" if c["ids_differ"] else f"n={c['n_examples']}"
    return [describe_row(frame.loc[c["row"]], many), ref, format_points(c["delta"]),
            "n/a" if lo != lo else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]", f"{adjusted_p(c, 'p_examples')} ({shared})",
            p_seeds, c["verdict"]]


def adjusted_p(c: dict, key: str) -> str:
    text, raw = format_p(c[key]), format_p(c.get(f"{key}_raw", c[key]))
    return text if raw == text else f"{text} [raw {raw}]"
