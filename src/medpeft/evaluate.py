"""Evaluation on the test split: batched generation + ROUGE; class probabilities + accuracy/F1/AUROC;
label probabilities + micro/macro F1 (multi-label); word tags + seqeval entity-level F1 (NER)."""
from __future__ import annotations

import re

import numpy as np
import torch

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def sentence_lines(text: str) -> str:
    """rougeLsum scores sentence by sentence: it needs one sentence per line."""
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


def score_rouge(predictions: list[str], references: list[str]) -> tuple[dict, list[dict]]:
    """Mean ROUGE-1/2/L/Lsum F-measure (rouge_score, Porter stemming) and per-example scores."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    per_example = []
    for pred, ref in zip(predictions, references):
        scores = scorer.score(sentence_lines(ref), sentence_lines(pred))
        per_example.append({k: scores[k].fmeasure for k in ROUGE_KEYS})
    means = {k: float(np.mean([s[k] for s in per_example])) if per_example else 0.0 for k in ROUGE_KEYS}
    return means, per_example


def score_classification(y_true: list[int], probs: np.ndarray, n_labels: int) -> dict:
    """Accuracy, macro-F1 over all labels, and macro one-vs-rest AUROC over labels present in the test set."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    aucs = [roc_auc_score(y_true == c, probs[:, c]) for c in range(n_labels) if 0 < (y_true == c).sum() < len(y_true)]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(n_labels)), zero_division=0)),
        "auroc": float(np.mean(aucs)) if aucs else 0.5,
    }


def length_batches(rows: list[dict], batch_size: int):
    """Index batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def score_multilabel(y_true: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """Micro and macro F1 over all labels (a label is predicted when its probability >= threshold),
    and exact match (every label of an example right)."""
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true, dtype=int)
    y_pred = (np.asarray(probs) >= threshold).astype(int)
    return {
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "exact_match": float((y_true == y_pred).all(axis=1).mean()) if len(y_true) else 0.0,
    }


def score_ner(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """seqeval entity-level precision/recall/F1 (an entity counts only with its exact span and type),
    and word-level tag accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    words = sum(len(t) for t in true_tags)
    right = sum(a == b for t, p in zip(true_tags, pred_tags) for a, b in zip(t, p))
    return {
        "entity_f1": float(f1_score(true_tags, pred_tags, zero_division=0)),
        "entity_precision": float(precision_score(true_tags, pred_tags, zero_division=0)),
        "entity_recall": float(recall_score(true_tags, pred_tags, zero_division=0)),
        "token_accuracy": right / words if words else 0.0,
    }


@torch.no_grad()
def predict_logits(model, tokenizer, rows: list[dict], batch_size: int, device, prefix: int = 0) -> list[np.ndarray]:
    """The model's logits for each row (unpadded for token classification), in row order."""
    model.eval()
    out = [None] * len(rows)
    for batch in length_batches(rows, batch_size):
        feats = tokenizer.pad([{k: rows[i][k] for k in ("input_ids", "attention_mask")} for i in batch], return_tensors="pt")
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


@torch.no_grad()
def generate_texts(model, tokenizer, rows: list[dict], kind: str, max_new_tokens: int, num_beams: int, batch_size: int, device) -> list[str]:
    """Batched generation (left padding for decoder-only models), decoded without the prompt."""
    model.eval()
    texts = [""] * len(rows)
    tokenizer.padding_side = "left" if kind == "causal" else "right"
    try:
        for batch in length_batches(rows, batch_size):
            feats = tokenizer.pad([{k: rows[i][k] for k in ("input_ids", "attention_mask")} for i in batch], return_tensors="pt")
            feats = {k: v.to(device) for k, v in feats.items()}
            out = model.generate(**feats, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            if kind == "causal":
                out = out[:, feats["input_ids"].shape[1]:]  # keep only the new tokens
            for i, seq in zip(batch, out):
                texts[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = "right"
    return texts
