"""Where a grid's runs execute, beyond this process: the grid file's `resources:`, `ray:` and `slurm:` blocks
(each also settable on the command line: `--resources gpus_per_run=1 --slurm partition=gpu`). They are read
only by `medpeft run --backend ray|slurm` (engines/), and `resources.retries` by --backend processes; the local
backend ignores them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from medpeft.config.values import build_dataclass, check_at_least, check_types, load_yaml
from medpeft.errors import ConfigError


@dataclass
class Resources:
    """What one run takes on a worker, and what happens when its worker dies."""

    gpus_per_run: float | None = field(default=None, metadata={
        "help": "GPUs each run takes (ray: a fraction shares a card, 0.5 = two runs per GPU; slurm: whole GPUs per job). "
                "Unset: 1 on a Ray cluster that has GPUs (a task asking for none sees none), 0 on Slurm"})
    cpus_per_run: float = field(default=1.0, metadata={
        "help": "CPU cores each run takes; its torch threads follow (ray: a fraction is allowed; slurm: rounded up)"})
    retries: int = field(default=1, metadata={
        "help": "times a run whose worker died (killed, out of memory, node lost) is submitted again; it resumes "
                "from its last checkpoint. A run that fails with an error is recorded, never retried"})

    def __post_init__(self):
        check_types(self, "resources")
        check_at_least(self, "resources", 0, "gpus_per_run", "cpus_per_run", "retries")
        if self.cpus_per_run == 0 and not self.gpus_per_run:
            raise ConfigError("resources: a run needs cpus_per_run > 0 or gpus_per_run > 0")

    @property
    def threads(self) -> int | None:
        """Torch threads and cores a run takes: cpus_per_run rounded up (None for 0: a GPU run leaves them as they are)."""
        return math.ceil(self.cpus_per_run) or None


@dataclass
class RayOptions:
    """The Ray cluster runs go to: each run is one Ray task with `resources:`."""

    address: str | None = field(default=None, metadata={
        "help": "unset: start a local Ray cluster on this machine; auto: join the cluster this node belongs to "
                "(ray start --head on the head node first); ray://HOST:10001: a remote cluster through Ray Client"})
    num_cpus: int | None = field(default=None, metadata={
        "help": "a local cluster's CPU cores (default: all of this machine's); ignored when joining a cluster"})
    num_gpus: int | None = field(default=None, metadata={
        "help": "a local cluster's GPUs (default: those torch sees); ignored when joining a cluster"})

    def __post_init__(self):
        check_types(self, "ray")
        check_at_least(self, "ray", 0, "num_cpus", "num_gpus")


@dataclass
class SlurmOptions:
    """The Slurm job array runs go to (through submitit): one array task per run."""

    partition: str | None = field(default=None, metadata={"help": "the partition (#SBATCH --partition); unset: the cluster's default"})
    time: int = field(default=240, metadata={"help": "minutes each run may take (#SBATCH --time); a run cut off resumes "
                                                     "from its checkpoint when it is submitted again"})
    array_parallelism: int = field(default=16, metadata={
        "help": "tasks of one array running at once (#SBATCH --array=...%N); tuning submits each trial, and a run "
                "submitted again, as an array of its own"})
    mem_gb: int | None = field(default=None, metadata={"help": "memory per run in GB (#SBATCH --mem); unset: the partition's default"})
    account: str | None = field(default=None, metadata={"help": "#SBATCH --account"})
    qos: str | None = field(default=None, metadata={"help": "#SBATCH --qos"})
    constraint: str | None = field(default=None, metadata={"help": "#SBATCH --constraint, e.g. a100|h100"})
    setup: list = field(default_factory=list, metadata={
        "help": "shell lines each job runs before medpeft, e.g. [module load cuda/12.4, source .venv/bin/activate]"})
    additional: dict = field(default_factory=dict, metadata={
        "help": "any other #SBATCH option as name: value, e.g. {exclude: node12, mail_type: END}"})
    cluster: Literal["auto", "slurm", "local", "debug"] = field(default="auto", metadata={
        "help": "submitit's executor: auto (Slurm where sbatch exists, else local processes), slurm, local (processes on "
                "this machine, at most array_parallelism at once: tries the path without Slurm) or debug (in this process; a job "
                "that raises opens pdb)"})
    poll_s: float = field(default=15.0, metadata={"help": "seconds between looks at the jobs' states while waiting"})

    def __post_init__(self):
        check_types(self, "slurm")
        check_at_least(self, "slurm", 1, "time", "array_parallelism", "mem_gb")
        if not all(isinstance(line, str) for line in self.setup):
            raise ConfigError(f"slurm.setup is a list of shell lines (strings), got {self.setup!r}")
        if self.poll_s <= 0:
            raise ConfigError(f"slurm.poll_s must be > 0, got {self.poll_s}")


ENGINE_BLOCKS = {"resources": Resources, "ray": RayOptions, "slurm": SlurmOptions}


@dataclass
class EngineOptions:
    """A grid's `resources:`, `ray:` and `slurm:` blocks."""

    resources: Resources = field(default_factory=Resources)
    ray: RayOptions = field(default_factory=RayOptions)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def updated(self, block: str, pairs: list[str]) -> EngineOptions:
        """These options with `KEY=VALUE` pairs (from --resources, --ray or --slurm) set in `block`."""
        values = dataclasses.asdict(getattr(self, block))
        for text in pairs:
            key, sep, raw = text.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--{block} takes KEY=VALUE, e.g. {example(block)}; got {text!r}")
            values[key.strip()] = load_yaml(raw, f"--{block} {key.strip()}")
        return dataclasses.replace(self, **{block: build_dataclass(ENGINE_BLOCKS[block], values, block)})


def example(block: str) -> str:
    return {"resources": "gpus_per_run=1", "ray": "address=auto", "slurm": "partition=gpu"}[block]


def parse_engine_options(spec: dict, source: str) -> EngineOptions:
    """The grid file's resources:, ray: and slurm: blocks (each optional), checked."""
    blocks = {}
    for key, cls in ENGINE_BLOCKS.items():
        value = spec.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping of settings "
                              f"({', '.join(f.name for f in dataclasses.fields(cls))}), got {value!r}")
        blocks[key] = build_dataclass(cls, value, key)
    return EngineOptions(**blocks)
