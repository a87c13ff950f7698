"""Original (fine-tune the pretrained backbone on train) and Retrain (on D_r only).

Both are full fine-tunes with the answer cross-entropy, validation loss on the valid
split and early stopping. Trained weights are cached (safetensors) under
`<cache>/models/`, keyed by the backbone, the prepared data and the settings, with
the training time recorded, so a second run reuses them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .. import dist
from ..errors import load_safetensors, save_safetensors_atomic
from ..precision import cache_tag
from ..train import TrainConfig
from .common import Job, finetune


def _key(job: Job, part: str, cfg: TrainConfig, idx=None) -> str:
    # the trained rows themselves (the forget set decides D_r: a Retrain for another forget
    # set or request must never be reused)
    rows = hashlib.sha256((job.prepared.index(part) if idx is None else idx).numpy().tobytes()).hexdigest()
    blob = json.dumps(dict(bb=job.backbone().fingerprint(), data=job.prepared.manifest["content_hash"], part=part,
                           cfg={k: v for k, v in asdict(cfg).items() if k != "sync_every"}, seed=job.seed, bucket=job.bucket, rows=rows)
                      | cache_tag(job.dtype), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_on(job: Job, part: str, cfg: TrainConfig, cache_dir: Path | None, desc: str, idx=None):
    """Fine-tune the pretrained backbone on `part` ('train' or 'retain'), or on the sample
    indices `idx` (shards; `part` then names them); returns (bb, seconds, info)."""
    import torch

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "models" / f"{desc.lower()}-{_key(job, part, cfg, idx)}.safetensors"
        dist.barrier()  # torchrun: every rank sees the cache as rank 0 left it
        if path.exists():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if "seconds" in meta:
                bb = job.with_weights(load_safetensors(path, job.device))
                return bb, float(meta["seconds"]), dict(cached=str(path), steps=int(meta.get("steps", 0)))
    bb = job.fresh()
    torch.manual_seed(job.seed)
    res = finetune(job, bb, job.prepared.index(part) if idx is None else idx, cfg, desc, valid_idx=job.prepared.index("valid"))
    info = dict(steps=res.steps, best_valid=res.best_valid, valid_history=res.valid_history, stopped_early=res.stopped_early)
    if path is not None:
        save_safetensors_atomic(bb.model.state_dict(), path, metadata={"seconds": repr(res.seconds), "steps": str(res.steps)})
    return bb, res.seconds, info
