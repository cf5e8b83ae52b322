"""The metric table and the scorers: hand-checked toy predictions, and per-example counts that add up
to the corpus-level F1 that seqeval and scikit-learn compute."""
from __future__ import annotations

import random

import numpy as np
import pytest

from medpeft.report.stats import bootstrap_ci, paired_randomization_p, statistic
from medpeft.run.metrics import (METRICS, PRIMARY_METRIC, entity_counts, example_value, label_counts, score_multilabel,
                                 score_ner)
from medpeft.tasks import TASK_TYPES


def test_multilabel_metrics_by_hand():
    # 3 examples x 3 labels; predicted = probability >= 0.5
    y_true = [[1, 0, 1], [0, 1, 0], [1, 1, 0]]
    probs = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.6], [0.7, 0.6, 0.4]])
    # predicted: [1,0,0], [0,1,1], [1,1,0] -> TP 4, FP 1, FN 1: micro P = R = 4/5
    # per label: A tp2 fp0 fn0 -> 1; B tp2 -> 1; C tp0 fp1 fn1 -> 0 => macro 2/3; exact match 1/3
    scores = score_multilabel(y_true, probs)
    assert scores["micro_f1"] == pytest.approx(0.8)
    assert scores["macro_f1"] == pytest.approx(2 / 3)
    assert scores["exact_match"] == pytest.approx(1 / 3)


def test_ner_metrics_are_entity_level():
    true = [["B-DIS", "I-DIS", "O", "B-DRUG"], ["O", "B-DIS", "O"]]
    pred = [["B-DIS", "O", "O", "B-DRUG"], ["O", "B-DIS", "O"]]
    # entities: true {DIS 0-1, DRUG 3, DIS 1}; pred {DIS 0, DRUG 3, DIS 1}: the cut span is wrong
    scores = score_ner(true, pred)
    assert scores["entity_precision"] == pytest.approx(2 / 3)
    assert scores["entity_recall"] == pytest.approx(2 / 3)
    assert scores["entity_f1"] == pytest.approx(2 / 3)
    assert scores["token_accuracy"] == pytest.approx(6 / 7)


def test_every_task_type_has_a_primary_metric_with_per_example_scores():
    assert set(PRIMARY_METRIC) == set(TASK_TYPES)
    for key in PRIMARY_METRIC.values():
        assert METRICS[key].per_example in ("mean", "f1") and METRICS[key].higher_is_better


def random_tags(rng, n):
    tags, inside = [], None
    for _ in range(n):
        r = rng.random()
        if inside and r < 0.3:
            tags.append(f"I-{inside}")
        elif r < 0.55:
            inside = rng.choice(["DIS", "DRUG"])
            tags.append(f"B-{inside}")
        else:
            inside = None
            tags.append("O")
    return tags


def test_entity_counts_add_up_to_seqeval_f1():
    rng = random.Random(0)
    true = [random_tags(rng, rng.randint(1, 12)) for _ in range(60)]
    pred = [random_tags(rng, len(t)) for t in true]
    counts = [entity_counts(t, p) for t, p in zip(true, pred)]
    assert statistic(counts) == pytest.approx(score_ner(true, pred)["entity_f1"], abs=1e-12)


def test_label_counts_add_up_to_sklearn_micro_f1():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, size=(50, 6))
    probs = rng.random((50, 6))
    y_pred = (probs >= 0.5).astype(int)
    counts = [label_counts(set(np.flatnonzero(t)), set(np.flatnonzero(p))) for t, p in zip(y_true, y_pred)]
    expected = f1_score(y_true, y_pred, average="micro", zero_division=0)
    assert statistic(counts) == pytest.approx(expected, abs=1e-12) == score_multilabel(y_true, probs)["micro_f1"]


def test_f1_randomization_test_by_hand():
    # two examples, a finds its entity, b misses it (fp + fn) in both. Swap patterns: none or both -> |1 - 0|;
    # one swapped -> each side has tp 1, fp 1, fn 1 -> F1 2/3 on both sides -> 0. So p = 2/4.
    a, b = [[1, 0, 0], [1, 0, 0]], [[0, 1, 1], [0, 1, 1]]
    assert paired_randomization_p(a, b, n_resamples=100) == pytest.approx(0.5)
    assert paired_randomization_p(a, a, n_resamples=100) == 1.0


def test_f1_bootstrap_ci_brackets_the_f1_and_is_reproducible():
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 4, size=(80, 3))
    lo, hi = bootstrap_ci(counts, n_resamples=500, seed=0)
    assert lo < statistic(counts) < hi
    assert (lo, hi) == bootstrap_ci(counts, n_resamples=500, seed=0)


def test_example_value_reads_each_metric_field():
    row = {"correct": 1, "scores": {"rouge1": 0.25}, "counts": [1, 2, 3]}
    assert example_value(row, METRICS["rouge1"]) == 0.25
    assert example_value(row, METRICS["accuracy"]) == 1
    assert example_value(row, METRICS["entity_f1"]) == [1, 2, 3]
    assert example_value(row, METRICS["macro_f1"]) is None  # corpus-level only
    assert example_value({}, METRICS["rouge1"]) is None


def test_macro_f1_ignores_a_class_absent_from_truth_and_predictions():
    from medpeft.run.metrics import score_classification

    probs = np.eye(3)[[0, 1, 0, 1]]  # a perfect classifier on a test set without class 2
    scores = score_classification([0, 1, 0, 1], probs, 3)
    assert scores["accuracy"] == 1.0 and scores["macro_f1"] == 1.0  # was 0.667: class 2 counted as F1 0
    wrong = score_classification([0, 0, 0, 1], np.eye(3)[[0, 0, 2, 1]], 3)  # a predicted class counts, even if absent
    assert wrong["macro_f1"] == pytest.approx((2 * 2 / 5 + 1.0 + 0.0) / 3)


def test_multilabel_macro_f1_over_present_labels_only():
    y_true = [[1, 0, 0], [0, 1, 0]]
    scores = score_multilabel(y_true, np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1]]))
    assert scores["macro_f1"] == 1.0 and scores["micro_f1"] == 1.0  # label 3: never true, never predicted
    assert score_multilabel([[0, 0]], np.array([[0.1, 0.2]]))["macro_f1"] is None  # no label anywhere: undefined


def test_micro_f1_of_no_label_at_all_is_what_the_reports_resampling_computes():
    """A test split whose examples have no label, predicted as none: the headline micro-F1 and the
    statistic the report's CI and tests resample from the per-example counts agree (0, as seqeval's entity
    F1 of no entity). It was 1.0 (scikit-learn's convention) with a CI of [0, 0]."""
    truth, probs = [[0, 0], [0, 0]], np.array([[0.1, 0.2], [0.3, 0.1]])
    counts = [label_counts(set(), set()) for _ in truth]
    assert score_multilabel(truth, probs)["micro_f1"] == statistic(counts) == 0.0
    assert score_ner([["O", "O"]], [["O", "O"]])["entity_f1"] == statistic([entity_counts(["O", "O"], ["O", "O"])]) == 0.0


def test_auroc_is_missing_when_no_class_can_be_scored():
    from medpeft.run.metrics import score_classification

    scores = score_classification([1, 1, 1], np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9]]), 2)
    assert scores["auroc"] is None  # one class only: no ROC curve (was a made-up 0.5)
    assert score_classification([0, 1], np.array([[0.8, 0.2], [0.3, 0.7]]), 2)["auroc"] == 1.0
