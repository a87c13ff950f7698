"""NegKL: a full fine-tune of Original that stays close to it on D_r and moves away on D_f:

    loss = KL(orig || model)(D_r batch) - w * KL(orig || model)(D_f batch)      (w = --neg-weight)

weighted like NegGrad and Bad-T (the paper runs the three alike; unweighted, the D_f term's
growth is unbounded and the model collapsed within the default schedule),

with the authors' form of "KL" (utils.compute_kl: -sum softmax(orig) * log(softmax(model) + 1e-12),
over the full vocabulary at every target position), Original frozen as the teacher.
"""

from __future__ import annotations

import torch

from ..models.scoring import full_logits
from .common import unlearn_full
from .losses import ce_kl


def loss(bb, orig_model, rb, fb, w: float = 1.0) -> dict:
    def kl(b):
        s, _ = full_logits(bb, bb.model, b.ids, b.mask, b.labels)
        with torch.no_grad():
            t, _ = full_logits(bb, orig_model, b.ids, b.mask, b.labels)
        return ce_kl(t, s)

    kl_r, kl_f = kl(rb), kl(fb)
    return dict(kl_r=kl_r, kl_f=kl_f, loss=kl_r - w * kl_f)


def run(job, orig, cfg, resume=None):
    orig.model.eval()
    return unlearn_full(job, orig, cfg, lambda bb, rb, fb: loss(bb, orig.model, rb, fb, cfg.baselines.neg_weight), "NegKL", resume)
