"""Small helpers shared by tests in several folders (tests/ is on pytest's pythonpath)."""
from __future__ import annotations

from medpeft.plan import plan_run
from medpeft.run.execute import run_experiment


def run_config(cfg, run_dir, online: bool = False):
    """Plan and run one config, as `medpeft run` does for each run of a grid."""
    return run_experiment(plan_run(cfg, online), run_dir)


def load_for_kind(path: str, kind: str, labels=None):
    """load_model as a run of model kind `kind` loads it: model, tokenizer, new modules."""
    from medpeft.models import load_model
    from medpeft.run.kinds import KINDS

    spec = KINDS[kind]
    return load_model(path, spec.auto_class, labels if spec.new_head else None, spec.problem_type)


def checked_config(raw: dict):
    """A config from plain data with its names checked and defaults filled, as `medpeft run` checks it."""
    from medpeft.config import config_from_dict
    from medpeft.plan import resolve_config

    return resolve_config(config_from_dict(raw))
