"""Tuning (a grid's `tune:` block): every method gets the same search, on validation data.

Runs are grouped by everything but their seed: (task, model, method, other grid variant). In each
group, candidates train at the group's first seed as ordinary runs marked as trials (stored, resumed,
scored on the validation split, never shown in the main table); the best candidate is chosen by the
task's primary metric (or validation loss), and every seed of the group then runs with it and is
evaluated on test. The test split never enters the choice.

`search: grid` trains every candidate (every combination of the axes' lists); `search: optuna`
samples `trials` candidates per group with Optuna's TPE sampler, prunes hopeless ones on their
mid-training validation loss, and keeps each study in `tune.storage` (default: Optuna's journal file
runs/<grid>/tuning.journal, safe on NFS; a grid folder from before keeps its SQLite tuning.db) so an
interrupted search resumes where it stopped. An edited space or metric is a new study (its group key holds
them); more `trials` continue the old one. Several workers (shards, machines) share a study: each claims a
trial number, the first `trials` claims train and later ones stop, and a worker chooses only once no live
worker has a trial running (tune/storage.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medpeft.config import ExperimentConfig, TuneConfig, config_from_dict, set_dotted
from medpeft.errors import ConfigError
from medpeft.plan import RunPlan, plan_runs, resolve_config, task_spec
from medpeft.registry import METHODS
from medpeft.run.metrics import PRIMARY_METRIC
from medpeft.run.record import LOSS_SCORE, RunResult, Tuning, read_result, validation_score
from medpeft.tune.storage import StudyPruner, claimed_trial, median_pruner, open_storage, wait_for_workers

OPTUNA_HINT = "search: optuna needs the optuna package: .venv/bin/pip install 'medpeft[tune]' (or pip install optuna)"


@dataclass
class Group:
    """The runs of a grid that differ only in their seed, and what they are tuned over."""

    key: str  # task.model.method.<digest> (of the settings; for Optuna also the space): names its trials and Optuna study
    runs: list[ExperimentConfig]  # every seed, resolved, in grid order
    space: dict  # axis -> candidates (a list) or a range {low, high, log}; "auto" resolved for the method
    tune: TuneConfig  # the grid's (or the group's block's) tune: block

    @property
    def first(self) -> ExperimentConfig:
        return self.runs[0]


# --- groups and candidates ---------------------------------------------------------------------

def group_key(cfg: ExperimentConfig, tune: TuneConfig, space: dict) -> str:
    """The run's settings minus its seed and the tuned axes, hashed; for Optuna also the search space and
    metric. An Optuna study's trials are drawn from its space and scored by its metric, so a study run under
    another space (or metric) cannot be resumed: an edited space names a new study. A grid-search trial's run
    id holds its values, so there an edited candidate list reuses the candidates already trained."""
    settings = cfg.to_dict()
    settings.pop("seed")
    for axis in tune.space:
        parent, _, leaf = axis.rpartition(".")
        settings.get(parent, {}).pop(leaf, None)
    if tune.search == "optuna":
        settings["tune"] = {"search": tune.search, "space": space, "metric": tune.metric}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{cfg.task}.{cfg.model.strip('/').replace('/', '--')}.{cfg.method}.{digest}"


def method_space(tune: TuneConfig, method: str) -> dict:
    """The tune space with `train.lr: auto` replaced by the method's learning-rate candidates (for
    Optuna: the log range they span)."""
    resolved = {}
    for axis, values in tune.space.items():
        if values == "auto":
            values = list(METHODS[method].lr_candidates)
            if not values:
                raise ConfigError(f"tune: train.lr: auto has no candidates for method {method!r}; list them (train.lr: [...])")
            if tune.search == "optuna":
                values = {"low": min(values), "high": max(values), "log": True}
        resolved[axis] = values
    return resolved


def tuning_groups(configs: list[ExperimentConfig]) -> list[Group]:
    """The grid's tuned runs grouped for tuning (the untrained baselines have nothing to tune)."""
    groups: dict[str, Group] = {}
    for cfg in configs:
        if cfg.tune is not None and METHODS[cfg.method].trains:
            space = method_space(cfg.tune, cfg.method)
            key = group_key(cfg, cfg.tune, space)
            groups.setdefault(key, Group(key, [], space, cfg.tune)).runs.append(cfg)
    return list(groups.values())


def grid_candidates(space: dict) -> list[dict]:
    """Every combination of the axes' candidate lists, in the order written."""
    axes = list(space)
    return [dict(zip(axes, combo)) for combo in itertools.product(*(space[a] for a in axes))]


def with_values(cfg: ExperimentConfig, values: dict, tuning: dict) -> ExperimentConfig:
    """`cfg` with the tuned axes set to `values` and its tuning record, resolved again."""
    raw = cfg.to_dict()
    for axis, value in values.items():
        set_dotted(raw, axis, value)
    new = config_from_dict(raw)
    new.tuning = tuning
    new.variant = dict(cfg.variant)
    return resolve_config(new)


def metric_name(tune: TuneConfig, task_type: str) -> str:
    return LOSS_SCORE if tune.metric == "loss" else PRIMARY_METRIC[task_type]


def trial_config(group: Group, values: dict, metric: str) -> ExperimentConfig:
    return with_values(group.first, values, {"role": "trial", "group": group.key, "metric": metric, "values": values})


def trial_score(result: RunResult | None, metric: str) -> float | None:
    """A finished trial's validation score, higher is better (the loss is negated); None if it failed."""
    score = validation_score(result, metric)
    return -score if score is not None and metric == LOSS_SCORE else score


def choose(candidates: list[dict], scores: list[float | None], losses: list[float | None] | None = None) -> dict | None:
    """The best-scoring candidate. A tie (common on a small validation split) goes to the lower
    validation loss, then to the earlier candidate. None when every trial failed."""
    best = None
    for i, (values, score) in enumerate(zip(candidates, scores)):
        loss = losses[i] if losses and losses[i] is not None else math.inf
        if score is not None and (best is None or (score, -loss) > best[1]):
            best = (values, (score, -loss))
    return None if best is None else best[0]


def final_configs(group: Group, chosen: dict, tune: TuneConfig, metric: str) -> list[ExperimentConfig]:
    """Every seed of the group with the chosen values, recording what they were chosen from."""
    over = {"search": tune.search, "metric": metric, "space": group.space,
            **({"trials": tune.trials} if tune.search == "optuna" else {})}
    record = {"role": "final", "group": group.key, "chosen": chosen, "over": over}
    return [with_values(cfg, chosen, record) for cfg in group.runs]


# --- running -------------------------------------------------------------------------------------

RunPlans = Callable[..., list[RunResult]]  # run_plans(plans, on_validation=None) -> results, in order


def tune_grid(configs: list[ExperimentConfig], grid_dir: Path, online: bool,
              run_plans: RunPlans, log=print, parallel: int = 1) -> tuple[list[ExperimentConfig], list[RunResult]]:
    """Tune every group (runs with a tune: block); return the grid's final configs (untuned runs and
    baselines untouched, in grid order) and the failed results of groups whose every trial failed
    (one per seed, for the caller to record). `parallel` > 1 (an engine's slots): the groups are tuned at
    once, and each Optuna group keeps up to `parallel` trials in flight."""
    groups, metrics, trials, base_plans = check_tuning(configs, online)
    storages = {storage: open_storage(storage, grid_dir, log)  # each opened once, before any trial trains
                for storage in dict.fromkeys(g.tune.storage for g in groups if g.tune.search == "optuna")}

    def search(index: int) -> dict | None:
        group, metric, base = groups[index], metrics[index], base_plans[index]
        if group.tune.search == "optuna":
            where = (grid_dir, storages[group.tune.storage])
            return optuna_search(group, base, group.tune, metric, where, run_plans, log, parallel)
        return grid_search(group, [trial_plan(base, c) for c in trials[index]], metric, grid_dir, run_plans, log)

    if parallel > 1 and len(groups) > 1:
        choices = in_threads(search, range(len(groups)), "medpeft-tune")
    else:
        choices = [search(index) for index in range(len(groups))]
    tuned = {cfg.run_id for g in groups for cfg in g.runs}
    finals, failed = [c for c in configs if c.run_id not in tuned], []
    for group, metric, chosen in zip(groups, metrics, choices):
        if chosen is None:
            failed += [RunResult.failed(cfg, cfg.variant, RuntimeError(
                f"every tuning trial of group {group.key} failed; see their result.json files (tuning_trial: true)"))
                for cfg in group.runs]
            log(f"tuning {group.key}: every trial failed; its {len(group.runs)} run(s) are recorded as failed")
            continue
        log(f"tuning {group.key}: chose {format_values(chosen)} by validation {metric}")
        finals += final_configs(group, chosen, group.tune, metric)
    return finals, failed


def in_threads(fn, items, name: str) -> list:
    """fn over items, one thread each; their results in order. On an exception (a stop signal in this thread)
    nothing waits for the threads: the engine's close() ends their waits."""
    pool = ThreadPoolExecutor(len(items), thread_name_prefix=name)
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def check_tuning(configs: list[ExperimentConfig], online: bool):
    """Every check before any training: each group's plan (model, data, a validation split), and for
    grid search every candidate's settings (an optuna range is checked at its low end). Returns the
    groups, their metrics, their trial configs and each group's checked plan."""
    groups = tuning_groups(configs)
    if any(g.tune.search == "optuna" for g in groups):
        require_optuna()
    metrics = [metric_name(g.tune, task_spec(g.first).type) for g in groups]
    trials = [[trial_config(g, v, m) for v in (grid_candidates(g.space) if g.tune.search == "grid" else [first_values(g)])]
              for g, m in zip(groups, metrics)]
    return groups, metrics, trials, plan_runs([t[0] for t in trials], online)


def trial_count(groups: list[Group], trials: list[list]) -> int:
    """Tuning trials a grid trains (at most, for Optuna: pruned trials stop early)."""
    return sum(g.tune.trials if g.tune.search == "optuna" else len(t) for g, t in zip(groups, trials))


def first_values(group: Group) -> dict:
    """One candidate of the group (the first of each list, or a range's low end), to check its plan."""
    return {axis: (v["low"] if isinstance(v, dict) else v[0]) for axis, v in group.space.items()}


def format_values(values: dict) -> str:
    return ", ".join(f"{axis}={value:g}" if isinstance(value, float) else f"{axis}={value}" for axis, value in values.items())


def trial_plan(base: RunPlan, cfg: ExperimentConfig) -> RunPlan:
    """A trial's plan: the group's checked plan (model, task data, kind) with the trial's settings."""
    return dataclasses.replace(base, config=cfg, method=METHODS[cfg.method])


def grid_search(group: Group, plans: list[RunPlan], metric: str, grid_dir: Path, run_plans: RunPlans, log):
    """Train every candidate (finished trials are skipped) and choose the best."""
    log(f"tuning {group.key}: {len(plans)} candidate(s) of {', '.join(group.space)}, scored on validation {metric}")
    run_plans(plans)
    results = [read_result(grid_dir / p.run_id) for p in plans]
    return choose([Tuning.from_json(p.config.tuning).values for p in plans], [trial_score(r, metric) for r in results],
                  [validation_score(r, LOSS_SCORE) for r in results])


def require_optuna():
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError(OPTUNA_HINT) from None


def optuna_distributions(space: dict) -> dict:
    """Optuna distributions of a tune space: a list is categorical, {low, high, log} a float or int range."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {}
    for axis, values in space.items():
        if isinstance(values, dict):
            low, high, log = values["low"], values["high"], bool(values.get("log", False))
            whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
            dists[axis] = IntDistribution(low, high, log=log) if whole else FloatDistribution(float(low), float(high), log=log)
        else:
            dists[axis] = CategoricalDistribution(values)
    return dists


def optuna_search(group: Group, base: RunPlan, tune: TuneConfig, metric: str, where: tuple, run_plans: RunPlans, log,
                  parallel: int = 1):
    """`tune.trials` TPE-sampled trials (counting those a previous, interrupted search or another worker
    finished), pruned on their mid-training validation loss by a median rule, up to `parallel` at once; the
    best complete trial's values. `where`: the grid folder and the opened study storage."""
    import optuna
    from optuna.trial import TrialState

    grid_dir, storage = where
    study = optuna.create_study(study_name=group.key, storage=storage, load_if_exists=True, direction="maximize",
                                pruner=median_pruner())
    dists = optuna_distributions(group.space)
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("finished"))
    workers = max(1, min(parallel, tune.trials - done))
    log(f"tuning {group.key}: Optuna, {tune.trials} trials ({done} already done{f', {workers} at once' if workers > 1 else ''}), "
        f"scored on validation {metric}")
    if workers == 1:
        claim_trials(group, base, metric, (grid_dir, storage, dists), run_plans)
    else:
        in_threads(lambda _: claim_trials(group, base, metric, (grid_dir, storage, dists), run_plans), range(workers),
                   f"medpeft-{group.key}")
    wait_for_workers(study, grid_dir, log)  # the choice sees every trial of the study
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.params.keys() == dists.keys()]
    return dict(study.best_trial.params) if complete else None


def claim_trials(group: Group, base: RunPlan, metric: str, where: tuple, run_plans: RunPlans) -> None:
    """One worker's loop: claim a trial, train it (wherever run_plans trains), tell the study its score;
    until the study has no trial left to claim. Each loop has its own study object: the sampler is set per trial."""
    import optuna
    from optuna.trial import TrialState

    grid_dir, storage, dists = where
    study = optuna.load_study(study_name=group.key, storage=storage, pruner=median_pruner())
    while True:
        with claimed_trial(study, group.tune.trials, dists, group.first.seed, grid_dir) as trial:
            if trial is None:
                return
            plan = trial_plan(base, trial_config(group, dict(trial.params), metric))
            trial.set_user_attr("run_id", plan.run_id)
            pruner = StudyPruner(group.tune.storage, str(grid_dir), group.key, trial._trial_id)  # Optuna's distributed-trial handle
            result = run_plans([plan], on_validation=pruner)[0]
            trial.set_user_attr("finished", True)
            score = trial_score(result, metric)
            if result is not None and result.cause == "pruned":
                study.tell(trial, state=TrialState.PRUNED)
            elif score is None:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, score)
