"""Engines that run a grid's runs beyond this process: Ray (each run a Ray task), Slurm (each run a task
of a job array, through submitit) and processes (each run in a process of its own on this machine, for exact
per-run peak memory on CPU). `medpeft run --backend ray|slurm|processes`; the local backend is grid.py's own loop.

An engine knows nothing of runs: it calls a picklable function on picklable jobs on its workers and says,
for each, what came back, what the function raised, or that its worker was lost (killed, out of memory, a
node gone). `map_jobs` submits again a job whose worker was lost, up to `resources.retries` times; the run
it carries resumes from its last checkpoint, and its run lock (run/lock.py) keeps it from running twice.
Every worker must reach the runs folder (a shared file system) and have medpeft installed.
"""
from __future__ import annotations

from pathlib import Path

from medpeft.config.engine import EngineOptions
from medpeft.engines.base import RAY_HINT, SLURM_HINT, Engine
from medpeft.errors import ConfigError

BACKENDS = ("local", "processes", "ray", "slurm")


def open_engine(name: str, options: EngineOptions, folder: Path, log) -> Engine:
    """The engine `--backend` names, started or connected; a missing package or a resource the cluster lacks
    is a ConfigError, before anything runs. `folder`: where an engine keeps its job files and logs."""
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(RAY_HINT) from None
        from medpeft.engines.ray_engine import RayEngine

        return RayEngine(options.ray, options.resources, log)
    if name == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError(SLURM_HINT) from None
        from medpeft.engines.slurm_engine import SlurmEngine

        return SlurmEngine(options.slurm, options.resources, Path(folder), log)
    if name == "processes":
        from medpeft.engines.process_engine import ProcessEngine

        return ProcessEngine(Path(folder), log)
    raise ConfigError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
