"""Experiment configuration: one validated `ExperimentConfig` per run, expanded from a YAML grid.

experiment.py: the run's dataclasses (and a grid's tune: block), each checking itself in __post_init__;
gridfile.py: a YAML grid read within bounds and expanded into runs; values.py: the value checks they share
(types, finite numbers, names that become folders, the size of YAML with its aliases expanded).
Every error is raised before any training and names the offending key and the valid choices.
"""
from medpeft.config.experiment import (PRECISIONS, RUN_ID_MAX_BYTES, SCHEDULERS, SEED_MAX, TUNABLE, UNSET_KEYS,
                                       BertScoreConfig, DataConfig, ExperimentConfig, ForgettingConfig, GenerationConfig,
                                       TrainConfig, TuneConfig, check_seed, check_tune_axis, config_from_dict, moved_beams,
                                       user_task_name)
from medpeft.config.gridfile import (GRID_KEYS, NAMING_AXES, Grid, expand_block, expand_grid, load_grid, parse_override,
                                     parse_tune, set_dotted)
from medpeft.config.values import (NAME_MAX_BYTES, YAML_MAX_NODES, build_dataclass, check_name, check_types, coerce_value,
                                   load_yaml, optional_block)
from medpeft.errors import ConfigError

__all__ = ["PRECISIONS", "RUN_ID_MAX_BYTES", "SCHEDULERS", "SEED_MAX", "TUNABLE", "UNSET_KEYS", "BertScoreConfig", "DataConfig",
           "ExperimentConfig", "ForgettingConfig", "GenerationConfig", "TrainConfig", "TuneConfig", "check_seed",
           "check_tune_axis", "config_from_dict", "moved_beams", "user_task_name", "GRID_KEYS", "NAMING_AXES", "Grid",
           "expand_block", "expand_grid", "load_grid", "parse_override", "parse_tune", "set_dotted", "NAME_MAX_BYTES",
           "YAML_MAX_NODES", "build_dataclass", "check_name", "check_types", "coerce_value", "load_yaml", "optional_block",
           "ConfigError"]
