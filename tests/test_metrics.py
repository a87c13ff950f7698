import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from e2urec_fast.evaluate import ctr_metrics, jsd_l2


def test_ctr_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.random(500) * 0.6 + 0.4 * y, 0, 1)
    m = ctr_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["acc"] == pytest.approx(accuracy_score(y, p > 0.5), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), abs=1e-12)


def test_jsd_l2_match_float64_definition():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(13, 50)) * 3, rng.normal(size=(13, 50)) * 3

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(a), softmax(b)
    eps = 1e-12
    jsd = np.mean(0.5 * (p * np.log((p + eps) / (q + eps))).sum(-1) + 0.5 * (q * np.log((q + eps) / (p + eps))).sum(-1))
    l2 = np.mean(np.sqrt(((p - q) ** 2).sum(-1)))
    got = jsd_l2(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert got["jsd"] == pytest.approx(jsd, rel=1e-5)
    assert got["l2"] == pytest.approx(l2, rel=1e-5)
    same = jsd_l2(torch.tensor(a), torch.tensor(a))
    assert same["jsd"] == pytest.approx(0.0, abs=1e-12) and same["l2"] == 0.0
