"""NegGrad (gradient ascent on D_f): a full fine-tune of Original with

    loss = CE(D_r batch) - w * CE(D_f batch)          (w = --neg-weight, 0.5)

each step one D_r and one D_f batch (zip of the two loaders), as the authors' unlearning_ga.py.
"""

from __future__ import annotations

from ..models.scoring import lm_loss
from .common import unlearn_full


def loss(bb, rb, fb, w: float) -> dict:
    ce_r = lm_loss(bb, bb.model, rb.ids, rb.mask, rb.labels)
    ce_f = lm_loss(bb, bb.model, fb.ids, fb.mask, fb.labels)
    return dict(ce_r=ce_r, ce_f=ce_f, loss=ce_r - w * ce_f)


def run(job, orig, cfg, resume=None):
    return unlearn_full(job, orig, cfg, lambda bb, rb, fb: loss(bb, rb, fb, cfg.baselines.neg_weight), "NegGrad", resume)
