"""The metric table: every metric medpeft computes, prints or plots has one row here.

Like lm-eval's `MetricSpec`: a key (as in result.json), a label, which direction is better,
how a run's predictions.jsonl scores it per example, and the headline metric of each task type.
Every other module (report, summary, plots, CLI) reads this table; none defines a metric again.

Per-example scores let the report put a test-set CI on a metric and test two rows against each
other on the same test examples: a *mean* metric averages one number per example (ROUGE,
accuracy); an *F1* metric sums per-example counts [tp, fp, fn] and computes 2tp / (2tp + fp + fn),
which equals the corpus-level (micro) F1 that seqeval and scikit-learn report.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    """One metric: how it is named, read and compared."""

    key: str  # key in result.json "metrics"
    label: str  # column header and axis label
    higher_is_better: bool = True
    per_example: str | None = None  # "mean": a number per example; "f1": [tp, fp, fn] per example; None: corpus-level only
    field: str | None = None  # where predictions.jsonl holds it: "correct", "counts" or "scores.<key>"


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("rouge1", "ROUGE-1", per_example="mean", field="scores.rouge1"),
    Metric("rouge2", "ROUGE-2", per_example="mean", field="scores.rouge2"),
    Metric("rougeL", "ROUGE-L", per_example="mean", field="scores.rougeL"),
    Metric("rougeLsum", "ROUGE-Lsum", per_example="mean", field="scores.rougeLsum"),
    Metric("accuracy", "Accuracy", per_example="mean", field="correct"),
    Metric("macro_f1", "Macro-F1"),
    Metric("auroc", "AUROC"),
    Metric("micro_f1", "Micro-F1", per_example="f1", field="counts"),
    Metric("exact_match", "Exact match", per_example="mean", field="correct"),
    Metric("bertscore_f1", "BERTScore F1", per_example="mean", field="scores.bertscore_f1"),
    Metric("entity_f1", "Entity F1", per_example="f1", field="counts"),
    Metric("entity_precision", "Entity precision"),
    Metric("entity_recall", "Entity recall"),
    Metric("token_accuracy", "Token accuracy"),
)}

# The headline metric per task type: ROUGE-1 is what the summarization study leads with; the others
# are what each task family's papers report first (seqeval entity F1 for NER, micro-F1 for multi-label).
PRIMARY_METRIC = {"summarization": "rouge1", "classification": "accuracy", "multilabel": "micro_f1", "ner": "entity_f1"}
# What a task type's outputs are: texts written by decoding, one label, a label set, tags (the kinds and the
# report ask single_label / generated, never the type's name)
OUTPUTS = {"summarization": "text", "classification": "label", "multilabel": "labels", "ner": "tags"}


def single_label(task_type: str) -> bool:
    """One label per example: a confusion matrix applies, accuracy is its diagonal."""
    return OUTPUTS.get(task_type) == "label"


def generated(task_type: str) -> bool:
    """Outputs are texts written by decoding (summaries), scored by ROUGE."""
    return OUTPUTS.get(task_type) == "text"


def metric_label(key: str) -> str:
    return METRICS[key].label if key in METRICS else key


def example_value(row: dict, metric: Metric):
    """A prediction row's per-example value of `metric` (a number or [tp, fp, fn]), or None."""
    if metric.field is None:
        return None
    node = row
    for part in metric.field.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# --- scoring (one function per task type) -----------------------------------------------


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


# Macro averages run over the labels present in the test set's truth or in the predictions: a label
# that is in neither has no F1 of its own, and counting it as 0 would punish a perfect classifier
# for the test set's sampling (3 classes, one absent from the test set: 0.667 instead of 1.0).
MACRO_NOTE = "Macro-F1 averages over the labels present in the test set or in the predictions."


def score_bertscore(predictions: list[str], references: list[str], model: str, num_layers: int, batch_size: int,
                    device) -> list[float]:
    """Per-example BERTScore F1 (bert-score, no baseline rescaling) with the given model and layer."""
    from bert_score import score

    _, _, f1 = score(predictions, references, model_type=model, num_layers=num_layers, batch_size=batch_size,
                     device=str(device), lang="en", verbose=False)
    return [float(x) for x in f1]


def score_classification(y_true: list[int], probs: np.ndarray, n_labels: int) -> dict:
    """Accuracy, macro-F1 over the labels present (truth or prediction), and macro one-vs-rest AUROC over
    the labels that can be scored (present in the test set, and not in every example). AUROC is None
    (missing, never a made-up 0.5) when no label can be scored."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    aucs = [roc_auc_score(y_true == c, probs[:, c]) for c in range(n_labels) if 0 < (y_true == c).sum() < len(y_true)]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0)),
        "auroc": float(np.mean(aucs)) if aucs else None,
    }


LABEL_THRESHOLD = 0.5  # a multi-label label is predicted at this probability (scores and `medpeft predict` alike)


def score_multilabel(y_true: np.ndarray, probs: np.ndarray, threshold: float = LABEL_THRESHOLD) -> dict:
    """Micro F1, macro F1 over the labels present (in the truth or the predictions; None when no label is),
    and exact match (every label of an example right). A label is predicted when its probability >= threshold."""
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true, dtype=int)
    y_pred = (np.asarray(probs) >= threshold).astype(int)
    present = [j for j in range(y_true.shape[1]) if y_true[:, j].any() or y_pred[:, j].any()] if y_true.ndim == 2 else []
    macro = f1_score(y_true[:, present], y_pred[:, present], average="macro", zero_division=0) if present else None
    return {
        # no label in the truth or the predictions: 0, as seqeval and the report's resampling (stats.f1_of_sums)
        # count it; scikit-learn says 1.0, and the report's CI then lay wholly below its own point estimate
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)) if present else 0.0,
        "macro_f1": float(macro) if macro is not None else None,
        "exact_match": float((y_true == y_pred).all(axis=1).mean()) if len(y_true) else 0.0,
    }


def label_counts(truth: set, predicted: set) -> list[int]:
    """[tp, fp, fn] of one example's predicted labels (or entities) against the true ones."""
    return [len(truth & predicted), len(predicted - truth), len(truth - predicted)]


def entity_counts(true_tags: list[str], pred_tags: list[str]) -> list[int]:
    """[tp, fp, fn] of one sentence's entities (exact span and type, as seqeval's default mode counts them)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return label_counts(set(get_entities(list(true_tags))), set(get_entities(list(pred_tags))))


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
