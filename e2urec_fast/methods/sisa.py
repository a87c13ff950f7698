"""SISA: train is cut into `--shards` shards; each shard's model is trained from the
pretrained backbone on its shard minus every forgotten user's samples, and the prediction
is the mean of the shard models' logits (the authors' sisa_evaluate.py). Unlearning time:
the shards' training, summed (every shard holds some of D_f).

Shards (`--shard-scheme`): `authors` (default) as the authors' split_ml-1m.ipynb draws
them: `np.random.seed(42); np.random.choice([0, .., k-1], size=N)` over the whole kept
frame (train, valid and test in time order), a train sample going to the shard drawn at
its position; `balanced`: a seeded permutation of train cut into k equal parts.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .common import Ensemble
from .retrain import train_shards

AUTHORS_SEED = 42  # np.random.seed(42) / random.seed(42) in the authors' split_ml-1m.ipynb (SISA, RecEraser)


def shards(prepared, k: int, seed: int = 42, scheme: str = "authors") -> list[torch.Tensor]:
    tr = prepared.index("train")
    keep = torch.zeros(len(prepared.labels), dtype=torch.bool)
    keep[prepared.index("retain")] = True
    if scheme == "authors":
        draw = torch.from_numpy(np.random.RandomState(AUTHORS_SEED).choice(list(range(k)), size=len(prepared.labels)))
        return [tr[(draw[tr] == j) & keep[tr]] for j in range(k)]
    g = torch.Generator().manual_seed(seed)
    perm = tr[torch.randperm(len(tr), generator=g)]
    return [torch.sort(part[keep[part]]).values for part in torch.tensor_split(perm, k)]


def run(job, cfg, cache_dir, k: int = 4, scheme: str = "authors"):
    parts = shards(job.prepared, k, job.seed, scheme)
    models, seconds, info = train_shards(job, parts, cfg, cache_dir, "SISA")
    bb = dataclasses.replace(models[0], model=Ensemble([m.model for m in models]).eval())
    return bb, dict(time_s=seconds, shards=info, scheme=scheme,
                    trainable_params=sum(sum(p.numel() for p in m.model.parameters()) for m in models))
