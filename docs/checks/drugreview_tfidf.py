"""Drug reviews without a neural model: TF-IDF + logistic regression trained on the demo's train file
(the first 300 reviews, as offline-clinical trains on, and all 599), scored on its 379 test reviews,
against the majority rating. An independent check that the task is learnable from its words
(run: python docs/checks/drugreview_tfidf.py).
"""
from __future__ import annotations


def scores(sizes=(300, 599), weights=(None, "balanced"), c: float = 10.0) -> dict[str, float]:
    """Test accuracy per (training reviews, class weighting), and the test set's majority share."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from medpeft.tasks.clinical import drug_pools

    pools = {name: list(rows) for name, rows in drug_pools().items()}
    test_texts, test_labels = [ex["text"] for ex in pools["test"]], np.array([ex["target"] for ex in pools["test"]])
    out = {"majority": max(float(np.mean(test_labels == label)) for label in set(test_labels))}
    for n in sizes:
        train = pools["train"][:n]
        for weight in weights:
            model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                                  LogisticRegression(C=c, max_iter=3000, class_weight=weight))
            model.fit([ex["text"] for ex in train], [ex["target"] for ex in train])
            out[f"{n} reviews, class_weight={weight}"] = float(np.mean(model.predict(test_texts) == test_labels))
    return out


if __name__ == "__main__":
    for name, value in scores().items():
        print(f"{name:40s} {100 * value:5.1f} %")
