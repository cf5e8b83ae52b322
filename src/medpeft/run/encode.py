"""Turn task examples into model inputs, one encoder per model kind (no padding: batches pad dynamically).

Every encoder has the signature `(ex, tokenizer, instruction, data_cfg, labels, for_generation)` and
returns `(row, source_was_cut, target_was_cut)`; run/kinds.py says which kind uses which."""
from __future__ import annotations

import logging

ANSWER_CUE = "\n\nAnswer:"  # ends a decoder-only prompt; the target follows it
TRUNCATION_WARN_FRACTION = 0.10  # warn when more than this share of inputs or targets is cut

log = logging.getLogger("medpeft")


def source_text(instruction: str, text: str) -> str:
    return f"{instruction}\n\n{text}"


def encode_causal_prompt(tokenizer, instruction: str, text: str, max_source_tokens: int) -> tuple[list[int], bool]:
    """Instruction + source (truncated to `max_source_tokens`) + answer cue, and whether it was truncated."""
    source = tokenizer(text, add_special_tokens=False)["input_ids"]
    head = tokenizer(f"{instruction}\n\n", add_special_tokens=False)["input_ids"]
    tail = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
    return head + source[:max_source_tokens] + tail, len(source) > max_source_tokens


def encode_text(ex: dict, tokenizer, max_tokens: int) -> tuple[dict, bool]:
    """Text -> truncated ids, and whether it was cut."""
    enc = tokenizer(ex["text"], truncation=True, max_length=max_tokens)
    was_cut = len(tokenizer(ex["text"])["input_ids"]) > max_tokens
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, was_cut


def encode_class(ex: dict, tokenizer, instruction: str, data_cfg, labels: list[str], for_generation: bool = False):
    """Text -> ids with the index of its class (single-label classification)."""
    row, was_cut = encode_text(ex, tokenizer, data_cfg.max_source_tokens)
    return dict(row, labels=labels.index(ex["target"])), was_cut, False


def encode_label_set(ex: dict, tokenizer, instruction: str, data_cfg, labels: list[str], for_generation: bool = False):
    """Text -> ids with a float 0/1 vector over the labels (multi-label: sigmoid + BCE)."""
    row, was_cut = encode_text(ex, tokenizer, data_cfg.max_source_tokens)
    return dict(row, labels=[1.0 if name in ex["target"] else 0.0 for name in labels]), was_cut, False


def encode_tokens(ex: dict, tokenizer, instruction: str, data_cfg, labels: list[str], for_generation: bool = False):
    """Words -> sub-word ids; each word's tag on its first sub-word, -100 on the rest and on special tokens."""
    enc = tokenizer(ex["text"], is_split_into_words=True, truncation=True, max_length=data_cfg.max_source_tokens)
    word_ids = enc.word_ids()
    tags, previous = [], None
    for word in word_ids:
        tags.append(-100 if word is None or word == previous else labels.index(ex["target"][word]))
        previous = word
    kept_words = len({w for w in word_ids if w is not None})
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": tags}, kept_words < len(ex["text"]), False


def token_collator(tokenizer, prefix: int = 0):
    """Pad token-classification batches (labels with -100), and put `prefix` -100s before the labels
    for the soft prompt positions (see methods.output_prefix_tokens)."""
    import torch
    from transformers import DataCollatorForTokenClassification

    pad = DataCollatorForTokenClassification(tokenizer)

    def collate(features):
        batch = pad(features)
        if prefix:
            batch["labels"] = torch.cat([torch.full((batch["labels"].shape[0], prefix), -100), batch["labels"]], dim=1)
        return batch

    return collate


def encode_target(ex: dict, tokenizer, data_cfg) -> tuple[list[int], bool]:
    """Summary ids ending in EOS, cut to data.max_target_tokens, and whether they were cut."""
    target = tokenizer(ex["target"], add_special_tokens=False)["input_ids"]
    cut = len(target) + 1 > data_cfg.max_target_tokens
    return target[: data_cfg.max_target_tokens - 1] + [tokenizer.eos_token_id], cut


def encode_seq2seq(ex: dict, tokenizer, instruction: str, data_cfg, labels=None, for_generation: bool = False):
    """Instruction + source for the encoder; the summary as decoder labels (training only)."""
    target, cut_target = encode_target(ex, tokenizer, data_cfg)
    full = tokenizer(source_text(instruction, ex["text"]))["input_ids"]
    prompt = tokenizer(source_text(instruction, ex["text"]), truncation=True, max_length=data_cfg.max_source_tokens)["input_ids"]
    row = {"input_ids": prompt, "attention_mask": [1] * len(prompt)}
    if not for_generation:
        row["labels"] = target
    return row, len(full) > data_cfg.max_source_tokens, cut_target


def encode_causal(ex: dict, tokenizer, instruction: str, data_cfg, labels=None, for_generation: bool = False):
    """Prompt then summary in one sequence; the loss covers the summary tokens only."""
    target, cut_target = encode_target(ex, tokenizer, data_cfg)
    prompt, cut_source = encode_causal_prompt(tokenizer, instruction, ex["text"], data_cfg.max_source_tokens)
    ids = prompt if for_generation else prompt + target
    row = {"input_ids": ids, "attention_mask": [1] * len(ids)}
    if not for_generation:
        row["labels"] = [-100] * len(prompt) + target
    return row, cut_source, cut_target


def encode_examples(examples, tokenizer, kind, instruction: str, data_cfg, labels=None, *, for_generation=False):
    """Features for training (`for_generation=False`) or for prediction with `kind`'s encoder, plus
    truncation counts and fractions."""
    rows, cut_source, cut_target = [], 0, 0
    for ex in examples:
        row, source_cut, target_cut = kind.encode(ex, tokenizer, instruction, data_cfg, labels, for_generation)
        cut_source += source_cut
        cut_target += target_cut
        rows.append(row)
    n = max(len(rows), 1)
    stats = {"examples": len(rows), "truncated_sources": cut_source, "truncated_targets": cut_target,
             "truncated_sources_fraction": cut_source / n, "truncated_targets_fraction": cut_target / n}
    return rows, stats


def truncation_warnings(split: str, stats: dict, data_cfg) -> list[str]:
    """A warning (also logged) per side where more than 10% of a split's examples are cut."""
    warnings = []
    for side, key in (("inputs", "max_source_tokens"), ("targets", "max_target_tokens")):
        fraction = stats["truncated_sources_fraction" if side == "inputs" else "truncated_targets_fraction"]
        if fraction > TRUNCATION_WARN_FRACTION:
            warnings.append(f"{100 * fraction:.0f}% of the {split} {side} are longer than data.{key}="
                            f"{getattr(data_cfg, key)} tokens and were truncated; raise data.{key} if the cut text matters")
    for message in warnings:
        log.warning(message)
    return warnings
