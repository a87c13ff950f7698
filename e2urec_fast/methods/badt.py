"""Bad-T (the authors' "random label" baseline): a full fine-tune of Original with

    loss = CE(D_r batch) + w * CE(D_f batch with Yes/No flipped)      (w = --neg-weight, 0.5)

as the authors' unlearning_rl.py, whose forget loader turns "Yes." into "No." and back.
"""

from __future__ import annotations

from ..models.scoring import lm_loss
from .common import unlearn_full


def loss(bb, rb, fb, w: float) -> dict:
    ce_r = lm_loss(bb, bb.model, rb.ids, rb.mask, rb.labels)
    ce_flip = lm_loss(bb, bb.model, fb.ids, fb.mask, 1 - fb.labels)
    return dict(ce_r=ce_r, ce_flip=ce_flip, loss=ce_r + w * ce_flip)


def run(job, orig, cfg, resume=None):
    return unlearn_full(job, orig, cfg, lambda bb, rb, fb: loss(bb, rb, fb, cfg.baselines.neg_weight), "Bad-T", resume,
                        steps=cfg.baselines.badt_steps)
