"""Model outputs on encoded rows: logits, class or label probabilities, word tags, generated text.

Batches are formed from rows of similar length (longest first), so padding stays small; results
come back in row order."""
from __future__ import annotations

import numpy as np
import torch

from medpeft.models import model_sizes

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what an encoded row feeds the model
# CPU generation: a decode step multiplies every weight matrix by a few rows, which MKL runs far below the
# matmul peak (fp32, 2 cores: a few GFLOP/s at 8 to 64 rows), so a step's time grows much more slowly than
# its rows and rows per generate() call set new tokens/s (SmolLM2, `make bench`: 32 per call 1.24-1.4x the
# tokens/s of 8 in fp32, 1.9-2.1x in bf16). Up to GENERATION_ROWS rows go together while their key/value cache stays under
# GENERATION_BYTES (the same 1.5 GiB a training forward may hold on CPU).
GENERATION_ROWS = 64
GENERATION_BYTES = 3 * 2**29
GPU_GENERATION_ROWS = 256  # CUDA: rows per generate() call at most (issue 28: fill the card)
GPU_CACHE_SHARE = 0.4  # CUDA: of the free memory, what one call's key/value cache may take (activations need room too)


def length_batches(rows: list[dict], batch_size: int):
    """Index batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def predict_logits(model, tokenizer, rows: list[dict], batch_size: int, device, prefix: int = 0) -> list[np.ndarray]:
    """The model's logits for each row (unpadded for token classification), in row order."""
    model.eval()
    out = [None] * len(rows)
    for batch in length_batches(rows, batch_size):
        keys = [k for k in MODEL_INPUTS if k in rows[batch[0]]]  # a text pair's segment ids, as in training
        feats = tokenizer.pad([{k: rows[i][k] for k in keys} for i in batch], return_tensors="pt")
        logits = model(**{k: v.to(device) for k, v in feats.items()}).logits.float().cpu().numpy()
        for i, row_logits in zip(batch, logits):
            out[i] = row_logits if row_logits.ndim == 1 else row_logits[: prefix + len(rows[i]["input_ids"])]
    return out


def predict_probs(model, tokenizer, rows: list[dict], batch_size: int, device, multilabel: bool = False) -> np.ndarray:
    """Class probabilities (softmax) or, for multi-label, independent label probabilities (sigmoid)."""
    logits = torch.from_numpy(np.stack(predict_logits(model, tokenizer, rows, batch_size, device)))
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)).numpy()


def predict_tags(model, tokenizer, rows: list[dict], n_words: list[int], labels: list[str], batch_size: int, device,
                 prefix: int = 0) -> list[list[str]]:
    """One tag per word: the arg-max at the word's first sub-word (after `prefix` soft-prompt positions);
    words cut by truncation get "O"."""
    tags = []
    for row, logits, n in zip(rows, predict_logits(model, tokenizer, rows, batch_size, device, prefix), n_words):
        firsts = [pos + prefix for pos, label in enumerate(row["labels"]) if label != -100]
        words = [labels[int(logits[pos].argmax())] for pos in firsts]
        tags.append(words + ["O"] * (n - len(words)))
    return tags


def cache_bytes_per_token(config, bytes_per_float: int = 4) -> int:
    """Key/value cache of one token of one sequence: two vectors per decoder layer (for an encoder-decoder,
    the same per source token, in cross-attention)."""
    sizes = model_sizes(config)
    return 2 * (sizes.decoder_layers or sizes.layers) * sizes.kv_heads * sizes.head_dim * bytes_per_float


def generation_rows(model, rows: list[dict], batch_size: int, decoding: dict, device) -> int:
    """Rows per generate() call, never fewer than `batch_size` nor more than there are. On CPU up to
    GENERATION_ROWS while the longest row's cache, times the rows and beams, stays under GENERATION_BYTES;
    on a CUDA GPU up to GPU_GENERATION_ROWS while it stays under GPU_CACHE_SHARE of the free memory (a
    decode step there costs about the same for 8 rows as for 128: the card is filled, not the count)."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda") or not rows:
        return batch_size
    longest = max(len(r["input_ids"]) for r in rows) + decoding.get("max_new_tokens", 0)
    if kind == "cuda":
        width = next(model.parameters()).element_size() if hasattr(model, "parameters") else 4
        cap, budget = GPU_GENERATION_ROWS, int(GPU_CACHE_SHARE * torch.cuda.mem_get_info(torch.device(device))[0])
    else:
        width, cap, budget = 4, GENERATION_ROWS, GENERATION_BYTES
    per_row = cache_bytes_per_token(model.config, width) * longest * decoding.get("num_beams", 1)
    return max(batch_size, min(cap, len(rows), budget // max(1, per_row)))


def generated_only(decoding: dict, prompt_length: int) -> dict:
    """generate() arguments where the n-gram block sees only the generated tokens.

    transformers' `no_repeat_ngram_size` scans the whole sequence, which for a decoder-only model
    includes the prompt: it would forbid copying any 3 tokens of the source into the summary. The
    prompt (left-padded to one length per batch) is cut off before the same processor runs."""
    n = decoding.get("no_repeat_ngram_size", 0)
    if not prompt_length or not n:
        return decoding
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor

    block = NoRepeatNGramLogitsProcessor(n)
    return {**decoding, "no_repeat_ngram_size": 0,
            "logits_processor": LogitsProcessorList([lambda ids, scores: block(ids[:, prompt_length:], scores)])}


@torch.no_grad()
def generate_texts(model, tokenizer, rows: list[dict], decoder_only: bool, decoding: dict, batch_size: int, device) -> list[str]:
    """Batched, deterministic generation with `decoding` (generate() keyword arguments: max_new_tokens,
    num_beams, ...); left padding for decoder-only models; decoded without the prompt."""
    from medpeft.run.encode import end_of_turn_id

    model.eval()
    texts = [""] * len(rows)
    stop = sorted({tokenizer.eos_token_id, end_of_turn_id(tokenizer)} - {None})  # a chat model ends its turn, then EOS
    tokenizer.padding_side = "left" if decoder_only else "right"
    try:
        for batch in length_batches(rows, batch_size):
            feats = tokenizer.pad([{k: rows[i][k] for k in ("input_ids", "attention_mask")} for i in batch], return_tensors="pt")
            feats = {k: v.to(device) for k, v in feats.items()}
            out = model.generate(**feats, **generated_only(decoding, feats["input_ids"].shape[1] if decoder_only else 0),
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop)
            if decoder_only:
                out = out[:, feats["input_ids"].shape[1]:]  # keep only the new tokens
            for i, seq in zip(batch, out):
                texts[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = "right"
    return texts
