"""Turn task examples into model inputs for each model kind (no padding: batches pad dynamically)."""
from __future__ import annotations

ANSWER_CUE = "\n\nAnswer:"  # ends a decoder-only prompt; the target follows it


def source_text(instruction: str, text: str) -> str:
    return f"{instruction}\n\n{text}"


def encode_causal_prompt(tokenizer, instruction: str, text: str, max_source_tokens: int) -> tuple[list[int], bool]:
    """Instruction + source (truncated to `max_source_tokens`) + answer cue, and whether it was truncated."""
    source = tokenizer(text, add_special_tokens=False)["input_ids"]
    head = tokenizer(f"{instruction}\n\n", add_special_tokens=False)["input_ids"]
    tail = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
    return head + source[:max_source_tokens] + tail, len(source) > max_source_tokens


def encode_examples(examples, tokenizer, kind: str, instruction: str, data_cfg, labels=None, *, for_generation=False):
    """Features for training (`for_generation=False`) or for generation, plus truncation counts."""
    rows, cut_source, cut_target = [], 0, 0
    for ex in examples:
        if kind == "seq_cls":
            enc = tokenizer(ex["text"], truncation=True, max_length=data_cfg.max_source_tokens)
            full_len = len(tokenizer(ex["text"])["input_ids"])
            cut_source += full_len > data_cfg.max_source_tokens
            rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels.index(ex["target"])})
            continue
        target = tokenizer(ex["target"], add_special_tokens=False)["input_ids"]
        cut_target += len(target) + 1 > data_cfg.max_target_tokens
        target = target[: data_cfg.max_target_tokens - 1] + [tokenizer.eos_token_id]
        if kind == "seq2seq":
            full = tokenizer(source_text(instruction, ex["text"]))["input_ids"]
            cut_source += len(full) > data_cfg.max_source_tokens
            prompt = tokenizer(source_text(instruction, ex["text"]), truncation=True, max_length=data_cfg.max_source_tokens)["input_ids"]
            row = {"input_ids": prompt, "attention_mask": [1] * len(prompt)}
            if not for_generation:
                row["labels"] = target
        else:  # causal: the loss covers the target tokens only
            prompt, was_cut = encode_causal_prompt(tokenizer, instruction, ex["text"], data_cfg.max_source_tokens)
            cut_source += was_cut
            ids = prompt if for_generation else prompt + target
            row = {"input_ids": ids, "attention_mask": [1] * len(ids)}
            if not for_generation:
                row["labels"] = [-100] * len(prompt) + target
        rows.append(row)
    stats = {"examples": len(rows), "truncated_sources": cut_source, "truncated_targets": cut_target}
    return rows, stats
