"""RecEraser: the retained users are cut into `--shards` groups: `--shard-scheme authors`
(default; the authors' split_ml-1m.ipynb) takes the train users in order of first
appearance, shuffled by `random.seed(42); random.shuffle(...)` (the shuffle the forget
split also uses), drops the forgotten ones and cuts the rest into k equal slices
(`users[int(n*j/k):int(n*(j+1)/k)]`); `balanced` balances the groups by sample count
(users in order of their D_r sample count, each to the lightest group). One model per group
is trained from the pretrained backbone on its users' D_r samples; predictions are
aggregated by the mean of the logits (the authors' code) or, with --receraser-agg attention,
by the RecEraser paper's attention: a_k = softmax_k(q . tanh(W h_k + b)) over the shards'
last decoder states h_k, trained on D_r with the answer cross-entropy while the shards stay
frozen. Unlearning time: the shards' training plus the aggregator's.
"""

from __future__ import annotations

import dataclasses
import random
import time

import torch
import torch.nn.functional as F

from ..batching import pad
from ..models.scoring import answer_logits, yes_no
from .common import Ensemble
from .retrain import train_shards
from .sisa import AUTHORS_SEED


def user_groups(prepared, k: int, scheme: str = "authors") -> list[torch.Tensor]:
    r = prepared.index("retain")
    users = prepared.users[r]
    if scheme == "authors":
        order = list(dict.fromkeys(prepared.users[prepared.index("train")].tolist()))
        random.Random(AUTHORS_SEED).shuffle(order)
        kept = set(users.tolist())
        order = [u for u in order if u in kept]
        n = len(order)
        groups = [order[int(n * j / k) : int(n * (j + 1) / k)] for j in range(k)]
        return [r[torch.isin(users, torch.tensor(g, dtype=users.dtype))] for g in groups]
    uniq, counts = torch.unique(users, return_counts=True)
    load = [0] * k
    members: list[list[int]] = [[] for _ in range(k)]
    for j in sorted(range(len(uniq)), key=lambda j: (-int(counts[j]), int(uniq[j]))):
        g = min(range(k), key=lambda g: (load[g], g))
        load[g] += int(counts[j])
        members[g].append(int(uniq[j]))
    return [torch.sort(r[torch.isin(users, torch.tensor(m, dtype=users.dtype))]).values for m in members]


class ShardAttention(torch.nn.Module):
    def __init__(self, d_model: int, d_att: int = 32):
        super().__init__()
        self.proj = torch.nn.Linear(d_model, d_att)
        self.q = torch.nn.Parameter(torch.zeros(d_att))  # zero: starts as the mean

    def forward(self, h):  # (K, ..., d) -> weights (K, ...) summing to 1 over K
        return torch.softmax(torch.tanh(self.proj(h.float())) @ self.q, dim=0)


@torch.no_grad()
def _features(bb, models, seqs, idx, batch_size=64):
    """Per shard: last hidden state and [No, Yes] logits at the answer position, for `idx`."""
    hs, ls = [], []
    dev = next(models[0].parameters()).device
    for s in range(0, len(idx), batch_size):
        chunk = idx[s : s + batch_size].tolist()
        ids, mask = pad([seqs[i] for i in chunk], bb.pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        h_k, l_k = [], []
        for m in models:
            lg, h = answer_logits(bb, m, ids, mask, hidden=True)
            h_k.append(h.cpu())
            l_k.append(yes_no(bb, lg).cpu())
        hs.append(torch.stack(h_k))
        ls.append(torch.stack(l_k))
    return torch.cat(hs, 1), torch.cat(ls, 1)


def train_attention(bb, models, seqs, idx, labels, epochs: int = 200, lr: float = 1e-2, seed: int = 42) -> ShardAttention:
    h, lg = _features(bb, models, seqs, idx.cpu())
    torch.manual_seed(seed)
    att = ShardAttention(h.shape[-1])
    opt = torch.optim.Adam(att.parameters(), lr=lr)
    y = labels[idx].cpu()
    for _ in range(epochs):  # full batch: the features are small
        a = att(h)
        loss = F.cross_entropy((a.unsqueeze(-1) * lg).sum(0).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.clear_autocast_cache()  # no stale bf16 copies of the updated weights (train.fit)
    return att.eval()


def run(job, cfg, cache_dir, k: int = 4, agg: str = "mean", scheme: str = "authors"):
    parts = user_groups(job.prepared, k, scheme)
    models, seconds, info = train_shards(job, parts, cfg, cache_dir, "RecEraser")
    att, extra = None, 0.0
    if agg == "attention":
        t0 = time.perf_counter()
        att = train_attention(models[0], [m.model for m in models], job.seqs, job.prepared.index("retain"), job.prepared.labels,
                              seed=job.seed).to(job.device)
        extra = time.perf_counter() - t0
    bb = dataclasses.replace(models[0], model=Ensemble([m.model for m in models], att).eval())
    n = sum(sum(p.numel() for p in m.model.parameters()) for m in models) + (sum(p.numel() for p in att.parameters()) if att else 0)
    return bb, dict(time_s=seconds + extra, aggregation=agg, aggregator_s=extra, shards=info, trainable_params=n)
