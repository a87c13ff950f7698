"""The frozen states below a cached boundary, for one model: where they are stored, how they
are built, and the source an evaluation reads them from (the student's, and since #26 the
Original's in a request on the cached boundary)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..files import json_key
from ..models.backbone import Backbone
from ..models.boundary import (
    BoundarySource,
    BoundaryTable,
    Scope,
    build_table,
    frozen_fingerprint,
    resolve_scope,
    shared_boundary,
    width,
)
from ..precision import cache_tag
from .common import Job


def state_store(job: Job, orig: Backbone, scope: Scope, cfg: Config, store=None):
    """(its file in `store`, or None; its fingerprint; build(idx)) of the frozen states below
    `scope` of the model `orig` (models/boundary.py)."""
    prep = job.prepared
    bfp = dict(orig=frozen_fingerprint(orig, scope), tok=orig.tokenizer_key(), data=prep.manifest["content_hash"],
               scope=str(scope), family=orig.family, prefix=orig.prefix.tolist()) | cache_tag(job.dtype)
    name = json_key(bfp)
    path = None if store is None else Path(store) / "boundary" / f"{name}.safetensors"

    def build(idx):
        return build_table(orig, orig.model, job.seqs, idx, scope, len(prep.labels), job.eval_batch_size, job.device,
                           dtype=torch.bfloat16 if job.dtype == "bf16" else None, max_gib=cfg.speed.boundary_max_gib,
                           desc=None if not job.progress else "boundary cache")

    return path, bfp, build


def state_source(job: Job, orig: Backbone, scope: Scope, cfg: Config, store=None, local=None, table=None) -> BoundarySource:
    """Where an evaluation of `orig` (or of a student above its boundary) reads its states: `table`
    at hand, the other rows fetched on demand: test's and D_h's through the store, every
    forgotten user's built (and kept in `local`, this output's cache, when given: the student's
    boundary stage reads D_f's back from there)."""
    path, bfp, build = state_store(job, orig, scope, cfg, store)
    gone, n_total, rebuild = job.prepared.index("forget_all"), len(job.prepared.labels), not cfg.speed.no_cache_rebuild

    def fetch(idx):
        dropped = torch.isin(idx, gone)
        return shared_boundary(path, local, bfp, build, idx[~dropped], idx[dropped], gone, n_total, rebuild, job.device)[0]

    if table is None:
        table = BoundaryTable(torch.zeros(1, width(orig.model)), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                              n_total)
    return BoundarySource(table, scope, fetch, n_total)


def original_states(job: Job, orig: Backbone, cfg: Config, methods, store, out: Path):
    """Where the Original's evaluation reads its frozen part's states when E2URec's fast path
    will sit above a cached boundary (a request's default on t5/bart), else None: its test and
    D_h rows from the store a previous request against a model with the same encoder left (a
    chain's merged models share it), its D_f rows built once into this output's cache, where
    the student's boundary stage reads them back. The states are the Original's own, so the
    logits are its full forward's (tests/test_boundary.py)."""
    if "e2urec" not in methods or cfg.student.impl == "reference":
        return None
    scope = resolve_scope(cfg, orig.family, "fast")
    if not scope.cached:
        return None
    return state_source(job, orig, scope, cfg, store, local=Path(out) / "cache" / "boundary.safetensors")
