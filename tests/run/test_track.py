"""Tracking: one experiment per grid, one tracked run per run id, curves from the Trainer's own
callbacks and the final metrics from medpeft, read back through each tracker's own reader."""
from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest

from medpeft import grid as grid_module
from medpeft.config import expand_grid
from medpeft.errors import ConfigError
from medpeft.run import execute
from medpeft.run.record import RunResult
from medpeft.run.track import WandbTracker, final_metrics, flat_config, open_tracker

from conftest import TINY_DATA, TINY_TRAIN


def tiny_grid(name: str, methods=("lora",)):
    return expand_grid({"base": {"task": "pubmed-rct", "model": "tiny-bert", "data": dict(TINY_DATA),
                                 "train": dict(TINY_TRAIN)}, "grid": {"method": list(methods)}}, name=name)


def test_mlflow_runs_are_read_back_with_their_test_metric(tmp_path, monkeypatch, assets_ready):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real = execute.run_experiment

    def fails_once(plan, run_dir, **kwargs):  # the lora run fails first, then is run again
        if plan.config.method == "lora" and not failed:
            failed.append(plan.run_id)
            raise RuntimeError("boom")
        return real(plan, run_dir, **kwargs)

    failed = []
    monkeypatch.setattr(execute, "run_experiment", fails_once)
    monkeypatch.setattr(grid_module, "write_outputs", lambda *a: [])  # the report is not what is tested
    grid = tiny_grid("tracked")
    for _ in range(2):
        grid_dir = grid_module.run_grid(grid, tmp_path, track="mlflow", log=lambda *a: None).grid_dir
    assert (grid_dir / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()

    mlflow.set_tracking_uri(f"sqlite:///{grid_dir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tracked"])
    # artifacts beside the store: the check read MLFLOW_TRACKING_URI after mlflow.set_tracking_uri had set it,
    # and the experiment's artifacts went to ./mlruns of whatever folder the command ran in
    location = mlflow.get_experiment_by_name("tracked").artifact_location
    assert location == (grid_dir / "mlartifacts").resolve().as_uri(), location
    ids = {c.run_id for c in grid_module.grid_configs(grid)}
    assert sorted(runs["tags.mlflow.runName"]) == sorted(ids)  # one tracked run per run, the failed one reused
    assert (runs["status"] == "FINISHED").all() and (runs["tags.medpeft.status"] == "ok").all()
    assert runs["metrics.test/accuracy"].between(0, 1).all() and (runs["metrics.efficiency/trainable_params"] >= 0).all()
    assert set(runs["params.config.method"]) == {"lora", "untrained"}
    lora = runs[runs["params.config.method"] == "lora"].iloc[0]
    assert lora["metrics.training/steps"] == TINY_TRAIN["max_steps"]
    curve = mlflow.MlflowClient().get_metric_history(lora["run_id"], "loss")  # from the Trainer's MLflowCallback
    assert len(curve) >= 1 and {m.step for m in curve} <= {1, 2}


def test_tensorboard_gets_the_curves_and_the_final_metrics(tmp_path, assets_ready):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    grid = expand_grid({"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora", "data": dict(TINY_DATA),
                                 "train": dict(TINY_TRAIN)}}, name="tb")
    run_id = next(c.run_id for c in grid_module.grid_configs(grid) if c.method == "lora")
    grid_dir = grid_module.run_grid(grid, tmp_path, track="tensorboard", log=lambda *a: None).grid_dir
    events = EventAccumulator(str(grid_dir / "tensorboard" / run_id))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "test/accuracy" in tags and "efficiency/train_seconds" in tags


def test_wandb_runs_offline_unless_online(tmp_path, monkeypatch):
    calls = {}
    fake = types.SimpleNamespace(run=None)
    fake.init = lambda **kwargs: (calls.setdefault("init", kwargs), setattr(fake, "run", types.SimpleNamespace(summary={})))
    fake.finish = lambda exit_code: calls.setdefault("finish", exit_code)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    result = RunResult.succeeded(tiny_grid("w").runs[0], {}, metrics={"accuracy": 0.5}, efficiency={"train_seconds": 3.0})
    for online, mode in ((False, "offline"), (True, "online")):
        calls.clear()
        tracker = WandbTracker(tmp_path, "w", online, print)
        tracker.start(result.run_id, result.config)
        tracker.finish(result)
        init = calls["init"]
        assert (init["mode"], init["name"], init["project"], init["dir"]) == (mode, result.run_id, "w", str(tmp_path))
        assert init["config"]["method"] == "lora" and calls["finish"] == 0
        assert fake.run.summary["test/accuracy"] == 0.5


def test_a_missing_tracker_package_is_a_clear_error_before_any_run(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--track wandb needs the wandb package: pip install 'medpeft\[wandb\]'"):
        open_tracker("wandb", tmp_path, "g")
    with pytest.raises(ConfigError, match="wandb"):
        grid_module.run_grid(tiny_grid("nothing"), tmp_path, track="wandb", log=lambda *a: None)
    assert not (tmp_path / "nothing").exists()


def test_a_failing_tracker_costs_a_warning_not_the_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    tracker = open_tracker("mlflow", tmp_path, "g", log=(lines := []).append)
    monkeypatch.setattr(mlflow, "search_runs", lambda *a, **k: (_ for _ in ()).throw(OSError("database is locked")))
    monkeypatch.setattr(tracker, "experiment_id", lambda: "0")
    tracker.start("some.run", {"seed": 0})
    assert "mlflow tracking failed (OSError: database is locked)" in lines[0]


def test_flat_config_and_final_metrics():
    assert flat_config({"seed": 0, "train": {"lr": 0.001, "target_modules": ["q", "v"]}, "tuning": {}}) == {
        "seed": "0", "train.lr": "0.001", "train.target_modules": '["q", "v"]', "tuning": "{}"}
    result = RunResult.succeeded(tiny_grid("f").runs[0], {}, metrics={"accuracy": 0.5, "auroc": None},
                                 efficiency={"train_seconds": 2}, training={"steps": 4, "stopped_by_time_budget": True})
    assert final_metrics(result) == {"test/accuracy": 0.5, "efficiency/train_seconds": 2.0, "training/steps": 4.0}


def test_the_cli_passes_track_to_the_grid(monkeypatch, tmp_path):
    from medpeft import cli

    seen = {}
    monkeypatch.setattr(grid_module, "run_grid", lambda grid, runs_dir, **kwargs: seen.update(kwargs) or grid_module.GridOutcome(runs_dir))
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("base: {task: pubmed-rct, model: tiny-bert, method: lora}\n")
    assert cli.main(["run", str(grid_file), "--track", "mlflow"]) == 0 and seen["track"] == "mlflow"
    with pytest.raises(SystemExit):
        cli.main(["run", str(grid_file), "--track", "comet"])


def test_mlflow_tracking_sends_no_telemetry(tmp_path):
    """MLflow 3 reports usage telemetry over the network unless told not to (pytest itself switches it off,
    so this runs in a plain process): the tracker turns it off before mlflow is imported, unless the user set it."""
    import subprocess
    import sys

    pytest.importorskip("mlflow")
    code = ("from medpeft.run.track import open_tracker; import pathlib; "
            f"open_tracker('mlflow', pathlib.Path({str(tmp_path)!r}), 'g'); "
            "import mlflow.telemetry.utils as t; print(t.is_telemetry_disabled())")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "CI", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "True"
