"""Experiment configuration: one validated `ExperimentConfig` per run, expanded from a YAML grid.

experiment.py: the run's dataclasses, each checking itself in __post_init__; tuning.py: a grid's tune:
block; gridfile.py: a YAML grid read within bounds and expanded into runs; pretrain.py: `medpeft
pretrain`'s settings; values.py: the value checks they share (types and Literal choices, finite numbers,
names that become folders, the size of YAML with its aliases expanded). Every field carries its help as
metadata ({"help": ...}). Every error is raised before any training and names the offending key and the
valid choices.
"""
from medpeft.config.experiment import (DTYPES, PRECISIONS, RUN_ID_MAX_BYTES, SCHEDULERS, SEED_MAX, SIZE_KEYS, SPLIT_KEYS, UNSET_KEYS,
                                       USER_SIZES_KEY,
                                       BertScoreConfig, DataConfig, ExperimentConfig, ForgettingConfig, GenerationConfig,
                                       Precision, Scheduler, TrainConfig, check_seed, config_from_dict, moved_beams,
                                       user_task_name)
from medpeft.config.gridfile import (GRID_KEYS, NAMING_AXES, Grid, expand_block, expand_grid, load_grid, parse_override,
                                     set_dotted)
from medpeft.config.pretrain import PRETRAIN_OPTIONS, PretrainConfig
from medpeft.config.tuning import TUNABLE, TuneConfig, check_tune_axis, parse_tune
from medpeft.config.values import (NAME_MAX_BYTES, YAML_MAX_NODES, build_dataclass, check_choice, check_name, check_types,
                                   coerce_value, load_yaml, optional_block)
from medpeft.errors import ConfigError

__all__ = ["DTYPES", "PRECISIONS", "RUN_ID_MAX_BYTES", "SCHEDULERS", "SEED_MAX", "SIZE_KEYS", "SPLIT_KEYS", "TUNABLE", "UNSET_KEYS", "USER_SIZES_KEY",
           "BertScoreConfig",
           "DataConfig", "ExperimentConfig", "ForgettingConfig", "GenerationConfig", "Precision", "Scheduler", "TrainConfig",
           "TuneConfig", "check_seed", "check_tune_axis", "config_from_dict", "moved_beams", "user_task_name", "GRID_KEYS",
           "NAMING_AXES", "Grid", "expand_block", "expand_grid", "load_grid", "parse_override", "parse_tune", "set_dotted",
           "PRETRAIN_OPTIONS", "PretrainConfig", "NAME_MAX_BYTES", "YAML_MAX_NODES", "build_dataclass", "check_choice",
           "check_name", "check_types", "coerce_value", "load_yaml", "optional_block", "ConfigError"]
