"""Run a whole grid: check every run before training, add the untrained baselines, skip finished
runs, record failures and go on, then write the summary."""
from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path

from medpeft.config import ConfigError, ExperimentConfig, Grid
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

    paths = {model: resolve_model(model, online) for model in dict.fromkeys(cfg.model for cfg in runs)}
    for model, task in dict.fromkeys((cfg.model, cfg.task) for cfg in runs):
        infer_model_kind(paths[model], TASKS[task].type)
    for cfg in {(c.task, tuple(sorted(dataclasses.asdict(c.data).items()))): c for c in runs}.values():
        try:
            TASKS[cfg.task].load(cfg.data)
        except ValueError as err:
            raise ConfigError(f"task {cfg.task!r}: {err}") from None


def failure_result(cfg: ExperimentConfig, err: BaseException) -> dict:
    return {"run_id": cfg.run_id, "status": "failed", "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(), "task": cfg.task, "model": cfg.model, "method": cfg.method,
            "seed": cfg.seed, "config": cfg.to_dict(), "metrics": {}, "efficiency": {}}


def run_grid(grid: Grid, runs_dir: Path, *, online: bool = False, log=print) -> Path:
    """Run every configuration of `grid` under runs_dir/<grid name>/ and write its summary."""
    from medpeft.train import run_experiment

    grid_dir = Path(runs_dir) / grid.name
    runs = with_baselines(grid.runs)
    check_grid(runs, online)
    done = sum(is_finished(grid_dir / cfg.run_id) for cfg in runs)
    log(f"grid {grid.name}: {len(runs)} runs ({done} already finished) -> {grid_dir}")
    for i, cfg in enumerate(runs, 1):
        run_dir = grid_dir / cfg.run_id
        if is_finished(run_dir):
            continue
        log(f"[{i}/{len(runs)}] {cfg.run_id}")
        start = time.perf_counter()
        try:
            result = run_experiment(cfg, run_dir, online=online)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - a failed run is recorded and the grid goes on
            write_json(run_dir / "result.json", failure_result(cfg, err))
            log(f"    FAILED: {type(err).__name__}: {err}")
            continue
        shown = ", ".join(f"{k}={100 * v:.1f}" for k, v in result["metrics"].items())
        log(f"    {shown}  ({time.perf_counter() - start:.0f}s, {result['efficiency']['trainable_pct']:.3g}% trainable)")
    log(write_summary(grid_dir))
    return grid_dir
