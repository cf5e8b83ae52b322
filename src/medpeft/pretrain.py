"""Domain-adaptive pre-training: continue a base model's own objective on in-domain text.

Masked-LM for encoders, causal-LM for decoders, through the transformers Trainer. The default
corpus is the packaged MEDLINE abstracts minus every citation that shares text (a line or a
sentence, compared normalised) with a validation or test example of the grids the new model will
be evaluated in, so no evaluation text leaks into it, whatever the task's ids are. The output is
an ordinary model directory, usable as `model:` in any grid.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from medpeft.config import PretrainConfig  # its home is config/pretrain.py; callers may import it from here
from medpeft.data.medline import MIN_KEY_CHARS, citation_keys, text_keys
from medpeft.errors import ConfigError, ModelError
from medpeft.files import umask_modes
from medpeft.run.forgetting import example_text
from medpeft.run.record import write_json


# --- what of the evaluation text must stay out -------------------------------------
# Exclusion is by text, not by id: see the sentence keys in medpeft.data.medline (normalise_key,
# text_keys, citation_keys); a citation sharing a key with an evaluation example is left out.


def evaluation_texts(grid_paths, overrides=(), online: bool = False) -> dict[str, list[str]]:
    """The text of every validation and test example of the grids (with `--set` overrides), by task, once each."""
    from medpeft.config import load_grid
    from medpeft.plan import load_data, task_spec

    texts: dict[str, dict[str, None]] = {}  # task -> texts, in order, once each
    for path in grid_paths:
        seen = set()
        for cfg in load_grid(path, overrides).runs:
            setting = cfg.to_dict()
            key = json.dumps([cfg.task, setting["data"], setting.get("user_data")], sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            spec = task_spec(cfg)
            if spec.online and not online:
                raise ConfigError(f"{path}: task {cfg.task!r} downloads its data from the hub, so its evaluation "
                                  "text can only be held out of the corpus with --online")
            task = load_data(spec, cfg, online)
            bucket = texts.setdefault(cfg.task, {})
            for split in ("validation", "test"):
                bucket.update(dict.fromkeys(example_text(ex) for ex in task.splits[split]))
    return {task: list(bucket) for task, bucket in texts.items()}


def corpus_citations() -> list[dict]:
    """The packaged MEDLINE citations with an abstract, latest version of each PMID, by PMID."""
    from medpeft.tasks.medline_tasks import latest_citations  # cached: the MEDLINE tasks read it too

    return sorted(latest_citations(), key=lambda c: c["pmid"])


def build_corpus(held_out: dict[str, list[str]], max_docs: int, seed: int) -> tuple[list[str], dict]:
    """MEDLINE title + abstract texts sharing no key with the `held_out` texts, in a seeded random order."""
    import random

    keys_by_task = {task: set().union(*map(text_keys, texts)) for task, texts in held_out.items()}
    evaluation_keys = set().union(*keys_by_task.values())
    citations = corpus_citations()
    kept, dropped = [], {task: [] for task in held_out}
    for c in citations:
        shared = citation_keys(c) & evaluation_keys if evaluation_keys else None
        if not shared:
            kept.append(c)
            continue
        for task, keys in keys_by_task.items():
            if shared & keys:
                dropped[task].append(c["pmid"])
    docs = [f"{c['title']}\n{' '.join(s['text'] for s in c['sections'])}".strip() for c in kept]
    docs = [d for d in docs if len(d.split()) >= 20]  # drop errata and empty abstracts
    random.Random(seed).shuffle(docs)
    if max_docs > 0:
        docs = docs[:max_docs]
    stats = {"citations": len(citations), "dropped_for_evaluation": len(citations) - len(kept),
             "documents": len(docs), "min_key_chars": MIN_KEY_CHARS,
             "held_out": {task: {"evaluation_texts": len(held_out[task]), "evaluation_keys": len(keys_by_task[task]),
                                 "dropped_citations": len(dropped[task]), "pmids": dropped[task]} for task in held_out}}
    return docs, stats


def lm_objective(model: str, path: str) -> str:
    """masked-lm for an encoder, causal-lm for a decoder; an encoder-decoder is a ModelError (checked from
    its config, before the corpus is built or any weights load)."""
    from medpeft.models import PRETRAINING_OBJECTIVE, model_architecture

    objective = PRETRAINING_OBJECTIVE.get(model_architecture(path))
    if objective is None:
        raise ModelError(f"model {model!r} is an encoder-decoder (seq2seq) model; `medpeft pretrain` covers encoders "
                         "(masked-LM, e.g. tiny-bert, minilm-l6) and decoders (causal-LM, e.g. smollm2-135m, tiny-llama)")
    return objective


def load_lm(path: str, objective: str):
    """The model with its pre-training head: masked-LM for encoders, causal-LM for decoders."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if objective == "masked-lm":
        return AutoModelForMaskedLM.from_pretrained(path), tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(path), tokenizer


def save_adapted(model, base_path: str, objective: str, out: Path) -> None:
    """Save the adapted model. For encoders, the adapted weights go back into the base architecture so
    parts the masked-LM model lacks (BERT's pooler) keep their original weights instead of being dropped
    and later re-initialised at random, which would handicap the adapted model in the comparison."""
    if objective != "masked-lm":
        model.save_pretrained(out)
        return
    from transformers import AutoModel

    base = AutoModel.from_pretrained(base_path)
    missing, unexpected = base.load_state_dict(model.base_model.state_dict(), strict=False)
    if unexpected or any("pooler" not in key for key in missing):
        raise RuntimeError(f"adapted encoder does not fit its base: missing {missing}, unexpected {unexpected}")
    base.save_pretrained(out)


def pretrain(cfg: PretrainConfig, *, online: bool = False, log=print) -> Path:
    """Continue pre-training `cfg.model` on the MEDLINE corpus and save it to `cfg.out`."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments, set_seed

    from medpeft.dist import resolve_precision
    from medpeft.methods import check_precision
    from medpeft.run.fit import as_callback, trainer_class
    from medpeft.run.loss import masked_positions_loss
    from medpeft.run.measure import describe_env
    from medpeft.run.progress import TrainProgress
    from medpeft.models import PRETRAIN_RECORD, resolve_model

    precision = resolve_precision(cfg.precision)
    check_precision(precision, "--precision")
    set_seed(cfg.seed)
    path = resolve_model(cfg.model, online)
    objective = lm_objective(cfg.model, path)
    held_out = evaluation_texts(cfg.exclude_grids, cfg.exclude_overrides, online)
    docs, stats = build_corpus(held_out, cfg.max_docs, cfg.seed)
    model, tokenizer = load_lm(path, objective)
    by_task = ", ".join(f"{task} {s['dropped_citations']}" for task, s in stats["held_out"].items())
    log(f"pretrain {cfg.model} ({objective}) on {stats['documents']} MEDLINE abstracts; "
        f"{stats['dropped_for_evaluation']} held out because they share text with an evaluation split"
        + (f" ({by_task})" if by_task else ""))
    encoded = tokenizer(docs, truncation=True, max_length=cfg.max_tokens)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=objective == "masked-lm", mlm_probability=cfg.mlm_probability)
    out = Path(cfg.out)
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(len(docs) / cfg.batch_size * cfg.epochs)
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, seed=cfg.seed, data_seed=cfg.seed,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not torch.cuda.is_available(),
        save_strategy="no", report_to="none", disable_tqdm=True,
        logging_steps=max(1, steps // 10), remove_unused_columns=False, warmup_steps=0.06,
    )
    shown = TrainProgress(out)  # a bar (step, loss, tokens/s, ETA); every logged loss into out/train.log
    # the masked-LM head over the masked tokens only; on CPU, batches in slices of similar-length rows
    trainer_cls = trainer_class(Trainer, masked_positions_loss if objective == "masked-lm" else None)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer,
                          callbacks=[as_callback(shown)])
    trainer.remove_callback(PrinterCallback)  # its raw log dicts: the bar and train.log instead
    trainer.model_accepts_loss_kwargs = objective == "causal-lm"  # masked-LM heads take a plain mean (see run/kinds.py)
    start = time.perf_counter()
    try:
        result = trainer.train()
    finally:
        shown.close()
    seconds = time.perf_counter() - start
    save_adapted(model, path, objective, out)
    tokenizer.save_pretrained(out)
    umask_modes(out)
    write_json(out / PRETRAIN_RECORD, {
        "base_model": cfg.model, "base_path": path, "objective": objective, "corpus": stats,
        "exclude_grids": list(cfg.exclude_grids), "exclude_overrides": list(cfg.exclude_overrides),
        "config": cfg.__dict__, "precision": precision, "train_loss": result.training_loss,
        "steps": trainer.state.global_step, "train_seconds": seconds, "env": describe_env(),
        "loss_curve": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
    })
    import shutil

    shutil.rmtree(out / "trainer", ignore_errors=True)
    log(f"saved {out} (loss {result.training_loss:.3f}, {trainer.state.global_step} steps, {seconds:.0f}s)")
    return out
