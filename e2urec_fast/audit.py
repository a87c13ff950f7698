"""Membership-inference audit: can D_f still be told apart from data the model never saw?

For a model M, every sample gets the loss of its true answer, l_M(x) = CE([No, Yes] logits
at the answer position, label). Members are the forgotten samples D_f (cumulative over the
requests so far); non-members are D_h, the train-period samples of users held out of every
model's training (`--holdout-ratio`; a request's `--holdout-users`): the same pool and period
as D_f, as TOFU's and MUSE's holdout splits. Without a holdout they are the test samples,
which are *later* interactions: an attack then also detects the time shift, not only
membership (Duan et al. 2024; Meeus et al. 2024), and the report says so. An attack is a
score that should be higher for members; its AUC over members vs non-members is what we
report (0.5: it cannot tell D_f from unseen data).

- LOSS (Yeom et al. 2018; open-unlearning's `mia_loss`): score = -l_M(x).
- reference-calibrated (open-unlearning's `mia_reference`, after Carlini et al.'s
  reference-model attacks): score = l_R(x) - l_M(x) with R a model that never saw D_f:
  Retrain. It removes per-sample difficulty (a sample easy for every model is not a member).
  Without Retrain (`--no-retrain`) we report no calibrated score: every other model at hand
  (Original, the augmented model) was trained on D_f, so calibrating with it would measure
  how far unlearning moved a sample, not membership.
  Why this one: Retrain is the ideal reference model (same recipe, trained on neither D_f nor
  D_h), so the calibrated score is a one-out-model LiRA at no extra training cost; the
  open-unlearning min-k attack needs token sequences, where our answer is a single token.
- forget quality (TOFU, Maini et al. 2024): the p-value of a two-sample Kolmogorov-Smirnov
  test between the per-sample answer losses of M and of Retrain on D_f (the loss is a monotone
  function of the true answer's probability, so the test is the same for either). High: M's
  D_f answers are distributed as Retrain's. An Original whose forget quality is already above
  0.05 cannot be told from Retrain on D_f: such a set-up cannot show any forgetting.
- privleak (MUSE, Shi et al. 2024; open-unlearning's `privleak`): 100 * (AUC_M - AUC_R) / AUC_R
  for the LOSS attack, with R = Retrain: 0 is Retrain's privacy; positive means M still leaks
  more membership than Retrain (under-forgetting), negative means M over-forgets (D_f looks
  less familiar to it than to Retrain, itself a tell-tale sign of unlearning).

Retrain's own LOSS AUC is the gold standard, not 0.5: D_f and D_h are different users (and
D_f and the test samples different periods), so even a model that never saw D_f may tell
them apart somewhat.
"""

from __future__ import annotations

import numpy as np
import torch

NONMEMBERS = {"holdout": "D_h, the train-period samples of held-out users (same pool and period as D_f)",
              "test": "the test samples (a later period: time-shifted, so the attack also detects the shift; give a holdout "
                      "with --holdout-ratio, or --holdout-users in a request)"}
FQ_FLOOR = 0.05  # TOFU's threshold: an Original above it is indistinguishable from Retrain on D_f


def answer_losses(yes_no_logits: torch.Tensor, labels) -> np.ndarray:
    """Per-sample cross-entropy of the true answer from (N, 2) [No, Yes] logits."""
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return torch.nn.functional.cross_entropy(yes_no_logits.double(), lab, reduction="none").numpy()


def mia_auc(member_scores, nonmember_scores) -> float:
    """AUC of telling members (label 1) from non-members by a score (higher = member)."""
    m, n = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    if not len(m) or not len(n):
        return float("nan")
    from .metrics import roc_auc

    return roc_auc(np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n])


def forget_quality(model_stat, retrain_stat) -> float:
    """TOFU's forget quality: the two-sample KS test's p-value between a per-sample statistic
    of the model and of Retrain on D_f (exact for small samples, asymptotic otherwise)."""
    from scipy.stats import ks_2samp

    a, b = np.asarray(model_stat, dtype=np.float64), np.asarray(retrain_stat, dtype=np.float64)
    if not len(a) or not len(b):
        return float("nan")
    return float(ks_2samp(a, b).pvalue)


def bootstrap_auc(member_scores, nonmember_scores, member_groups, nonmember_groups, n: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """The attack AUC's interval from a bootstrap over users (a user's samples are drawn
    together: they are not independent), members and non-members resampled apart."""
    m, u = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    gm, gu = np.asarray(member_groups), np.asarray(nonmember_groups)
    if not len(m) or not len(u):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    um, uu = np.unique(gm), np.unique(gu)
    rows_m = [np.flatnonzero(gm == g) for g in um]
    rows_u = [np.flatnonzero(gu == g) for g in uu]
    got = []
    for _ in range(n):
        im = np.concatenate([rows_m[k] for k in rng.integers(0, len(um), len(um))])
        iu = np.concatenate([rows_u[k] for k in rng.integers(0, len(uu), len(uu))])
        got.append(mia_auc(m[im], u[iu]))
    lo, hi = np.quantile(got, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def verdict(lo: float, hi: float) -> str:
    """What the interval says: can the audit tell D_f from the audit non-members?"""
    if lo > 0.5:
        return "tells D_f apart (remembered)"
    if hi < 0.5:
        return "D_f less familiar than non-members (over-forgotten)"
    return "cannot tell D_f from non-members"


def audit(losses: dict, reference: str | None = None, groups=None, floor=None) -> dict:
    """`losses = {model name: (loss on D_f, loss on non-members)}`; `reference` names the
    model that never saw D_f (Retrain) or None; `groups` = (users of D_f's rows, users of the
    non-members' rows): the LOSS AUC gets a bootstrap interval over users and a verdict.
    Returns {model name: {loss_auc, loss_auc_ci, verdict, ref_auc, privleak, forget_quality,
    forget_loss, unseen_loss, gap_closed, floor_auc}}; gap_closed (with a reference and an
    'Original'): the share of the Original-to-Retrain LOSS-AUC gap the model closes; `floor` =
    (the CTR floor's losses on D_f, on the non-members; floor.reference_losses): floor_auc, the
    attack on each loss less the floor's (what calibration reads, and needs no Retrain)."""
    out = {}
    ref = losses.get(reference) if reference else None
    for name, (lf, ln) in losses.items():
        row = dict(loss_auc=mia_auc(-lf, -ln), ref_auc=None, privleak=None, forget_quality=None,
                   forget_loss=float(np.mean(lf)), unseen_loss=float(np.mean(ln)), n_forget=len(lf), n_unseen=len(ln))
        if groups is not None and len(groups[0]) == len(lf) and len(groups[1]) == len(ln):
            row["loss_auc_ci"] = list(bootstrap_auc(-lf, -ln, *groups))
            row["verdict"] = verdict(*row["loss_auc_ci"])
        if ref is not None:
            row["forget_quality"] = forget_quality(lf, ref[0])
        if ref is not None and name != reference:
            row["ref_auc"] = mia_auc(ref[0] - lf, ref[1] - ln)
        if floor is not None:
            row["floor_auc"] = mia_auc(floor[0] - lf, floor[1] - ln)
        out[name] = row
    if ref is not None:
        r = out[reference]["loss_auc"]
        o = (out.get("Original") or {}).get("loss_auc")
        for row in out.values():
            row["privleak"] = 100.0 * (row["loss_auc"] - r) / r
            if o is not None and abs(o - r) > 1e-12:
                row["gap_closed"] = (o - row["loss_auc"]) / (o - r)
    return out


def weak_setup(result: dict) -> str | None:
    """The warning a report leads with when the Original's forget quality is above 0.05."""
    fq = (result.get("Original") or {}).get("forget_quality")
    if fq is None or not fq > FQ_FLOOR:
        return None
    return (f"WARNING: the Original's forget quality is {fq:.3f} (> {FQ_FLOOR}): its D_f answers are already distributed "
            "as Retrain's, so this set-up cannot tell an unlearned model from an untouched one (try --scenario memorize)")


def audit_markdown(result: dict, reference: str | None, nonmembers: str = "test") -> str:
    lines = ["| Model | LOSS attack AUC [95% CI over users] | verdict | share of the gap closed | reference-calibrated AUC | "
             "floor-calibrated AUC | privleak | forget quality (KS p) | mean loss D_f | mean loss non-members |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, d=4):
        return "-" if v is None else f"{v:.{d}f}"

    for name, r in result.items():
        ci = r.get("loss_auc_ci")
        auc = f(r["loss_auc"]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        gap = "-" if r.get("gap_closed") is None else f"{100 * r['gap_closed']:.0f}%"
        lines.append(f"| {name} | {auc} | {r.get('verdict', '-')} | {gap} | {f(r['ref_auc'])} | {f(r.get('floor_auc'))} | "
                     f"{f(r['privleak'], 2)} | "
                     f"{f(r.get('forget_quality'), 3)} | {f(r['forget_loss'])} | {f(r['unseen_loss'])} |")
    note = ("reference = Retrain (never saw D_f or the non-members)" if reference else
            "no Retrain (--no-retrain): no reference-calibrated score, privleak or forget quality; compare the LOSS AUC "
            "before and after")
    return "\n".join(lines) + (f"\n\nMembers: the forgotten samples D_f; non-members: {NONMEMBERS[nonmembers]}. {note}; "
                               "floor-calibrated: each loss less the CTR floor's refitted on D_r (no Retrain needed; what "
                               "calibration reads on its own users).\n")
