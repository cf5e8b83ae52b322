"""The loop of one process over a grid's runs: skip finished ones, take each run's lock (or leave a run
to the live worker that holds it), resume from a checkpoint, run it, record a failure with its cause and
go on. grid.py runs a grid through it, here or, one run per job, on an engine's workers.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

from medpeft.dist import is_distributed, is_main_process, wait_for_everyone
from medpeft.plan import RunPlan
from medpeft.run.checkpoint import find_resumable, remove_checkpoints
from medpeft.run.faults import diagnose, interrupted_by_scheduler, release_memory
from medpeft.run.lock import acquire_run_lock, describe_holder
from medpeft.run.progress import grid_bar, level, run_log
from medpeft.run.record import RunResult, read_result

LOCK_POLL_S = 10.0  # seconds between looks at runs another worker holds, when their results are needed


def finished_runs(plans: list[RunPlan], grid_dir: Path) -> dict[str, RunResult]:
    """run id -> result of the plans already finished under grid_dir (a failed run is run again)."""
    return {p.run_id: r for p in plans if (r := read_result(grid_dir / p.run_id)) is not None and r.ok}


def run_labels(plans: list[RunPlan]) -> list[str]:
    """`[k/n] run_id` for each plan, the label of its log lines."""
    return [f"[{i}/{len(plans)}] {plan.run_id}" for i, plan in enumerate(plans, 1)]


def run_plans(plans: list[RunPlan], grid_dir: Path, log, title: str, on_validation=None, tracker=None,
              wait: bool = False) -> list[RunResult | None]:
    """Run each plan not yet finished under grid_dir; every plan's result, in order. A run another live
    worker holds is skipped (its result is None), or with `wait` waited for."""
    done = finished_runs(plans, grid_dir)
    wait_for_everyone()  # every launched process decides on the same runs before any is written
    if level() != "quiet":
        log(f"{title}: {len(plans)} runs ({len(done)} already finished) -> {grid_dir}")
    labels = run_labels(plans)
    results = []
    with grid_bar(title, len(plans), len(done)) as bar:
        for plan, label in zip(plans, labels):
            results.append(done.get(plan.run_id) or run_unless_held(plan, grid_dir, log, label, on_validation, tracker))
            if plan.run_id not in done and results[-1] is not None:
                bar.update()
        while wait and (busy := [k for k, r in enumerate(results) if r is None]):
            time.sleep(LOCK_POLL_S)
            for k in busy:
                results[k] = run_unless_held(plans[k], grid_dir, log, labels[k], on_validation, tracker, quiet=True)
                if results[k] is not None:
                    bar.update()
    if held := sum(r is None for r in results):
        log(f"{held} run(s) left to the other workers that hold them; the last worker to finish writes the full report")
    return results


def run_unless_held(plan: RunPlan, grid_dir: Path, log, label: str, on_validation=None, tracker=None,
                    quiet: bool = False) -> RunResult | None:
    """Take the run's lock and run it (or read its result, if another worker finished it meanwhile);
    None when a live worker holds it. Processes of one `accelerate launch` run every run together, unlocked."""
    run_dir = grid_dir / plan.run_id
    lock = acquire_run_lock(run_dir) if not is_distributed() else nullcontext()
    if lock is None:
        if not quiet:
            log(f"{label}: skipped, another worker is running it ({describe_holder(run_dir)})")
        return None
    with lock:
        finished = read_result(run_dir)
        if finished is not None and finished.ok:
            return finished
        with run_log(run_dir, log) as log:  # each line also into the run's train.log
            resume = find_resumable(run_dir, warn=lambda text: log(f"    warning: {text}"))
            if level() != "quiet" or resume:  # quiet: the run's one line, at its end, carries the label
                log(label + (f" (resuming from its checkpoint at step {resume[1]['step']})" if resume else ""))
            return run_one(plan, run_dir, log, on_validation, tracker, label)


def run_one(plan: RunPlan, run_dir: Path, log, on_validation=None, tracker=None, label: str = "") -> RunResult:
    """One run; a failure is recorded in its result.json with its cause and fix, and the grid goes on.
    At the quiet level its one line starts with `label`."""
    from medpeft.run.execute import run_experiment

    start = time.perf_counter()
    extra = {"on_validation": on_validation} if on_validation else {}
    if tracker is not None:
        tracker.start(plan.run_id, plan.config.to_dict())
        extra["callbacks"] = tracker.callbacks()
    try:
        result = run_experiment(plan, run_dir, **extra)
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.finish(None)
        raise
    except Exception as err:  # noqa: BLE001 - a failed run is recorded and the grid goes on
        if interrupted_by_scheduler(err):  # its job dies; the driver submits the run again and it resumes
            if tracker is not None:
                tracker.finish(None)
            raise
        result = RunResult.failed(plan.config, plan.config.variant, err, *diagnose(err, plan.config, run_dir, plan.model_path))
    if tracker is not None:
        tracker.finish(result)
    if not result.ok:
        release_memory()  # here, after the except block: its traceback no longer holds the run's model
        record_failure(result, run_dir, log, label if level() == "quiet" else "   ")
        return result
    lead = f"{label}:" if level() == "quiet" else "   "
    log(f"{lead} {result_line(result, time.perf_counter() - start)}")
    return result


def result_line(result: RunResult, seconds: float | None = None) -> str:
    """A finished run's scores (a trial's on validation, with its loss), time and trainable share, on one line."""
    shown = ", ".join(f"{k}={100 * v:.1f}" for k, v in result.metrics.items() if v is not None)
    if result.tuning_trial:
        val_loss = result.fit.val_loss
        shown = f"validation: {shown or ''}{', ' if shown else ''}loss={val_loss:.4f}" if val_loss is not None else f"validation: {shown}"
    if seconds is None:  # ran elsewhere: its own clock
        seconds = sum(t or 0 for t in (result.cost.train_seconds, result.cost.eval_seconds))
    return f"{shown}  ({seconds:.0f}s, {result.cost.trainable_pct:.3g}% trainable)"


def record_failure(result: RunResult, run_dir: Path, log, lead: str = "   ") -> None:
    """Write a failed run's result.json (best effort: on a full disk it may fail too) and log it. A run
    that fails the same way again (a NaN loss, a pruned trial) keeps no checkpoint to resume from."""
    log(f"{lead} FAILED: {result.error}")
    if result.fix:
        log(f"    fix: {result.fix}")
    if not is_main_process():
        return
    if result.cause in ("nan_loss", "pruned"):
        remove_checkpoints(run_dir)
    try:
        result.write(run_dir)
    except OSError as err:
        log(f"    warning: could not record the failure in {run_dir / 'result.json'} ({err})")
