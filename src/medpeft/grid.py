"""Run a whole grid: check every run before training, add the untrained baselines, skip finished
runs, record failures and go on, then write the summary."""
from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path

from medpeft.config import ConfigError, ExperimentConfig, Grid
from medpeft.dist import is_main_process, wait_for_everyone
from medpeft.methods import check_hardware
from medpeft.models import infer_model_kind, resolve_model
from medpeft.results import is_finished, write_json, write_summary


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


def check_grid(runs: list[ExperimentConfig], online: bool) -> None:
    """Fail before any training: every model must resolve and every task's data must load."""
    from medpeft.registry import TASKS

    for cfg in runs:
        check_hardware(cfg.method, cfg.train.precision)
    paths = {model: resolve_model(model, online) for model in dict.fromkeys(cfg.model for cfg in runs)}
    for model, task in dict.fromkeys((cfg.model, cfg.task) for cfg in runs):
        infer_model_kind(paths[model], TASKS[task].type)
    for cfg in {(c.task, tuple(sorted(dataclasses.asdict(c.data).items()))): c for c in runs}.values():
        try:
            TASKS[cfg.task].load(cfg.data, online=online)
        except ValueError as err:
            raise ConfigError(f"task {cfg.task!r}: {err}") from None


def failure_result(cfg: ExperimentConfig, err: BaseException) -> dict:
    return {"run_id": cfg.run_id, "status": "failed", "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(), "task": cfg.task, "model": cfg.model, "method": cfg.method,
            "seed": cfg.seed, "config": cfg.to_dict(), "metrics": {}, "efficiency": {}}


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
    """Run every configuration of `grid` (or one shard of it) under runs_dir/<grid name>/ and write its summary."""
    from medpeft.train import run_experiment

    grid_dir = Path(runs_dir) / grid.name
    runs = select_shard(with_baselines(grid.runs), shard)
    check_grid(runs, online)
    pending = {cfg.run_id for cfg in runs if not is_finished(grid_dir / cfg.run_id)}
    wait_for_everyone()  # every launched process decides on the same runs before any is written
    done = len(runs) - len(pending)
    log = log if is_main_process() else (lambda *_: None)
    part = f" shard {shard[0]}/{shard[1]}" if shard else ""
    log(f"grid {grid.name}{part}: {len(runs)} runs ({done} already finished) -> {grid_dir}")
    for i, cfg in enumerate(runs, 1):
        run_dir = grid_dir / cfg.run_id
        if cfg.run_id not in pending:
            continue
        log(f"[{i}/{len(runs)}] {cfg.run_id}")
        start = time.perf_counter()
        try:
            result = run_experiment(cfg, run_dir, online=online)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - a failed run is recorded and the grid goes on
            if is_main_process():
                write_json(run_dir / "result.json", failure_result(cfg, err))
            log(f"    FAILED: {type(err).__name__}: {err}")
            continue
        shown = ", ".join(f"{k}={100 * v:.1f}" for k, v in result["metrics"].items())
        log(f"    {shown}  ({time.perf_counter() - start:.0f}s, {result['efficiency']['trainable_pct']:.3g}% trainable)")
    if not is_main_process():
        return grid_dir
    log(write_summary(grid_dir))
    try:  # the report is derived from the runs: its failure must never fail or lose them
        from medpeft.report import build_report

        log(f"report: {build_report(grid_dir)['html']}")
    except Exception as err:  # noqa: BLE001
        log(f"warning: report not written ({type(err).__name__}: {err}); retry with: medpeft report {grid_dir}")
    return grid_dir
