"""SISA: train is cut into `--shards` random shards (seed 42, as the authors' train_sisa.sh
data); each shard's model is trained from the pretrained backbone on its shard minus D_f,
and the prediction is the mean of the shard models' logits (the authors' sisa_evaluate.py).
Unlearning time: the shards' training, summed (every shard holds some of D_f).
"""

from __future__ import annotations

import dataclasses

import torch

from .common import Ensemble, train_shards


def shards(prepared, k: int, seed: int = 42) -> list[torch.Tensor]:
    tr = prepared.index("train")
    g = torch.Generator().manual_seed(seed)
    perm = tr[torch.randperm(len(tr), generator=g)]
    forget = prepared.forget
    return [torch.sort(part[~forget[part]]).values for part in torch.tensor_split(perm, k)]


def unlearn(job, cfg, cache_dir, k: int = 4):
    parts = shards(job.prepared, k, job.seed)
    models, seconds, info = train_shards(job, parts, cfg, cache_dir, "SISA")
    bb = dataclasses.replace(models[0], model=Ensemble([m.model for m in models]).eval())
    return bb, dict(time_s=seconds, shards=info, trainable_params=sum(sum(p.numel() for p in m.model.parameters()) for m in models))
