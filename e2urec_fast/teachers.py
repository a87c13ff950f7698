"""Teacher-logit cache: answer-position logits computed once, stored in safetensors.

A file holds named (rows, W) tensors plus, per name, the sample indices of its rows
(`<name>.idx`), fingerprinted as every per-sample row file is (`rowcache.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .batching import to_device
from .files import load_safetensors, save_safetensors_atomic
from .rowcache import positions, read_rows, write_rows


@dataclass
class Teachers:
    """The teachers' answer-position logits a student step reads, each looked up by sample
    index (a TeacherTable, or one live batch's rows): the remembering teacher on D_r, the
    Original on D_f and the augmented model on D_f. The forgetting target is
    `ops.forgetting_teacher(forget, augmented, alpha)`; `augmented` None: `forget` is the
    target itself (a calibrated one: calibrate.teacher_offset). In the cache file they are named
    by FILE_NAMES."""

    retain: object | None = None
    forget: object | None = None
    augmented: object | None = None

    FILE_NAMES = dict(retain="orig_r", forget="orig_f", augmented="aug_f")

    @classmethod
    def from_file_names(cls, tables: dict) -> Teachers:
        return cls(**{field: tables.get(name) for field, name in cls.FILE_NAMES.items()})


class TeacherTable:
    """Rows of cached logits looked up by sample index.

    A lookup is host bookkeeping plus one non-blocking copy of the row numbers: the
    position table lives on the CPU beside the batches' sample indices, so a training
    step never waits for the device. `require(idx)` checks, once and up front, that every
    sample a schedule will visit has a row (a lookup of a missing one is not checked)."""

    def __init__(self, logits: torch.Tensor, idx: torch.Tensor, n_total: int):
        self.logits = logits
        self.pos = positions(idx, n_total)

    def require(self, sample_idx: torch.Tensor) -> TeacherTable:
        if len(sample_idx) and bool((self.pos[sample_idx] < 0).any()):
            raise KeyError("sample not in the teacher cache")
        return self

    def __getitem__(self, sample_idx: torch.Tensor) -> torch.Tensor:
        return self.logits[to_device(self.pos[sample_idx], self.logits.device)]  # sample_idx: a batch's host index

    def to(self, device) -> TeacherTable:
        self.logits = self.logits.to(device)
        return self


def cached_teachers(path, fingerprint: dict, compute: dict, n_total: int, rebuild: bool = True, device="cpu"):
    """Return ({name: TeacherTable}, status) for `compute = {name: (fn, idx)}`, where
    `fn(idx) -> logits` runs only for the rows of `idx` the file does not hold.

    status: "reused" (every row was there), "extended" (missing rows added to a matching
    file), "built" (no file, or a stale one rebuilt), or "empty" (no rows needed, none written).
    """
    t = read_rows(path, fingerprint, rebuild, "teacher cache") or {}
    have = {n: (t[n], t[f"{n}.idx"]) for n in compute if n in t and f"{n}.idx" in t}
    tensors, added = {}, False
    for n, (fn, idx) in compute.items():
        logits, got = have.get(n, (None, torch.empty(0, dtype=torch.long)))
        known = torch.zeros(n_total, dtype=torch.bool)
        known[got] = True
        missing = idx[~known[idx]]
        if len(missing):
            new = fn(missing).float().cpu()
            logits = new if logits is None or not len(got) else torch.cat([logits, new])
            got = torch.cat([got, missing.cpu()])
            added = True
        if logits is None:  # nothing needed, nothing cached (a schedule that never visits these rows)
            logits = torch.empty(0, 0)
        tensors[n], tensors[f"{n}.idx"] = logits, got
    status = ("reused" if have else "empty") if not added else ("extended" if have else "built")
    if added:
        write_rows(path, tensors, fingerprint)
    return {n: TeacherTable(tensors[n], tensors[f"{n}.idx"], n_total).to(device) for n in compute}, status


def import_rows(src, dst, keep: torch.Tensor) -> int:
    """Copy a teacher cache keeping only the rows of the sample indices `keep` (a sequential
    request reuses the previous request's D_r rows minus the newly forgotten users'); the
    fingerprint is carried over, so the file is reused only where it still matches.
    Returns the number of rows kept."""
    from safetensors import safe_open

    src, dst = Path(src), Path(dst)
    with safe_open(str(src), "pt") as f:
        meta = f.metadata() or {}
    t = load_safetensors(src)
    out, kept = {}, 0
    for n in [k for k in t if not k.endswith(".idx") and f"{k}.idx" in t]:
        idx = t[f"{n}.idx"]
        sel = torch.isin(idx, keep)
        out[n], out[f"{n}.idx"] = t[n][sel] if t[n].numel() else t[n], idx[sel]
        kept += int(sel.sum())
    save_safetensors_atomic(out, dst, metadata=meta)
    return kept
