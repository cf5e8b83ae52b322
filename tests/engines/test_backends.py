"""Issue 30: a grid through Ray (a local 2-CPU cluster), through submitit (its local executor: no Slurm here) and
through a process per run writes the same run folders, run ids and metrics as the local loop, tuned group included;
a worker killed mid-run ends with every run done exactly once (its run resumed, not trained twice to the end)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from medpeft import grid as grid_module
from medpeft.config import expand_grid
from medpeft.config.engine import parse_engine_options
from medpeft.run.lock import LOCK_NAME, read_lock
from medpeft.run.progress import LOG_FILE
from medpeft.run.record import load_results

BASE = {"task": "pubmed-rct", "model": "tiny-bert",
        "data": {"train_size": 16, "val_size": 8, "test_size": 8, "max_source_tokens": 32},
        "train": {"max_steps": 3, "batch_size": 4, "eval_batch_size": 8}}
SPEC = {"base": BASE, "grid": [{"method": ["lora", "ia3", "full"], "seed": [0, 1]},  # 6 runs (and the baseline)
                               {"method": ["lora"], "method_args.r": [4], "seed": [0, 1],  # a tuned group: 2 trials, 2 finals
                                "tune": {"train.lr": [1.0e-4, 1.0e-2]}}]}
ENGINES = {"ray": {"ray": {"num_cpus": 2}, "resources": {"cpus_per_run": 1}},
           "slurm": {"slurm": {"cluster": "local", "array_parallelism": 2, "poll_s": 0.5}},
           "processes": {}}
# submitit's debug executor runs each job in this process (the local executor, a process per job, is
# what the kill test uses): the same submission, array and outcome code, seconds instead of a minute.
IN_PROCESS = {"ray": ENGINES["ray"], "slurm": {"slurm": {"cluster": "debug", "poll_s": 0.1}}, "processes": {}}
NEEDS = {"ray": "ray", "slurm": "submitit", "processes": None}  # the package each backend needs


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """One engine per backend for this module's in-process grids (a Ray cluster starts once)."""
    from medpeft.engines import open_engine

    opened = {}

    def engine(backend: str):
        if NEEDS[backend]:
            pytest.importorskip(NEEDS[backend])
        if backend not in opened:
            options = parse_engine_options(IN_PROCESS[backend], "test")
            opened[backend] = open_engine(backend, options, tmp_path_factory.mktemp("jobs"), lambda *_: None)
        return opened[backend]

    yield engine
    for opened_engine in opened.values():
        opened_engine.close()


def scores(grid_dir: Path) -> dict:
    """run id -> (status, metrics, a trial?) of every run folder."""
    return {r.run_id: (r.status.value, r.metrics, r.tuning_trial) for r in load_results(grid_dir)}


@pytest.fixture(scope="module")
def local_scores(tmp_path_factory, assets_ready):
    outcome = grid_module.run_grid(expand_grid(SPEC, name="spread"), tmp_path_factory.mktemp("local"), log=lambda *a: None)
    assert outcome.exit_code == 0
    return scores(outcome.grid_dir)


@pytest.mark.parametrize("backend", ["ray", "slurm"])  # processes: in the kill test, which compares its scores too
def test_a_grid_and_a_tuned_group_through_an_engine_match_the_local_loop(backend, local_scores, engines, tmp_path):
    lines = []
    outcome = grid_module.run_grid(expand_grid(SPEC, name="spread"), tmp_path, log=lines.append,
                                   spread=grid_module.Spread(engines(backend)))
    assert outcome.exit_code == 0 and outcome.runs == 9 and not outcome.failed, outcome.account()
    assert scores(outcome.grid_dir) == local_scores  # same run ids (trials and finals too), same metrics
    assert len(local_scores) == 11 and sum(trial for *_, trial in local_scores.values()) == 2
    assert (outcome.grid_dir / "report.html").exists()
    assert any("tuning pubmed-rct.tiny-bert.lora" in line and "chose train.lr=" in line for line in lines)
    assert f"grid spread: 9 runs (0 already finished) on {backend} -> {outcome.grid_dir}" in lines


# 2 runs with checkpoints every 2 steps (and the baseline): the grid whose worker is killed mid-run
KILLED = {"name": "killed", "base": {**BASE, "method": "lora", "train": {**BASE["train"], "max_steps": 40, "checkpoint_steps": 2}},
          "grid": {"seed": [0, 1]}}


@pytest.fixture(scope="module")
def never_interrupted(tmp_path_factory, assets_ready):
    """The scores of KILLED run in this process, never interrupted (once for every backend's kill test)."""
    return scores(grid_module.run_grid(expand_grid(KILLED, name="killed"), tmp_path_factory.mktemp("here"), log=lambda *a: None).grid_dir)


def kill_a_worker_mid_run(backend: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, int, str]:
    """`medpeft run --backend ...` on KILLED; once a run has a checkpoint, SIGKILL the worker that holds it.
    The finished process, the killed pid and the run it was training."""
    spec = {**KILLED, **ENGINES[backend]}
    grid_file = tmp_path / "killed.yaml"
    grid_file.write_text(yaml.safe_dump(spec))
    grid_dir = tmp_path / "runs" / "killed"
    driver = subprocess.Popen([sys.executable, "-m", "medpeft", "run", str(grid_file), "--runs-dir", str(tmp_path / "runs"),
                               "--backend", backend, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, victim, deadline = None, None, time.time() + 240
    while killed is None and time.time() < deadline and driver.poll() is None:
        for lock in grid_dir.glob(f"*.lora.*/{LOCK_NAME}"):
            info = read_lock(lock) or {}
            if list(lock.parent.glob("checkpoints/checkpoint-*/medpeft-checkpoint.json")) and info.get("pid"):
                os.kill(int(info["pid"]), signal.SIGKILL)
                killed, victim = int(info["pid"]), lock.parent.name
                break
        time.sleep(0.05)
    out, _ = driver.communicate(timeout=300)
    assert killed is not None, f"no worker was caught mid-run:\n{out}"
    return subprocess.CompletedProcess(driver.args, driver.returncode, out), killed, victim


@pytest.mark.parametrize("backend", ["ray", "slurm", "processes"])
def test_a_worker_killed_mid_run_ends_with_every_run_done_exactly_once(backend, tmp_path, never_interrupted):
    if NEEDS[backend]:
        pytest.importorskip(NEEDS[backend])
    done, killed, victim = kill_a_worker_mid_run(backend, tmp_path)
    assert done.returncode == 0, done.stdout
    assert "its worker was lost" in done.stdout and "submitted again (1 of 1)" in done.stdout, done.stdout
    grid_dir = tmp_path / "runs" / "killed"
    results = {r.run_id: r for r in load_results(grid_dir)}
    assert len(results) == 3 and all(r.ok for r in results.values())  # 2 runs and the baseline
    for run_id in results:
        log = (grid_dir / run_id / LOG_FILE).read_text()
        assert log.count(f"{run_id}: accuracy=") == 1, (run_id, log)  # finished once
        assert ("resuming from its checkpoint" in log) == (run_id == victim), (run_id, log)
    assert results[victim].fit.steps == 40
    assert not list(grid_dir.glob(f"*/{LOCK_NAME}"))  # every lock given back
    assert not (grid_dir / "slurm" / "%j").exists()  # submitit's unformatted job folder, left empty
    if backend == "processes":  # the killed process's log is named where the loss is reported
        assert f"processes/{killed}.log" in done.stdout and (grid_dir / "processes" / f"{killed}.log").exists(), done.stdout
        if sys.platform == "linux":  # each run in a fresh process: nothing left resident by earlier runs in its peak
            left = [json.loads((grid_dir / run_id / "result.json").read_text())["efficiency"]["earlier_runs_resident_bytes"]
                    for run_id in results]
            assert left == [0, 0, 0], left
    assert scores(grid_dir) == never_interrupted  # the resumed run scores as one never interrupted


def test_optuna_trials_on_ray_report_to_the_study_from_their_workers(tmp_path, engines, assets_ready):
    """Two trials in flight on a 2-CPU cluster: 4 trials in all, none twice, each reporting its mid-training
    validation loss to the shared journal from its Ray worker (the pruner's input), the choice inside the range."""
    optuna = pytest.importorskip("optuna")
    spec = {"base": {**BASE, "method": "lora"}, "grid": {"seed": [0]},
            "tune": {"search": "optuna", "trials": 4, "train.lr": {"low": 1.0e-5, "high": 1.0e-1, "log": True}}}
    lines = []
    outcome = grid_module.run_grid(expand_grid(spec, name="optuna"), tmp_path, log=lines.append,
                                   spread=grid_module.Spread(engines("ray")))
    assert outcome.exit_code == 0, outcome.account()
    assert any("4 trials (0 already done, 2 at once)" in line for line in lines), lines
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(outcome.grid_dir / "tuning.journal")))
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    ran = [t for t in study.trials if t.user_attrs.get("finished")]
    assert len(ran) == 4 and len({t.user_attrs["run_id"] for t in ran}) == 4
    assert all(t.intermediate_values for t in ran)  # reported from the worker that trained it
    trials = [r for r in load_results(outcome.grid_dir) if r.tuning_trial]
    assert sorted(r.run_id for r in trials) == sorted(t.user_attrs["run_id"] for t in ran)
    final = [r for r in load_results(outcome.grid_dir) if r.config.get("tuning", {}) and r.config["tuning"]["role"] == "final"]
    assert len(final) == 1 and 1.0e-5 <= final[0].config["train"]["lr"] <= 1.0e-1


def test_a_worker_trains_with_the_threads_its_run_asked_for(monkeypatch, tmp_path):
    """A Slurm job's torch would take every core of the node; a run takes resources.cpus_per_run threads."""
    import torch

    import medpeft.plan

    seen = []

    def plan_run(cfg, online):
        seen.append(torch.get_num_threads())
        raise RuntimeError("planned")

    monkeypatch.setattr(medpeft.plan, "plan_run", plan_run)
    before = torch.get_num_threads()
    cfg = expand_grid({"base": {**BASE, "method": "lora"}}, name="t").runs[0]
    try:
        with pytest.raises(RuntimeError, match="planned"):
            grid_module.run_job(grid_module.RunJob(cfg, str(tmp_path), False, "[1/1]", threads=1))
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


def test_a_run_whose_job_raises_on_its_worker_is_recorded_failed_and_the_grid_goes_on(engines, monkeypatch, tmp_path, assets_ready):
    """A run that passed its checks here but whose plan fails on its worker (a model or data file missing on that
    node): recorded with cause worker_error and a fix, never retried; the other runs finish, the report is
    written and the grid exits 1."""
    import dataclasses

    real_job = grid_module.RunJob

    def job(config, *args, **kwargs):  # the worker is handed a model its node does not have
        return real_job(dataclasses.replace(config, model="no-such-model") if config.method == "ia3" else config, *args, **kwargs)

    monkeypatch.setattr(grid_module, "RunJob", job)
    lines = []
    spec = {"base": BASE, "grid": {"method": ["lora", "ia3"]}}
    outcome = grid_module.run_grid(expand_grid(spec, name="raises"), tmp_path, log=lines.append,
                                   spread=grid_module.Spread(engines("ray"), retries=2))
    assert outcome.exit_code == 1 and [r.method for r in outcome.failed] == ["ia3"], outcome.account()
    failed = outcome.failed[0]
    assert failed.cause == "worker_error" and "no-such-model" in failed.error and "that node" in failed.fix
    assert not any("submitted again" in line for line in lines)  # an error is not retried
    assert {r.run_id: r.status.value for r in load_results(outcome.grid_dir)}[failed.run_id] == "failed"
    assert (outcome.grid_dir / "report.html").exists()


def test_a_slurm_time_limit_ends_the_job_not_the_run(monkeypatch, tmp_path, assets_ready):
    """submitit raises UncompletedJobError inside a job whose time is up: the run must not be recorded as failed
    (its job dies, the driver submits it again and it resumes), and the lock is given back."""
    from medpeft.plan import plan_runs
    from medpeft.run import execute, loop

    class UncompletedJobError(RuntimeError):  # submitit.core.utils' name
        pass

    def out_of_time(plan, run_dir, **kwargs):
        raise UncompletedJobError("Job not requeued because: timed-out and not checkpointable.")

    monkeypatch.setattr(execute, "run_experiment", out_of_time)
    plan = plan_runs(expand_grid({"base": {**BASE, "method": "lora"}}, name="t").runs)[0]
    with pytest.raises(UncompletedJobError):
        loop.run_plans([plan], tmp_path, lambda *a: None, "t")
    assert not (tmp_path / plan.run_id / "result.json").exists() and not (tmp_path / plan.run_id / LOCK_NAME).exists()


def test_stop_signals_end_a_runs_process_at_a_checkpoint_and_the_run_resumes(tmp_path, assets_ready):
    """--backend processes. A SIGTERM to the run's process alone (a scheduler, a user): it saves a checkpoint and
    stops, and the grid submits the run again, which resumes. Then Ctrl-C: a run's process is out of the terminal's
    reach (its own process group), so it reaches the grid's process (here: this one), which passes it on as SIGTERM:
    the run saves a checkpoint and stops, its process ends with the grid, and the same grid again resumes it."""
    from medpeft.engines.process_engine import ProcessEngine
    from medpeft.errors import Preempted

    spec = {"name": "stopped", "base": {**BASE, "method": "lora", "train": {**BASE["train"], "max_steps": 40, "checkpoint_steps": 2}}}
    grid_dir, pids, lines, before = tmp_path / "stopped", [], [], {}

    def signal_at_checkpoints():  # from a thread: SIGINT to this process lands in the main thread, in run_grid
        deadline = time.time() + 120
        while time.time() < deadline and len(pids) < 2:
            for lock in grid_dir.glob(f"*.lora.*/{LOCK_NAME}"):
                pid = int((read_lock(lock) or {}).get("pid", 0))
                saved = set(lock.parent.glob("checkpoints/checkpoint-*/medpeft-checkpoint.json"))
                before.setdefault(pid, saved)  # the checkpoints there when this process took the run
                if pid and pid not in pids and saved - before[pid]:  # one of its own: it is training
                    pids.append(pid)
                    os.kill(*((pid, signal.SIGTERM) if len(pids) == 1 else (os.getpid(), signal.SIGINT)))
            time.sleep(0.05)

    engine = ProcessEngine(tmp_path / "processes", lambda *a: None)
    threading.Thread(target=signal_at_checkpoints, daemon=True).start()
    try:
        with pytest.raises(Preempted, match="stopped by SIGINT"):
            grid_module.run_grid(expand_grid(spec, name="stopped"), tmp_path, log=lines.append, spread=grid_module.Spread(engine))
    finally:
        engine.close()
    assert len(pids) == 2, (pids, lines)
    assert any("its worker was lost (Preempted: stopped by SIGTERM in training" in line and "submitted again (1 of 1)" in line
               for line in lines), lines  # not recorded as a failed run
    for pid in pids:  # both ended: the first by its own SIGTERM, the second with the grid
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    (run_dir,) = [d for d in grid_dir.glob("*.lora.*") if d.is_dir()]
    assert not (run_dir / "result.json").exists() and not (run_dir / LOCK_NAME).exists()
    logs = "".join(p.read_text() for p in (tmp_path / "processes").glob("*.log"))
    assert logs.count("saving a checkpoint after this training step") == 2
    again = grid_module.run_grid(expand_grid(spec, name="stopped"), tmp_path, log=lambda *a: None)  # the same grid again
    assert again.exit_code == 0, again.account()
    assert (run_dir / LOG_FILE).read_text().count("resuming from its checkpoint") == 2
    assert {r.status.value for r in load_results(grid_dir)} == {"ok"}


def test_a_runs_process_stops_when_the_grids_process_is_gone(tmp_path):
    """The grid's process killed with SIGKILL cannot pass a stop on: its end of the run's lifeline pipe closes
    with it, and the run's process stops as at a scheduler's SIGTERM (a checkpoint, in training) instead of
    training on, unwatched, with its run locked. Here the job sleeps, and the SIGTERM unwinds it."""
    from medpeft.engines.process_engine import ProcessEngine

    engine = ProcessEngine(tmp_path / "processes", lambda *a: None)
    try:
        (handle,) = engine.start(time.sleep, [120])
        engine.launch()
        handle.lifeline.close()  # what the kernel does to every file of a process that dies
        start = time.time()
        ((_, outcome),) = engine.finished([handle])
    finally:
        engine.close()
    assert outcome.lost and outcome.error == "Preempted: stopped by SIGTERM outside training", outcome.error
    assert time.time() - start < 30


def test_a_process_per_run_gives_back_its_value_what_it_raised_or_that_it_was_lost(tmp_path):
    """The ends of a run's process, with stdlib functions as jobs: a value, an exception (the run is recorded failed,
    not retried), a process that exits without a result (lost: its run is submitted again) and one that cannot
    start (a failed run; the grid goes on, where it used to end with a traceback)."""
    import math

    from medpeft.engines.base import map_jobs
    from medpeft.engines.process_engine import ProcessEngine

    engine = ProcessEngine(tmp_path / "processes", lambda *a: None)
    try:
        value, error = map_jobs(engine, math.sqrt, [4.0, -1.0], 0, lambda *a: None, lambda *a: None)
        (lost,) = map_jobs(engine, os._exit, [3], 0, lambda *a: None, lambda *a: None)
        (unstarted,) = map_jobs(engine, math.sqrt, [lambda: 4.0], 0, lambda *a: None, lambda *a: None)  # does not pickle
    finally:
        engine.close()
    assert not unstarted.ok and not unstarted.lost and unstarted.error.startswith("its process could not start (")
    assert value.ok and value.value == 2.0
    assert not error.ok and not error.lost and error.error == "ValueError: math domain error"
    assert lost.lost and "exited with code 3 without a result; its log: " in lost.error and str(tmp_path) in lost.error
