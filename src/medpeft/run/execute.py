"""One run, top to bottom: load the model, apply the method, train, predict, score, measure, save.

The run gets a `RunPlan` (plan.py) in which every name is resolved and every check done; it only
orchestrates. What differs between model kinds is asked of the run's `ModelKind` (kinds.py).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from medpeft.dist import is_main_process, local_device, wait_for_everyone
from medpeft.errors import ModelError
from medpeft.files import folder_written_whole
from medpeft.methods import build_peft_config, output_prefix_tokens
from medpeft.models import adapted_from, load_model
from medpeft.plan import RunPlan
from medpeft.run.checkpoint import remove_checkpoints
from medpeft.run.encode import encode_examples, prompt_format, truncation_warnings, source_that_fits
from medpeft.run.fit import NOT_TRAINED, run_levers, train_model
from medpeft.run.levers import hold_frozen_in_bf16
from medpeft.run.forgetting import continuation_rows, heldout_abstracts, measure_forgetting
from medpeft.run.kinds import KINDS
from medpeft.run.metrics import score_bertscore
from medpeft.run.measure import (count_parameters, describe_env, earlier_runs_resident_bytes, folder_bytes, peak_memory_bytes,
                                 reset_peak_memory)
from medpeft.run.record import TRAINING_KEYS, RunResult, Tuning, is_trial, write_jsonl
from medpeft.tasks import sample_per_class


def run_experiment(plan: RunPlan, run_dir: Path, on_validation=None, callbacks=()) -> RunResult:
    """Train and evaluate one planned run; write predictions.jsonl, adapter/ and, last, result.json.

    A tuning trial (config.tuning role "trial") is evaluated on the validation split, never on test.
    `on_validation(step, loss)` receives mid-training validation losses (a tuner's pruner); `callbacks`
    are extra TrainerCallbacks (a tracker's). Training resumes from the run's last checkpoint, if any;
    the checkpoints are removed once result.json is written."""
    from transformers import set_seed

    cfg, kind, task = plan.config, KINDS[plan.kind], plan.data
    trial = is_trial(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    reset_peak_memory()
    set_seed(cfg.seed)  # python, numpy and torch: data order, new-head init, dropout, method init
    model, tokenizer, peft_config, new_modules = prepare_model(plan, kind)
    params = count_parameters(model)
    train_split, per_class = training_examples(plan)
    data_cfg, fit_note = source_that_fits(cfg.data, model, peft_config, kind.decoder_only)
    train_rows, train_stats = encode_examples(train_split, tokenizer, kind, task.instruction, data_cfg, task.labels)
    val_rows, _ = encode_examples(task.splits["validation"], tokenizer, kind, task.instruction, data_cfg, task.labels)
    training = (train_model(model, tokenizer, kind, cfg, train_rows, val_rows, run_dir, on_validation, callbacks)
                if plan.method.trains else NOT_TRAINED)

    start = time.perf_counter()
    use_model = plan.method.trains or not new_modules  # an untrained random head is replaced by the prior
    split = "validation" if trial else "test"
    if trial and Tuning.from_json(cfg.tuning).scored_by_loss:  # scored by its validation loss: nothing to predict
        predictions, metrics, test_stats = [], {}, {}
    else:
        predictions, metrics, test_stats = evaluate_model(model, tokenizer, kind, plan, train_rows, use_model, split, data_cfg)
    evaluation = add_bertscore(plan, predictions, metrics) if plan.bertscore and not trial else {}
    if not use_model:  # the report says what such a baseline is: no model ran
        evaluation["baseline"] = kind.prior_words
    eval_seconds = time.perf_counter() - start
    if plan.config.forgetting is not None and plan.method.trains:
        evaluation["forgetting"] = measure_run_forgetting(model, tokenizer, plan, kind, peft_config)
    adapter_dir = save_adapter(model, tokenizer, plan, peft_config, run_dir / "adapter")

    warnings = ([fit_note] if fit_note else []) + truncation_warnings("train", train_stats, data_cfg) + (
        truncation_warnings(split, test_stats, data_cfg) if test_stats else [])
    result = RunResult.succeeded(
        cfg, cfg.variant, task_type=task.type, labels=task.labels, model_path=plan.model_path, model_kind=kind.name,
        adapted_from=adapted_from(plan.model_path),
        metrics=metrics, evaluation=evaluation, efficiency=efficiency(params, training, eval_seconds, adapter_dir, evaluation.get("forgetting")),
        training={k: training[k] for k in TRAINING_KEYS if k in training}, evaluated_on=split,
        data={"train": train_stats, split: test_stats, "validation_examples": len(val_rows), "warnings": warnings,
              "prompt_format": prompt_format(tokenizer, kind.encode), "instruction": task.instruction, **({"per_class": per_class} if per_class else {})},
        env=describe_env())
    if is_main_process():
        write_jsonl(run_dir / "predictions.jsonl", predictions)
        result.write(run_dir)  # last: its presence marks the run finished
        remove_checkpoints(run_dir)
    wait_for_everyone()
    return result


def prepare_model(plan: RunPlan, kind):
    """The model with its method applied and placed on this process's device, its tokenizer, its peft
    config (None for full fine-tuning and the untrained baseline) and the new modules (a new head)."""
    spec, cfg = plan.method, plan.config
    labels = plan.data.labels if kind.new_head else None
    model, tokenizer, new_modules = load_model(plan.model_path, kind.auto_class, labels, kind.problem_type, spec.quantize_4bit)
    new_modules = new_modules if kind.new_head else []
    if spec.quantize_4bit:  # QLoRA: fp32 norms/head, input grads for the frozen 4-bit base
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    peft_config = build_peft_config(cfg.method, kind.peft_task_type, cfg.method_args, model_path=plan.model_path,
                                    instruction=plan.data.instruction, new_modules=new_modules)
    if peft_config is not None:
        model = apply_peft(model, peft_config, cfg, kind)
        if run_levers(cfg, kind).bf16_base:  # before the model moves: the GPU never holds the fp32 base
            hold_frozen_in_bf16(model)
    if not spec.trains:
        model.requires_grad_(False)
    if not spec.quantize_4bit:  # a 4-bit model is already placed and cannot be moved
        model.to(local_device())
    return model, tokenizer, peft_config, new_modules


def apply_peft(model, peft_config, cfg, kind):
    """Wrap the model with its peft adapter; a pair peft cannot build is a clear error, not a traceback."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except (ValueError, TypeError, NotImplementedError, AttributeError) as err:
        raise ModelError(f"method {cfg.method!r} cannot be applied to model {cfg.model!r} ({kind.name}, "
                         f"{model.config.model_type}): {err}. Pass method_args (e.g. target_modules) or pick another method.") from err


def training_examples(plan: RunPlan) -> tuple[list[dict], dict | None]:
    """The training split, or its few-shot sample (data.per_class, drawn by the run's seed) and the
    count of examples per class."""
    cfg, task = plan.config, plan.data
    if cfg.data.per_class is None:
        return task.splits["train"], None
    return sample_per_class(task.splits["train"], cfg.data.per_class, cfg.seed, task.type)


def evaluate_model(model, tokenizer, kind, plan: RunPlan, train_rows: list[dict], use_model: bool = True, split: str = "test",
                   data_cfg=None):
    """Predictions (one dict per example of `split`, with its own scores), the task's metrics and truncation stats.

    `use_model=False` (untrained method, random new head) scores the training split's prior instead:
    the majority class, each label's share of the training examples, or the majority tag."""
    cfg, task = plan.config, plan.data
    test = task.splits[split]
    rows, stats = encode_examples(test, tokenizer, kind, task.instruction, data_cfg or cfg.data, task.labels, for_generation=True)
    if use_model:
        prefix = output_prefix_tokens(getattr(model, "peft_config", {}).get("default"))
        outputs = kind.predict(model, tokenizer, rows, test, task.labels, cfg, local_device(), prefix)
    else:
        outputs = kind.prior(train_rows, test, task.labels)
    metrics, scored = kind.score(test, outputs, task.labels)
    predictions = [{"id": ex["id"], "input": ex["text"], **({"pair": ex["pair"]} if "pair" in ex else {}),
                    "reference": ex["target"], **s} for ex, s in zip(test, scored)]
    return predictions, metrics, stats


def add_bertscore(plan: RunPlan, predictions: list[dict], metrics: dict) -> dict:
    """BERTScore F1 of every prediction (into its scores) and its mean (into metrics); how it was computed."""
    model, layers = plan.bertscore
    f1 = score_bertscore([p["prediction"] for p in predictions], [p["reference"] for p in predictions], model, layers,
                         plan.config.bertscore.batch_size, local_device())
    for p, value in zip(predictions, f1):
        p["scores"]["bertscore_f1"] = value
    metrics["bertscore_f1"] = sum(f1) / len(f1) if f1 else 0.0
    return {"bertscore": {"model": plan.config.bertscore.model, "path": model, "num_layers": layers, "rescaled": False}}


def save_adapter(model, tokenizer, plan: RunPlan, peft_config, adapter_dir: Path) -> Path:
    """Save what was trained (an adapter, or a whole model for full fine-tuning) into `adapter_dir`,
    whole or not at all (a full disk leaves no half-written adapter, and the error names the folder)."""
    if is_main_process():  # under `accelerate launch` every process trains; one writes
        shutil.rmtree(adapter_dir, ignore_errors=True)
        if plan.method.trains:
            with folder_written_whole(adapter_dir) as folder:
                model.save_pretrained(folder)
                if peft_config is None:  # full fine-tuning stores a whole, self-contained model
                    tokenizer.save_pretrained(folder)
    return adapter_dir


def efficiency(params: dict, training: dict, eval_seconds: float, adapter_dir: Path, forgetting: dict | None) -> dict:
    """Cost of the run. adapter_bytes: the weights that must be stored (the adapter, or the whole model
    for `full`); adapter_folder_bytes adds the configs and, for `full`, the tokenizer (not the README.md, the
    model card that each report rewrites); forgetting: the change in LM loss on held-out abstracts (nats/token),
    when measured."""
    seconds = training["train_seconds"]
    cost = {**params, "train_seconds": seconds, "eval_seconds": eval_seconds,
            "train_tokens_per_second": training["train_tokens"] / seconds if seconds else 0.0,
            "peak_memory_bytes": peak_memory_bytes(), "earlier_runs_resident_bytes": earlier_runs_resident_bytes(),
            "adapter_bytes": folder_bytes(adapter_dir, weights_only=True),
            "adapter_folder_bytes": folder_bytes(adapter_dir)}
    if forgetting is not None:
        cost["forgetting"] = forgetting["forgetting"]
    return cost


def measure_run_forgetting(model, tokenizer, plan: RunPlan, kind, peft_config) -> dict:
    """Base and adapted LM loss on held-out MEDLINE abstracts (the same documents for every seed of a task).
    Full fine-tuning reloads its base for the comparison (briefly twice the model's memory)."""
    settings, decoder_only = plan.config.forgetting, kind.decoder_only
    documents = heldout_abstracts(plan.data.splits, settings.documents, seed=0)
    rows = continuation_rows(documents, tokenizer, decoder_only, settings.max_tokens)
    base = None
    if peft_config is None:
        base = load_model(plan.model_path, kind.auto_class, quantize_4bit=plan.method.quantize_4bit)[0].to(local_device())
    return measure_forgetting(model, tokenizer, rows, plan.config.train.eval_batch_size, local_device(), decoder_only, base)
