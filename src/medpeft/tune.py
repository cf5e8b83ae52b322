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
worker has a trial running (tune_storage.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from medpeft.config import ExperimentConfig, TuneConfig, config_from_dict, set_dotted
from medpeft.config.tuning import mask_storage
from medpeft.errors import ConfigError
from medpeft.plan import RunPlan, plan_runs, resolve_config, task_spec
from medpeft.registry import METHODS
from medpeft.run.metrics import PRIMARY_METRIC
from medpeft.run.lock import LOCK_NAME, STALE_AFTER_S, is_stale, process_alive
from medpeft.run.record import LOSS_SCORE, RunResult, Tuning, read_result, validation_score

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
              run_plans: RunPlans, log=print) -> tuple[list[ExperimentConfig], list[RunResult]]:
    """Tune every group (runs with a tune: block); return the grid's final configs (untuned runs and
    baselines untouched, in grid order) and the failed results of groups whose every trial failed
    (one per seed, for the caller to record)."""
    groups, metrics, trials, base_plans = check_tuning(configs, online)
    storages = {storage: open_storage(storage, grid_dir, log)  # each opened once, before any trial trains
                for storage in dict.fromkeys(g.tune.storage for g in groups if g.tune.search == "optuna")}
    tuned = {cfg.run_id for g in groups for cfg in g.runs}
    finals, failed = [c for c in configs if c.run_id not in tuned], []
    for group, metric, configs_of_group, base in zip(groups, metrics, trials, base_plans):
        tune = group.tune
        if tune.search == "optuna":
            chosen = optuna_search(group, base, tune, metric, (grid_dir, storages[tune.storage]), run_plans, log)
        else:
            chosen = grid_search(group, [trial_plan(base, c) for c in configs_of_group], metric, grid_dir, run_plans, log)
        if chosen is None:
            failed += [RunResult.failed(cfg, cfg.variant, RuntimeError(
                f"every tuning trial of group {group.key} failed; see their result.json files (tuning_trial: true)"))
                for cfg in group.runs]
            log(f"tuning {group.key}: every trial failed; its {len(group.runs)} run(s) are recorded as failed")
            continue
        log(f"tuning {group.key}: chose {format_values(chosen)} by validation {metric}")
        finals += final_configs(group, chosen, tune, metric)
    return finals, failed


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


def pruning_reporter(trial, pruned: list[int]) -> Callable[[int, float], None]:
    """A trial's on_validation callback: it reports each mid-training validation loss to Optuna and stops
    the trial (TrialPruned, its step added to `pruned`) when the study's pruner says so."""
    import optuna

    def report(step: int, loss: float) -> None:
        trial.report(-loss, step)  # higher is better, as for the study's objective
        if trial.should_prune():
            pruned.append(step)
            raise optuna.TrialPruned(f"pruned at step {step}: validation loss {loss:.4f} below the median of earlier trials")

    return report


def optuna_search(group: Group, base: RunPlan, tune: TuneConfig, metric: str, where: tuple, run_plans: RunPlans, log):
    """`tune.trials` TPE-sampled trials (counting those a previous, interrupted search or another worker
    finished), pruned on their mid-training validation loss by a median rule; the best complete trial's
    values. `where`: the grid folder and the opened study storage."""
    import optuna
    from optuna.trial import TrialState

    grid_dir, storage = where
    study = optuna.create_study(study_name=group.key, storage=storage, load_if_exists=True, direction="maximize")
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    dists = optuna_distributions(group.space)
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("finished"))
    log(f"tuning {group.key}: Optuna, {tune.trials} trials ({done} already done), scored on validation {metric}")
    while True:
        with claimed_trial(study, tune.trials, dists, group.first.seed, grid_dir) as trial:
            if trial is None:
                break
            plan = trial_plan(base, trial_config(group, dict(trial.params), metric))
            trial.set_user_attr("run_id", plan.run_id)
            pruned = []
            result = run_plans([plan], on_validation=pruning_reporter(trial, pruned))[0]
            trial.set_user_attr("finished", True)
            score = trial_score(result, metric)
            if pruned:
                study.tell(trial, state=TrialState.PRUNED)
            elif score is None:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, score)
    wait_for_workers(study, grid_dir, log)  # the choice sees every trial of the study
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.params.keys() == dists.keys()]
    return dict(study.best_trial.params) if complete else None


# --- the study's storage, shared by workers --------------------------------------------------------

JOURNAL = "tuning.journal"  # the default storage: Optuna's journal file, appended under a lock (NFS-safe)
LEGACY_DB = "tuning.db"  # the SQLite storage of grid folders tuned before the journal became the default
ASK_GRACE_S = 60.0  # a trial just asked has no worker record yet: not stale for this long
WAIT_POLL_S = 2.0
LIVE_TRIALS: set[str] = set()  # tokens of the trials this process is running now (one per tuning thread)


def open_storage(storage: str | None, grid_dir: Path, log):
    """The Optuna storage `tune.storage` names (None: the grid folder's journal, or its older tuning.db)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid_dir.mkdir(parents=True, exist_ok=True)
    if storage is None and (grid_dir / LEGACY_DB).exists():  # its studies (the user's trials) resume there
        log(f"tuning: resuming the studies in {grid_dir / LEGACY_DB} (SQLite: not safe with several workers on NFS; "
            f"tune.storage: {JOURNAL} starts a shared journal)")
        storage = f"sqlite:///{grid_dir / LEGACY_DB}"
    try:
        if storage is not None and "://" in storage:
            return optuna.storages.RDBStorage(storage)
        path = grid_dir / (storage or JOURNAL)  # an absolute path stays itself
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except Exception as err:  # a missing driver, a refused connection, an unwritable folder
        password = storage.partition("://")[2].rpartition("@")[0].partition(":")[2] if storage else ""
        detail = str(err).replace(password, "***") if password else str(err)
        raise ConfigError(f"tune.storage: cannot open {mask_storage(storage or str(grid_dir / JOURNAL))}: "
                          f"{type(err).__name__}: {detail}") from None


@contextlib.contextmanager
def claimed_trial(study, wanted: int, dists: dict, seed: int, grid_dir: Path):
    """The next trial of the study with its values sampled, or None once `wanted` trials are finished or
    running (counted in trial-number order, so concurrent workers agree which claims are surplus)."""
    from optuna.samplers import TPESampler
    from optuna.trial import TrialState

    def claims(below: float) -> int:
        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.number < below and (t.user_attrs.get("finished") or t.state == TrialState.RUNNING))

    fail_stale_trials(study, grid_dir)
    if claims(math.inf) >= wanted:  # nothing left to claim (alone, a worker never asks a surplus trial)
        yield None
        return
    token = uuid.uuid4().hex
    LIVE_TRIALS.add(token)
    try:
        trial = study.ask()
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "token": token})
        if claims(trial.number) >= wanted:  # another worker claimed the last trial between the two looks
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            yield None
            return
        # Seeded by the trial's number: workers sampling at once draw different values, and a resumed
        # search continues the sequence instead of drawing its first candidates again.
        study.sampler = TPESampler(seed=seed + trial.number)
        for axis, dist in dists.items():
            suggest(trial, axis, dist)
        yield trial
    finally:
        LIVE_TRIALS.discard(token)


def suggest(trial, axis: str, dist) -> None:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        trial.suggest_categorical(axis, dist.choices)
    elif isinstance(dist, IntDistribution):
        trial.suggest_int(axis, dist.low, dist.high, log=dist.log)
    else:
        trial.suggest_float(axis, dist.low, dist.high, log=dist.log)


def stale_trial(trial, grid_dir: Path) -> bool:
    """A running trial no live worker runs: its process is gone (this host, or this process outside a live
    trial), or, on another host, its run lock is stale and it began over STALE_AFTER_S ago."""
    worker = trial.user_attrs.get("worker")
    age = (datetime.now() - trial.datetime_start).total_seconds() if trial.datetime_start else math.inf
    if not isinstance(worker, dict):  # asked a moment ago, or by a search from before workers were recorded
        return age > ASK_GRACE_S
    if worker.get("token") in LIVE_TRIALS:
        return False
    if worker.get("host") == socket.gethostname():
        return worker.get("pid") == os.getpid() or not process_alive(worker.get("pid"))
    run_id = trial.user_attrs.get("run_id")
    return age > STALE_AFTER_S and (run_id is None or is_stale(grid_dir / run_id / LOCK_NAME))


def fail_stale_trials(study, grid_dir: Path) -> int:
    """Mark the study's abandoned running trials failed (a killed worker's); how many are still live."""
    from optuna.trial import TrialState

    live = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if stale_trial(trial, grid_dir):
            with contextlib.suppress(RuntimeError, ValueError):  # another worker failed it first
                study.tell(trial.number, state=TrialState.FAIL)
        elif not trial.user_attrs.get("surplus"):
            live += 1
    return live


def wait_for_workers(study, grid_dir: Path, log) -> None:
    """Return once no live worker is running a trial of the study, so every worker chooses from all of them."""
    said = False
    while live := fail_stale_trials(study, grid_dir):
        if not said:
            log(f"tuning {study.study_name}: waiting for {live} trial(s) other workers are running")
            said = True
        time.sleep(WAIT_POLL_S)
