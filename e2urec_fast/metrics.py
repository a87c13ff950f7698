"""AUC and log loss in numpy (the figures scikit-learn gives: tests/test_metrics.py), shared by
the evaluation and the audit; importing scikit-learn cost every request about a second."""

from __future__ import annotations

import numpy as np


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve: the Mann-Whitney U of the scores' average ranks (ties count
    one half), the figure `sklearn.metrics.roc_auc_score` gives; nan with a single class. Ours,
    in numpy: importing scikit-learn cost a deletion request a second of start-up."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    first = np.r_[True, sorted_s[1:] != sorted_s[:-1]]  # where each run of equal scores starts
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # the 1-based average rank of each run
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_log_loss(labels, prob) -> float:
    """Mean cross-entropy of binary labels under p(1) = prob, prob clipped to [1e-15, 1 - 1e-15]."""
    y = np.asarray(labels).astype(bool).ravel()
    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), 1e-15, 1 - 1e-15)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))
