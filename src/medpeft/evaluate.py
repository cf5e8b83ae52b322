"""Evaluation on the test split: batched generation + ROUGE, or class probabilities + accuracy/F1/AUROC."""
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


@torch.no_grad()
def predict_probs(model, tokenizer, rows: list[dict], batch_size: int, device) -> np.ndarray:
    """Class probabilities for each row, in row order."""
    model.eval()
    probs = [None] * len(rows)
    for batch in length_batches(rows, batch_size):
        feats = tokenizer.pad([{k: rows[i][k] for k in ("input_ids", "attention_mask")} for i in batch], return_tensors="pt")
        logits = model(**{k: v.to(device) for k, v in feats.items()}).logits.float()
        for i, p in zip(batch, torch.softmax(logits, dim=-1).cpu().numpy()):
            probs[i] = p
    return np.stack(probs)


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
