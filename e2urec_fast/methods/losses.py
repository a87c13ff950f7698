"""The loss terms the methods share: the authors' "KL" (E2URec, NegKL) and E2URec's terms.

    forgetting teacher on D_f:  v_f = v - alpha * relu(v_aug - v)
    L_FGT = KL(softmax(v_f) || student)                    on D_f
    L_REM = CE(answer) + KL(softmax(v) || student)         on D_r
    loss  = w * L_REM + (1 - w) * L_FGT

`reference_terms` computes them as the authors do (teachers run every step, the
cross-entropy form of "KL" over the full vocabulary at every target position);
`fast_terms` from cached teacher rows through the fused op (`ops.teacher_kl`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..models.backbone import Backbone
from ..models.boundary import from_states
from ..models.scoring import answer_logits, full_logits, yes_no, yes_no_rows


def ce_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """The authors' "KL": -sum softmax(p) * log(softmax(q) + 1e-12), mean over rows."""
    p = torch.softmax(p_logits.float(), -1)  # in fp32 whatever the logits' dtype (--dtype bf16)
    q = torch.softmax(q_logits.float(), -1)
    return -(p * torch.log(q + 1e-12)).sum(-1).mean()


def reference_terms(student: Backbone, orig, aug, rb, fb, alpha: float, restrict: bool = False, rem=None) -> dict:
    """Loss terms as the authors compute them (teachers run here, every step).

    restrict=True keeps only the [No, Yes] logits at the answer position (the parity oracle
    for the fast path); else full vocabulary at every target position. `rem`: the
    remembering teacher on D_r when it is not `orig` (sequential requests).
    """

    def logits(model, b):
        lg, tgt = full_logits(student, model, b.ids, b.mask, b.labels)
        if restrict:
            return yes_no(student, lg[:, student.answer_pos]), tgt
        return lg, tgt

    out = {}
    if fb is not None:
        s_f, _ = logits(student.model, fb)
        with torch.no_grad():
            v, _ = logits(orig, fb)
            v_aug, _ = logits(aug, fb)
        out["kl_f"] = ce_kl(ops.forgetting_teacher(v, v_aug, alpha), s_f)  # the one definition (ops.py)
    if rb is not None:
        s_r, tgt = logits(student.model, rb)
        with torch.no_grad():
            v_r, _ = logits(orig if rem is None else rem, rb)
        if restrict:
            out["ce_r"] = F.cross_entropy(s_r.float(), rb.labels)
        else:
            out["ce_r"] = F.cross_entropy(s_r.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100)
        out["kl_r"] = ce_kl(v_r, s_r)
    return out


def fast_terms(student: Backbone, tables, rb, fb, alpha: float, scope: str = "yesno", backend: str = "auto",
               fuse: bool = True, boundary=None) -> dict:
    """Loss terms from cached teachers (`tables`: teachers.Teachers); one forward over D_r and
    D_f together when `fuse`.

    No host sync: the two right-padded halves are padded to one length on the device, the
    teacher rows are looked up by index, and with scope "yesno" the student's head is only
    the two [No, Yes] rows of the output embedding (`answer_logits(rows=...)`).
    `boundary` = (BoundaryTable, Scope): the student starts from the cached states of the
    batch's samples (its adapter sits above them: models/boundary.py)."""
    rows = yes_no_rows(student) if scope == "yesno" else None

    def head(b_ids, b_mask, b_idx):
        if boundary is None:
            return answer_logits(student, student.model, b_ids, b_mask, rows=rows)
        with from_states(student, student.model, boundary[0].gather(b_idx, b_ids.shape[1]), boundary[1]):
            return answer_logits(student, student.model, b_ids, b_mask, rows=rows)

    parts = [b for b in (rb, fb) if b is not None]
    if fuse and len(parts) == 2:
        L = max(rb.ids.shape[1], fb.ids.shape[1])
        ids = torch.cat([F.pad(b.ids, (0, L - b.ids.shape[1]), value=student.pad_id) for b in parts])
        mask = torch.cat([F.pad(b.mask, (0, L - b.mask.shape[1]), value=0) for b in parts])
        lg = head(ids, mask, torch.cat([rb.idx, fb.idx]))
        s_r, s_f = lg[: len(rb)], lg[len(rb) :]
    else:
        s_r = head(rb.ids, rb.mask, rb.idx) if rb is not None else None
        s_f = head(fb.ids, fb.mask, fb.idx) if fb is not None else None
    out = {}
    if fb is not None:
        aug = None if tables.augmented is None else tables.augmented[fb.idx]
        out["kl_f"] = ops.teacher_kl(s_f, tables.forget[fb.idx], aug, alpha, backend=backend)
    if rb is not None:
        yn = s_r if scope == "yesno" else yes_no(student, s_r)
        out["ce_r"] = F.cross_entropy(yn.float(), rb.labels)
        out["kl_r"] = ops.teacher_kl(s_r, tables.retain[rb.idx], backend=backend)
    return out


def combine(terms: dict, w: float) -> torch.Tensor:
    """w * L_REM + (1 - w) * L_FGT; a step with only one side (the forget-only epochs, the
    ablations) is that side's loss alone."""
    if "ce_r" not in terms:
        return terms["kl_f"]
    rem = terms["ce_r"] + terms["kl_r"]
    if "kl_f" not in terms:
        return rem
    return w * rem + (1 - w) * terms["kl_f"]


class LiveRows:
    """A teacher table over one live batch (for the fast path without the cache)."""

    def __init__(self, logits, idx):
        self.logits, self.idx = logits, idx

    def __getitem__(self, idx):
        assert torch.equal(idx, self.idx)
        return self.logits
