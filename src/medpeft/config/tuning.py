"""A grid's `tune:` block: what is tuned (the space), how (grid search or Optuna) and on what (the
validation metric). Read from the grid file by `parse_tune`; tune/ runs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from medpeft.config.values import check_types
from medpeft.errors import ConfigError

TUNABLE = ("train.", "method_args.", "generation.")  # what a tune: block may choose; data and names stay the grid's
# Optuna's RDB storage takes SQLAlchemy URLs; a driver may follow the dialect (postgresql+psycopg2://).
STORAGE_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")


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
    storage: str | None = field(default=None, metadata={
        "help": "optuna: where studies live, shared by every worker: a database URL (postgresql://..., mysql://..., "
                "sqlite:///...) or a journal file (a path; relative: to the grid folder). Default: the journal "
                "runs/<grid>/tuning.journal, safe on NFS (an older grid's tuning.db is kept)"})

    def __post_init__(self):
        check_types(self, "tune")
        if self.trials < 1:
            raise ConfigError(f"tune.trials must be >= 1, got {self.trials}")
        for key, values in self.space.items():
            check_tune_axis(key, values, self.search)
        if self.storage is not None:
            if self.search != "optuna":
                raise ConfigError("tune.storage holds Optuna studies; it needs search: optuna")
            check_storage(self.storage)


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


def check_storage(storage: str) -> None:
    """A database URL of a dialect Optuna's RDB storage knows, or a journal file path."""
    if not storage.strip():
        raise ConfigError("tune.storage is empty; give a database URL (postgresql://...) or a journal file path")
    if "://" in storage:
        dialect = storage.split("://", 1)[0].split("+", 1)[0].lower()
        if dialect not in STORAGE_DIALECTS:
            raise ConfigError(f"tune.storage: unknown database {dialect!r} in {mask_storage(storage)}; use one of "
                              f"{', '.join(d + '://' for d in STORAGE_DIALECTS)}, or a journal file path (for NFS)")
    elif storage.endswith((".db", ".sqlite", ".sqlite3")):  # a journal file is no SQLite database
        raise ConfigError(f"tune.storage: {storage!r} looks like a SQLite file; write sqlite:///{storage} for SQLite "
                          "(not safe on NFS with several workers), or a .journal path for Optuna's journal file")


def mask_storage(storage: str) -> str:
    """The storage with any password in its URL replaced by ***: safe to print and record."""
    scheme, sep, rest = storage.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return storage
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}{slash}{path}"


def parse_tune(value, source: str) -> TuneConfig | None:
    """`tune: auto`, or a mapping of axes plus search, trials, metric and storage; none or false: no tuning."""
    if value is None or value is False:
        return None
    if value is True or value == "auto":
        return TuneConfig(space={"train.lr": "auto"})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: tune must be auto or a mapping of axis: [candidates], got {value!r}")
    settings = {k: value[k] for k in ("search", "trials", "metric", "storage") if k in value}
    space = {k: v for k, v in value.items() if k not in settings}
    return TuneConfig(space=space or {"train.lr": "auto"}, **settings)
