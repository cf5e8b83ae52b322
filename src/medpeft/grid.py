"""Run a whole grid: check every run before training, add the untrained baselines, skip finished
runs and runs another worker holds (run/lock.py), record failures with their cause and go on, then
write the summary. A stop signal ends the grid cleanly (run/preempt.py); an interrupted run resumes
from its last checkpoint on the next `medpeft run` (run/checkpoint.py).

The runs train in this process (--backend local), or on an engine's workers (--backend ray|slurm,
engines/): each run is then a job (`RunJob`) that a worker plans again and runs with this same loop
(`run_job`), while this process keeps the grid: what is finished, the tuning choices, the progress
line, failures, the report and the exit status."""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from medpeft.config import ExperimentConfig, Grid
from medpeft.dist import is_main_process
from medpeft.engines.base import Engine, Outcome, map_jobs
from medpeft.errors import ConfigError
from medpeft.files import check_writable_folder
from medpeft.methods import BASELINE, Role, method_role
from medpeft.plan import RunPlan, plan_runs, resolve_config
from medpeft.run.faults import worker_fault
from medpeft.run.lock import describe_holder
from medpeft.run.loop import LOCK_POLL_S, finished_runs, record_failure, result_line, run_labels, run_plans, run_unless_held
from medpeft.run.preempt import stop_on_signal
from medpeft.run.progress import grid_bar, level, say, showing
from medpeft.run.owner import claim_grid_dir
from medpeft.run.record import RunResult
from medpeft.run.track import open_tracker

# Settings a worker elsewhere needs as this process has them: where the offline assets are, the hub's cache and mode.
FORWARDED_ENV = ("MEDPEFT_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


@dataclass
class Spread:
    """Where a grid's runs train when not in this process: an engine's workers (engines/), how often a run whose
    worker was lost is submitted again, and whether hub downloads are allowed."""

    engine: Engine
    retries: int = 1
    online: bool = False
    threads: int | None = None  # torch threads per run (resources.cpus_per_run): a Slurm job's torch would take the node's cores


@dataclass
class GridOutcome:
    """What one `medpeft run` did, for its last line and its exit status: 0 when every run of the grid
    (or shard) finished and every output was written, 1 when a run failed or an output could not be written."""

    grid_dir: Path
    runs: int = 0  # runs of this grid or shard, baselines included (tuning trials not)
    failed: list[RunResult] = field(default_factory=list)  # runs that failed in this call
    held: int = 0  # runs left to other workers that hold them
    trials_failed: int = 0  # tuning trials that failed (not pruned): tuning's answer, not the grid's failure
    outputs_failed: list[str] = field(default_factory=list)  # "report", "model cards"

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.outputs_failed else 0

    def account(self) -> str:
        """One line: how many runs finished and failed, and whether the report was written."""
        done = self.runs - len(self.failed) - self.held
        parts = [f"{done} of {self.runs} runs finished"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({', '.join(r.run_id for r in self.failed[:3])}"
                         f"{', ...' if len(self.failed) > 3 else ''}: see their result.json)")
        if self.held:
            parts.append(f"{self.held} held by other workers")
        if self.trials_failed:
            parts.append(f"{self.trials_failed} tuning trial(s) failed")
        parts.append(f"{' and '.join(self.outputs_failed)} NOT written" if self.outputs_failed else "report written")
        head = "FAILED" if self.exit_code else "done"
        return f"{head}: {'; '.join(parts)} -> {self.grid_dir}"


def with_baselines(runs: list[ExperimentConfig]) -> list[ExperimentConfig]:
    """The grid's runs, preceded by one untrained baseline per (model, task) at the grid's first seed.

    A classifier's baseline predicts the majority class of its training split, so it takes the largest
    training set of its (model, task): no few-shot sample (data.per_class) and the largest data.train_size.
    Taken from the first run, a learning curve's baseline was the prior of its smallest point (a tie
    among 2 examples per class: the wrong majority class)."""
    baselines, seen = [], set()
    for cfg in runs:
        key = (cfg.model, cfg.task)
        if key in seen or any(method_role(r.method) is Role.BASELINE and (r.model, r.task) == key for r in runs):
            seen.add(key)
            continue
        seen.add(key)
        largest = max(c.data.train_size for c in runs if (c.model, c.task) == key)
        baseline = dataclasses.replace(cfg, method=BASELINE, method_args={}, train=dataclasses.replace(cfg.train, lr=None),
                                       data=dataclasses.replace(cfg.data, train_size=largest, per_class=None))
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


def run_grid(grid: Grid, runs_dir: Path, *, online: bool = False, shard: tuple[int, int] | None = None,
             track: str | None = None, log=say, verbosity: str = "normal", spread: Spread | None = None) -> GridOutcome:
    """Run every configuration of `grid` (or one shard of it) under runs_dir/<grid name>/, then write
    its summary and report; what happened, as a GridOutcome. A grid with a `tune:` block first tunes
    each group on validation data (tune/); with --shard every shard runs (or finds finished) the trials
    it needs. `track`: mlflow, tensorboard or wandb (run/track.py). `verbosity`: quiet, normal or verbose
    (run/progress.py). `spread`: train on an engine's workers (Ray, Slurm) instead of in this process."""
    grid_dir = Path(runs_dir) / grid.name
    outcome = GridOutcome(grid_dir)
    log = log if is_main_process() else (lambda *_: None)
    part = f" shard {shard[0]}/{shard[1]}" if shard else ""
    configs = grid_configs(grid, None if grid.tuned else shard)
    check_writable_folder(grid_dir, "the grid's runs folder", "choose another place with --runs-dir, or make it writable")
    claim_grid_dir(grid_dir, grid.name, grid.source_file, record=False)  # two grid files of one name: refused first
    tracker = open_tracker(track, grid_dir, grid.name, online, log) if track and is_main_process() else None

    def train(plans, title, on_validation=None, wait=False):
        if spread is None:
            return run_plans(plans, grid_dir, log, title, on_validation, tracker, wait)
        return run_plans_on(spread, plans, grid_dir, log, title, on_validation, tracker, wait)

    with showing(verbosity), stop_on_signal():
        if grid.tuned:
            from medpeft.tune import tune_grid

            claim_grid_dir(grid_dir, grid.name, grid.source_file)  # recorded before the first trial is written

            def run_trials(plans, on_validation=None):  # a trial another worker holds is waited for: its score counts
                results = train(plans, "tuning trials", on_validation, wait=True)
                outcome.trials_failed += sum(r is not None and not r.ok and r.cause != "pruned" for r in results)
                return results

            configs, failed = tune_grid(configs, grid_dir, online, run_trials, log, spread.engine.slots if spread else 1)
            for result in failed if is_main_process() else ():
                result.write(grid_dir / result.run_id)
            outcome.failed += failed  # every shard tuned every group, so each reports a group that failed
            outcome.runs += len(failed)
            configs = select_shard(configs, shard)
        plans = plan_runs(configs, online)  # every check, before any training
        if not grid.tuned:  # recorded after the checks, so a grid refused at plan time writes nothing
            claim_grid_dir(grid_dir, grid.name, grid.source_file)
        results = train(plans, f"grid {grid.name}{part}")
    outcome.runs += len(results)
    outcome.failed += [r for r in results if r is not None and not r.ok]
    outcome.held = sum(r is None for r in results)
    if is_main_process():
        with showing(verbosity):
            outcome.outputs_failed = write_outputs(grid_dir, log)
    return outcome


@dataclass
class RunJob:
    """One run for a worker elsewhere (a Ray task, a Slurm array task): picklable, self-contained."""

    config: ExperimentConfig  # resolved, with its variant and tuning record
    grid_dir: str  # absolute: a worker starts in its own folder
    online: bool
    label: str  # [k/n] run_id, for its log lines
    on_validation: object = None  # a tuning trial's picklable pruner (tune.storage.StudyPruner)
    wait: bool = False  # a run another worker holds is waited for (tuning trials: their score counts)
    threads: int | None = None  # torch threads for the run; None: as the worker has them
    cwd: str = field(default_factory=os.getcwd)  # relative paths in the config (your data files) resolve from here
    env: dict = field(default_factory=lambda: {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)})


def run_job(job: RunJob) -> RunResult | None:
    """A worker's entry: plan the run here (its data and model path on this node), then run it as this
    process would, unless another worker holds it (None). Its lines go to the run's train.log."""
    import medpeft
    from medpeft.plan import plan_run

    os.environ.update(job.env)
    if os.path.isdir(job.cwd):
        os.chdir(job.cwd)
    medpeft.load_registries()
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    plan = plan_run(job.config, job.online)
    with showing("quiet"):
        while (result := run_unless_held(plan, Path(job.grid_dir), say, job.label, job.on_validation)) is None and job.wait:
            time.sleep(LOCK_POLL_S)
    return result


def submit_grid(grid: Grid, runs_dir: Path, spread: Spread, log=say) -> None:
    """--no-wait: check every run, submit the unfinished ones as one job array and, after it, a job that writes
    the report; say how to follow them. Nothing waits here, so a run whose job dies is not submitted again."""
    grid_dir = Path(runs_dir).resolve() / grid.name
    check_writable_folder(grid_dir, "the grid's runs folder", "choose another place with --runs-dir, or make it writable")
    claim_grid_dir(grid_dir, grid.name, grid.source_file, record=False)
    plans = plan_runs(grid_configs(grid), spread.online)  # every check, before anything is submitted
    claim_grid_dir(grid_dir, grid.name, grid.source_file)
    done = finished_runs(plans, grid_dir)
    todo = [p for p in plans if p.run_id not in done]
    jobs = [RunJob(p.config, str(grid_dir), spread.online, label, threads=spread.threads) for p, label in zip(todo, run_labels(todo))]
    array, report = spread.engine.submit_detached(run_job, jobs, write_outputs_job, str(grid_dir))
    log(f"grid {grid.name}: {len(plans)} runs, {len(plans) - len(todo)} already finished"
        + (f"; job array {array} holds the other {len(todo)}" if array else ""))
    log(f"report: job {report} writes it{' once the array has ended' if array else ''} -> {grid_dir / 'report.html'}")
    log(f"follow: squeue -j {array or report}   (each run's log: {grid_dir}/RUN_ID/train.log)")
    log("a run whose job died is resumed by the same command again: finished runs are skipped, held ones left to their job")


def write_outputs_job(grid_dir: str) -> list[str]:
    """A job's entry that writes a grid's summary, report and cards (--no-wait's last job)."""
    return write_outputs(Path(grid_dir), say)


TRACKER_LOCK = threading.Lock()  # tuning groups run in threads; a tracker (MLflow's active run) holds one run at a time


def run_plans_on(spread: Spread, plans: list[RunPlan], grid_dir: Path, log, title: str, on_validation=None, tracker=None,
                 wait: bool = False) -> list[RunResult | None]:
    """As run_plans, on the engine's workers: every plan not yet finished is a job; each plan's result, in order.
    A job that raised, or whose worker was lost more than `spread.retries` times, is recorded as a failed run."""
    done = finished_runs(plans, grid_dir)
    todo = [p for p in plans if p.run_id not in done]
    labels = dict(zip((p.run_id for p in plans), run_labels(plans)))
    if level() != "quiet" and on_validation is None:
        log(f"{title}: {len(plans)} runs ({len(done)} already finished) on {spread.engine.name} -> {grid_dir}")
    jobs = [RunJob(p.config, str(grid_dir.resolve()), spread.online, labels[p.run_id], on_validation, wait, spread.threads)
            for p in todo]
    results: dict = dict(done)
    shown = on_validation is None and threading.current_thread() is threading.main_thread()
    with grid_bar(title, len(plans), len(done)) if shown else nullcontext() as bar:
        def on_end(index: int, outcome: Outcome) -> None:
            plan, run_dir = todo[index], grid_dir / todo[index].run_id
            result = outcome.value if outcome.ok else worker_failure(plan, outcome, spread.retries)
            label = labels[plan.run_id]
            if result is None:
                log(f"{label}: skipped, another worker is running it ({describe_holder(run_dir)})")
            elif not outcome.ok:
                record_failure(result, run_dir, log, f"{label}:")
            else:
                log(f"{label}: " + (f"FAILED: {result.error}" if not result.ok else result_line(result)))
            if tracker is not None and result is not None:
                with TRACKER_LOCK:  # metrics and config, once the run ended (curves are in its train.log)
                    tracker.start(plan.run_id, plan.config.to_dict())
                    tracker.finish(result)
            results[plan.run_id] = result
            if bar is not None and result is not None:
                bar.update()

        def on_retry(index: int, outcome: Outcome, attempt: int) -> None:
            log(f"{labels[todo[index].run_id]}: its worker was lost ({outcome.error}); submitted again ({attempt} of "
                f"{spread.retries}), resuming from its last checkpoint")

        # A lost worker's lock outlives it: on another node it turns stale only after run/lock.STALE_AFTER_S, so the
        # job submitted again waits for it (and takes it over) instead of leaving its own run to a dead worker.
        map_jobs(spread.engine, run_job, jobs, spread.retries, on_end, on_retry, again=lambda job: dataclasses.replace(job, wait=True))
    return [results.get(p.run_id) for p in plans]


def worker_failure(plan: RunPlan, outcome: Outcome, retries: int) -> RunResult:
    """A run whose job raised (e.g. its data missing on that node), or whose worker kept dying, as a failed run."""
    error = RuntimeError(f"worker lost: {outcome.error}" if outcome.lost else f"on the worker: {outcome.error}")
    return RunResult.failed(plan.config, plan.config.variant, error, *worker_fault(outcome.lost, retries))


def write_outputs(grid_dir: Path, log) -> list[str]:
    """summary.md/csv, the report and the model cards; derived from the runs, so their failure never fails
    or loses a run: the outputs not written are returned (and logged with the command that retries).
    At the quiet level only the report's path and warnings are printed."""
    from medpeft.report.build import build_report

    quiet = level() == "quiet"
    try:
        paths = build_report(grid_dir, on_summary=(lambda text: None) if quiet else log)
    except Exception as err:  # noqa: BLE001
        log(f"warning: report not written ({type(err).__name__}: {err}); retry with: medpeft report {grid_dir}")
        return ["report"]
    log(f"report: {paths['html']}")
    from medpeft.use.card import write_cards

    try:
        cards = write_cards(grid_dir)
    except Exception as err:  # noqa: BLE001 - a card is derived from the runs, like the report
        log(f"warning: model cards not written ({type(err).__name__}: {err}); retry with: medpeft report {grid_dir}")
        return ["model cards"]
    if cards and not quiet:
        log(f"model cards: README.md in the adapter/ of {len(cards)} run(s)")
    return []
