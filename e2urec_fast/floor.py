"""The CTR floor: what a logistic regression reads off the obvious statistics.

Features of each sample, all computable from its prompt and the train split:
the mean stars of the user's history in the prompt, the share of those ratings above 3,
the last rating, the item's smoothed positive rate on train (Laplace-style shrinkage to the
global rate with weight 10), and log(1 + the item's count on train). Fitted on train,
scored on test: a reader sees at once whether the LLM recommender learned more than that.
"""

from __future__ import annotations

import re
import time

import numpy as np

STARS = re.compile(r"\((\d) stars?\)")
SMOOTH = 10.0


def _stars(prompts: list[str], rows: np.ndarray) -> np.ndarray:
    """(len(rows), 3): the mean stars of each prompt's history, the share above 3, the last."""
    out = np.zeros((len(rows), 3))
    for j, i in enumerate(rows.tolist()):
        st = [int(v) for v in STARS.findall(prompts[i])]
        if st:
            out[j] = sum(st) / len(st), sum(v > 3 for v in st) / len(st), st[-1]
    return out


def features(prepared, fit_part: str = "train", rows=None) -> np.ndarray:
    """The five features of the samples `rows` (default: every sample; the prompts are read for
    those rows alone: a job needs a few thousand of the data set's ~95,000); the item statistics
    counted on `fit_part` ("retain": D_r, for a reference that never saw D_f)."""
    rows = np.arange(len(prepared.prompts)) if rows is None else np.asarray(rows, dtype=np.int64)
    x = np.zeros((len(rows), 5))
    x[:, :3] = _stars(prepared.prompts, rows)
    tr = prepared.index(fit_part).numpy()
    items = prepared.items.numpy()
    labels = prepared.labels.numpy().astype(np.float64)
    prior = labels[tr].mean()
    n_items = int(items.max()) + 1
    cnt = np.bincount(items[tr], minlength=n_items)
    pos = np.bincount(items[tr], weights=labels[tr], minlength=n_items)
    it = items[rows]
    x[:, 3] = (pos[it] + SMOOTH * prior) / (cnt[it] + SMOOTH)
    x[:, 4] = np.log1p(cnt[it])
    return x


def fit_logreg(x: np.ndarray, y: np.ndarray, c: float = 1.0, tol: float = 1e-10, max_iter: int = 100):
    """L2-penalised logistic regression on standardised features, the model scikit-learn's
    `make_pipeline(StandardScaler(), LogisticRegression())` fits (the minimiser of
    C * sum(log loss) + 0.5 * |w|^2, intercept unpenalised), found by Newton's method: the
    objective is strictly convex and has six parameters. Returns p(1 | features)."""
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 0, sd, 1.0)  # a constant feature stays as it is (StandardScaler's rule)
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    t = np.asarray(y, dtype=np.float64)
    pen = np.r_[np.ones(x.shape[1]), 0.0] / c
    w = np.zeros(z.shape[1])
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        g = z.T @ (p - t) + pen * w
        if np.abs(g).max() < tol * max(1.0, len(t)):
            break
        h = (z * (p * (1 - p))[:, None]).T @ z + np.diag(pen)
        w = w - np.linalg.solve(h, g)
    return lambda xs: 1.0 / (1.0 + np.exp(-(np.c_[(xs - mu) / sd, np.ones(len(xs))] @ w)))


def floor_row(prepared) -> dict:
    """Fit on train, score test; a row for the report (no JSD/L2: it has no vocabulary)."""
    from .evaluate import ctr_metrics

    t0 = time.perf_counter()
    y = prepared.labels.numpy()
    tr, te = prepared.index("train").numpy(), prepared.index("test").numpy()
    x = features(prepared, rows=np.r_[tr, te])
    m = ctr_metrics(y[te], fit_logreg(x[:len(tr)], y[tr])(x[len(tr):]))
    return dict(method="CTR floor (LogReg)", kind="reference", **m, jsd=None, l2=None, time_s=None, train_time_s=time.perf_counter() - t0,
                trainable_params=x.shape[1] + 1)


def retain_floor(prepared):
    """p(1) of the floor refitted on D_r alone, as a function of sample rows: a reference that saw
    neither D_f nor any held-out user."""
    r = prepared.index("retain").numpy()
    fit = fit_logreg(features(prepared, "retain", r), prepared.labels.numpy()[r].astype(np.float64))
    return lambda rows: fit(features(prepared, "retain", rows))


def proxy_margins(prepared, rows, calib_rows, calib_margins) -> tuple[np.ndarray, tuple[float, float]]:
    """What a model that never saw `rows` would answer there, as a Yes-minus-No margin: the floor
    refitted on D_r gives each row a logit, mapped to the model's own scale by a least-squares line
    fitted on the calibration users, where the model's margins (`calib_margins`) are a non-member's.
    Returns (margins of `rows`, (intercept, slope)); the line is flat (the calibration users' mean)
    where the floor's logits do not vary there."""
    p_of = retain_floor(prepared)

    def logit(i):
        p = np.clip(p_of(i), 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p))

    fc, mc = logit(calib_rows), np.asarray(calib_margins, dtype=np.float64)
    slope = float(np.polyfit(fc, mc, 1)[0]) if len(fc) > 1 and np.ptp(fc) > 0 else 0.0
    icpt = float(mc.mean() - slope * fc.mean())
    return icpt + slope * logit(rows), (icpt, slope)


def reference_losses(prepared, parts: dict) -> dict:
    """Each sample's log loss under the floor refitted on D_r alone (features, item statistics and
    weights): a reference model that saw neither D_f nor any held-out user. `parts`: {name: rows};
    returns {name: losses}. Calibration and the audit subtract it from a model's losses
    (difficulty calibration, Watson et al., ICLR 2022): a user whose ratings are hard to predict
    has high losses under both, member or not, and reads as a non-member by the raw loss."""
    p_of = retain_floor(prepared)
    y = prepared.labels.numpy().astype(np.float64)
    out = {}
    for k, rows in parts.items():
        i = np.asarray(rows)
        p = np.clip(p_of(i), 1e-7, 1 - 1e-7)
        out[k] = -(y[i] * np.log(p) + (1 - y[i]) * np.log1p(-p))
    return out
