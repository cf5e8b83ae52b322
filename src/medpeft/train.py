"""One run, top to bottom: load task and model, apply the method, train, evaluate, measure, save."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from medpeft.config import ExperimentConfig
from medpeft.dist import is_main_process, local_device, wait_for_everyone
from medpeft.evaluate import (generate_texts, predict_probs, predict_tags, score_classification, score_multilabel, score_ner,
                              score_rouge)
from medpeft.features import encode_examples, token_collator, truncation_warnings
from medpeft.measure import count_parameters, describe_env, folder_bytes, peak_memory_bytes, reset_peak_memory
from medpeft.methods import build_peft_config, check_hardware, output_prefix_tokens
from medpeft.models import ModelError, infer_model_kind, load_model, resolve_model
from medpeft.registry import METHODS, TASKS
from medpeft.tasks import check_task_method
from medpeft.results import write_json, write_jsonl


def run_experiment(cfg: ExperimentConfig, run_dir: Path, *, online: bool = False) -> dict:
    """Train and evaluate one configuration; write result.json, predictions.jsonl and adapter/."""
    from transformers import set_seed

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    reset_peak_memory()
    set_seed(cfg.seed)  # python, numpy and torch: data order, new-head init, dropout, method init
    check_task_method(cfg.task, cfg.method, cfg.model)  # an evaluation-only task cannot train
    task = TASKS[cfg.task].load(cfg.data, online=online)
    model_path = resolve_model(cfg.model, online)
    kind = infer_model_kind(model_path, task.type)
    spec = METHODS[cfg.method]
    check_hardware(cfg.method, cfg.train.precision)
    model, tokenizer, new_modules = load_model(model_path, kind, task.labels, quantize_4bit=spec.quantize_4bit)
    if spec.quantize_4bit:  # QLoRA: fp32 norms/head, input grads for the frozen 4-bit base
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    peft_config = build_peft_config(cfg.method, kind, cfg.method_args, model_path=model_path,
                                    instruction=task.instruction, new_modules=new_modules)
    if peft_config is not None:
        model = apply_peft(model, peft_config, cfg, kind)
    if not METHODS[cfg.method].trains:
        model.requires_grad_(False)
    params = count_parameters(model)
    device = local_device()
    if not spec.quantize_4bit:  # a 4-bit model is already placed and cannot be moved
        model.to(device)

    train_rows, train_stats = encode_examples(task.splits["train"], tokenizer, kind, task.instruction, cfg.data, task.labels)
    val_rows, _ = encode_examples(task.splits["validation"], tokenizer, kind, task.instruction, cfg.data, task.labels)
    training = {"train_seconds": 0.0, "train_tokens": 0, "train_loss": None, "val_loss": None, "steps": 0}
    if METHODS[cfg.method].trains:
        training = train_model(model, tokenizer, kind, cfg, train_rows, val_rows, run_dir)

    start = time.perf_counter()
    test = task.splits["test"]
    use_model = METHODS[cfg.method].trains or not new_modules  # an untrained random head is replaced by a prior
    predictions, metrics, test_stats = evaluate_model(model, tokenizer, kind, task, cfg, test, train_rows, device, use_model)
    eval_seconds = time.perf_counter() - start

    adapter_dir = run_dir / "adapter"
    if is_main_process():  # under `accelerate launch` every process trains; one writes
        shutil.rmtree(adapter_dir, ignore_errors=True)
    if METHODS[cfg.method].trains and is_main_process():
        model.save_pretrained(adapter_dir)
        if peft_config is None:  # full fine-tuning stores a whole, self-contained model
            tokenizer.save_pretrained(adapter_dir)
    seconds = training["train_seconds"]
    result = {
        "run_id": cfg.run_id, "status": "ok", "error": None,
        "task": cfg.task, "task_type": task.type, "labels": task.labels, "model": cfg.model, "model_path": model_path, "model_kind": kind,
        "method": cfg.method, "seed": cfg.seed, "config": cfg.to_dict(),
        "metrics": metrics,
        "efficiency": {
            **params, "train_seconds": seconds, "eval_seconds": eval_seconds,
            "train_tokens_per_second": training["train_tokens"] / seconds if seconds else 0.0,
            "peak_memory_bytes": peak_memory_bytes(), "adapter_bytes": folder_bytes(adapter_dir),
        },
        "training": {k: training[k] for k in ("steps", "train_loss", "val_loss", "train_tokens")},
        "data": {"train": train_stats, "test": test_stats, "validation_examples": len(val_rows),
                 "warnings": truncation_warnings("train", train_stats, cfg.data) + truncation_warnings("test", test_stats, cfg.data)},
        "env": describe_env(),
    }
    if is_main_process():
        write_jsonl(run_dir / "predictions.jsonl", predictions)
        write_json(run_dir / "result.json", result)  # last: its presence marks the run finished
    wait_for_everyone()
    return result


def apply_peft(model, peft_config, cfg: ExperimentConfig, kind: str):
    """Wrap the model with its peft adapter; a pair peft cannot build is a clear error, not a traceback."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except (ValueError, TypeError, NotImplementedError, AttributeError) as err:
        raise ModelError(f"method {cfg.method!r} cannot be applied to model {cfg.model!r} ({kind}, "
                         f"{model.config.model_type}): {err}. Pass method_args (e.g. target_modules) or pick another method.") from err


def train_model(model, tokenizer, kind: str, cfg: ExperimentConfig, train_rows, val_rows, run_dir: Path) -> dict:
    """Fit with the transformers Trainer (Seq2SeqTrainer for encoder-decoders), dynamic padding."""
    from datasets import Dataset
    from transformers import (DataCollatorForSeq2Seq, DataCollatorWithPadding, Seq2SeqTrainer, Seq2SeqTrainingArguments,
                              Trainer, TrainingArguments)

    t = cfg.train
    steps_per_epoch = math.ceil(len(train_rows) / (t.batch_size * t.grad_accum))
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)
    args_cls = Seq2SeqTrainingArguments if kind == "seq2seq" else TrainingArguments
    args = args_cls(
        output_dir=str(run_dir / "trainer"), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr, num_train_epochs=t.epochs, max_steps=t.max_steps, weight_decay=t.weight_decay,
        warmup_steps=t.warmup, lr_scheduler_type=t.scheduler, seed=cfg.seed, data_seed=cfg.seed,
        bf16=t.precision == "bf16", fp16=t.precision == "fp16", use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length", include_num_input_tokens_seen="non_padding",
        logging_steps=max(1, total_steps // 5), save_strategy="no", report_to="none", logging_nan_inf_filter=False,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},  # works with a frozen embedding (peft)
    )
    if kind in ("seq_cls", "multilabel"):
        collator = DataCollatorWithPadding(tokenizer)
    elif kind == "token_cls":  # pads labels with -100
        collator = token_collator(tokenizer, output_prefix_tokens(getattr(model, "peft_config", {}).get("default")))
    else:  # pads inputs with the pad id and labels with -100
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    trainer_cls = Seq2SeqTrainer if kind == "seq2seq" else Trainer
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                          eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
                          data_collator=collator, processing_class=tokenizer)
    # The Trainer multiplies the loss by the number of processes when the model's forward takes **kwargs,
    # expecting it to divide by the global token count. Only causal LMs' loss_function does; T5 and the
    # classification heads take a plain mean, so under DDP their loss (and gradient) would be doubled.
    trainer.model_accepts_loss_kwargs = kind == "causal"
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    if not math.isfinite(output.training_loss):
        raise FloatingPointError(f"training loss is {output.training_loss}; lower train.lr (now {t.lr}) or check the data")
    val_loss = trainer.evaluate()["eval_loss"] if val_rows else None
    shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    return {"train_seconds": seconds, "train_tokens": int(trainer.state.num_input_tokens_seen),
            "train_loss": float(output.training_loss), "val_loss": val_loss, "steps": int(trainer.state.global_step)}


def evaluate_model(model, tokenizer, kind: str, task, cfg: ExperimentConfig, test: list[dict], train_rows, device,
                   use_model: bool = True):
    """Predictions (one dict per test example, with its own scores) and the task's metrics.

    `use_model=False` (untrained method, random new head) scores the training split's prior instead:
    the majority class, the labels present in most training examples, or the majority tag."""
    rows, stats = encode_examples(test, tokenizer, kind, task.instruction, cfg.data, task.labels, for_generation=True)
    base = [{"id": ex["id"], "input": ex["text"], "reference": ex["target"]} for ex in test]
    batch = cfg.train.eval_batch_size
    if kind in ("seq_cls", "multilabel"):
        multilabel = kind == "multilabel"
        probs = predict_probs(model, tokenizer, rows, batch, device, multilabel) if use_model else prior_probs(kind, train_rows, len(rows), len(task.labels))
        return classification_predictions(base, test, probs, task.labels, multilabel), \
            score_classification_kind(test, probs, task.labels, multilabel), stats
    if kind == "token_cls":
        n_words = [len(ex["text"]) for ex in test]
        if use_model:
            prefix = output_prefix_tokens(getattr(model, "peft_config", {}).get("default"))
            tags = predict_tags(model, tokenizer, rows, n_words, task.labels, batch, device, prefix)
        else:
            tag_counts = np.bincount([t for r in train_rows for t in r["labels"] if t != -100], minlength=len(task.labels))
            tags = [[task.labels[int(tag_counts.argmax())]] * n for n in n_words]
        preds = [dict(b, prediction=t, correct=int(t == ex["target"])) for b, t, ex in zip(base, tags, test)]
        return preds, score_ner([ex["target"] for ex in test], tags), stats
    texts = generate_texts(model, tokenizer, rows, kind, cfg.data.max_target_tokens, cfg.train.num_beams, batch, device)
    metrics, per_example = score_rouge(texts, [ex["target"] for ex in test])
    preds = [dict(b, prediction=t, scores=s) for b, t, s in zip(base, texts, per_example)]
    return preds, metrics, stats


def prior_probs(kind: str, train_rows: list[dict], n_rows: int, n_labels: int) -> np.ndarray:
    """The untrained baseline: one-hot majority class, or each label's share of training examples (multi-label)."""
    if not train_rows:  # an evaluation-only task has no training split: a uniform prior
        return np.full((n_rows, n_labels), 1.0 / n_labels)
    if kind == "multilabel":
        return np.tile(np.mean([r["labels"] for r in train_rows], axis=0), (n_rows, 1))
    majority = np.bincount([r["labels"] for r in train_rows], minlength=n_labels).argmax()
    return np.tile(np.eye(n_labels)[majority], (n_rows, 1))


def score_classification_kind(test: list[dict], probs: np.ndarray, labels: list[str], multilabel: bool) -> dict:
    if multilabel:
        return score_multilabel([[int(name in ex["target"]) for name in labels] for ex in test], probs)
    return score_classification([labels.index(ex["target"]) for ex in test], probs, len(labels))


def classification_predictions(base: list[dict], test: list[dict], probs: np.ndarray, labels: list[str], multilabel: bool) -> list[dict]:
    """Per example: the predicted label (multi-label: the list of labels with probability >= 0.5) and the probabilities."""
    preds = []
    for b, ex, p in zip(base, test, probs):
        if multilabel:
            predicted = [name for name, q in zip(labels, p) if q >= 0.5]
            correct = int(sorted(predicted) == sorted(ex["target"]))
        else:
            predicted = labels[int(p.argmax())]
            correct = int(predicted == ex["target"])
        preds.append(dict(b, prediction=predicted, correct=correct, probs=[round(float(x), 6) for x in p]))
    return preds
