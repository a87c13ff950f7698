"""Fingerprinted per-sample rows in safetensors: the one pattern behind the teacher-logit
cache (`teachers.py`) and the cached boundary states (`models/boundary.py`).

A file holds tensors of rows and, for each, the sample indices of its rows; its metadata
holds a fingerprint (JSON of the model's weights, tokenizer, prepared data, settings). A
file whose fingerprint matches is read; a stale one is rebuilt, or refused with a one-line
error naming it when rebuilding is switched off. Writes are atomic, rank 0 only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import dist
from .errors import fail
from .files import load_safetensors, save_safetensors_atomic


def fingerprint_json(fingerprint: dict) -> str:
    return json.dumps(fingerprint, sort_keys=True)


def stored_fingerprint(path: str | Path) -> str | None:
    """The fingerprint in the metadata of `path` (None: no file, no fingerprint or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("fingerprint")
    except Exception:
        return None


def read_rows(path: str | Path, fingerprint: dict, rebuild: bool, what: str) -> dict | None:
    """The tensors of `path` when its fingerprint is `fingerprint`; None when there is no
    file or a stale one may be rebuilt; a stale one without `rebuild` is refused (exit 2)."""
    path = Path(path)
    dist.barrier()  # torchrun: every rank sees the file as rank 0 left it (only rank 0 writes)
    if not path.exists():
        return None
    if stored_fingerprint(path) == fingerprint_json(fingerprint):
        return load_safetensors(path)
    if not rebuild:
        raise fail(path, f"stale {what} (built for another model, data set or settings); delete it or allow rebuilding")
    return None


def write_rows(path: str | Path, tensors: dict, fingerprint: dict | str) -> None:
    fp = fingerprint if isinstance(fingerprint, str) else fingerprint_json(fingerprint)
    save_safetensors_atomic({k: v.contiguous().cpu() for k, v in tensors.items()}, path, metadata={"fingerprint": fp})


def positions(idx: torch.Tensor, n_total: int) -> torch.Tensor:
    """(n_total,) row of each sample index in a table holding the samples `idx` (-1: absent)."""
    pos = torch.full((n_total,), -1, dtype=torch.long)
    pos[idx] = torch.arange(len(idx))
    return pos
