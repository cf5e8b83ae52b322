"""A YAML grid file expanded into one `ExperimentConfig` per run.

A grid file has a `base:` block (one run's settings) and a `grid:` block of axes whose
values are lists; dotted keys reach nested fields (`method_args.r: [4, 16]`,
`train.lr: [1e-4, 3e-4]`). `grid:` may also be a list of such blocks, whose expansions
are joined (e.g. one block per task with its own model). Every error is raised before
any training (and before anything is written) and names the offending key and the valid choices.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from medpeft.config.engine import EngineOptions, parse_engine_options
from medpeft.config.experiment import SIZE_KEYS, USER_SIZES_KEY, ExperimentConfig, config_from_dict
from medpeft.config.tuning import parse_tune
from medpeft.config.values import check_name, load_yaml
from medpeft.errors import ConfigError


def set_dotted(config: dict, key: str, value) -> None:
    """Set `a.b.c` in a nested dict (method_args keep their own keys, validated later)."""
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a mapping")
    node[parts[-1]] = value


NAMING_AXES = ("task", "model", "method", "seed")  # name a row (or a seed) by themselves: not part of a variant


def expand_block(base: dict, block: dict) -> list[tuple[dict, dict]]:
    """The cartesian product of a grid block's list-valued axes, each merged into `base`,
    with its variant: the block's axes other than task, model, method and seed."""
    if not isinstance(block, dict):
        raise ConfigError(f"each grid block must be a mapping of axis: [values], got {block!r}")
    axes = {k: (v if isinstance(v, list) else [v]) for k, v in block.items()}
    for key, values in axes.items():
        if not values:
            raise ConfigError(f"grid axis {key!r} has no values")
    runs = []
    for combo in itertools.product(*axes.values()):
        config = json.loads(json.dumps(base))  # deep copy of plain YAML data
        for key, value in zip(axes, combo):
            set_dotted(config, key, value)
        variant = {key: value for key, value in zip(axes, combo) if key not in NAMING_AXES}
        runs.append((config, variant))
    return runs


SET_BY_MEDPEFT = {"user_data": "task: {path: ..., ...} (your own data)", "fingerprint": "nothing: medpeft reads the files",
                  "tuning": "a tune: block"}  # fields a run's config records, never settings of a grid


def check_not_set_by_medpeft(raw: dict, source: str) -> None:
    """A grid (or --set) that sets what medpeft records about a run was ignored: `task` then overwrote user_data."""
    for key, instead in SET_BY_MEDPEFT.items():
        if key in raw:
            raise ConfigError(f"{source}: {key} is set by medpeft, not by a grid or --set; use {instead}")


def mark_user_sizes(raw: dict) -> None:
    """Your own data's file sets its splits, so a data.*_size applies to it only where the grid (or --set)
    names it: those keys are listed in the task mapping (USER_SIZES_KEY), which cuts that split to its size.
    Unnamed, the mapping is as it was, and so is the run id."""
    task, data = raw.get("task"), raw.get("data")
    if not isinstance(task, dict):
        return
    named = [key for key in SIZE_KEYS if isinstance(data, dict) and key in data]
    task.pop(USER_SIZES_KEY, None)
    if named:
        task[USER_SIZES_KEY] = named


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` from `--set`, the value read as YAML (so numbers and lists keep their type)."""
    if "=" not in text:
        raise ConfigError(f"--set takes key=value (e.g. train.epochs=1), got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), load_yaml(raw, f"--set {key.strip()}")


@dataclass
class Grid:
    """An expanded grid: its name (the runs/ sub-folder) and one config per run, each with its variant
    and its tune: block, if any."""

    name: str
    runs: list[ExperimentConfig]
    source_file: Path | None = None  # the grid file it was read from (None: built in code)
    engine: EngineOptions = field(default_factory=EngineOptions)  # resources:, ray:, slurm: (--backend ray|slurm)

    @property
    def tuned(self) -> bool:
        return any(cfg.tune is not None for cfg in self.runs)


GRID_KEYS = ("name", "description", "base", "grid", "tune", "resources", "ray", "slurm")


def load_grid(path: str | Path, overrides: list[str] = ()) -> Grid:
    """Read a YAML grid, expand it, apply `--set` overrides, check every run's keys, types and values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist")
    spec = load_yaml(path.read_text(), str(path)) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a grid file is a mapping with keys {', '.join(GRID_KEYS)}")
    grid = expand_grid(spec, name=spec.get("name") or path.stem, overrides=overrides, source=str(path))
    grid.source_file = path.resolve()  # which file owns runs/<name>/ (run.record.claim_grid_dir)
    return grid


def expand_grid(spec: dict, name: str, overrides=(), source: str = "grid") -> Grid:
    """Every run of a grid spec; a `--set` override applies to every run, so it is no variant."""
    for key in spec:
        if key not in GRID_KEYS:
            raise ConfigError(f"{source}: unknown top-level key {key!r}; valid keys: {', '.join(GRID_KEYS)}")
    check_name(name, f"{source}: name" if spec.get("name") else f"{source}: the grid's name (its file name, as name: is unset)")
    base = spec.get("base") or {}
    blocks = spec.get("grid") or [{}]
    blocks = blocks if isinstance(blocks, list) else [blocks]
    pairs = [parse_override(o) for o in overrides]
    top_tune = parse_tune(spec.get("tune"), source)
    runs, seen = [], set()
    for block in blocks:
        tune = top_tune
        if isinstance(block, dict) and "tune" in block:  # a block's own tune: (false: not tuned) replaces the grid's
            block = dict(block)
            tune = parse_tune(block.pop("tune"), f"{source}: grid block {block}")
        for raw, variant in expand_block(base, block):
            for key, value in pairs:
                set_dotted(raw, key, value)
                variant.pop(key, None)
            for key in tune.space if tune else ():  # chosen by tuning: not a variant of its own
                variant.pop(key, None)
            check_not_set_by_medpeft(raw, source)
            mark_user_sizes(raw)
            cfg = config_from_dict(raw)
            cfg.variant, cfg.tune = variant, tune
            if cfg.run_id not in seen:
                seen.add(cfg.run_id)
                runs.append(cfg)
    return Grid(name=name, runs=runs, engine=parse_engine_options(spec, source))
