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
import traceback
from dataclasses import dataclass, field
from pathlib import Path

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
    evaluation: dict = field(default_factory=dict)  # how optional metrics were computed (BERTScore model and layer), a baseline's prior
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

    # The typed reads of result.json's sections: read a run through these, never by its dict keys. The dict
    # fields above are the file's sections as written (to_json writes them back unchanged).
    @property
    def cost(self) -> Efficiency:
        return Efficiency.from_json(self.efficiency)

    @property
    def fit(self) -> Training:
        return Training.from_json(self.training)

    @property
    def inputs(self) -> Data:
        return Data.from_json(self.data)

    @property
    def provenance(self) -> Provenance:
        return Provenance.from_json(self.config, self.env, self.fit)

    @property
    def baseline_words(self) -> str | None:
        """What an untrained run predicted when its head was random and no model ran (its kind's prior, e.g.
        the majority class); None for a baseline the model itself scored (zero-shot) and for older runs."""
        return text(self.evaluation.get("baseline"))

    @property
    def tuning(self) -> Tuning | None:
        """How tuning made this run (a trial, or a run at the chosen values); None for an untuned run."""
        return Tuning.from_json(self.config.get("tuning"))

    def predictions(self) -> list[dict]:
        """The run's predictions.jsonl rows (read once); [] when the file is missing."""
        if not hasattr(self, "_predictions"):
            path = Path(self.run_dir or ".") / "predictions.jsonl"
            lines = path.read_text(encoding="utf-8").splitlines() if self.run_dir and path.is_file() else []
            self._predictions = [json.loads(line) for line in lines if line.strip()]
        return self._predictions


# --- the typed sections of result.json ------------------------------------------------------
# Parsed here only, tolerant of older files (a key added later is None) and of broken values (null, NaN, text
# where a number goes: None, as a metric that holds no finite number reads as missing).


def number(value) -> int | float | None:
    """A finite number as recorded (an int stays an int), else None."""
    return value if is_finite_number(value) else None


def flag(value) -> bool | None:
    return value if isinstance(value, bool) else None


def text(value) -> str | None:
    return value if isinstance(value, str) else None


def section(value) -> dict:
    """A JSON object, else {} (an older file's missing section, a null)."""
    return value if isinstance(value, dict) else {}


def numbers(cls, data) -> dict:
    return {f.name: number(section(data).get(f.name)) for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Efficiency:
    """result.json `efficiency`: what a run cost (None: not recorded)."""

    trainable_params: int | None = None
    trainable_pct: float | None = None  # percent of total_params
    train_seconds: float | None = None  # wall time of training, resumed sessions summed
    eval_seconds: float | None = None  # wall time of prediction and scoring
    train_tokens_per_second: float | None = None
    peak_memory_bytes: int | None = None  # CUDA allocator peak; on CPU the process's RSS peak during the run, less
    # earlier_runs_resident_bytes: what earlier runs of the same process left resident (kernel caches, heap)
    earlier_runs_resident_bytes: int | None = None
    adapter_bytes: int | None = None  # the weights that must be stored (the whole model for full fine-tuning)
    adapter_folder_bytes: int | None = None  # adapter/ but its README.md (the model card): configs, a full run's tokenizer
    forgetting: float | None = None  # change in LM loss on held-out abstracts, nats/token (when measured)
    total_params: int | None = None

    @classmethod
    def from_json(cls, data) -> Efficiency:
        return cls(**numbers(cls, data))

    def get(self, key: str):
        """The figure named `key` (a COST_KEYS name), for loops over the cost columns."""
        return getattr(self, key)


# The cost figures of a run, in the order tables show them (total_params is the model's size, not a cost).
COST_KEYS = tuple(f.name for f in dataclasses.fields(Efficiency) if f.name != "total_params")


@dataclass(frozen=True)
class Training:
    """result.json `training`: what training did (an untrained run: 0 steps, no losses)."""

    steps: int | None = None  # optimiser steps taken
    planned_steps: int | None = None
    train_loss: float | None = None  # mean training loss over the run
    val_loss: float | None = None  # validation loss at the end (None without a validation split)
    train_tokens: int | None = None
    time_budget_s: float | None = None
    resumed_from_step: int | None = None
    gradient_checkpointing: bool | None = None
    stopped_by_time_budget: bool | None = None
    levers: dict | None = None  # the device levers it trained with (run/levers.Levers; None: older than them)

    @classmethod
    def from_json(cls, data) -> Training:
        data = section(data)
        return cls(**{**numbers(cls, data), "gradient_checkpointing": flag(data.get("gradient_checkpointing")),
                      "stopped_by_time_budget": flag(data.get("stopped_by_time_budget")),
                      "levers": section(data.get("levers")) or None})


TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(Training))  # what a run records of its training


@dataclass(frozen=True)
class Provenance:
    """Where and how a run trained: result.json `env` with the precision its config resolved to."""

    device: str | None = None  # "cpu:x86_64 x2 threads", a GPU's name
    precision: str | None = None  # train.precision as resolved: fp32, bf16, fp16
    bf16_base: bool = False  # its frozen base held in bf16 (run/levers.py)
    versions: tuple[tuple[str, str], ...] = ()  # (package, version), as recorded
    commit: str | None = None  # medpeft's git commit

    @classmethod
    def from_json(cls, config: dict, env: dict, fit: Training) -> Provenance:
        env, train = section(env), section(section(config).get("train"))
        versions = tuple((str(k), str(v)) for k, v in section(env.get("versions")).items() if v)
        return cls(device=env.get("device"), precision=train.get("precision"), bf16_base=bool((fit.levers or {}).get("bf16_base")),
                   versions=versions, commit=env.get("git_commit"))

    def precision_words(self) -> str | None:
        """`bf16 mixed precision with the frozen base in bf16`, `bf16 mixed precision`, `fp32`, or None when
        not recorded."""
        if self.precision in (None, "fp32"):
            return self.precision
        return f"{self.precision} mixed precision" + (" with the frozen base in bf16" if self.bf16_base else "")


@dataclass(frozen=True)
class SplitStats:
    """One split's encoding counts in result.json `data`."""

    examples: int | None = None
    truncated_sources: int | None = None  # inputs longer than data.max_source_tokens, cut there
    truncated_targets: int | None = None
    truncated_sources_fraction: float | None = None
    truncated_targets_fraction: float | None = None
    text_pairs: int | None = None  # examples with a second text (> 0: predict needs one too)

    @classmethod
    def from_json(cls, data) -> SplitStats:
        return cls(**numbers(cls, data))


@dataclass(frozen=True)
class Data:
    """result.json `data`: the splits as the run encoded them, and how its prompts were built."""

    splits: dict[str, SplitStats] = field(default_factory=dict)  # "train" and the evaluated split ("test" or "validation")
    validation_examples: int | None = None
    warnings: tuple[str, ...] = ()  # truncation and input-fit notes, as the run logged them
    prompt_format: str | None = None  # how a prompt was built (run/encode.prompt_format); None: not recorded
    instruction: str | None = None  # the task instruction the prompts start with; None: not recorded
    per_class: dict[str, int] | None = None  # few-shot sampling: training examples per class

    @classmethod
    def from_json(cls, data) -> Data:
        data = section(data)
        splits = {k: SplitStats.from_json(v) for k, v in data.items() if k in SPLITS and isinstance(v, dict)}
        warnings, per_class = data.get("warnings"), data.get("per_class")
        return cls(splits, number(data.get("validation_examples")),
                   tuple(w for w in warnings if isinstance(w, str)) if isinstance(warnings, list) else (),
                   text(data.get("prompt_format")), text(data.get("instruction")),
                   dict(per_class) if isinstance(per_class, dict) else None)

    def split(self, name: str) -> SplitStats:
        """The counts of split `name`; all None when the run did not record it."""
        return self.splits.get(name, SplitStats())

    @property
    def train(self) -> SplitStats:
        return self.split("train")


SPLITS = ("train", "validation", "test")
TRIAL, FINAL = "trial", "final"  # tuning roles: a trial scored on validation; a run at the chosen values
LOSS_SCORE = "val_loss"  # the tuning metric of trials scored by their validation loss (tune/ writes it)


@dataclass(frozen=True)
class Search:
    """What a tuned run's values were chosen from (config.tuning.over)."""

    search: str | None = None  # "grid" or "optuna"
    metric: str | None = None  # the validation score: LOSS_SCORE or a metric name
    space: dict = field(default_factory=dict)  # axis -> candidates (grid) or range (optuna)
    trials: int | None = None  # optuna's trial count

    @classmethod
    def from_json(cls, data) -> Search:
        data = section(data)
        return cls(text(data.get("search")), text(data.get("metric")), section(data.get("space")), number(data.get("trials")))


@dataclass(frozen=True)
class Tuning:
    """A run's config.tuning, as tune/ records it."""

    role: str  # TRIAL or FINAL
    group: str | None = None  # the tuning group (runs tuned together)
    metric: str | None = None  # a trial's validation score: LOSS_SCORE or a metric name
    values: dict = field(default_factory=dict)  # a trial's candidate values
    chosen: dict = field(default_factory=dict)  # a final run's chosen values
    over: Search = field(default_factory=Search)  # a final run's search

    @classmethod
    def from_json(cls, data) -> Tuning | None:
        """None for an untuned run (no record, or one without a role)."""
        data = section(data)
        if text(data.get("role")) is None:
            return None
        return cls(data["role"], text(data.get("group")), text(data.get("metric")), section(data.get("values")),
                   section(data.get("chosen")), Search.from_json(data.get("over")))

    @property
    def is_trial(self) -> bool:
        return self.role == TRIAL

    @property
    def scored_by_loss(self) -> bool:
        """A trial scored by its validation loss: it needs no predictions (no generated summaries)."""
        return self.metric == LOSS_SCORE


OBJECT_FIELDS = ("config", "variant", "metrics", "evaluation", "efficiency", "training", "data", "env")


def dotted(config: dict | None, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-4, "x": []}} -> {"train.lr": 1e-4, "train.x": []}: one key per setting of a run's config,
    values as recorded (a list, or an empty mapping, is one value). The one flattening of a config: trackers'
    parameters and the report's row keys are made from it."""
    flat = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(dotted(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def json_kind(value) -> str:
    """What a JSON value is, in JSON's words (null, an array, a string), for a message."""
    kinds = {type(None): "null", list: "an array", str: "a string", bool: "true or false", dict: "an object"}
    return kinds.get(type(value), "a number")


def is_trial(cfg) -> bool:
    """A tuning trial (tune/): scored on validation, kept out of every table."""
    tuning = Tuning.from_json(cfg.tuning)
    return tuning is not None and tuning.is_trial


def validation_score(result: RunResult | None, metric: str) -> float | None:
    """A tuning trial's validation score as recorded: its validation loss (metric LOSS_SCORE) or the
    metric's value; None when the trial failed or did not record it."""
    if result is None or not result.ok:
        return None
    return result.fit.val_loss if metric == LOSS_SCORE else result.metrics.get(metric)


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
