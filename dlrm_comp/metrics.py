"""Evaluation metrics: AUC (primary), logloss, accuracy, from logits and labels.

In numpy rather than scikit-learn's ``roc_auc_score``/``log_loss``: importing scikit-learn (and
the scipy it pulls in) costs 1.5 s, paid by every run that evaluates or reports its synthetic
data's Bayes AUC, which is every run. ``tests/test_metrics.py`` holds both equal to scikit-learn's
to 1e-12, ties and one-class inputs included."""
from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The area under the ROC curve: the probability that a positive outscores a negative, a tie
    counting half (Mann-Whitney U over mid-ranks, which is the trapezoidal ROC area). NaN when the
    labels hold one class only."""
    positive = np.asarray(labels).astype(bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(positive) != len(scores):
        raise ValueError(f"{len(positive)} labels for {len(scores)} scores")
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # each run of equal scores
    ends = np.r_[starts[1:], len(ordered)]
    mid = (starts + ends + 1) / 2.0  # the mean 1-based rank of a run
    ranks = np.repeat(mid, ends - starts)
    rank_sum = float(ranks[positive[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """The mean binary cross-entropy of probabilities ``probs`` (clipped to [1e-12, 1 - 1e-12])."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC, logloss and accuracy (threshold 0.5) of click predictions; AUC is NaN for one class."""
    probs = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -50, 50)))
    labels = labels.astype(np.float64)
    return {
        "auc": roc_auc(labels, probs),
        "logloss": log_loss(labels, probs),
        "accuracy": float(((probs >= 0.5) == (labels >= 0.5)).mean()),
    }
