"""Seed statistics for the report: group runs, mean ± std, bootstrap CIs and paired tests.

Two sources of uncertainty are kept apart, because they answer different questions:
- over seeds: how much the score moves when training is repeated (needs >= 2 seeds per row);
- over test examples: how much the score would move on another test set of the same size
  (per-example scores from predictions.jsonl; informative even with one seed).
All resampling uses a fixed RNG seed, so a report is reproducible byte for byte.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medpeft.results import COST_KEYS, METRIC_KEYS, load_results

# The headline metric per task type: ROUGE-1 is what the summarization study leads with; accuracy
# is the classification metric that has a per-example score (macro-F1 and AUROC do not decompose).
PRIMARY_METRIC = {"summarization": "rouge1", "classification": "accuracy"}
PER_EXAMPLE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "accuracy")
GROUP_KEYS = ["task", "model", "method", "variant"]
BASELINE = "untrained"
SEEDS_FOR_A_CLAIM = 3  # fewer seeds than this per row and a difference is not called real


def flatten_config(config: dict, prefix: str = "") -> dict:
    """Dotted keys of a run's config (method_args.r, train.lr, ...), without what names the row."""
    flat = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif name not in ("task", "model", "method", "seed"):
            flat[name] = json.dumps(value, sort_keys=True) if isinstance(value, list) else value
    return flat


def varying_keys(configs: list[dict]) -> list[str]:
    """Settings whose value differs between runs of one (task, model, method) group."""
    flats = [flatten_config(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


def short_names(keys: list[str]) -> dict[str, str]:
    """`method_args.r` -> `r` for row labels, unless two varying keys would then share a name."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: name if last.count(name) == 1 else k for k, name in zip(keys, last)}


def label_runs(results: list[dict]) -> list[dict]:
    """Add `variant` ("r=4", or "" when nothing varies) and `varying` ({"method_args.r": 4}) to each result.

    A grid that sweeps a hyper-parameter must not pool r=4 and r=16 as if they were seeds.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r.get("task"), r.get("model"), r.get("method")), []).append(r)
    for runs in groups.values():
        keys = varying_keys([r.get("config", {}) for r in runs])
        short = short_names(keys)
        for r in runs:
            flat = flatten_config(r.get("config", {}))
            r["varying"] = {k: flat.get(k) for k in keys}
            r["variant"] = ", ".join(f"{short[k]}={flat.get(k)}" for k in keys)
    return results


def collect_runs(grid_dir: Path) -> list[dict]:
    """Every result.json of a grid (finished or failed), labelled with its variant and folder."""
    results = load_results(grid_dir)
    for r in results:
        r["run_dir"] = str(Path(grid_dir) / r.get("run_id", ""))
    return label_runs(results)


def read_predictions(run: dict) -> list[dict]:
    """A run's predictions.jsonl rows (cached on the run dict); [] when the file is missing."""
    if "_predictions" not in run:
        path = Path(run["run_dir"]) / "predictions.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        run["_predictions"] = [json.loads(line) for line in lines if line.strip()]
    return run["_predictions"]


def example_scores(run: dict, metric: str) -> dict[str, float]:
    """Per-example score of one run keyed by test id: ROUGE from `scores`, accuracy from `correct`."""
    out = {}
    for row in read_predictions(run):
        if metric == "accuracy" and "correct" in row:
            out[str(row["id"])] = float(row["correct"])
        elif metric in row.get("scores", {}):
            out[str(row["id"])] = float(row["scores"][metric])
    return out


def group_example_scores(runs: list[dict], metric: str) -> dict[str, float]:
    """Per-example scores averaged over a group's seeds, on the ids every seed scored."""
    per_run = [example_scores(r, metric) for r in runs]
    per_run = [s for s in per_run if s]
    if not per_run:
        return {}
    ids = [i for i in per_run[0] if all(i in s for s in per_run[1:])]
    return {i: float(np.mean([s[i] for s in per_run])) for i in ids}


def bootstrap_mean_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; (nan, nan) with fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def paired_randomization_p(a, b, n_resamples: int = 2000, seed: int = 0) -> float:
    """Two-sided approximate randomisation test of mean(a) = mean(b) on paired per-example scores.

    Under the null either system could have produced either score of a pair, so each difference's
    sign is flipped at random. Exact (every sign pattern) when 2**n <= n_resamples; otherwise
    Monte Carlo with the +1 correction, so p is never 0. Identical inputs give p = 1.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diff)
    if n == 0:
        return math.nan
    observed = abs(diff.mean())
    tol = 1e-12 * max(1.0, observed)  # float noise must not turn a tie into a miss
    if n <= 20 and 2**n <= n_resamples:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs((signs * diff).mean(axis=1)) >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 500):  # chunks keep memory at 500 x n
        signs = rng.choice([-1.0, 1.0], size=(min(500, n_resamples - start), n))
        hits += int(np.sum(np.abs((signs * diff).mean(axis=1)) >= observed - tol))
    return (hits + 1) / (n_resamples + 1)


def welch_p(a, b) -> float:
    """Welch's t-test p over seed-level scores; nan unless both sides have >= 2 seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    from scipy import stats  # scikit-learn's own dependency

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def pareto_front(xs, ys) -> list[int]:
    """Indices of points no other point beats (lower-or-equal x and higher-or-equal y, one strictly), by x."""
    points = [(x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if x == x and y == y]
    front = []
    for x, y, i in points:
        dominated = any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2, _ in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (xs[i], -ys[i]))


def summarize_group(runs: list[dict], primary: str, n_resamples: int, seed: int) -> dict:
    """One table row: mean, std and 95% CIs of every metric and cost over a group's seeds."""
    first = runs[0]
    row = {k: first.get(k) for k in GROUP_KEYS}
    row.update(task_type=first.get("task_type"), seeds=len(runs), run_ids=[r["run_id"] for r in runs],
               total_params=first.get("efficiency", {}).get("total_params"), varying=first.get("varying", {}))
    for key in METRIC_KEYS:
        values = [r["metrics"][key] for r in runs if r.get("metrics", {}).get(key) is not None]
        if values:
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(values)), std_or_nan(values)
    for key in COST_KEYS:
        values = [r["efficiency"][key] for r in runs if r.get("efficiency", {}).get(key) is not None]
        if values:
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(values)), std_or_nan(values)
    seed_values = [r["metrics"][primary] for r in runs if primary in r.get("metrics", {})]
    row["primary"] = primary
    row["primary_mean"], row["primary_std"] = row.get(f"{primary}_mean", math.nan), row.get(f"{primary}_std", math.nan)
    row["ci_seeds"] = bootstrap_mean_ci(seed_values, n_resamples, seed)
    per_example = group_example_scores(runs, primary)
    row["n_examples"] = len(per_example)
    row["ci_examples"] = bootstrap_mean_ci(list(per_example.values()), n_resamples, seed)
    return row


def std_or_nan(values) -> float:
    """Sample standard deviation (ddof=1) as the papers print it; nan for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def aggregate(runs: list[dict], n_resamples: int = 2000, seed: int = 0):
    """One row per (task, model, method, variant) of the finished runs, in grid order; baselines first."""
    import pandas as pd

    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("status") == "ok":
            groups.setdefault(tuple(r.get(k) for k in GROUP_KEYS), []).append(r)
    rows = []
    for members in groups.values():
        primary = PRIMARY_METRIC.get(members[0].get("task_type"), "rouge1")
        rows.append(summarize_group(members, primary, n_resamples, seed))
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    frame["is_baseline"] = frame["method"] == BASELINE
    order = {task: i for i, task in enumerate(dict.fromkeys(frame["task"]))}
    frame["_order"] = frame["task"].map(order)
    return frame.sort_values(["_order", "is_baseline"], ascending=[True, False], kind="stable").drop(columns="_order").reset_index(drop=True)


def compare_rows(row_a: dict, row_b: dict, runs_by_id: dict, n_resamples: int, seed: int) -> dict:
    """Row a against row b on the primary metric: paired over shared test ids, and over seeds."""
    metric = row_a["primary"]
    a = group_example_scores([runs_by_id[i] for i in row_a["run_ids"]], metric)
    b = group_example_scores([runs_by_id[i] for i in row_b["run_ids"]], metric)
    ids = [i for i in a if i in b]
    va, vb = np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
    seeds_a = [runs_by_id[i]["metrics"][metric] for i in row_a["run_ids"]]
    seeds_b = [runs_by_id[i]["metrics"][metric] for i in row_b["run_ids"]]
    return {
        "metric": metric, "n_examples": len(ids), "ids_differ": len(ids) < max(len(a), len(b)),
        "delta": float(np.mean(seeds_a) - np.mean(seeds_b)),
        "delta_ci": bootstrap_mean_ci(va - vb, n_resamples, seed),
        "p_examples": paired_randomization_p(va, vb, n_resamples, seed),
        "p_seeds": welch_p(seeds_a, seeds_b),
        "seeds": (len(seeds_a), len(seeds_b)),
    }


def describe_comparison(cmp: dict, alpha: float = 0.05) -> str:
    """The comparison in plain words, with the caveat a reader needs before quoting it."""
    p = cmp["p_examples"]
    if cmp["n_examples"] == 0 or p != p:
        return "no shared per-example scores: not tested"
    verdict = ("better" if cmp["delta"] > 0 else "worse") if p < alpha else "no detectable difference"
    few = min(cmp["seeds"])
    seeds = f"{few} seed" + ("s" if few != 1 else "")
    if p < alpha and cmp["p_seeds"] == cmp["p_seeds"] and cmp["p_seeds"] >= alpha:
        # the test set says yes, the seeds say it could be training noise: both must agree for a claim
        return f"{verdict} on this test set, but within seed noise (Welch p = {cmp['p_seeds']:.2f}): not a claim"
    if few < SEEDS_FOR_A_CLAIM and p < alpha:
        return f"{verdict} on this test set, but only {seeds}: training noise unmeasured, not yet a claim"
    if few < SEEDS_FOR_A_CLAIM:
        return f"{verdict} (only {seeds})"
    return verdict


def best_rows(frame) -> tuple[int | None, dict]:
    """Index of the best trained row of one task's frame, and of the best `full` row per model."""
    trained = frame[~frame["is_baseline"]]
    scores = trained["primary_mean"].dropna() if "primary_mean" in trained else trained.iloc[0:0]
    best = int(scores.idxmax()) if len(scores) else None
    full = {}
    for idx in scores.index:
        row = frame.loc[idx]
        if row["method"] == "full" and (row["model"] not in full or scores[idx] > scores[full[row["model"]]]):
            full[row["model"]] = int(idx)
    return best, full


def compare_task(frame, runs_by_id: dict, n_resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Each trained row of one task against `full` (same model) and against the task's best row."""
    best, full = best_rows(frame)
    out = []
    for idx, row in frame[~frame["is_baseline"]].iterrows():
        refs: dict[int, list[str]] = {}
        for kind, ref in (("full", full.get(row["model"])), ("best", best)):
            if ref is not None and ref != idx:
                refs.setdefault(ref, []).append(kind)  # full may also be the best: one test, both labels
        for ref, kinds in refs.items():
            cmp = compare_rows(row.to_dict(), frame.loc[ref].to_dict(), runs_by_id, n_resamples, seed)
            cmp.update(row=int(idx), ref=int(ref), against=" & ".join(kinds), verdict=describe_comparison(cmp))
            out.append(cmp)
    return out
