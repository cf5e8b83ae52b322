"""Optuna's study storage (`tune.storage`): checked at config time, masked when shown, the journal file by
default (an older grid's tuning.db kept), and one study shared by workers running at once."""
from __future__ import annotations

import json
import threading
import time

import pytest

from medpeft import grid as grid_module
from medpeft import tune
from medpeft.tune import storage as tune_storage
from medpeft.config import parse_tune
from medpeft.config.tuning import mask_storage
from medpeft.errors import ConfigError
from medpeft.run import execute
from medpeft.run.record import load_results
from tests.test_tune import BASE, OPTUNA_BLOCK, fake_runs, tuned_grid


@pytest.mark.parametrize("storage, message", [
    ("redis://cache:6379/0", r"tune.storage: unknown database 'redis'"),
    ("mongodb://bob:hunter2@db/x", r"tune.storage: unknown database 'mongodb' in mongodb://bob:\*\*\*@db/x"),
    ("runs/tuning.db", r"tune.storage: .* looks like a SQLite file; write sqlite:///runs/tuning.db"),
    ("  ", r"tune.storage is empty"),
])
def test_a_bad_storage_is_a_config_error_naming_tune_storage(storage, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_tune(dict(OPTUNA_BLOCK, storage=storage), "grid.yaml")
    assert "hunter2" not in str(err.value)


def test_storage_needs_optuna_and_accepts_urls_and_journal_paths():
    with pytest.raises(ConfigError, match="tune.storage .* needs search: optuna"):
        parse_tune({"train.lr": [1e-3], "storage": "x.journal"}, "grid.yaml")
    for storage in ("postgresql://u:p@db:5432/optuna", "postgresql+psycopg2://db/optuna", "mysql://u@db/optuna",
                    "sqlite:////nfs/studies.db", "/nfs/shared/tuning.journal", "studies.journal"):
        assert parse_tune(dict(OPTUNA_BLOCK, storage=storage), "grid.yaml").storage == storage


def test_a_password_is_masked():
    assert mask_storage("postgresql://bob:s3cr3t@db.example.org:5432/optuna") == "postgresql://bob:***@db.example.org:5432/optuna"
    assert mask_storage("mysql+pymysql://bob:p@ss@db/optuna?charset=utf8") == "mysql+pymysql://bob:***@db/optuna?charset=utf8"
    for clear in ("mysql://bob@db/optuna", "sqlite:///runs/a.db", "/nfs/tuning.journal"):
        assert mask_storage(clear) == clear


def test_an_unreachable_database_fails_before_training_and_hides_its_password(tmp_path, monkeypatch, assets_ready):
    pytest.importorskip("optuna")
    calls = []
    fake_runs(monkeypatch, calls)
    block = dict(OPTUNA_BLOCK, storage="postgresql://bob:hunter2@127.0.0.1:9/optuna")  # port 9: discard, closed
    logs = []
    with pytest.raises(ConfigError, match=r"tune.storage: cannot open postgresql://bob:\*\*\*@127.0.0.1:9/optuna") as err:
        grid_module.run_grid(tuned_grid(tune_block=block), tmp_path, log=logs.append)
    assert "hunter2" not in str(err.value) and not any("hunter2" in line for line in logs)
    assert calls == []


def test_the_default_is_a_journal_and_the_storage_is_not_recorded(tmp_path, monkeypatch, assets_ready):
    pytest.importorskip("optuna")
    fake_runs(monkeypatch, [])
    block = dict(OPTUNA_BLOCK, trials=2, storage="shared/studies.journal")  # relative: to the grid folder
    grid_dir = grid_module.run_grid(tuned_grid(tune_block=block), tmp_path, log=lambda *a: None).grid_dir
    assert (grid_dir / "shared" / "studies.journal").stat().st_size > 0 and not (grid_dir / "tuning.db").exists()
    assert all("studies.journal" not in json.dumps(r.config) for r in load_results(grid_dir))


def test_a_grid_folder_with_tuning_db_keeps_resuming_it(tmp_path, monkeypatch, assets_ready):
    pytest.importorskip("optuna")
    calls = []
    fake_runs(monkeypatch, calls)
    grid_dir = tmp_path / "tuned"
    old = dict(OPTUNA_BLOCK, trials=3, storage=f"sqlite:///{grid_dir / 'tuning.db'}")  # as medpeft wrote it before
    grid_module.run_grid(tuned_grid(tune_block=old), tmp_path, log=lambda *a: None)
    logs = []
    grid_module.run_grid(tuned_grid(tune_block=dict(OPTUNA_BLOCK, trials=5)), tmp_path, log=logs.append)
    assert sum("resuming the studies in" in line and "tuning.db" in line for line in logs) == 1
    assert any("(3 already done)" in line for line in logs)
    assert not (grid_dir / "tuning.journal").exists()
    assert len([c for c in calls if ".lora." in c]) == 3 + 1 + 2 + 1  # 3 trials, final; 2 more trials, new final


def two_workers(configs, grid_dir) -> list:
    """tune_grid run by two threads at once, each opening its own storage; their (finals, failed)."""
    outcomes, errors = [], []

    def run_trials(plans, on_validation=None):
        return grid_module.run_plans(plans, grid_dir, lambda *a: None, "tuning trials", on_validation, wait=True)

    def worker():
        try:
            outcomes.append(tune.tune_grid(configs, grid_dir, False, run_trials, log=lambda *a: None))
        except BaseException as err:  # noqa: BLE001 (reported by the assertion below)
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(outcomes) == 2
    return outcomes


def journal_study(grid_dir):
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(grid_dir / "tuning.journal")))
    return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)


def test_two_workers_share_one_study_without_duplicate_trials(tmp_path, monkeypatch, assets_ready):
    """Two workers (threads, each with its own storage object) tune the same group against one journal
    file at once: the study gets exactly `trials` trials, each number and run trained once, and both
    workers choose the same values, from all of them."""
    optuna = pytest.importorskip("optuna")
    calls, threads_trained = [], set()
    fake_runs(monkeypatch, calls)
    fake = execute.run_experiment

    def slow(plan, run_dir, on_validation=None):  # long enough that the workers' trials overlap
        threads_trained.add(threading.get_ident())
        time.sleep(0.3)
        return fake(plan, run_dir, on_validation=on_validation)

    monkeypatch.setattr(execute, "run_experiment", slow)
    block = dict(OPTUNA_BLOCK, trials=7)
    configs = grid_module.grid_configs(tuned_grid(tune_block=block))
    grid_dir = tmp_path / "tuned"
    chosen = [[c.train.lr for c in finals if c.tuning] for finals, _ in two_workers(configs, grid_dir)]
    study = journal_study(grid_dir)
    trained = [t for t in study.trials if t.user_attrs.get("finished")]
    assert len(trained) == 7 and len({t.number for t in trained}) == 7
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
    assert len(calls) == len(set(calls)) == 7  # no run trained twice (trials of equal values share a run)
    assert len({t.user_attrs["run_id"] for t in trained}) == 7 and len(threads_trained) == 2  # both workers trained
    assert chosen[0] == chosen[1] == [study.best_params["train.lr"]]


def test_two_workers_claiming_the_last_trial_at_once_train_it_once(tmp_path, monkeypatch, assets_ready):
    """Both workers see one trial left and ask at the same moment (a barrier in Study.ask): the later
    trial number is surplus and stops, so the study still trains `trials` trials."""
    optuna = pytest.importorskip("optuna")
    calls = []
    fake_runs(monkeypatch, calls)
    barrier, real_ask = threading.Barrier(2, timeout=30), optuna.study.Study.ask

    def ask_together(study, *args, **kwargs):
        if not getattr(threading.current_thread(), "asked", False):
            threading.current_thread().asked = True
            barrier.wait()
        return real_ask(study, *args, **kwargs)

    monkeypatch.setattr(optuna.study.Study, "ask", ask_together)
    configs = grid_module.grid_configs(tuned_grid(tune_block=dict(OPTUNA_BLOCK, trials=1)))
    grid_dir = tmp_path / "tuned"
    two_workers(configs, grid_dir)
    study = journal_study(grid_dir)
    assert [t.number for t in study.trials if t.user_attrs.get("finished")] == [0]
    assert [t.number for t in study.trials if t.user_attrs.get("surplus")] == [1]
    assert len(calls) == 1


def test_only_abandoned_running_trials_are_stale(tmp_path, monkeypatch):
    """A trial is failed as abandoned when its worker is gone, never while a live worker runs it."""
    import os
    import socket
    import subprocess
    import sys
    from datetime import datetime, timedelta
    from types import SimpleNamespace

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here, now = socket.gethostname(), datetime.now()

    def trial(worker=None, age_s=0.0, run_id=None):
        attrs = {k: v for k, v in (("worker", worker), ("run_id", run_id)) if v is not None}
        return SimpleNamespace(user_attrs=attrs, datetime_start=now - timedelta(seconds=age_s))

    monkeypatch.setattr(tune_storage, "LIVE_TRIALS", {"mine"})
    assert tune_storage.stale_trial(trial({"host": here, "pid": int(dead.stdout)}), tmp_path)  # its process exited
    assert tune_storage.stale_trial(trial({"host": here, "pid": os.getpid(), "token": "old"}), tmp_path)  # this process, interrupted
    assert not tune_storage.stale_trial(trial({"host": here, "pid": os.getpid(), "token": "mine"}), tmp_path)  # running here now
    assert not tune_storage.stale_trial(trial({"host": here, "pid": 1}), tmp_path)  # a live process
    assert not tune_storage.stale_trial(trial(), tmp_path) and tune_storage.stale_trial(trial(age_s=3600), tmp_path)  # just asked / legacy
    far = {"host": "elsewhere", "pid": 1}
    assert not tune_storage.stale_trial(trial(far, age_s=60, run_id="r"), tmp_path)  # another machine, recent
    assert tune_storage.stale_trial(trial(far, age_s=3600, run_id="r"), tmp_path)  # old, and its run holds no lock


@pytest.mark.slow
def test_two_medpeft_processes_tune_one_grid_with_a_tiny_model(tmp_path, assets_ready):
    """The real thing, smallest: two `medpeft run` processes on one tuned grid folder (tiny-bert, 3 steps,
    4 Optuna trials): 4 trials in all, each run trained once, both processes choose the same value."""
    pytest.importorskip("optuna")
    import subprocess
    import sys

    import yaml

    spec = {"name": "twoproc", "base": BASE, "grid": {"method": ["lora"], "seed": [0]},
            "tune": dict(OPTUNA_BLOCK, trials=4)}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "medpeft", "run", "g.yaml", "--runs-dir", "runs"]
    workers = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    logs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    study = journal_study(tmp_path / "runs" / "twoproc")
    trained = [t for t in study.trials if t.user_attrs.get("finished")]
    assert sorted(t.number for t in trained) == [0, 1, 2, 3]
    assert len({t.user_attrs["run_id"] for t in trained}) == 4
    chose = [line.rsplit("chose ", 1)[1] for log in logs for line in log.splitlines() if " chose train.lr=" in line]
    assert len(chose) == 2 and chose[0] == chose[1]  # (which process trains which trial is up to timing)
