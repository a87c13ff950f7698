"""What every method needs: the job context and a full fine-tune with the LM loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..batching import Batcher
from ..data.prepare import Prepared
from ..models.backbone import Backbone, load_backbone
from ..models.scoring import lm_loss
from ..train import TrainConfig, TrainResult, fit


@dataclass
class Job:
    """One unlearning job: data, backbone folder, settings shared by all methods."""

    prepared: Prepared
    backbone_dir: Path
    out: Path
    device: str = "cpu"
    seed: int = 42
    batch_size: int = 16
    eval_batch_size: int = 64
    bucket: bool = True
    progress: bool = True
    extras: dict = field(default_factory=dict)
    _bb: Backbone | None = None

    def backbone(self) -> Backbone:
        """The pretrained backbone (loaded once; callers get a deep copy of the model)."""
        if self._bb is None:
            self._bb = load_backbone(self.backbone_dir, self.device)
        return self._bb

    def fresh(self) -> Backbone:
        return self.backbone().clone()

    def with_weights(self, state: dict) -> Backbone:
        bb = self.fresh()
        bb.model.load_state_dict(state, strict=False)
        return bb

    @property
    def seqs(self) -> list[torch.Tensor]:
        bb = self.backbone()
        return self.prepared.tokens(bb.tokenizer, bb.tokenizer_key())

    def batcher(self, batch_size: int | None = None, bucket: bool | None = None, seed: int | None = None) -> Batcher:
        return Batcher(self.seqs, self.prepared.labels, self.backbone().pad_id, batch_size or self.batch_size,
                       bucket=self.bucket if bucket is None else bucket, seed=self.seed if seed is None else seed,
                       device=self.device)


@torch.no_grad()
def mean_lm_loss(job: Job, bb: Backbone, idx: torch.Tensor) -> float:
    bb.model.eval()
    b = job.batcher(job.eval_batch_size, bucket=True)
    tot, n = 0.0, 0
    for batch in b.epoch(idx, 0, shuffle=False):
        tot += float(lm_loss(bb, bb.model, batch.ids, batch.mask, batch.labels)) * len(batch)
        n += len(batch)
    return tot / max(n, 1)


def finetune(job: Job, bb: Backbone, train_idx: torch.Tensor, cfg: TrainConfig, desc: str,
             valid_idx: torch.Tensor | None = None, ckpt=None, full: bool = True) -> TrainResult:
    """Fine-tune on the answer cross-entropy (Original, Retrain, augment): every weight when
    `full`, else only the parameters that already require grad (an injected adapter)."""
    if full:
        for p in bb.model.parameters():
            p.requires_grad_(True)
    batcher = job.batcher(cfg.batch_size)

    def step(batch):
        return lm_loss(bb, bb.model, batch.ids, batch.mask, batch.labels), len(batch)

    valid = (lambda: mean_lm_loss(job, bb, valid_idx)) if valid_idx is not None else None
    if cfg.max_steps is None and cfg.epochs <= 0:
        raise ValueError("epochs must be positive")
    res = fit(bb.model, lambda e: batcher.epoch(train_idx, e), step, cfg, valid=valid, ckpt=ckpt, desc=desc,
              progress=job.progress)
    for p in bb.model.parameters():
        p.requires_grad_(False)
    return res


def n_params(model: torch.nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

