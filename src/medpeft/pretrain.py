"""Domain-adaptive pre-training: continue a base model's own objective on in-domain text.

Masked-LM for encoders, causal-LM for decoders, through the transformers Trainer. The default
corpus is the packaged MEDLINE abstracts minus every abstract that appears in a validation or
test split of the grids the new model will be evaluated in, so no evaluation text leaks into it.
The output is an ordinary model directory, usable as `model:` in any grid.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from medpeft.run.record import write_json


@dataclass
class PretrainConfig:
    """One pre-training job (the CLI's `medpeft pretrain` options)."""

    model: str  # registered model, local directory or hub id (with online=True)
    out: str  # where the adapted model directory goes
    exclude_grids: tuple[str, ...] = ()  # grids whose validation/test abstracts must stay unseen
    max_docs: int = 0  # cap on corpus documents (0 = all that remain after exclusion)
    max_tokens: int = 128  # truncation per document, in tokens
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 5e-5
    batch_size: int = 16
    mlm_probability: float = 0.15  # masked-LM only
    seed: int = 0


def evaluation_pmids(grid_paths) -> set[str]:
    """PMIDs of every validation and test example in the given grids (MEDLINE task ids start with the PMID)."""
    from medpeft.config import load_grid
    from medpeft.plan import task_spec

    pmids = set()
    for path in grid_paths:
        seen = set()
        for cfg in load_grid(path).runs:
            key = (cfg.task, json.dumps(cfg.to_dict()["data"], sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            spec = task_spec(cfg)
            if spec.online:  # hub data sets carry their own ids, not MEDLINE PMIDs
                continue
            task = spec.load(cfg.data)
            for split in ("validation", "test"):
                pmids.update(str(ex["id"]).split("-")[0] for ex in task.splits[split])
    return pmids


def build_corpus(excluded: set[str], max_docs: int, seed: int) -> tuple[list[str], dict]:
    """MEDLINE title + abstract texts whose PMID is not excluded, in a seeded random order."""
    import random

    from medpeft.data.medline import latest_versions, load_citations

    citations = sorted(latest_versions(load_citations()), key=lambda c: c["pmid"])
    kept = [c for c in citations if c["pmid"] not in excluded]
    docs = [f"{c['title']}\n{' '.join(s['text'] for s in c['sections'])}".strip() for c in kept]
    docs = [d for d in docs if len(d.split()) >= 20]  # drop errata and empty abstracts
    random.Random(seed).shuffle(docs)
    if max_docs > 0:
        docs = docs[:max_docs]
    stats = {"citations": len(citations), "excluded_pmids": len(excluded),
             "dropped_for_evaluation": len(citations) - len(kept), "documents": len(docs)}
    return docs, stats


def load_lm(path: str):
    """The model with its pre-training head: masked-LM for encoders, causal-LM for decoders."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.is_encoder_decoder:
        return AutoModelForMaskedLM.from_pretrained(path), tokenizer, "masked-lm"
    if config.is_encoder_decoder:
        raise ValueError(f"{path} is an encoder-decoder model; `medpeft pretrain` covers encoders (masked-LM) "
                         "and decoders (causal-LM)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(path), tokenizer, "causal-lm"


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
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    from medpeft.run.measure import describe_env
    from medpeft.models import resolve_model

    set_seed(cfg.seed)
    path = resolve_model(cfg.model, online)
    excluded = evaluation_pmids(cfg.exclude_grids)
    docs, stats = build_corpus(excluded, cfg.max_docs, cfg.seed)
    model, tokenizer, objective = load_lm(path)
    log(f"pretrain {cfg.model} ({objective}) on {stats['documents']} MEDLINE abstracts; "
        f"{stats['dropped_for_evaluation']} held out because they are in an evaluation split")
    encoded = tokenizer(docs, truncation=True, max_length=cfg.max_tokens)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=objective == "masked-lm", mlm_probability=cfg.mlm_probability)
    out = Path(cfg.out)
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(len(docs) / cfg.batch_size * cfg.epochs)
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(), save_strategy="no", report_to="none", disable_tqdm=True,
        logging_steps=max(1, steps // 10), remove_unused_columns=False, warmup_steps=0.06,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer)
    trainer.model_accepts_loss_kwargs = objective == "causal-lm"  # masked-LM heads take a plain mean (see run/kinds.py)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    save_adapted(model, path, objective, out)
    tokenizer.save_pretrained(out)
    write_json(out / "pretrain.json", {
        "base_model": cfg.model, "base_path": path, "objective": objective, "corpus": stats,
        "exclude_grids": list(cfg.exclude_grids), "config": cfg.__dict__, "train_loss": result.training_loss,
        "steps": trainer.state.global_step, "train_seconds": seconds, "env": describe_env(),
    })
    import shutil

    shutil.rmtree(out / "trainer", ignore_errors=True)
    log(f"saved {out} (loss {result.training_loss:.3f}, {trainer.state.global_step} steps, {seconds:.0f}s)")
    return out
