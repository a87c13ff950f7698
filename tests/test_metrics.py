import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from e2urec_fast.evaluate import ctr_metrics, jsd_l2, roc_auc


def test_ctr_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.random(500) * 0.6 + 0.4 * y, 0, 1)
    m = ctr_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["acc"] == pytest.approx(accuracy_score(y, p > 0.5), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), abs=1e-12)


@pytest.mark.parametrize("levels", [3, 20, None])
def test_our_auc_is_sklearns_with_ties(levels):
    """Scores rounded to a few levels (many ties), and losses as the audit gives them."""
    rng = np.random.default_rng(levels or 7)
    for n in (2, 9, 400):
        y = rng.integers(0, 2, n)
        y[0], y[-1] = 0, 1
        s = rng.normal(size=n) + y
        if levels:
            s = np.round(s * levels / 4) / levels
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5 and roc_auc([0, 1], [0.2, 0.1]) == 0.0


def test_floor_logreg_is_sklearns():
    """The CTR floor's Newton fit reaches scikit-learn's lbfgs optimum (same model, same penalty),
    a constant feature included."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from e2urec_fast.floor import fit_logreg

    rng = np.random.default_rng(3)
    x = np.c_[rng.normal(3, 1, (3000, 3)), np.full(3000, 2.0), rng.exponential(2, 3000)]
    y = (rng.random(3000) < 1 / (1 + np.exp(-(x[:, 0] - 3 - 0.5 * x[:, 4])))).astype(int)
    te = rng.normal(3, 1, (500, 5))
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, tol=1e-10)).fit(x, y).predict_proba(te)[:, 1]
    ours = fit_logreg(x, y)(te)
    assert np.abs(ours - ref).max() < 1e-6
    assert ctr_metrics(y[:500], ours)["auc"] == pytest.approx(roc_auc_score(y[:500], ref), abs=1e-9)


def test_a_request_imports_no_scikit_learn():
    """scikit-learn cost a request about a second of start-up; the runtime computes its
    metrics itself (the tests above hold them to scikit-learn's)."""
    import subprocess
    import sys

    code = ("import sys, e2urec_fast.unlearn, e2urec_fast.evaluate, e2urec_fast.audit, e2urec_fast.floor, e2urec_fast.api; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


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


def test_reference_predictions_are_cached_and_rebuilt(tmp_path, monkeypatch):
    """#26 item 2: the Original's (and Retrain's) predictions are read back by a later run
    against the same model, data, rows and dtype, and computed again when any of them changes."""
    import copy

    import torch

    from e2urec_fast import evaluate
    from helpers import tiny_job

    job = tiny_job(tmp_path)
    orig = job.fresh()
    calls = []
    real = evaluate.predict_logits
    monkeypatch.setattr(evaluate, "predict_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "c"

    def run(bb, name="Original"):
        calls.clear()
        ev = evaluate.Evaluator(job, cache)
        m, full = ev(bb, name)
        return m, full, ev.losses[name], len(calls), name in ev.from_cache

    m1, f1, l1, n1, hit1 = run(orig)
    assert n1 >= 2 and not hit1 and len(list((cache / "predictions").iterdir())) == n1  # a file per part
    m2, f2, l2, n2, hit2 = run(orig)
    assert n2 == 0 and hit2 and m2 == m1 and torch.equal(f2, f1) and all((a == b).all() for a, b in zip(l1, l2))
    other = copy.deepcopy(orig)
    with torch.no_grad():
        next(other.model.parameters()).add_(0.01)
    assert run(other)[3] >= 2  # another model: computed again
    assert run(orig, "E2URec")[3] >= 2 and run(orig, "E2URec")[3] >= 2  # a student is never cached
    job.dtype = "bf16"
    assert run(orig)[3] >= 2  # another precision
    job.dtype = "fp32"
    job.prepared.forget = job.prepared.forget.roll(1)  # another forget set: D_f computed, test read back
    ev = evaluate.Evaluator(job, cache)
    calls.clear()
    m3, _ = ev(orig, "Original")
    assert len(calls) == n1 - 1 and ev.parts_from_cache["Original"] == ["test"] and "Original" not in ev.from_cache
    assert m3 == m1  # the test metrics are the same model's on the same rows
    assert len(list((cache / "predictions").iterdir())) == 3 * n1 + 1  # orig, another model, bf16: every part; the new D_f
