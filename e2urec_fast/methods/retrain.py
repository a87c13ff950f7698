"""Original (fine-tune the pretrained backbone on train) and Retrain (on D_r only).

Both are full fine-tunes with the answer cross-entropy, validation loss on the valid
split and early stopping. Trained weights are cached (safetensors) under
`<cache>/models/`, keyed by the backbone, the prepared data and the settings, with
the training time recorded, so a second run reuses them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import torch

from .. import dist
from ..config import Config
from ..errors import UserError
from ..files import json_key, load_safetensors, save_safetensors_atomic
from ..precision import cache_tag
from ..train import TrainConfig
from .common import Job, finetune


def finetune_config(cfg: Config) -> TrainConfig:
    """The training settings of the full fine-tunes (Original, Retrain, shards): --lr, or its
    default for the backbone (1e-3 for the presets built with random weights, 5e-5 for
    pretrained ones: the from-scratch rate wrecks a pretrained encoder)."""
    from ..models.backbone import BACKBONE_PRESETS

    f = cfg.finetune
    lr = f.lr if f.lr is not None else (1e-3 if cfg.backbone_name in BACKBONE_PRESETS else 5e-5)
    return TrainConfig(lr=lr, batch_size=f.batch_size, epochs=f.epochs, patience=f.patience, schedule=f.lr_schedule,
                       warmup=f.warmup if f.lr_schedule == "linear" else 0.0,
                       row_lr=f.item_lr if cfg.data.item_tokens else 1.0, row_zero=cfg.data.item_tokens and f.item_init == "zero")


def _key(job: Job, part: str, cfg: TrainConfig, idx=None) -> str:
    # the trained rows themselves (the forget set decides D_r: a Retrain for another forget
    # set or request must never be reused)
    rows = hashlib.sha256((job.prepared.index(part) if idx is None else idx).numpy().tobytes()).hexdigest()
    return json_key(dict(bb=job.backbone().fingerprint(), data=job.prepared.manifest["content_hash"], part=part,
                         cfg=_settings(cfg), seed=job.seed, bucket=job.bucket, rows=rows)
                    | cache_tag(job.dtype))


def _settings(cfg: TrainConfig) -> dict:
    """The settings a trained model's key holds: row_lr and row_zero only where set (the keys of
    models trained before they existed stay valid)."""
    unset = dict(row_lr=1.0, row_zero=False)
    return {k: v for k, v in asdict(cfg).items() if k != "sync_every" and not (k in unset and v == unset[k])}


def _cached(job: Job, path: Path):
    """A cached fine-tune (bb, seconds, info), or None when the file is unreadable (a truncated
    write, a full disk at the time): it is removed and the model trained again."""
    import sys

    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "seconds" in meta:
            bb = job.with_weights(load_safetensors(path, job.device))
            return bb, float(meta["seconds"]), dict(cached=str(path), steps=int(meta.get("steps", 0)))
    except Exception as e:  # UserError, or one of the several types safetensors raises for a corrupt file
        print(f"{path}: unreadable cached model ({type(e).__name__}); removed, training it again", file=sys.stderr)
        path.unlink(missing_ok=True)
    return None


def train_on(job: Job, part: str, cfg: TrainConfig, cache_dir: Path | None, desc: str, idx=None):
    """Fine-tune the pretrained backbone on `part` ('train' or 'retain'), or on the sample
    indices `idx` (shards; `part` then names them); returns (bb, seconds, info)."""
    import torch

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "models" / f"{desc.lower()}-{_key(job, part, cfg, idx)}.safetensors"
        dist.barrier()  # torchrun: every rank sees the cache as rank 0 left it
        if path.exists():
            got = _cached(job, path)
            if got is not None:
                return got
    bb = job.fresh()
    torch.manual_seed(job.seed)
    res = finetune(job, bb, job.prepared.index(part) if idx is None else idx, cfg, desc, valid_idx=job.prepared.index("valid"))
    info = dict(steps=res.steps, best_valid=res.best_valid, valid_history=res.valid_history, stopped_early=res.stopped_early)
    if path is not None:
        save_safetensors_atomic(bb.model.state_dict(), path, metadata={"seconds": repr(res.seconds), "steps": str(res.steps)})
    return bb, res.seconds, info


def train_shards(job: Job, shards: list[torch.Tensor], cfg: TrainConfig, cache_dir, name: str):
    """One full fine-tune of the pretrained backbone per shard (cached like Retrain); returns
    (models, seconds summed over the shards, info)."""
    models, total, info = [], 0.0, []
    for k, idx in enumerate(shards):
        if len(idx) == 0:
            raise UserError(f"{name}: shard {k} is empty after removing D_f; use fewer --shards")
        bb, s, inf = train_on(job, f"{name.lower()}{k}", cfg, cache_dir, f"{name}-shard{k}", idx=idx)
        models.append(bb)
        total += s
        info.append(dict(samples=len(idx), seconds=s) | inf)
    return models, total, info
