"""PubMedQA without a neural model: TF-IDF + logistic regression on question + abstract, 5-fold
cross-validation over the 500 expert-labelled questions, against the majority answer.

The README's independent check that the signal is not in the words (run: python docs/checks/pubmedqa_tfidf.py).
"""
from __future__ import annotations


def scores(cs=(0.3, 1.0, 10.0), weights=(None, "balanced")) -> dict[str, float]:
    """Mean 5-fold accuracy per (C, class weighting), and the majority share, over PQA-L."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    from medpeft.tasks.clinical import pubmedqa_examples

    examples = pubmedqa_examples()
    texts = [f"{ex['text']} {ex['pair']}" for ex in examples]
    labels = np.array([ex["target"] for ex in examples])
    out = {"majority": max(float(np.mean(labels == label)) for label in set(labels))}
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    for c in cs:
        for weight in weights:
            model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                                  LogisticRegression(C=c, max_iter=3000, class_weight=weight))
            out[f"C={c:g}, class_weight={weight}"] = float(cross_val_score(model, texts, labels, cv=folds).mean())
    return out


if __name__ == "__main__":
    for name, value in scores().items():
        print(f"{name:40s} {100 * value:5.1f} %")
