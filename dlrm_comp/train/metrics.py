"""Evaluation metrics: AUC (primary), logloss, accuracy, from logits and labels."""
from __future__ import annotations

import numpy as np


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC, logloss and accuracy (threshold 0.5) of click predictions; AUC is NaN for one class.
    scikit-learn is imported here, not at start-up: it costs 0.7 s, and most runs (every rank of
    a distributed run but the evaluator, short runs without evaluation) never evaluate."""
    from sklearn.metrics import log_loss, roc_auc_score
    probs = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -50, 50)))
    labels = labels.astype(np.float64)
    has_both = 0 < labels.sum() < len(labels)
    return {
        "auc": float(roc_auc_score(labels, probs)) if has_both else float("nan"),
        "logloss": float(log_loss(labels, np.clip(probs, 1e-12, 1 - 1e-12), labels=[0.0, 1.0])),
        "accuracy": float(((probs >= 0.5) == (labels >= 0.5)).mean()),
    }
