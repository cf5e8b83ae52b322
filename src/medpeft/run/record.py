"""The on-disk contract of a run: runs/<grid>/<run_id>/{result.json, predictions.jsonl, adapter/}.

`RunResult` is the typed form of result.json, with one constructor for a finished run, one for a
failed run, and one reader (`from_json`) that every consumer uses. The JSON keys stay as other
tools read them. Files are written to a temporary name and renamed, so an interrupted run never
leaves a half-written result; result.json is written last and marks the run finished.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from medpeft.errors import ConfigError
from medpeft.files import write_atomic

log = logging.getLogger("medpeft")


class Status(str, enum.Enum):
    """How a run ended."""

    OK = "ok"
    FAILED = "failed"


@dataclass
class RunResult:
    """One run's result.json."""

    run_id: str
    status: Status
    task: str
    model: str
    method: str
    seed: int
    config: dict  # the resolved ExperimentConfig as plain data
    variant: dict = field(default_factory=dict)  # the grid axes that set this run ({"method_args.r": 4})
    error: str | None = None  # "ExceptionType: message" of a failed run
    cause: str | None = None  # a failed run's diagnosed cause: nan_loss, out_of_memory, disk_full, asset_unreadable, ...
    fix: str | None = None  # what to change before running it again, when the cause is known
    traceback: str | None = None
    task_type: str | None = None
    labels: list[str] | None = None  # label set in the model's index order (classification, multilabel, ner)
    model_path: str | None = None
    adapted_from: str | None = None  # the model `medpeft pretrain` made this run's model from (models.adapted_from)
    model_kind: str | None = None  # a ModelKind name (run/kinds.py)
    metrics: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)  # how optional metrics were computed (BERTScore model and layer)
    efficiency: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    tuning_trial: bool = False  # a tuning trial: scored on the validation split, never in the main table
    evaluated_on: str = "test"  # the split its metrics and predictions are of
    run_dir: Path | None = field(default=None, compare=False)  # where it was read from (not written)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @classmethod
    def succeeded(cls, cfg, variant: dict, **fields) -> RunResult:
        """A finished run of config `cfg`; `fields` are the measured parts (metrics, efficiency, ...)."""
        return cls(run_id=cfg.run_id, status=Status.OK, task=cfg.task, model=cfg.model, method=cfg.method,
                   seed=cfg.seed, config=cfg.to_dict(), variant=dict(variant), tuning_trial=is_trial(cfg), **fields)

    @classmethod
    def failed(cls, cfg, variant: dict, err: BaseException, cause: str | None = None, fix: str | None = None) -> RunResult:
        """A run that raised `err` (call inside the `except`, so the traceback is the error's), with its
        diagnosed cause and fix when known (run/faults.py)."""
        return cls(run_id=cfg.run_id, status=Status.FAILED, task=cfg.task, model=cfg.model, method=cfg.method,
                   seed=cfg.seed, config=cfg.to_dict(), variant=dict(variant), tuning_trial=is_trial(cfg),
                   error=f"{type(err).__name__}: {err}", cause=cause, fix=fix, traceback=traceback.format_exc())

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "run_dir"}
        data["status"] = self.status.value
        if self.ok:
            for unused in ("traceback", "cause", "fix"):  # a finished run's file stays as it was
                data.pop(unused)
        return data

    @classmethod
    def from_json(cls, data: dict, run_dir: Path | None = None) -> RunResult:
        """Read result.json data, older files included (fields added later take their defaults). Data of
        the wrong shape (null, a list, `"metrics": []`) is a TypeError that says what it holds."""
        if not isinstance(data, dict):
            raise TypeError(f"it holds {json_kind(data)}, not an object")
        for name in OBJECT_FIELDS:
            if data.get(name) is not None and not isinstance(data[name], dict):
                raise TypeError(f"its {name!r} holds {json_kind(data[name])}, not an object")
        names = {f.name for f in dataclasses.fields(cls)} - {"run_dir", "status"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        return cls(status=Status(data.get("status", "failed")), run_dir=run_dir, **known)

    def write(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / "result.json", self.to_json())

    def predictions(self) -> list[dict]:
        """The run's predictions.jsonl rows (read once); [] when the file is missing."""
        if not hasattr(self, "_predictions"):
            path = Path(self.run_dir or ".") / "predictions.jsonl"
            lines = path.read_text(encoding="utf-8").splitlines() if self.run_dir and path.is_file() else []
            self._predictions = [json.loads(line) for line in lines if line.strip()]
        return self._predictions


OBJECT_FIELDS = ("config", "variant", "metrics", "evaluation", "efficiency", "training", "data", "env")


def json_kind(value) -> str:
    """What a JSON value is, in JSON's words (null, an array, a string), for a message."""
    kinds = {type(None): "null", list: "an array", str: "a string", bool: "true or false", dict: "an object"}
    return kinds.get(type(value), "a number")


def is_trial(cfg) -> bool:
    """A tuning trial (tune.py): scored on validation, kept out of every table."""
    return (cfg.tuning or {}).get("role") == "trial"


def validation_score(result: RunResult | None, metric: str) -> float | None:
    """A tuning trial's validation score as recorded: its validation loss (metric "val_loss") or the
    metric's value; None when the trial failed or did not record it."""
    if result is None or not result.ok:
        return None
    return result.training.get("val_loss") if metric == "val_loss" else result.metrics.get(metric)


def read_result(run_dir: Path) -> RunResult | None:
    """A run's result, or None when it has none (never run, or interrupted before the end)."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        result = RunResult.from_json(json.loads(path.read_text(encoding="utf-8")), run_dir=Path(run_dir))
    except json.JSONDecodeError:  # cut short by a kill before the atomic rename existed: unfinished
        return None
    except (TypeError, ValueError) as err:  # JSON, but not a result: say so rather than re-run in silence
        warn_once(f"{path} is not a medpeft result ({err}); the run counts as unfinished; the next `medpeft run` runs it again")
        return None
    unusable = [key for key, value in result.metrics.items() if value is not None and not is_finite_number(value)]
    if unusable:  # a NaN would turn every mean, test and plot of its row into NaN: missing, and said so
        for key in unusable:
            result.metrics.pop(key)
        warn_once(f"{path}: metric(s) {', '.join(unusable)} hold no finite number (NaN, infinite or not a number); "
                  "read as missing")
    return result


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_WARNED: set[str] = set()  # a result is read several times a grid (to skip it, to report it): one warning each


def warn_once(text: str) -> None:
    if text not in _WARNED:
        _WARNED.add(text)
        log.warning("%s", text)


def is_finished(run_dir: Path) -> bool:
    result = read_result(run_dir)
    return result is not None and result.ok


def load_results(grid_dir: Path) -> list[RunResult]:
    """Every run of a grid folder that has a result.json (finished or failed), in folder order."""
    return [r for d in sorted(Path(grid_dir).iterdir()) if d.is_dir() and (r := read_result(d)) is not None]


GRID_MARKER = "grid.json"  # in runs/<name>/: the grid file whose runs the folder holds


def claim_grid_dir(grid_dir: Path, name: str, grid_file: Path | None, record: bool = True) -> None:
    """Refuse to run `grid_file` into a folder that another grid file of the same `name:` made: the two
    grids' runs would be mixed in one folder and one report without a word. The first run records its
    file in grid.json; the same file (edited or not) runs on. A grid built in code (no file), a folder
    from a medpeft older than the record, and a recorded file that is gone (moved, renamed) are let through.
    `record=False` only checks (before the plan's checks, so a grid refused there writes nothing)."""
    if grid_file is None:
        return
    grid_file, marker = Path(grid_file).resolve(), Path(grid_dir) / GRID_MARKER
    recorded = recorded_grid_file(marker)
    if recorded is not None and recorded != grid_file:
        if recorded.is_file() and not os.path.samefile(recorded, grid_file):
            raise ConfigError(f"{grid_dir} holds the runs of grid file {recorded} (recorded in {marker}), and {grid_file} "
                              f"has the same name {name!r}: running it would mix the two grids' runs in one folder and one "
                              f"report. Give one of them another `name:`, or run it with another --runs-dir.")
        if not recorded.is_file():
            log.warning("%s was made by grid file %s, which is gone; it now holds the runs of %s", grid_dir, recorded, grid_file)
    if recorded != grid_file and record:
        try:
            write_json(marker, {"name": name, "grid_file": str(grid_file)})
        except OSError as err:  # a read-only folder: the grid's own writes report it; the record is a safeguard
            log.warning("could not record the grid file in %s (%s)", marker, err)


def recorded_grid_file(marker: Path) -> Path | None:
    """The grid file recorded in a grid folder's grid.json; None without one (or an unreadable one)."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Path(data["grid_file"]) if isinstance(data, dict) and isinstance(data.get("grid_file"), str) else None


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(finite(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(finite(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows))


def finite(value):
    """`value` with every NaN or infinite float (a forgetting score of a diverged run, a per-example score)
    as null: Python's json writes them as NaN/Infinity, which is not JSON, and other tools (jq, pandas'
    strict readers, JavaScript) then cannot read the file at all."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
