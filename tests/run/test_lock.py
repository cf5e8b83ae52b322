"""One run, one worker: run locks, stale takeover, and two processes sharing one grid folder."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import pytest

from medpeft import grid as grid_module
from medpeft.run import loop
from medpeft.config import config_from_dict
from medpeft.run import lock as lock_module
from medpeft.run.lock import LOCK_NAME, acquire_run_lock, read_lock
from medpeft.run.record import RunResult


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def write_lock(run_dir, host: str, pid: int, age_s: float = 0.0):
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "started": "then", "token": "theirs"}))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_a_held_lock_is_not_taken_and_a_released_one_is(tmp_path):
    first = acquire_run_lock(tmp_path / "run")
    assert first is not None
    info = read_lock(tmp_path / "run" / LOCK_NAME)
    assert (info["host"], info["pid"]) == (socket.gethostname(), os.getpid())
    assert acquire_run_lock(tmp_path / "run") is None  # a live worker (this one) holds it
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with acquire_run_lock(tmp_path / "run") as again:
        assert again is not None
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # no temporary or guard file left


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    write_lock(tmp_path / "run", socket.gethostname(), dead_pid())
    with caplog.at_level("WARNING", logger="medpeft"):
        taken = acquire_run_lock(tmp_path / "run")
    assert taken is not None and "stale" in caplog.text
    assert read_lock(tmp_path / "run" / LOCK_NAME)["pid"] == os.getpid()
    taken.release()


def test_a_lock_from_another_host_is_stale_only_when_its_heartbeat_is_old(tmp_path):
    write_lock(tmp_path / "run", "another-node", 1, age_s=60)
    assert acquire_run_lock(tmp_path / "run") is None  # its heartbeat is recent: that node is working
    write_lock(tmp_path / "run", "another-node", 1, age_s=lock_module.STALE_AFTER_S + 1)
    taken = acquire_run_lock(tmp_path / "run")
    assert taken is not None
    taken.release()


def test_the_heartbeat_renews_the_lock_and_release_leaves_another_workers_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    held = acquire_run_lock(tmp_path / "run")
    path = tmp_path / "run" / LOCK_NAME
    os.utime(path, (time.time() - 100, time.time() - 100))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 5
    write_lock(tmp_path / "run", "another-node", 1)  # taken over by someone else meanwhile
    held.release()
    assert read_lock(path)["host"] == "another-node"


def tiny_plan_config(seed: int):
    return config_from_dict({"task": "pubmed-rct", "model": "tiny-bert", "method": "lora", "seed": seed})


class FakePlan:
    def __init__(self, cfg):
        self.config, self.run_id, self.model_path = cfg, cfg.run_id, "tiny"


def fake_result(plan, run_dir):
    result = RunResult.succeeded(plan.config, {}, efficiency={"trainable_pct": 1.0})
    result.write(run_dir)
    return result


def test_run_plans_skips_a_held_run_or_waits_for_it(tmp_path, monkeypatch):
    plans = [FakePlan(tiny_plan_config(seed)) for seed in (0, 1)]
    ran = []
    monkeypatch.setattr(loop, "run_one", lambda plan, run_dir, *a, **k: (ran.append(plan.run_id), fake_result(plan, run_dir))[1])
    monkeypatch.setattr(loop, "LOCK_POLL_S", 0.05)
    other = write_lock(tmp_path / plans[0].run_id, "another-node", 1)
    lines = []
    results = grid_module.run_plans(plans, tmp_path, lines.append, "test")
    assert results[0] is None and results[1].ok and ran == [plans[1].run_id]
    assert any("skipped, another worker is running it" in line and "another-node" in line for line in lines)

    def other_worker_finishes():
        time.sleep(0.3)
        fake_result(plans[0], tmp_path / plans[0].run_id)
        other.unlink()

    threading.Thread(target=other_worker_finishes).start()
    results = grid_module.run_plans(plans, tmp_path, lines.append, "test", wait=True)
    assert all(r is not None and r.ok for r in results) and ran == [plans[1].run_id]  # read, not run again


WORKER = textwrap.dedent("""
    import os, sys, time
    from medpeft import grid
    from medpeft.config import expand_grid
    from medpeft.run import execute
    from medpeft.run.record import RunResult

    log_path, runs_dir, me = sys.argv[1:4]

    def train(plan, run_dir, **_):  # stands in for training: the lock is what is tested
        with open(log_path, "a") as fh:
            fh.write(f"{plan.run_id} {me}\\n")
        time.sleep(0.5)
        result = RunResult.succeeded(plan.config, plan.config.variant, efficiency={"trainable_pct": 1.0})
        result.write(run_dir)
        return result

    real_run_plans = grid.run_plans

    def run_plans_together(*args, **kwargs):  # both workers reach their run loop at the same moment
        open(os.path.join(runs_dir, f"ready-{me}"), "w").close()
        while sum(name.startswith("ready-") for name in os.listdir(runs_dir)) < 2:
            time.sleep(0.01)
        return real_run_plans(*args, **kwargs)

    execute.run_experiment, grid.run_plans, grid.write_outputs = train, run_plans_together, lambda *a: None
    spec = {"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"}, "grid": {"seed": [0, 1, 2, 3, 4, 5]}}
    grid.run_grid(expand_grid(spec, name="shared"), runs_dir)
""")


@pytest.mark.slow  # two fresh processes importing torch and planning the grid: ~30 s on 2 cores
def test_two_workers_on_one_grid_train_each_run_once(tmp_path, assets_ready):
    from medpeft.config import expand_grid

    script, trained, runs = tmp_path / "worker.py", tmp_path / "trained.txt", tmp_path / "runs"
    script.write_text(WORKER)
    runs.mkdir()
    workers = [subprocess.Popen([sys.executable, str(script), str(trained), str(runs), name], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    spec = {"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"}, "grid": {"seed": [0, 1, 2, 3, 4, 5]}}
    expected = {c.run_id for c in grid_module.grid_configs(expand_grid(spec, name="shared"))}
    lines = [line.split() for line in trained.read_text().splitlines()]
    assert Counter(run_id for run_id, _ in lines) == Counter(expected)  # every run once: no gap, no duplicate
    assert {worker for _, worker in lines} == {"a", "b"}  # both worked, so the locks were contended
    assert any("skipped, another worker is running it" in out for out in outputs)
    assert not list((runs / "shared").glob(f"*/{LOCK_NAME}"))
    assert all(json.loads((runs / "shared" / run_id / "result.json").read_text())["status"] == "ok" for run_id in expected)


@pytest.mark.parametrize("stale", [False, True])
def test_a_takeover_guard_left_by_a_dead_worker_does_not_block_forever(tmp_path, stale):
    write_lock(tmp_path / "run", socket.gethostname(), dead_pid())
    guard = tmp_path / "run" / (LOCK_NAME + ".takeover")
    guard.write_text("{}")
    if stale:
        old = time.time() - lock_module.GUARD_STALE_S - 1
        os.utime(guard, (old, old))
    assert acquire_run_lock(tmp_path / "run") is None  # someone seems to be taking it over right now
    taken = acquire_run_lock(tmp_path / "run")
    assert (taken is not None) == stale  # an abandoned guard is cleared, a fresh one respected
    if taken:
        taken.release()
