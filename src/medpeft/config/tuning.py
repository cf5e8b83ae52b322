"""A grid's `tune:` block: what is tuned (the space), how (grid search or Optuna) and on what (the
validation metric). Read from the grid file by `parse_tune`; tune.py runs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medpeft.config.values import check_types
from medpeft.errors import ConfigError

TUNABLE = ("train.", "method_args.", "generation.")  # what a tune: block may choose; data and names stay the grid's


@dataclass
class TuneConfig:
    """A grid's `tune:` block: per group (task, model, method, variant), candidates trained at the first
    seed and scored on the validation split; every seed then runs with the best one."""

    space: dict = field(metadata={"help": "axis -> a list of candidates; auto (train.lr only): the method's range; "
                                          "{low, high, log}: a range (optuna)"})
    search: Literal["grid", "optuna"] = field(default="grid", metadata={
        "help": "grid: every candidate (every combination) | optuna: TPE-sampled trials with pruning"})
    trials: int = field(default=12, metadata={"help": "optuna: trials per group"})
    metric: Literal["primary", "loss"] = field(default="primary", metadata={
        "help": "primary: the task's primary metric on validation | loss: validation loss (cheaper)"})

    def __post_init__(self):
        check_types(self, "tune")
        if self.trials < 1:
            raise ConfigError(f"tune.trials must be >= 1, got {self.trials}")
        for key, values in self.space.items():
            check_tune_axis(key, values, self.search)


def check_tune_axis(key: str, values, search: str) -> None:
    if not key.startswith(TUNABLE):
        raise ConfigError(f"tune: cannot tune {key!r}; tune settings under {', '.join(TUNABLE)} "
                          "(task, model, method, seed and data are the grid's axes)")
    if values == "auto":
        if key != "train.lr":
            raise ConfigError(f"tune.{key}: auto is a learning-rate range (train.lr: auto); list candidates for {key}")
    elif isinstance(values, dict):
        if search != "optuna":
            raise ConfigError(f"tune.{key}: a range {{low, high}} needs search: optuna; for grid search list the candidates")
        if set(values) - {"low", "high", "log"} or not {"low", "high"} <= set(values):
            raise ConfigError(f"tune.{key}: a range has keys low, high and optionally log (true for a log scale), got {values!r}")
        if not values["low"] < values["high"]:
            raise ConfigError(f"tune.{key}: low must be below high, got {values!r}")
    elif not isinstance(values, list) or not values:
        raise ConfigError(f"tune.{key} must be a non-empty list of candidates, got {values!r}")


def parse_tune(value, source: str) -> TuneConfig | None:
    """`tune: auto`, or a mapping of axes plus search, trials and metric; none or false: no tuning."""
    if value is None or value is False:
        return None
    if value is True or value == "auto":
        return TuneConfig(space={"train.lr": "auto"})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: tune must be auto or a mapping of axis: [candidates], got {value!r}")
    settings = {k: value[k] for k in ("search", "trials", "metric") if k in value}
    space = {k: v for k, v in value.items() if k not in settings}
    return TuneConfig(space=space or {"train.lr": "auto"}, **settings)
