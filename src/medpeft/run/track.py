"""Tracking (`medpeft run --track mlflow|tensorboard|wandb`): one experiment per grid, one tracked run
per medpeft run, named by its run id.

Training curves come from the Trainer's own integration callbacks (MLflowCallback,
TensorBoardCallback, WandbCallback); medpeft adds each run's final metrics (on test, or on validation
for a tuning trial), its efficiency figures, training summary and flattened config. Nothing leaves the
machine unless asked: MLflow writes to $MLFLOW_TRACKING_URI when set, else to a SQLite store
runs/<grid>/mlflow.db; TensorBoard to runs/<grid>/tensorboard/<run_id>/; W&B runs offline (files under
runs/<grid>/wandb/, `wandb sync` uploads them later) unless `--online`.

A tracker that fails mid-grid (a locked database, a full disk) costs a warning, never a run.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from medpeft.errors import ConfigError
from medpeft.run.record import RunResult, dotted

TRACKERS = ("mlflow", "tensorboard", "wandb")
TRACKED_TRAINING = ("steps", "train_loss", "val_loss", "resumed_from_step")  # of the run's Training record


def open_tracker(name: str, grid_dir: Path, grid_name: str, online: bool = False, log=print):
    """The tracker called `name` for a grid; a clear error, before any run, when its package is missing."""
    if name not in TRACKERS:
        raise ConfigError(f"--track {name!r}: choose one of {', '.join(TRACKERS)}")
    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"--track {name} needs the {name} package: pip install 'medpeft[{name}]' (or pip install {name})")
    cls = {"mlflow": MlflowTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}[name]
    return cls(Path(grid_dir), grid_name, online, log)


def guarded(method):
    """Tracking is a view of the runs: its failure is a warning, and the run goes on untracked."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001
            self.log(f"    warning: {self.name} tracking failed ({type(err).__name__}: {err}); the run goes on untracked")
            return [] if method.__name__ == "callbacks" else None

    return call


def flat_config(config: dict) -> dict[str, str]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": "0.0001"}: one parameter per setting (record.dotted), as text;
    lists as JSON."""
    return {name: json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
            for name, value in dotted(config).items()}


def final_metrics(result: RunResult) -> dict[str, float]:
    """What a finished run adds to its curves: `test/<metric>` (`validation/...` for a tuning trial),
    `efficiency/<figure>` and `training/<summary>`, numbers only."""
    groups = {result.evaluated_on: result.metrics, "efficiency": dataclasses.asdict(result.cost),
              "training": {k: getattr(result.fit, k) for k in TRACKED_TRAINING}}
    return {f"{group}/{key}": float(value) for group, values in groups.items() for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class MlflowTracker:
    """An MLflow experiment named after the grid; a rerun of a run (resumed, or after a failure) goes
    on in the same MLflow run, found by its `medpeft.run_id` tag."""

    name = "mlflow"

    def __init__(self, grid_dir: Path, grid_name: str, online: bool, log):
        self.grid_dir, self.grid_name, self.log = grid_dir, grid_name, log
        # read now: mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into the environment itself
        self.local = not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(grid_dir / 'mlflow.db').resolve()}"
        # MLflow 3 sends usage telemetry over the network from its import on; nothing leaves the machine unless asked
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    def experiment_id(self) -> str:
        """The grid's experiment, created on first use (by whichever worker gets there first)."""
        import mlflow

        self.grid_dir.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        found = mlflow.get_experiment_by_name(self.grid_name)
        if found is not None:
            return found.experiment_id
        # beside the store, not in the working directory
        artifacts = (self.grid_dir / "mlartifacts").resolve().as_uri() if self.local else None
        try:
            return mlflow.create_experiment(self.grid_name, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException:  # another worker created it a moment ago
            return mlflow.get_experiment_by_name(self.grid_name).experiment_id

    @guarded
    def start(self, run_id: str, config: dict) -> None:
        import mlflow

        if mlflow.active_run() is not None:  # left open by an interrupted run in this process
            mlflow.end_run(status="KILLED")
        experiment = self.experiment_id()
        earlier = mlflow.search_runs(experiment_ids=[experiment], filter_string=f"tags.`medpeft.run_id` = '{run_id}'",
                                     output_format="list", max_results=1)
        if earlier:
            mlflow.start_run(run_id=earlier[0].info.run_id)
        else:
            mlflow.start_run(experiment_id=experiment, run_name=run_id, tags={"medpeft.run_id": run_id})
        mlflow.log_params({f"config.{k}": v[:6000] for k, v in flat_config(config).items()})

    @guarded
    def callbacks(self) -> list:
        from transformers.integrations import MLflowCallback

        return [MLflowCallback()]  # logs into the run started above: it leaves an active run open

    @guarded
    def finish(self, result: RunResult | None) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        if result is not None:
            mlflow.log_metrics(final_metrics(result), step=int(result.fit.steps or 0))
            mlflow.set_tags({"medpeft.status": result.status.value, **({"medpeft.cause": result.cause} if result.cause else {})})
        mlflow.flush_async_logging()  # the Trainer's callback logs asynchronously
        mlflow.end_run(status="KILLED" if result is None else "FINISHED" if result.ok else "FAILED")


class TensorBoardTracker:
    """Event files in runs/<grid>/tensorboard/<run_id>/ (`tensorboard --logdir runs/<grid>/tensorboard`)."""

    name = "tensorboard"

    def __init__(self, grid_dir: Path, grid_name: str, online: bool, log):
        self.root, self.log, self.folder = grid_dir / "tensorboard", log, None

    @guarded
    def start(self, run_id: str, config: dict) -> None:
        self.folder = self.root / run_id
        self.config = config

    @guarded
    def callbacks(self) -> list:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(self.folder)))]

    @guarded
    def finish(self, result: RunResult | None) -> None:
        if result is None or self.folder is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(self.folder)) as writer:  # the callback closed its writer at train end
            step = int(result.fit.steps or 0)
            for key, value in final_metrics(result).items():
                writer.add_scalar(key, value, step)
            writer.add_text("medpeft/config", "\n".join(f"    {k}: {v}" for k, v in flat_config(self.config).items()))
            writer.add_text("medpeft/status", result.status.value + (f": {result.error}" if result.error else ""))


class WandbTracker:
    """A W&B project named after the grid; offline unless --online. A rerun goes on in the same W&B
    run (its id is derived from the run id)."""

    name = "wandb"

    def __init__(self, grid_dir: Path, grid_name: str, online: bool, log):
        self.grid_dir, self.grid_name, self.online, self.log = grid_dir, grid_name, online, log

    @guarded
    def start(self, run_id: str, config: dict) -> None:
        import wandb

        self.grid_dir.mkdir(parents=True, exist_ok=True)
        wandb.init(project=self.grid_name, name=run_id, id=hashlib.sha256(run_id.encode()).hexdigest()[:16],
                   resume="allow", dir=str(self.grid_dir), mode="online" if self.online else "offline",
                   config=flat_config(config))

    @guarded
    def callbacks(self) -> list:
        from transformers.integrations import WandbCallback

        return [WandbCallback()]  # uses the run started above

    @guarded
    def finish(self, result: RunResult | None) -> None:
        import wandb

        if wandb.run is None:
            return
        if result is not None:
            wandb.run.summary.update(final_metrics(result))
            wandb.run.summary["medpeft/status"] = result.status.value
        wandb.finish(exit_code=0 if result is not None and result.ok else 1)
