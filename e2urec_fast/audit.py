"""Membership-inference audit: can D_f still be told apart from data the model never saw?

For a model M, every sample gets the loss of its true answer, l_M(x) = CE([No, Yes] logits
at the answer position, label). Members are the forgotten samples D_f (cumulative over the
requests so far); non-members are the test samples (no model here trains on them). An
attack is a score that should be higher for members; its AUC over members vs non-members
is what we report (0.5: it cannot tell D_f from unseen data).

- LOSS (Yeom et al. 2018; open-unlearning's `mia_loss`): score = -l_M(x).
- reference-calibrated (open-unlearning's `mia_reference`, after Carlini et al.'s
  reference-model attacks): score = l_R(x) - l_M(x) with R a model that never saw D_f:
  Retrain. It removes per-sample difficulty (a sample easy for every model is not a member).
  Without Retrain (`--no-retrain`) we report no calibrated score: every other model at hand
  (Original, the augmented model) was trained on D_f, so calibrating with it would measure
  how far unlearning moved a sample, not membership.
- privleak (MUSE, Shi et al. 2024; open-unlearning's `privleak`): 100 * (AUC_M - AUC_R) / AUC_R
  for the LOSS attack, with R = Retrain: 0 is Retrain's privacy; positive means M still leaks
  more membership than Retrain (under-forgetting), negative means M over-forgets (D_f looks
  less familiar to it than to Retrain, itself a tell-tale sign of unlearning).

Retrain's own LOSS AUC is the gold standard, not 0.5: D_f (earlier interactions of the
train users) and the test samples (later ones) differ in distribution, so even a model that
never saw D_f may tell them apart somewhat.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def answer_losses(yes_no_logits: torch.Tensor, labels) -> np.ndarray:
    """Per-sample cross-entropy of the true answer from (N, 2) [No, Yes] logits."""
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return torch.nn.functional.cross_entropy(yes_no_logits.double(), lab, reduction="none").numpy()


def mia_auc(member_scores, nonmember_scores) -> float:
    """AUC of telling members (label 1) from non-members by a score (higher = member)."""
    m, n = np.asarray(member_scores, dtype=np.float64), np.asarray(nonmember_scores, dtype=np.float64)
    if not len(m) or not len(n):
        return float("nan")
    y = np.r_[np.ones(len(m)), np.zeros(len(n))]
    return float(roc_auc_score(y, np.r_[m, n]))


def audit(losses: dict, reference: str | None = None) -> dict:
    """`losses = {model name: (loss on D_f, loss on non-members)}`; `reference` names the
    model that never saw D_f (Retrain) or None. Returns {model name: {loss_auc, ref_auc,
    privleak, forget_loss, unseen_loss}}."""
    out = {}
    ref = losses.get(reference) if reference else None
    for name, (lf, ln) in losses.items():
        row = dict(loss_auc=mia_auc(-lf, -ln), ref_auc=None, privleak=None,
                   forget_loss=float(np.mean(lf)), unseen_loss=float(np.mean(ln)), n_forget=len(lf), n_unseen=len(ln))
        if ref is not None and name != reference:
            row["ref_auc"] = mia_auc(ref[0] - lf, ref[1] - ln)
        out[name] = row
    if ref is not None:
        r = out[reference]["loss_auc"]
        for row in out.values():
            row["privleak"] = 100.0 * (row["loss_auc"] - r) / r
    return out


def audit_markdown(result: dict, reference: str | None) -> str:
    lines = ["| Model | LOSS attack AUC | reference-calibrated AUC | privleak | mean loss D_f | mean loss unseen |",
             "|---|---|---|---|---|---|"]

    def f(v, d=4):
        return "-" if v is None else f"{v:.{d}f}"

    for name, r in result.items():
        lines.append(f"| {name} | {f(r['loss_auc'])} | {f(r['ref_auc'])} | {f(r['privleak'], 2)} | {f(r['forget_loss'])} | "
                     f"{f(r['unseen_loss'])} |")
    note = ("reference = Retrain (never saw D_f)" if reference else
            "no Retrain (--no-retrain): no reference-calibrated score or privleak; compare the LOSS AUC before and after")
    return "\n".join(lines) + f"\n\nMembers: the forgotten samples D_f; non-members: the test samples. {note}.\n"
