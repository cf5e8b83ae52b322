"""The one aggregation: a grid's runs -> one row per (task, model, method, variant).

Every output (summary.md, summary.csv, report.html/md/tex, the plots) renders this frame; none
groups runs again. Runs are grouped by their whole config except the seed, so a sweep's variants,
and runs left in the folder by an older config, are never pooled as if they were seeds. A row is
labelled by the grid axes recorded in its runs (`variant`), plus any other setting that tells two
rows of one method apart.

Two sources of uncertainty are kept apart, because they answer different questions:
- over seeds: how much the score moves when training is repeated (needs >= 2 seeds per row);
- over test examples: how much the score would move on another test set of the same size
  (per-example scores from predictions.jsonl; informative even with one seed).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from medpeft.methods import Role, method_role
from medpeft.models import adapted_from
from medpeft.report.stats import bootstrap_ci, std_or_nan, t_interval
from medpeft.report.tables import format_value
from medpeft.run.metrics import METRICS, PRIMARY_METRIC, example_value
from medpeft.run.record import COST_KEYS, RunResult, dotted, load_results

NAMING_KEYS = ("task", "model", "method", "seed")  # name a row (or a seed) by themselves


def collect_runs(grid_dir: Path) -> list[RunResult]:
    """Every result.json of a grid (finished or failed), tuning trials included."""
    return load_results(grid_dir)


def split_trials(runs: list[RunResult]) -> tuple[list[RunResult], list[RunResult]]:
    """(the grid's runs, its tuning trials): trials are scored on validation and never enter the tables."""
    return [r for r in runs if not r.tuning_trial], [r for r in runs if r.tuning_trial]


def flatten_config(config: dict) -> dict:
    """Dotted keys of a run's config (method_args.r, train.lr, ...; record.dotted), without what names the row
    and how it was tuned (the row's own `tuned` column); a list or mapping as its JSON, so it can be compared."""
    return {name: json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
            for name, value in dotted(config).items() if name not in NAMING_KEYS and not name.startswith("tuning.")}


def tuning_identity(run: RunResult) -> dict | None:
    """How a run was tuned (its Tuning record) as plain data; None for an untuned run."""
    return dataclasses.asdict(run.tuning) if run.tuning else None


def setting_key(run: RunResult) -> str:
    """A run's identity without its seed: runs with the same key are seeds of one row. How a run was tuned
    is part of it: a tuned run that chose lr 3e-4 and an untuned run at 3e-4 are two rows, never seeds of
    one (`tune: auto` added to a grid that already ran would otherwise pool them)."""
    return json.dumps([flatten_config(run.config), tuning_identity(run)], sort_keys=True, default=str)


def comparable_setting(run: RunResult) -> str:
    """A run's settings without its model (its name and a local folder's fingerprint), seed and tuned
    values: two models' rows with the same comparable setting ran the same method the same way (each
    model at its own tuned values)."""
    tuning = run.tuning
    skip = set(tuning.chosen if tuning else {}) | {"fingerprint.model"}
    flat = {k: v for k, v in flatten_config(run.config).items() if k not in skip}
    over = dataclasses.asdict(tuning.over) if tuning else None
    return json.dumps([flat, over], sort_keys=True, default=str)  # tuned rows meet tuned rows


def short_names(keys: list[str]) -> dict[str, str]:
    """`method_args.r` -> `r` for row labels, unless two keys would then share a name."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: name if last.count(name) == 1 else k for k, name in zip(keys, last)}


def differing(dicts: list[dict]) -> list[str]:
    """Keys whose value is not the same in every dict (a missing key counts as a value), in the order
    they first appear (a grid row's own order: `r` before `lora_alpha`)."""
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    return [k for k in keys if len({repr(d.get(k)) for d in dicts}) > 1]


def label_groups(groups: list[list[RunResult]]) -> list[dict]:
    """The `varying` settings of each group of one (task, model, method): its recorded grid axes that
    differ between the groups, and, where two groups would still look the same (older result files,
    runs from an earlier config), every other setting that differs."""
    variants = [dict(g[0].variant) for g in groups]
    keys = differing(variants)
    flats = [flatten_config(g[0].config) for g in groups]
    # a grid block that does not set an axis another block sets ran at the base value: label it with that
    varying = [{k: v[k] if k in v else f.get(k) for k in keys} for v, f in zip(variants, flats)]
    labels = [json.dumps(v, sort_keys=True, default=str) for v in varying]
    if len(set(labels)) < len(labels):
        extra = [k for k in differing(flats) if k not in keys]
        varying = [dict(v, **{k: f.get(k) for k in extra}) for v, f in zip(varying, flats)]
    return varying


def variant_order(varying: dict) -> tuple:
    """Rows of one method in the order of their settings: r=4 before r=16, numbers before text."""
    def key(value):
        return (0, float(value), "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0.0, str(value))

    return tuple(key(varying[k]) for k in sorted(varying))


def example_scores(run: RunResult, metric: str) -> dict[str, object]:
    """Per-example value of `metric` in one run keyed by test id (a number, or [tp, fp, fn])."""
    spec = METRICS.get(metric)
    if spec is None or spec.per_example is None:
        return {}
    out = {}
    for row in run.predictions():
        value = example_value(row, spec)
        if value is not None:
            out[str(row["id"])] = value
    return out


def group_example_scores(runs: list[RunResult], metric: str) -> dict[str, object]:
    """Per-example values averaged over a group's seeds (counts too: F1 is scale-free), on the ids every seed scored."""
    per_run = [s for s in (example_scores(r, metric) for r in runs) if s]
    if not per_run:
        return {}
    ids = [i for i in per_run[0] if all(i in s for s in per_run[1:])]
    return {i: np.mean([np.asarray(s[i], dtype=float) for s in per_run], axis=0) for i in ids}


def summarize_group(runs: list[RunResult], varying: dict, n_resamples: int, seed: int) -> dict:
    """One table row: mean, std and 95% CIs of every metric and cost over a group's seeds."""
    first = runs[0]
    short = short_names(list(varying))
    tuned = first.tuning
    variant = [f"{short[k]}={format_value(v)}" for k, v in varying.items()]
    variant += [f"tuned {k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in (tuned.chosen if tuned else {}).items()]
    train_examples = [r.inputs.train.examples for r in runs if r.inputs.train.examples is not None]
    row = {"task": first.task, "model": first.model, "method": first.method, "task_type": first.task_type,
           "variant": ", ".join(variant), "varying": varying, "tuned": tuned,
           "train_examples": float(np.mean(train_examples)) if train_examples else math.nan,
           "seeds": len(runs), "duplicate_seeds": repeated_seeds(runs), "run_ids": [r.run_id for r in runs],
           "setting": comparable_setting(first),
           # recorded by the run; read from the model folder for runs older than that record
           "adapted_from": first.adapted_from or adapted_from(first.model_path),
           "total_params": first.cost.total_params, "baseline_words": first.baseline_words}
    for key in METRICS:
        values = [r.metrics[key] for r in runs if r.metrics.get(key) is not None]
        if values:  # the model card shows every metric's interval over seeds
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(values)), std_or_nan(values)
            row[f"{key}_ci"], row[f"{key}_n"] = t_interval(values), len(values)
    for key in COST_KEYS:
        values = [value for r in runs if (value := r.cost.get(key)) is not None]
        if values:
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(values)), std_or_nan(values)
    primary = PRIMARY_METRIC.get(first.task_type, "rouge1")
    row["primary"] = primary
    row["primary_mean"], row["primary_std"] = row.get(f"{primary}_mean", math.nan), row.get(f"{primary}_std", math.nan)
    row["ci_seeds"] = row.get(f"{primary}_ci", (math.nan, math.nan))
    per_example = group_example_scores(runs, primary)
    row["n_examples"] = len(per_example) or int(first.inputs.split("test").examples or 0)
    row["ci_examples"] = bootstrap_ci(list(per_example.values()), n_resamples, seed)
    return row


def repeated_seeds(runs: list[RunResult]) -> list[int]:
    """Seeds that more than one run of a row ran (a run folder copied in by hand): each run still counts,
    and the report says so, since two runs of one seed are not independent."""
    seeds = [r.seed for r in runs]
    return sorted({s for s in seeds if seeds.count(s) > 1})


def aggregate(runs: list[RunResult], n_resamples: int = 2000, seed: int = 0):
    """One row per (task, model, method, variant) of the finished runs, in grid order; baselines first."""
    import pandas as pd

    groups: dict[tuple, list[RunResult]] = {}
    for r in runs:
        if r.ok and not r.tuning_trial:
            groups.setdefault((r.task, r.model, r.method, setting_key(r)), []).append(r)
    families: dict[tuple, list[list[RunResult]]] = {}
    for key, members in groups.items():
        families.setdefault(key[:3], []).append(members)
    rows = []
    for members_list in families.values():
        labelled = sorted(zip(label_groups(members_list), members_list), key=lambda pair: variant_order(pair[0]))
        rows += [summarize_group(members, varying, n_resamples, seed) for varying, members in labelled]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    frame["role"] = frame["method"].map(method_role)
    frame["is_baseline"] = frame["role"] == Role.BASELINE
    order = {task: i for i, task in enumerate(dict.fromkeys(frame["task"]))}
    frame["_order"] = frame["task"].map(order)
    return frame.sort_values(["_order", "is_baseline"], ascending=[True, False], kind="stable").drop(columns="_order").reset_index(drop=True)
