"""Run a whole grid: check every run before training, add the untrained baselines, skip finished
runs, record failures and go on, then write the summary."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from medpeft.config import ExperimentConfig, Grid
from medpeft.dist import is_main_process, wait_for_everyone
from medpeft.errors import ConfigError
from medpeft.plan import RunPlan, plan_runs, resolve_config
from medpeft.run.record import RunResult, read_result


def with_baselines(runs: list[ExperimentConfig]) -> list[ExperimentConfig]:
    """The grid's runs, preceded by one untrained baseline per (model, task) at the grid's first seed."""
    baselines, seen = [], set()
    for cfg in runs:
        key = (cfg.model, cfg.task)
        if key in seen or any(r.method == "untrained" and (r.model, r.task) == key for r in runs):
            seen.add(key)
            continue
        seen.add(key)
        baseline = dataclasses.replace(cfg, method="untrained", method_args={}, train=dataclasses.replace(cfg.train, lr=None))
        baselines.append(baseline)
    return baselines + runs


def grid_configs(grid: Grid, shard: tuple[int, int] | None = None) -> list[ExperimentConfig]:
    """The grid's runs with their baselines and defaults resolved, one per run id, then this shard's slice."""
    configs = {}
    for cfg in with_baselines(grid.runs):
        resolved = resolve_config(cfg)
        configs.setdefault(resolved.run_id, resolved)
    return select_shard(list(configs.values()), shard)


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` (0 <= i < n), as a scheduler's array index passes it, e.g. --shard $SLURM_ARRAY_TASK_ID/8."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes i/n with whole numbers, e.g. 0/4; got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
    return index, count


def select_shard(runs: list[ExperimentConfig], shard: tuple[int, int] | None) -> list[ExperimentConfig]:
    """A deterministic, disjoint slice: runs sorted by run_id, every n-th from i. The n slices cover
    the grid exactly once, whatever order the grid file lists its axes in."""
    if shard is None:
        return runs
    index, count = shard
    ordered = sorted(runs, key=lambda cfg: cfg.run_id)
    return ordered[index::count]


def run_grid(grid: Grid, runs_dir: Path, *, online: bool = False, shard: tuple[int, int] | None = None, log=print) -> Path:
    """Run every configuration of `grid` (or one shard of it) under runs_dir/<grid name>/, then write
    its summary and report. A grid with a `tune:` block first tunes each group on validation data
    (tune.py); with --shard every shard runs (or finds finished) the trials it needs."""
    grid_dir = Path(runs_dir) / grid.name
    log = log if is_main_process() else (lambda *_: None)
    part = f" shard {shard[0]}/{shard[1]}" if shard else ""
    configs = grid_configs(grid, None if grid.tuned else shard)
    if grid.tuned:
        from medpeft.tune import tune_grid

        def run_trials(plans, on_validation=None):
            return run_plans(plans, grid_dir, log, "tuning trials", on_validation)

        configs, failed = tune_grid(configs, grid_dir, online, run_trials, log)
        for result in failed if is_main_process() else ():
            result.write(grid_dir / result.run_id)
        configs = select_shard(configs, shard)
    plans = plan_runs(configs, online)  # every check, before any training
    run_plans(plans, grid_dir, log, f"grid {grid.name}{part}")
    if is_main_process():
        write_outputs(grid_dir, log)
    return grid_dir


def run_plans(plans: list[RunPlan], grid_dir: Path, log, title: str, on_validation=None) -> list[RunResult]:
    """Run each plan not yet finished under grid_dir; every plan's result, in order."""
    done = {p.run_id: r for p in plans if (r := read_result(grid_dir / p.run_id)) is not None and r.ok}
    wait_for_everyone()  # every launched process decides on the same runs before any is written
    log(f"{title}: {len(plans)} runs ({len(done)} already finished) -> {grid_dir}")
    results = []
    for i, plan in enumerate(plans, 1):
        if plan.run_id in done:
            results.append(done[plan.run_id])
            continue
        log(f"[{i}/{len(plans)}] {plan.run_id}")
        results.append(run_one(plan, grid_dir / plan.run_id, log, on_validation))
    return results


def run_one(plan: RunPlan, run_dir: Path, log, on_validation=None) -> RunResult:
    """One run; a failure is recorded in its result.json and logged, and the grid goes on."""
    from medpeft.run.execute import run_experiment

    start = time.perf_counter()
    try:
        result = run_experiment(plan, run_dir, **({"on_validation": on_validation} if on_validation else {}))
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - a failed run is recorded and the grid goes on
        result = RunResult.failed(plan.config, plan.config.variant, err)
        if is_main_process():
            result.write(run_dir)
        log(f"    FAILED: {result.error}")
        return result
    shown = ", ".join(f"{k}={100 * v:.1f}" for k, v in result.metrics.items() if v is not None)
    if result.tuning_trial:
        val_loss = result.training.get("val_loss")
        shown = f"validation: {shown or ''}{', ' if shown else ''}loss={val_loss:.4f}" if val_loss is not None else f"validation: {shown}"
    log(f"    {shown}  ({time.perf_counter() - start:.0f}s, {result.efficiency['trainable_pct']:.3g}% trainable)")
    return result


def write_outputs(grid_dir: Path, log) -> None:
    """summary.md/csv and the report; derived from the runs, so their failure never fails or loses a run."""
    from medpeft.report.build import build_report

    try:
        paths = build_report(grid_dir, on_summary=log)
    except Exception as err:  # noqa: BLE001
        log(f"warning: report not written ({type(err).__name__}: {err}); retry with: medpeft report {grid_dir}")
        return
    log(f"report: {paths['html']}")
    from medpeft.use.card import write_cards

    try:
        cards = write_cards(grid_dir)
    except Exception as err:  # noqa: BLE001 - a card is derived from the runs, like the report
        log(f"warning: model cards not written ({type(err).__name__}: {err}); retry with: medpeft report {grid_dir}")
        return
    if cards:
        log(f"model cards: README.md in the adapter/ of {len(cards)} run(s)")
