"""Resolve and validate runs once, before any training: each config becomes a `RunPlan`.

A plan holds everything a run needs that can be known without training: the config with its
defaults filled in, the task and its loaded splits, the method, the local model path and the model
kind. Every check happens here, once per distinct model, task and data setting, so a grid fails
before its first run rather than in its tenth; the run itself (run/execute.py) checks nothing again.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from medpeft.config import ExperimentConfig
from medpeft.dist import resolve_precision
from medpeft.errors import ConfigError, MedpeftError
from medpeft.methods import MethodSpec, check_hardware, validate_method_args
from medpeft.models import check_model_name, model_architecture, position_limit, resolve_model
from medpeft.files import file_fingerprint, folder_fingerprint
from medpeft.registry import METHODS, MODELS, TASKS
from medpeft.tasks import TaskData, TaskSpec, user_task_spec

# The model kind (a head, see run/kinds.py) each task type needs; summarization takes the model's
# own architecture (seq2seq or causal).
KIND_FOR_TASK_TYPE = {"classification": "seq_cls", "multilabel": "multilabel", "ner": "token_cls"}
GENERATIVE_ARCHITECTURES = ("seq2seq", "causal")
# Optimiser steps one run may plan. The summarization study's longest run (Flan-T5-Large, 1525 min) was in the tens of
# thousands; a million is 10x more than any fine-tuning here needs, and far below what a typo plans (epochs: 1e9 on
# 256 examples is 3.2e10 steps, an ETA of 20,000 hours). An error, not a warning: grids run unattended (Slurm, CI),
# where a warning scrolls past while the job holds the GPU, and the step count also sets the learning-rate schedule.
MAX_PLANNED_STEPS = 1_000_000


@dataclass(frozen=True)
class RunPlan:
    """One run, resolved and validated."""

    config: ExperimentConfig  # with train.lr filled in (the method's default when unset)
    task: TaskSpec
    data: TaskData  # the loaded train/validation/test splits
    method: MethodSpec
    model_path: str  # a local directory (or, with --online, a hub id)
    kind: str  # the ModelKind name: seq2seq, causal, seq_cls, multilabel or token_cls
    bertscore: tuple[str, int] | None = None  # (model folder or hub id, layer) when the run asks for BERTScore

    @property
    def run_id(self) -> str:
        return self.config.run_id


def task_spec(cfg: ExperimentConfig) -> TaskSpec:
    """The registered task, or the task of your own data (validated, never registered)."""
    if cfg.user_data is None:
        if cfg.task not in TASKS:
            raise ConfigError(f"unknown task {cfg.task!r}; valid tasks: {', '.join(sorted(TASKS))} "
                              "(or your own data: task: {type, path, text_field, target_field})")
        return TASKS[cfg.task]
    if cfg.task in TASKS:
        raise ConfigError(f"task name {cfg.task!r} is already a registered task; give your data set its own "
                          f"name (task: {{name: ..., path: {cfg.user_data.get('path')}}})")
    return user_task_spec(cfg.user_data)


def resolve_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check the config's names against the registries and fill the method's default learning rate."""
    spec = task_spec(cfg)
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; valid methods: {', '.join(sorted(METHODS))}")
    check_model_name(cfg.model)
    validate_method_args(cfg.method, cfg.method_args)
    if spec.eval_only and METHODS[cfg.method].trains:
        raise ConfigError(
            f"task {cfg.task!r} is evaluation-only (no train split), so method {cfg.method!r} cannot train on it; "
            f"use method: untrained with the base model (zero-shot), or with a model trained on another task "
            f"(model: runs/<grid>/<run_id>/adapter, e.g. from pubmed-conclusion); model is now {cfg.model!r}")
    train = copy.copy(cfg.train)
    if train.lr is None:
        train.lr = METHODS[cfg.method].default_lr  # set, not validated: the untrained baseline's is 0
    train.precision = resolve_precision(train.precision)  # the run id and result.json record what ran
    resolved = dataclasses.replace(cfg, train=train, fingerprint=content_fingerprint(cfg))
    resolved.variant, resolved.tune = dict(cfg.variant), cfg.tune  # not constructor fields: carried over by hand
    return resolved


def content_fingerprint(cfg: ExperimentConfig) -> dict | None:
    """Fingerprints of what a run reads from your disk (a data file, a local model folder), or None."""
    found = {}
    if cfg.user_data is not None:
        found["data"] = file_fingerprint(Path(cfg.user_data["path"]).expanduser())
    if cfg.model not in MODELS and Path(cfg.model).expanduser().is_dir():
        found["model"] = folder_fingerprint(Path(cfg.model).expanduser())
    return found or None


def model_kind(task_type: str, architecture: str, model: str) -> str:
    """The head a task type needs, or the generative architecture a summarization task needs."""
    if task_type in KIND_FOR_TASK_TYPE:
        return KIND_FOR_TASK_TYPE[task_type]
    if architecture not in GENERATIVE_ARCHITECTURES:
        raise ConfigError(f"model {model!r} is an encoder and cannot generate text for a {task_type} task; use a "
                          "seq2seq model (e.g. flan-t5-small, tiny-t5) or a causal LM (smollm2-135m, tiny-llama)")
    return architecture


def load_data(spec: TaskSpec, cfg: ExperimentConfig, online: bool) -> TaskData:
    """The task's splits. A split that does not fit is a ConfigError, a malformed source a DataError, each
    raised where it is found and naming the task; anything else is a bug and keeps its traceback."""
    return spec.load(cfg.data, online=online)


def plan_runs(configs: list[ExperimentConfig], online: bool = False) -> list[RunPlan]:
    """A plan per config, in order. Each distinct model is resolved, each distinct (task, data)
    loaded and each run's method, precision and kernels checked; the loaded splits are shared by the plans."""
    resolved = [resolve_config(cfg) for cfg in configs]
    paths, architectures, limits, data, specs, owners, scorers = {}, {}, {}, {}, {}, {}, {}
    for cfg in resolved:
        check_hardware(cfg.method, cfg.train.precision, bool(cfg.train.fused_kernels))
        if cfg.model not in paths:
            paths[cfg.model] = resolve_model(cfg.model, online)
            architectures[cfg.model] = model_architecture(paths[cfg.model])
            limits[cfg.model] = position_limit(paths[cfg.model])
        spec = task_spec(cfg)
        kind = model_kind(spec.type, architectures[cfg.model], cfg.model)  # before any data is read or downloaded
        check_lengths(cfg, kind, limits[cfg.model])
        specs.setdefault(spec.name, spec)
        if owners.setdefault(spec.name, cfg.user_data) != cfg.user_data:
            raise ConfigError(f"two data sets in this grid are both named {spec.name!r}; give each its own name: "
                              "task: {name: ..., path: ...}")
        key = data_key(spec, cfg)
        if key not in data:
            data[key] = load_data(spec, cfg, online)
        check_splits(cfg, spec, data[key])
        check_steps(cfg, len(data[key].splits["train"]))
    plans = []
    for cfg in resolved:
        spec = specs[cfg.task]
        kind = model_kind(spec.type, architectures[cfg.model], cfg.model)
        if cfg.forgetting is not None and kind not in GENERATIVE_ARCHITECTURES:
            raise ConfigError(f"forgetting measures a generative model's language-model loss; task {cfg.task!r} trains a "
                              f"{kind} head on {cfg.model!r}: remove forgetting for it")
        key = data_key(spec, cfg)
        scorer = bertscore_model(cfg, spec.type, online, scorers)
        plans.append(RunPlan(cfg, spec, data[key], METHODS[cfg.method], paths[cfg.model], kind, scorer))
    return plans


def data_key(spec: TaskSpec, cfg: ExperimentConfig) -> tuple[str, str]:
    """Runs that differ only in how many examples per class they sample share one loaded data set."""
    settings = dataclasses.asdict(cfg.data)
    settings.pop("per_class")
    return spec.name, json.dumps(settings, sort_keys=True)


def check_splits(cfg: ExperimentConfig, spec: TaskSpec, data: TaskData) -> None:
    """What a run needs of its splits beyond loading: examples to sample per class, a validation split to tune on."""
    if cfg.data.per_class is not None and spec.type not in ("classification", "ner"):
        raise ConfigError(f"data.per_class samples K examples per class; task {cfg.task!r} is {spec.type}, which has no "
                          "classes: remove data.per_class and set data.train_size")
    if cfg.tuning is not None and not data.splits["validation"]:
        if cfg.user_data is None:
            how = f"(data.val_size is {cfg.data.val_size}); raise data.val_size (e.g. data.val_size: 32)"
        else:  # your file sets its splits: data.val_size can only cut one
            how = (f"in {cfg.user_data.get('path')}: give some records the split value validation (the file's split column), "
                   "or drop that column to split by task.fractions (e.g. fractions: {train: 0.8, validation: 0.1, test: 0.1})")
        raise ConfigError(f"tune: chooses on the validation split, and task {cfg.task!r} has none {how}, or remove the "
                          "tune: block")


def check_lengths(cfg: ExperimentConfig, kind: str, limit: int | None) -> None:
    """Token lengths must fit the model's positions (`limit`; None: no limit, as T5's relative positions):
    the source, and the target a seq2seq decoder writes; a decoder-only model reads the source and writes
    the target in one sequence, so their sum."""
    if limit is None:
        return
    source, target = cfg.data.max_source_tokens, cfg.data.max_target_tokens
    budget, budget_key = target, "data.max_target_tokens"
    if (cfg.generation.max_new_tokens or 0) > target:  # generation may write more than training saw
        budget, budget_key = cfg.generation.max_new_tokens, "generation.max_new_tokens"
    if kind == "causal":
        checks = [(source + budget, f"data.max_source_tokens + {budget_key}",
                   f"a decoder reads both in one sequence: lower the sum, e.g. data.max_source_tokens: {max(limit - budget, 1)}")]
    else:
        checks = [(source, "data.max_source_tokens", f"set data.max_source_tokens: {limit} or less")]
        if kind == "seq2seq":
            checks.append((budget, budget_key, f"set {budget_key}: {limit} or less"))
    for tokens, key, fix in checks:
        if tokens > limit:
            raise ConfigError(f"{key} is {tokens:,} tokens, but model {cfg.model!r} has {limit:,} positions "
                              f"(max_position_embeddings in its config.json); {fix}")


def check_steps(cfg: ExperimentConfig, n_train: int) -> None:
    """Refuse a run that plans more than MAX_PLANNED_STEPS optimiser steps (a typo such as epochs: 1e9)."""
    t = cfg.train
    if not METHODS[cfg.method].trains:
        return
    if t.max_steps > 0:
        steps, how = t.max_steps, f"train.max_steps is {t.max_steps:,}"
    else:
        steps = math.ceil(math.ceil(n_train / (t.batch_size * t.grad_accum)) * t.epochs)
        how = (f"train.epochs: {t.epochs:g} epochs of {n_train:,} training examples at {t.batch_size} per batch x "
               f"{t.grad_accum} accumulated is {steps:,} optimiser steps")
    if steps > MAX_PLANNED_STEPS:
        raise ConfigError(f"{how}, over medpeft's limit of {MAX_PLANNED_STEPS:,} per run (a long fine-tuning run takes "
                          f"10,000 to 100,000); lower {'train.max_steps' if t.max_steps > 0 else 'train.epochs, or set train.max_steps'}")


def bertscore_model(cfg: ExperimentConfig, task_type: str, online: bool, cache: dict) -> tuple[str, int] | None:
    """The BERTScore model (local folder, or hub id with --online) and layer of a run, checked before training."""
    import importlib.util

    if cfg.bertscore is None:
        return None
    if task_type != "summarization":
        raise ConfigError(f"bertscore scores generated text; task {cfg.task!r} is {task_type}: remove bertscore for it")
    if importlib.util.find_spec("bert_score") is None:
        raise ConfigError("bertscore needs the bert-score package: .venv/bin/pip install 'medpeft[bertscore]'")
    name, layers = cfg.bertscore.model, cfg.bertscore.num_layers
    if (name, layers) not in cache:
        try:
            path = resolve_model(name, online)
        except MedpeftError as err:
            raise ConfigError(f"bertscore.model: {err}") from None
        cache[name, layers] = (path, layers or bertscore_layer(name, path))
    return cache[name, layers]


def bertscore_layer(name: str, path: str) -> int:
    """bert-score's tuned layer for the models it knows (deberta-xlarge-mnli: 40), else the model's last layer."""
    from bert_score.utils import model2layers
    from transformers import AutoConfig

    return model2layers.get(name) or AutoConfig.from_pretrained(path).num_hidden_layers


def plan_run(cfg: ExperimentConfig, online: bool = False) -> RunPlan:
    """The plan of a single run (see `plan_runs`)."""
    return plan_runs([cfg], online)[0]
