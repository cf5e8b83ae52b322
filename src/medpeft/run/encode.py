"""Turn task examples into model inputs, one encoder per model kind (no padding: batches pad dynamically).

Every encoder has the signature `(ex, tokenizer, instruction, data_cfg, labels, for_generation)` and
returns `(row, source_was_cut, target_was_cut)`; run/kinds.py says which kind uses which.

A decoder-only prompt is built in one place, `encode_causal_prompt`, for training, evaluation and
prediction alike. A tokenizer with a chat template (an instruction-tuned model) gets its user turn and
generation prompt, and learns to close its reply with the template's end-of-turn token; any other
gets instruction + source + a bare answer cue. `prompt_format` names the frame for result.json."""
from __future__ import annotations

import dataclasses
import logging

ANSWER_CUE = "\n\nAnswer:"  # ends a decoder-only prompt without a chat template; the target follows it
CHAT_TEMPLATE = "chat-template"  # prompt_format names
ANSWER_CUE_FORMAT = "instruction+answer-cue"
REPLY_PROBE = "medpeft-reply-probe"  # a stand-in reply, to find what the chat template puts after a reply
TRUNCATION_WARN_FRACTION = 0.10  # warn when more than this share of inputs or targets is cut

log = logging.getLogger("medpeft")


def source_text(instruction: str, text: str) -> str:
    return f"{instruction}\n\n{text}"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_format(tokenizer, encode=None) -> str:
    """How an encoder (`encode`, a kind's; default the decoder-only one) frames an example with this
    tokenizer: "chat-template", "instruction+answer-cue", "instruction+source" (seq2seq) or "text"."""
    if encode is None or encode is encode_causal:
        return CHAT_TEMPLATE if has_chat_template(tokenizer) else ANSWER_CUE_FORMAT
    return "instruction+source" if encode is encode_seq2seq else "text"


def encode_causal_prompt(tokenizer, instruction: str, text: str, max_source_tokens: int) -> tuple[list[int], bool]:
    """The prompt of a decoder-only model, and whether the source was cut to `max_source_tokens`.

    With a chat template: one user turn holding instruction + source (the template's default system
    prompt included, as the model was tuned with it), then the generation prompt; the source is cut
    before templating, so the template's own tokens are never lost. Without: instruction + source +
    answer cue."""
    if has_chat_template(tokenizer):
        source, was_cut = cut_text(tokenizer, text, max_source_tokens)
        return chat_prompt(tokenizer, source_text(instruction, source)), was_cut
    source = tokenizer(text, add_special_tokens=False)["input_ids"]
    head = tokenizer(f"{instruction}\n\n", add_special_tokens=False)["input_ids"]
    tail = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
    return head + source[:max_source_tokens] + tail, len(source) > max_source_tokens


def chat_prompt(tokenizer, user_text: str) -> list[int]:
    """Ids of a one-turn chat ending in the assistant's generation prompt (rendered, then tokenized as
    apply_chat_template does: the template writes its own special tokens)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def cut_text(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
    """`text` up to the end of its `max_tokens`-th token (cut in the text, so it stays as written), and
    whether it was cut."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # a Python-only tokenizer has no offsets: decode the kept tokens
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return (text, False) if len(ids) <= max_tokens else (tokenizer.decode(ids[:max_tokens]), True)
    if len(enc["input_ids"]) <= max_tokens:
        return text, False
    return text[: enc["offset_mapping"][max_tokens - 1][1]], True


def end_of_turn_id(tokenizer) -> int:
    """The token that ends the model's reply: the special token the chat template puts right after a
    reply (SmolLM2, Qwen: <|im_end|>; Gemma: <end_of_turn>), else EOS. Generation must stop on it."""
    if has_chat_template(tokenizer):
        chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": REPLY_PROBE}]
        after = tokenizer.apply_chat_template(chat, tokenize=False).partition(REPLY_PROBE)[2].strip()
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        if ids and (ids[0] in tokenizer.all_special_ids or ids[0] in tokenizer.added_tokens_decoder):
            return ids[0]
    return tokenizer.eos_token_id


def encode_text(ex: dict, tokenizer, max_tokens: int) -> tuple[dict, bool]:
    """Text (and its `pair`, the second segment of a text-pair example, if any) -> truncated ids, and
    whether it was cut. A pair keeps the tokenizer's segment ids; the longer segment is cut first. A
    tokenizer without a separator token (GPT-2 style: it would glue the two texts) gets them joined
    by a blank line instead, as a prompt does."""
    if ex.get("pair") and tokenizer.sep_token is None:
        ex = {"text": joined_text(ex)}
    texts = (ex["text"], ex["pair"]) if ex.get("pair") else (ex["text"],)
    enc = tokenizer(*texts, truncation=True, max_length=max_tokens)
    was_cut = len(tokenizer(*texts)["input_ids"]) > max_tokens
    row = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "pair" in ex and "token_type_ids" in enc:  # every row of a pair task, an empty pair too: one set of columns
        row["token_type_ids"] = enc["token_type_ids"]
    return row, was_cut


def joined_text(ex: dict) -> str:
    """An example's text as one string for a prompt: a text pair's second segment after a blank line."""
    return f"{ex['text']}\n\n{ex['pair']}" if ex.get("pair") else ex["text"]


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


def encode_target(ex: dict, tokenizer, data_cfg, end_id: int | None = None) -> tuple[list[int], bool]:
    """Summary ids ending in `end_id` (default EOS), cut to data.max_target_tokens, and whether they were cut."""
    target = tokenizer(ex["target"], add_special_tokens=False)["input_ids"]
    cut = len(target) + 1 > data_cfg.max_target_tokens
    return target[: data_cfg.max_target_tokens - 1] + [tokenizer.eos_token_id if end_id is None else end_id], cut


def encode_seq2seq(ex: dict, tokenizer, instruction: str, data_cfg, labels=None, for_generation: bool = False):
    """Instruction + source for the encoder; the summary as decoder labels (training only)."""
    target, cut_target = encode_target(ex, tokenizer, data_cfg)
    source = source_text(instruction, joined_text(ex))
    full = tokenizer(source)["input_ids"]
    prompt = tokenizer(source, truncation=True, max_length=data_cfg.max_source_tokens)["input_ids"]
    row = {"input_ids": prompt, "attention_mask": [1] * len(prompt)}
    if not for_generation:
        row["labels"] = target
    return row, len(full) > data_cfg.max_source_tokens, cut_target


def encode_causal(ex: dict, tokenizer, instruction: str, data_cfg, labels=None, for_generation: bool = False):
    """Prompt then summary and end-of-turn in one sequence; the loss covers the summary and end-of-turn only."""
    target, cut_target = encode_target(ex, tokenizer, data_cfg, end_of_turn_id(tokenizer))
    prompt, cut_source = encode_causal_prompt(tokenizer, instruction, joined_text(ex), data_cfg.max_source_tokens)
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
             "truncated_sources_fraction": cut_source / n, "truncated_targets_fraction": cut_target / n,
             "text_pairs": sum("pair" in ex for ex in examples)}  # > 0: the run reads a second text (predict needs it)
    return rows, stats


def source_that_fits(data_cfg, model, peft_config, decoder_only: bool) -> tuple[object, str | None]:
    """`data_cfg`, with max_source_tokens lowered where a soft prompt or prefix (prompt tuning, P-tuning,
    prefix tuning) would push the input past the model's positions, and a note saying so (else None).
    Their virtual tokens take positions too: on a 512-position encoder, 512 input tokens plus 20 virtual
    ones failed in training ('The expanded size of the tensor (532) must match ... (512)'). A decoder
    also needs room for the target. Models without a position limit (T5) are left alone."""
    from medpeft.models import config_positions

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    limit = config_positions(base.config)
    if limit is None or peft_config is None or not getattr(peft_config, "is_prompt_learning", False):
        return data_cfg, None
    virtual = peft_config.num_virtual_tokens
    room = max(1, limit - virtual - (data_cfg.max_target_tokens if decoder_only else 0))
    if data_cfg.max_source_tokens <= room:
        return data_cfg, None
    note = (f"inputs cut at {room} tokens, below data.max_source_tokens={data_cfg.max_source_tokens}: {virtual} of "
            f"the model's {limit} positions go to the {peft_config.peft_type.value.lower()} virtual tokens")
    log.warning(note)
    return dataclasses.replace(data_cfg, max_source_tokens=room), note


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
