"""Forgetting: how much general medical language ability a method costs a generative model.

peft's own method benchmark reports the change in language-model loss on general text between the
base and the adapted model. Here the general text is MEDLINE abstracts (title + abstract) that share
no text with any split of the run's task, the same documents for every run of a task with the same
splits. One definition of language-model loss serves causal and seq2seq models alike: each document
is cut in half and the loss is the cross-entropy of the second half given the first (a causal model
reads both halves and is scored on the second; a seq2seq model encodes the first and decodes the
second). Positive forgetting: the adapted model is worse at general medical text than its base.
"""
from __future__ import annotations

import random
import re

MIN_DOCUMENT_TOKENS = 8  # shorter documents have too little of a first half to condition on
MIN_DOCUMENT_WORDS = 20  # errata and empty abstracts are no general text
_PMID_PREFIX = re.compile(r"\d+")  # MEDLINE task ids start with the PMID ("12345678", "12345678-3")


def heldout_abstracts(splits: dict[str, list[dict]], n: int, seed: int = 0) -> list[str]:
    """`n` MEDLINE title + abstract texts sharing no text (no sentence key, see medpeft.data.medline)
    with any example of any split, and whose PMID is no example's id prefix; deterministic for `seed`.

    Citations are shuffled once (by PMID, then `seed`) and taken in that order, so splits that differ
    in a few examples pick nearly the same documents. Fewer than `n` come back only if MEDLINE runs out."""
    from medpeft.data.medline import citation_keys, text_keys
    from medpeft.tasks.medline_tasks import latest_citations  # cached: the MEDLINE tasks read it too

    examples = [ex for split in splits.values() for ex in split]
    split_keys = set().union(*(text_keys(example_text(ex)) for ex in examples))
    split_pmids = {m.group() for m in (_PMID_PREFIX.match(str(ex.get("id", ""))) for ex in examples) if m}
    citations = sorted(latest_citations(), key=lambda c: c["pmid"])
    random.Random(seed).shuffle(citations)
    documents = []
    for c in citations:
        if len(documents) == n:
            break
        text = citation_text(c)
        shares_text = c["pmid"] in split_pmids or citation_keys(c) & split_keys
        if len(text.split()) >= MIN_DOCUMENT_WORDS and not shares_text:
            documents.append(text)
    return documents


def example_text(ex: dict) -> str:
    """All text of an example, what must stay out of a corpus: its input (a token list joined), the
    second text of a pair (pubmedqa's abstract) and its target when that is text."""
    text = " ".join(ex["text"]) if isinstance(ex["text"], list) else str(ex["text"])
    if ex.get("pair"):
        text = f"{text}\n{ex['pair']}"
    return f"{text}\n{ex['target']}" if isinstance(ex.get("target"), str) else text


def citation_text(citation: dict) -> str:
    """Title, a newline, then the abstract's sections as one paragraph (labels dropped)."""
    return f"{citation['title']}\n{' '.join(s['text'] for s in citation['sections'] if s['text'])}".strip()


def continuation_rows(texts: list[str], tokenizer, decoder_only: bool, max_tokens: int) -> list[dict]:
    """One row per document: its first `max_tokens` tokens split in half, scored on the second half.

    Causal: input = [BOS if the tokenizer adds one] + first + second, labels -100 over all but the
    second half. Seq2seq: encoder input = first (+ EOS if the tokenizer ends inputs with one), labels =
    second + EOS. Documents under MIN_DOCUMENT_TOKENS tokens are dropped."""
    start, end = special_tokens(tokenizer)
    rows = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids = ids[:max_tokens]
        if len(ids) < MIN_DOCUMENT_TOKENS:
            continue
        first, second = ids[: len(ids) // 2], ids[len(ids) // 2:]
        if decoder_only:
            context = start + first
            row = {"input_ids": context + second, "labels": [-100] * len(context) + second}
        else:
            row = {"input_ids": first + end, "labels": second + [tokenizer.eos_token_id]}
        rows.append({**row, "attention_mask": [1] * len(row["input_ids"])})
    return rows


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The BOS the tokenizer puts before a text and the EOS it puts after one, each [] if it adds none."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    marked = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    start = [bos] if bos is not None and marked[:1] == [bos] and plain[:1] != [bos] else []
    end = [eos] if eos is not None and marked[-1:] == [eos] and plain[-1:] != [eos] else []
    return start, end


def lm_loss(model, rows: list[dict], tokenizer, batch_size: int, device, decoder_only: bool) -> float:
    """Token-weighted mean cross-entropy (nats/token) over every label token of `rows`.

    Each batch's loss is the model's own (so peft's soft prompts and prefixes are handled as in
    training), a mean over its label tokens; weighted by that count, the batches sum to one mean
    over all tokens rather than a mean of batch means. Batches are right-padded (labels with -100)."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    was_training, padding_side = model.training, tokenizer.padding_side
    total, tokens = 0.0, 0
    model.eval()
    tokenizer.padding_side = "right"  # padding after the text changes no real position's logits
    try:
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                batch = {k: v.to(device) for k, v in collate(rows[i:i + batch_size]).items()}
                scored = batch["labels"][:, 1:] if decoder_only else batch["labels"]  # causal: shifted by one
                count = int((scored != -100).sum())
                total += model(**batch).loss.double().item() * count
                tokens += count
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return total / tokens if tokens else float("nan")


def label_tokens(rows: list[dict]) -> int:
    return sum(sum(label != -100 for label in row["labels"]) for row in rows)


def measure_forgetting(model, tokenizer, rows: list[dict], batch_size: int, device, decoder_only: bool,
                       base_model=None) -> dict:
    """The language-model loss of the base and the adapted model on `rows`, and its change.

    A peft model is its own base under `disable_adapter()` (adapter layers off for LoRA, IA3, DoRA;
    soft prompts and prefixes dropped for prompt learning). A model without an adapter (full
    fine-tuning) needs `base_model`, the base loaded afresh; it is ignored for a peft model."""
    from peft import PeftModel

    adapted = lm_loss(model, rows, tokenizer, batch_size, device, decoder_only)
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            base = lm_loss(model, rows, tokenizer, batch_size, device, decoder_only)
    elif base_model is not None:
        base = lm_loss(base_model, rows, tokenizer, batch_size, device, decoder_only)
    else:
        raise ValueError("measure_forgetting: a model without a peft adapter (full fine-tuning) needs base_model, "
                         "its base model loaded afresh")
    return {"base_lm_loss": base, "adapted_lm_loss": adapted, "forgetting": adapted - base,
            "documents": len(rows), "tokens": label_tokens(rows)}
