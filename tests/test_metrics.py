"""The evaluation metrics in numpy equal scikit-learn's (the reference implementation, imported
here only), over random scores, heavy ties, one-class labels and extreme logits."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from dlrm_comp.metrics import classification_metrics, log_loss, roc_auc


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 400), levels=st.sampled_from([2, 3, 7, 1000, 0]), seed=st.integers(0, 2**31 - 1),
       rate=st.floats(0.0, 1.0))
def test_auc_and_logloss_equal_scikit_learns(n, levels, seed, rate):
    """levels: how many distinct scores (ties everywhere at 2-7; 0: continuous)."""
    rng = np.random.default_rng(seed)
    scores = rng.random(n) if levels == 0 else rng.integers(0, levels, n) / max(levels - 1, 1)
    labels = (rng.random(n) < rate).astype(np.float64)
    if 0 < labels.sum() < n:
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    else:
        assert np.isnan(roc_auc(labels, scores))
    probs = np.clip(scores, 1e-12, 1 - 1e-12)
    assert log_loss(labels, probs) == pytest.approx(sk_log_loss(labels, probs, labels=[0.0, 1.0]), rel=1e-12,
                                                    abs=1e-15)


def test_the_auc_is_the_pairwise_probability_with_ties_counted_half():
    assert roc_auc([0, 1], [0.2, 0.8]) == 1.0
    assert roc_auc([1, 0], [0.2, 0.8]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([0, 0, 1], [0.1, 0.3, 0.3]) == 0.75  # beats one negative, ties the other
    with pytest.raises(ValueError, match="3 labels for 2 scores"):
        roc_auc([0, 1, 1], [0.1, 0.2])


def test_classification_metrics_at_extreme_logits():
    logits = np.array([-1e4, -30.0, 0.0, 30.0, 1e4], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 1], dtype=np.float32)
    got = classification_metrics(logits, labels)
    probs = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -50, 50)))
    assert got["auc"] == roc_auc_score(labels, probs) == 1.0
    assert got["logloss"] == pytest.approx(sk_log_loss(labels, np.clip(probs, 1e-12, 1 - 1e-12)), rel=1e-12)
    assert got["accuracy"] == 1.0  # 0.5 counts as a click
    assert np.isnan(classification_metrics(logits, np.ones(5, np.float32))["auc"])
