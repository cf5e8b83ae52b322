"""Experiment configuration: one validated `ExperimentConfig` per run, expanded from a YAML grid.

A grid file has a `base:` block (one run's settings) and a `grid:` block of axes whose
values are lists; dotted keys reach nested fields (`method_args.r: [4, 16]`,
`train.lr: [1e-4, 3e-4]`). `grid:` may also be a list of such blocks, whose expansions
are joined (e.g. one block per task with its own model). Every error is raised before
any training and names the offending key and the valid choices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medpeft.errors import ConfigError


@dataclass
class DataConfig:
    """How a task's data is split and truncated."""

    train_size: int = 256  # training examples (classification: sentences/documents)
    val_size: int = 32  # validation examples
    test_size: int = 64  # held-out test examples every metric is computed on
    split_seed: int = 1234  # seeds the split only; fixed so every run sees the same test set
    max_source_tokens: int = 512  # input truncation length, in tokens
    max_target_tokens: int = 128  # summary truncation length and generation budget, in tokens
    per_class: int | None = None  # few-shot: K training examples per class (per entity type for NER), drawn by the run's seed

    def __post_init__(self):
        check_types(self, "data")
        if self.per_class is not None and self.per_class < 1:
            raise ConfigError(f"data.per_class must be >= 1 (examples per class) or unset, got {self.per_class}")
        for name in ("train_size", "test_size", "max_source_tokens", "max_target_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0, got {self.val_size}")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto is resolved per machine when a run is planned


@dataclass
class TrainConfig:
    """Optimisation and decoding settings passed to the transformers Trainer and generate()."""

    epochs: float = 3.0  # passes over the training split (ignored when max_steps > 0)
    max_steps: int = -1  # optimiser steps; > 0 overrides epochs
    lr: float | None = None  # peak learning rate; None takes the method's default
    batch_size: int = 8  # examples per device per step
    grad_accum: int = 1  # gradient accumulation steps
    weight_decay: float = 0.0  # AdamW weight decay
    warmup: float = 0.0  # warm-up: a ratio of total steps in [0, 1), or a step count >= 1
    scheduler: str = "linear"  # transformers lr_scheduler_type
    eval_batch_size: int = 16  # examples per batch at evaluation and generation
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | fp32 | bf16 | fp16 (fp16 needs a GPU)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % more time (on by itself when they would not fit)
    time_budget_s: float | None = None  # stop training after this many wall-clock seconds (equal-time comparisons)
    checkpoint_steps: int | None = None  # also checkpoint every this many optimiser steps (always: every 30 min)
    fused_kernels: bool | None = None  # Liger's fused kernels (RMSNorm, RoPE, SwiGLU): a CUDA GPU and liger-kernel

    def __post_init__(self):
        check_types(self, "train")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("train.epochs or train.max_steps must be > 0")
        for name in ("batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"train.time_budget_s must be > 0 seconds or unset, got {self.time_budget_s}")
        if self.checkpoint_steps is not None and self.checkpoint_steps < 1:
            raise ConfigError(f"train.checkpoint_steps must be >= 1 or unset, got {self.checkpoint_steps}")


@dataclass
class GenerationConfig:
    """How summaries are decoded (transformers generate(), greedy or beam search, never sampled)."""

    num_beams: int = 1  # beams (the summarization study used 4)
    length_penalty: float = 1.0  # > 1 favours longer beams (the study: 2.0); used with num_beams > 1
    no_repeat_ngram_size: int = 3  # never repeat an n-gram of this size (the study: 3); 0 = off. Stops loops
    repetition_penalty: float = 1.0  # > 1 discourages repeating any earlier token; 1 = off
    max_new_tokens: int | None = None  # generation budget in tokens; None = data.max_target_tokens
    batch_size: int | None = None  # texts per generate() call; None: train.eval_batch_size, more on CPU where the cache fits

    def __post_init__(self):
        check_types(self, "generation")
        if self.num_beams < 1:
            raise ConfigError(f"generation.num_beams must be >= 1, got {self.num_beams}")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(f"generation.no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        if self.length_penalty <= 0 or self.repetition_penalty <= 0:
            raise ConfigError("generation.length_penalty and generation.repetition_penalty must be > 0 (1.0 = neutral)")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens must be >= 1 or unset, got {self.max_new_tokens}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"generation.batch_size must be >= 1 or unset (automatic), got {self.batch_size}")


@dataclass
class BertScoreConfig:
    """BERTScore of the generated summaries (bert-score package), next to ROUGE; off unless set."""

    model: str = "microsoft/deberta-xlarge-mnli"  # the summarization study's (hub: --online); or a local folder / registered model
    num_layers: int | None = None  # which layer's embeddings; None: bert-score's tuned layer, or a local model's last
    batch_size: int = 16  # summaries per batch

    def __post_init__(self):
        check_types(self, "bertscore")
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"bertscore.num_layers must be >= 1, got {self.num_layers}")
        if self.batch_size < 1:
            raise ConfigError(f"bertscore.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class ForgettingConfig:
    """What adapting costs in general ability (as peft's method benchmark measures it): the change in
    language-model loss, adapted minus base, on MEDLINE abstracts in no split of the task. Off unless set."""

    documents: int = 32  # held-out abstracts scored
    max_tokens: int = 128  # tokens per abstract: the loss is on its second half, given the first

    def __post_init__(self):
        check_types(self, "forgetting")
        if self.documents < 1 or self.max_tokens < 8:
            raise ConfigError("forgetting.documents must be >= 1 and forgetting.max_tokens >= 8")


@dataclass
class ExperimentConfig:
    """One run: a model adapted to a task with a method under one seed.

    Pure data: types and values are checked here; names (task, model, method) are resolved and
    checked against the registries once, in `plan.py`."""

    task: str  # a registered task (`medpeft tasks`), or your own data as a mapping {type, path, text_field, target_field}
    model: str  # a registered model, a local model directory, or a hub id (needs --online)
    method: str  # a registered method (`medpeft list`); `full` is full fine-tuning
    seed: int = 0  # seeds data order, new-head init, dropout and the method's init
    method_args: dict = field(default_factory=dict)  # keyword arguments of the method's peft config
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    bertscore: BertScoreConfig | None = None  # `bertscore: true` (the study's model, --online) or {model, num_layers}
    forgetting: ForgettingConfig | None = None  # `forgetting: true` or {documents, max_tokens}: generative models only
    user_data: dict | None = None  # set from a task: mapping (your own data); task then holds its name, user-<file stem>
    # Set by medpeft (plan.py), not by you: content fingerprints of your data file and of a local model
    # folder, so a file edited in place or a model re-trained into the same folder gets a new run id.
    fingerprint: dict | None = None
    # Set by medpeft (tune.py) for a tuned grid: {"role": "trial", ...} on a tuning trial (scored on the
    # validation split, never in the main table), {"role": "final", "over": candidates, ...} on a run
    # whose settings were chosen by tuning.
    tuning: dict | None = None
    # The grid axes that set this run ({"method_args.r": 4}), recorded at expansion so the report keeps
    # a sweep's variants apart without guessing. Not a setting and not part of the run's identity.
    variant: dict = field(default_factory=dict, init=False, compare=False, repr=False)
    # The grid's (or this run's block's) tune: block; set at expansion, like variant not part of the identity.
    tune: TuneConfig | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = moved_beams(self.train, self)
        for key, cls in (("data", DataConfig), ("train", TrainConfig), ("generation", GenerationConfig)):
            if not isinstance(getattr(self, key), cls):  # a mapping from YAML; anything else is an error that says so
                setattr(self, key, build_dataclass(cls, getattr(self, key), key))
        self.bertscore = optional_block(BertScoreConfig, self.bertscore, "bertscore")
        self.forgetting = optional_block(ForgettingConfig, self.forgetting, "forgetting")
        if isinstance(self.task, dict):  # your own data: the mapping is kept, the task is named after it
            self.user_data = dict(self.task)
            self.task = user_task_name(self.user_data)
        if self.user_data is not None and not isinstance(self.user_data, dict):
            raise ConfigError(f"user_data must be a mapping, got {self.user_data!r}")
        check_types(self, "")
        if not isinstance(self.method_args, dict):
            raise ConfigError(f"method_args must be a mapping, got {self.method_args!r}")

    @property
    def run_id(self) -> str:
        """Readable and stable: the same resolved config always gets the same id."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
        model = self.model.strip("/").replace("/", "--")
        return f"{self.task}.{model}.{self.method}.seed{self.seed}.{digest}"

    def to_dict(self) -> dict:
        """The settings as plain data (what result.json stores as `config`)."""
        data = dataclasses.asdict(self)
        data.pop("variant")
        data.pop("tune")
        for optional in ("fingerprint", "bertscore", "forgetting", "tuning"):  # unset, they leave the run id as it was without them
            if data[optional] is None:
                data.pop(optional)
        for block, key in UNSET_KEYS:  # settings added later: unset, a run keeps the id it had before they existed
            if data[block][key] is None:
                data[block].pop(key)
        return data


UNSET_KEYS = (("data", "per_class"), ("train", "time_budget_s"), ("train", "checkpoint_steps"), ("train", "fused_kernels"),
              ("generation", "batch_size"))


def optional_block(cls, value, key: str):
    """An optional measurement's settings: true (the defaults), a mapping, or false / null (off)."""
    if value is True:
        return cls()
    if isinstance(value, dict):
        return build_dataclass(cls, value, key)
    if value is False or value is None or isinstance(value, cls):
        return value or None
    raise ConfigError(f"{key} must be true, false or a mapping of its settings ({', '.join(f.name for f in dataclasses.fields(cls))}), "
                      f"got {value!r}")


def moved_beams(train: dict, cfg) -> dict:
    """`train.num_beams` (medpeft 0.1, and older result.json files) is now `generation.num_beams`."""
    if "num_beams" not in train:
        return train
    train = dict(train)
    beams = train.pop("num_beams")
    given = cfg.generation if isinstance(cfg.generation, dict) else {}
    if given.get("num_beams", beams) != beams:
        raise ConfigError("train.num_beams and generation.num_beams disagree; set only generation.num_beams")
    if isinstance(cfg.generation, dict):
        cfg.generation = {**given, "num_beams": beams}
    else:
        cfg.generation = dataclasses.replace(cfg.generation, num_beams=beams)
    return train


def user_task_name(mapping: dict) -> str:
    """The task name of your own data: `name:`, or user-<file stem>."""
    if not isinstance(mapping.get("path", ""), str):
        raise ConfigError(f"task.path must be a file path, got {mapping.get('path')!r}")
    return str(mapping.get("name") or f"user-{Path(mapping.get('path') or 'data').stem}")


def check_types(obj, prefix: str) -> None:
    """Check (and gently coerce: YAML reads `3e-4` as a string) the dataclass's field types."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        allowed = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if value is None and type(None) in typing.get_args(hint):
            continue
        if dataclasses.is_dataclass(allowed[0]):
            continue
        setattr(obj, f.name, coerce_value(value, allowed[0], key))


def coerce_value(value, kind: type, key: str):
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key} must be of type {kind.__name__}, got {value!r} ({type(value).__name__})")


def build_dataclass(cls, values: dict, prefix: str):
    """Build `cls` from a dict; an unknown key is an error that lists the valid ones."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix} must be a mapping of settings, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key {where!r}; valid keys{' of ' + prefix if prefix else ''}: {', '.join(names)}")
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{prefix or 'run'} config: {err}") from None


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


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` from `--set`, the value read as YAML (so numbers and lists keep their type)."""
    if "=" not in text:
        raise ConfigError(f"--set takes key=value (e.g. train.epochs=1), got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


TUNABLE = ("train.", "method_args.", "generation.")  # what a tune: block may choose; data and names stay the grid's


@dataclass
class TuneConfig:
    """A grid's `tune:` block: per group (task, model, method, variant), candidates trained at the first
    seed and scored on the validation split; every seed then runs with the best one."""

    space: dict  # axis -> a list of candidates; "auto" (train.lr only): the method's range; {low, high, log}: optuna
    search: str = "grid"  # grid: every candidate (every combination) | optuna: TPE-sampled trials with pruning
    trials: int = 12  # optuna: trials per group
    metric: str = "primary"  # primary: the task's primary metric on validation | loss: validation loss (cheaper)

    def __post_init__(self):
        check_types(self, "tune")
        if self.search not in ("grid", "optuna"):
            raise ConfigError(f"tune.search must be grid or optuna, got {self.search!r}")
        if self.metric not in ("primary", "loss"):
            raise ConfigError(f"tune.metric must be primary (the task's primary metric) or loss, got {self.metric!r}")
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


@dataclass
class Grid:
    """An expanded grid: its name (the runs/ sub-folder) and one config per run, each with its variant
    and its tune: block, if any."""

    name: str
    runs: list[ExperimentConfig]
    source_file: Path | None = None  # the grid file it was read from (None: built in code)

    @property
    def tuned(self) -> bool:
        return any(cfg.tune is not None for cfg in self.runs)


GRID_KEYS = ("name", "description", "base", "grid", "tune")


def load_grid(path: str | Path, overrides: list[str] = ()) -> Grid:
    """Read a YAML grid, expand it, apply `--set` overrides, check every run's keys, types and values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
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
            cfg = config_from_dict(raw)
            cfg.variant, cfg.tune = variant, tune
            if cfg.run_id not in seen:
                seen.add(cfg.run_id)
                runs.append(cfg)
    return Grid(name=name, runs=runs)


def config_from_dict(raw: dict) -> ExperimentConfig:
    """One run's config from plain data (a grid row or a result.json `config`)."""
    return build_dataclass(ExperimentConfig, raw, "")
