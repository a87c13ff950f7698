"""Pre-tokenized batches: shuffled per epoch, optionally length-bucketed.

Bucketing shuffles the indices, cuts them into pools of `pool` batches, sorts each
pool by length and shuffles the order of the resulting batches: far less padding
at the same randomness of batch composition across pools.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


def pad(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors into (B, L) ids and a (B, L) attention mask."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait: on CUDA through pinned
    memory with a non-blocking copy (a pageable copy synchronizes the stream first)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type == "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B,)
    idx: torch.Tensor  # (B,) sample indices into the prepared data set

    def __len__(self) -> int:
        return len(self.idx)


class Batcher:
    def __init__(self, seqs: list[torch.Tensor], labels: torch.Tensor, pad_id: int, batch_size: int,
                 bucket: bool = False, seed: int = 0, pool: int = 50, device: str = "cpu"):
        self.seqs, self.labels, self.pad_id = seqs, labels, pad_id
        self.batch_size, self.bucket, self.seed, self.pool, self.device = batch_size, bucket, seed, pool, device

    def make(self, chunk: list[int]) -> Batch:
        ids, mask = pad([self.seqs[i] for i in chunk], self.pad_id)
        idx = torch.tensor(chunk)
        d = self.device
        return Batch(to_device(ids, d), to_device(mask, d), to_device(self.labels[idx], d), idx)

    def order(self, idx: torch.Tensor | list[int], epoch: int, shuffle: bool = True) -> list[list[int]]:
        """The batches (lists of sample indices) of one epoch."""
        ix = list(idx) if isinstance(idx, list) else idx.tolist()
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if shuffle:
            rng.shuffle(ix)
        B = self.batch_size
        if not self.bucket:
            return [ix[s : s + B] for s in range(0, len(ix), B)]
        out = []
        P = B * self.pool
        for s in range(0, len(ix), P):
            pool = sorted(ix[s : s + P], key=lambda i: len(self.seqs[i]))
            out += [pool[k : k + B] for k in range(0, len(pool), B)]
        if shuffle:
            rng.shuffle(out)
        return out

    def epoch(self, idx: torch.Tensor | list[int], epoch: int, shuffle: bool = True):
        for chunk in self.order(idx, epoch, shuffle):
            yield self.make(chunk)
