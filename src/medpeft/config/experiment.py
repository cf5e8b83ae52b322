"""One run's configuration: `ExperimentConfig` and its blocks (data, train, generation, optional
measurements), pure dataclasses that check their own types and values in `__post_init__`; each field's
help is its metadata, a fixed set of values its Literal type; every error names the key and the valid
choices. Names (task, model, method) are resolved against the registries later, once, in plan.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medpeft.config.tuning import TuneConfig
from medpeft.config.values import build_dataclass, check_at_least, check_name, check_types, optional_block
from medpeft.errors import ConfigError


@dataclass
class DataConfig:
    """How a task's data is split and truncated."""

    train_size: int = field(default=256, metadata={
        "help": "training examples (classification: sentences/documents); your own data: its whole train split "
                "unless the grid names this key"})
    val_size: int = field(default=32, metadata={"help": "validation examples"})
    test_size: int = field(default=64, metadata={"help": "held-out test examples every metric is computed on"})
    split_seed: int = field(default=1234, metadata={
        "help": "seeds the split only; fixed so every run sees the same test set (0 .. 2**32 - 1)"})
    max_source_tokens: int = field(default=512, metadata={"help": "input truncation length, in tokens"})
    max_target_tokens: int = field(default=128, metadata={
        "help": "summary truncation length and generation budget, in tokens"})
    per_class: int | None = field(default=None, metadata={
        "help": "few-shot: K training examples per class (per entity type for NER), drawn by the run's seed"})

    def __post_init__(self):
        check_types(self, "data")
        check_seed(self.split_seed, "data.split_seed")
        if self.per_class is not None and self.per_class < 1:
            raise ConfigError(f"data.per_class must be >= 1 (examples per class) or unset, got {self.per_class}")
        check_at_least(self, "data", 1, "train_size", "test_size", "max_source_tokens", "max_target_tokens")
        check_at_least(self, "data", 0, "val_size")


# Each split's size key, in the order splits are filled (test first, so that the test set does not move with
# train_size); their one home: tasks cut splits by them, a grid marks the ones it names on your own data.
SPLIT_KEYS = {"test": "test_size", "validation": "val_size", "train": "train_size"}
SIZE_KEYS = tuple(SPLIT_KEYS.values())
# Your own data (task: {path, ...}): the data.*_size keys the grid names, set by medpeft (config/gridfile.py);
# only those cut the file's splits (tasks/user.py), the others leave a split whole.
USER_SIZES_KEY = "split_sizes"


# The choices of a field that takes a fixed set are its Literal type, their one home: check_types validates
# a value against it, the CLI offers it, and the tuples below are read from it.
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # auto is resolved per machine when a run is planned
PRECISIONS = typing.get_args(Precision)
DTYPES = tuple(p for p in PRECISIONS if p != "auto")  # a weight dtype: a precision, not resolved (medpeft export --dtype)
# transformers' SchedulerType values that run with no lr_scheduler_kwargs and no evaluation strategy (the
# others need min_lr, num_decay_steps or a metric each step); tests/test_values.py builds each one.
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"]
SCHEDULERS = typing.get_args(Scheduler)
SEED_MAX = 2**32 - 1  # numpy's seeds stop here


def check_seed(seed: int, key: str) -> None:
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{key} must be in 0 .. {SEED_MAX} (numpy and torch seeds are unsigned 32-bit), got {seed}")


@dataclass
class TrainConfig:
    """Optimisation and decoding settings passed to the transformers Trainer and generate()."""

    epochs: float = field(default=3.0, metadata={"help": "passes over the training split (ignored when max_steps > 0)"})
    max_steps: int = field(default=-1, metadata={"help": "optimiser steps; > 0 overrides epochs"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate; None takes the method's default"})
    batch_size: int = field(default=8, metadata={"help": "examples per device per step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay, >= 0"})
    warmup: float = field(default=0.0, metadata={
        "help": "warm-up: a ratio of total steps in [0, 1), or a whole step count >= 1"})
    scheduler: Scheduler = field(default="linear", metadata={
        "help": "transformers' lr_scheduler_type (those that run without extra arguments)"})
    eval_batch_size: int = field(default=16, metadata={"help": "examples per batch at evaluation and generation"})
    precision: Precision = field(default="auto", metadata={
        "help": "auto (bf16 where the GPU or CPU multiplies bf16 natively, else fp32) | fp32 | bf16 | fp16 (fp16 needs a GPU)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in backward: less memory, ~30 % more time (on by itself when they would not fit)"})
    time_budget_s: float | None = field(default=None, metadata={
        "help": "stop training after this many wall-clock seconds (equal-time comparisons)"})
    checkpoint_steps: int | None = field(default=None, metadata={
        "help": "also checkpoint every this many optimiser steps (always: every 30 min)"})
    fused_kernels: bool | None = field(default=None, metadata={
        "help": "Liger's fused kernels (RMSNorm, RoPE, SwiGLU): a CUDA GPU and liger-kernel"})
    # device levers (run/levers.py); None: chosen for the device (on where they pay on a CUDA GPU, mostly off on CPU)
    pad_to_multiple_of: int | None = field(default=None, metadata={
        "help": "pad each batch to a multiple of this many tokens (None: 64 on CUDA, 1 = off)"})
    packing: bool | None = field(default=None, metadata={
        "help": "padding-free batches of decoder-only models (one row, position ids restart per example); opt-in"})
    bf16_base: bool | None = field(default=None, metadata={
        "help": "hold the frozen base of a LoRA/DoRA decoder or T5 in bf16 under bf16 precision (None: on); trained weights stay fp32"})
    fused_optimizer: bool | None = field(default=None, metadata={
        "help": "AdamW as one fused kernel (adamw_torch_fused)"})
    dataloader_workers: int | None = field(default=None, metadata={
        "help": "batch-building processes with pinned memory (None: 2 on CUDA, 0 on CPU)"})
    compile: bool | None = field(default=None, metadata={
        "help": "torch.compile the model (opt-in; None and false: off)"})

    def __post_init__(self):
        check_types(self, "train")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("train.epochs or train.max_steps must be > 0")
        check_at_least(self, "train", 1, "batch_size", "grad_accum", "eval_batch_size")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0 (0 = off; AdamW's usual values are 0.0 to 0.1), got {self.weight_decay}")
        if self.warmup < 0 or (self.warmup >= 1 and not self.warmup.is_integer()):
            raise ConfigError(f"train.warmup must be a ratio of the training steps in [0, 1) or a whole number of steps >= 1, "
                              f"got {self.warmup}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"train.time_budget_s must be > 0 seconds or unset, got {self.time_budget_s}")
        if self.checkpoint_steps is not None and self.checkpoint_steps < 1:
            raise ConfigError(f"train.checkpoint_steps must be >= 1 or unset, got {self.checkpoint_steps}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ConfigError(f"train.pad_to_multiple_of must be >= 1 (1 = off) or unset, got {self.pad_to_multiple_of}")
        if self.dataloader_workers is not None and self.dataloader_workers < 0:
            raise ConfigError(f"train.dataloader_workers must be >= 0 or unset, got {self.dataloader_workers}")


@dataclass
class GenerationConfig:
    """How summaries are decoded (transformers generate(), greedy or beam search, never sampled)."""

    num_beams: int = field(default=1, metadata={"help": "beams (the summarization study used 4)"})
    length_penalty: float = field(default=1.0, metadata={
        "help": "> 1 favours longer beams (the study: 2.0); used with num_beams > 1"})
    no_repeat_ngram_size: int = field(default=3, metadata={
        "help": "never repeat an n-gram of this size (the study: 3); 0 = off. Stops loops"})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "> 1 discourages repeating any earlier token; 1 = off"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "generation budget in tokens; None = data.max_target_tokens"})
    batch_size: int | None = field(default=None, metadata={
        "help": "texts per generate() call; None: train.eval_batch_size, more on CPU where the cache fits"})

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

    model: str = field(default="microsoft/deberta-xlarge-mnli", metadata={
        "help": "the summarization study's (hub: --online); or a local folder / registered model"})
    num_layers: int | None = field(default=None, metadata={
        "help": "which layer's embeddings; None: bert-score's tuned layer, or a local model's last"})
    batch_size: int = field(default=16, metadata={"help": "summaries per batch"})

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

    documents: int = field(default=32, metadata={"help": "held-out abstracts scored"})
    max_tokens: int = field(default=128, metadata={
        "help": "tokens per abstract: the loss is on its second half, given the first"})

    def __post_init__(self):
        check_types(self, "forgetting")
        if self.documents < 1 or self.max_tokens < 8:
            raise ConfigError("forgetting.documents must be >= 1 and forgetting.max_tokens >= 8")


@dataclass
class ExperimentConfig:
    """One run: a model adapted to a task with a method under one seed.

    Pure data: types and values are checked here; names (task, model, method) are resolved and
    checked against the registries once, in `plan.py`."""

    task: str = field(metadata={
        "help": "a registered task (`medpeft tasks`), or your own data as a mapping {type, path, text_field, target_field}"})
    model: str = field(metadata={"help": "a registered model, a local model directory, or a hub id (needs --online)"})
    method: str = field(metadata={"help": "a registered method (`medpeft list`); `full` is full fine-tuning"})
    seed: int = field(default=0, metadata={"help": "seeds data order, new-head init, dropout and the method's init"})
    method_args: dict = field(default_factory=dict, metadata={"help": "keyword arguments of the method's peft config"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "how the task's data is split and truncated"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation settings (the Trainer's)"})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={
        "help": "how summaries are decoded (generate())"})
    bertscore: BertScoreConfig | None = field(default=None, metadata={
        "help": "`bertscore: true` (the study's model, --online) or {model, num_layers}"})
    forgetting: ForgettingConfig | None = field(default=None, metadata={
        "help": "`forgetting: true` or {documents, max_tokens}: generative models only"})
    user_data: dict | None = field(default=None, metadata={
        "help": "set from a task: mapping (your own data); task then holds its name, user-<file stem>"})
    # Set by medpeft, not by you (the fields below). A fingerprint makes a file edited in place, or a model
    # re-trained into the same folder, a new run id.
    fingerprint: dict | None = field(default=None, metadata={
        "help": "set by medpeft (plan.py): content fingerprints of your data file and of a local model folder"})
    tuning: dict | None = field(default=None, metadata={
        "help": "set by medpeft (tune/) in a tuned grid: {role: trial, ...} on a tuning trial (scored on validation, "
                "never in the main table), {role: final, over: candidates, ...} on a run whose settings tuning chose"})
    # variant and tune are no settings and not part of the run's identity.
    variant: dict = field(default_factory=dict, init=False, compare=False, repr=False, metadata={
        "help": "the grid axes that set this run ({method_args.r: 4}), recorded at expansion so the report keeps a "
                "sweep's variants apart without guessing"})
    tune: TuneConfig | None = field(default=None, init=False, compare=False, repr=False, metadata={
        "help": "the grid's (or this run's block's) tune: block, set at expansion"})

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
        check_seed(self.seed, "seed")
        if not isinstance(self.method_args, dict):
            raise ConfigError(f"method_args must be a mapping, got {self.method_args!r}")
        if len(self.run_id.encode()) > RUN_ID_MAX_BYTES:
            raise ConfigError(f"the run folder name {self.run_id!r} would be {len(self.run_id.encode())} bytes, over the file "
                              f"system's {RUN_ID_MAX_BYTES}; it is <task>.<model>.<method>.seed<N>.<hash>: shorten the task "
                              f"name, or move the model folder ({self.model!r}) to a shorter path")

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


RUN_ID_MAX_BYTES = 255  # a run id is a folder name

UNSET_KEYS = (("data", "per_class"), ("train", "time_budget_s"), ("train", "checkpoint_steps"), ("train", "fused_kernels"),
              ("generation", "batch_size"), ("train", "pad_to_multiple_of"), ("train", "packing"), ("train", "bf16_base"),
              ("train", "fused_optimizer"), ("train", "dataloader_workers"), ("train", "compile"))


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
    name = mapping.get("name")
    if name is None or name == "":
        return check_name(f"user-{Path(mapping.get('path') or 'data').stem}", "task.path's file name (which names the task unless task.name is set)")
    return check_name(name, "task.name")


def config_from_dict(raw: dict) -> ExperimentConfig:
    """One run's config from plain data (a grid row or a result.json `config`)."""
    return build_dataclass(ExperimentConfig, raw, "")
