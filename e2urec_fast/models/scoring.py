"""Batching and the two forward passes every method uses.

- `answer_logits`: logits over the vocabulary at the answer position, running the
  decoder only over the prefix that leads there (one step for T5).
- `lm_loss`: the usual cross-entropy of the whole target ("Yes." / "No." + specials),
  teacher-forced, as in the authors' training code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbone import Backbone


def pad(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors into (B, L) ids and a (B, L) attention mask."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def target_batch(bb: Backbone, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) target ids for 0/1 labels, padding positions set to -100."""
    tg = [bb.targets[int(y)] for y in labels.tolist()]
    ids, mask = pad(tg, bb.pad_id)
    return ids.masked_fill(mask == 0, -100)


def decoder_inputs(bb: Backbone, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forced decoder inputs: targets shifted right behind decoder_start."""
    tgt = target_batch(bb, labels)
    start = torch.full((tgt.shape[0], 1), bb.prefix[0].item(), dtype=torch.long)
    return torch.cat([start, tgt[:, :-1].masked_fill(tgt[:, :-1] == -100, bb.pad_id)], 1), tgt


def answer_logits(bb: Backbone, model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, V) logits at the answer position; the decoder runs only over the prefix."""
    dec = bb.prefix.to(ids.device).expand(ids.shape[0], -1)
    out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False)
    return out.logits[:, -1]


def yes_no(bb: Backbone, logits: torch.Tensor) -> torch.Tensor:
    """(B, 2) [No, Yes] logits from (B, V) logits."""
    return logits[:, [bb.no_id, bb.yes_id]]


def full_logits(bb: Backbone, model, ids, mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V) teacher-forced logits over the whole target and the (B, T) targets."""
    dec, tgt = decoder_inputs(bb, labels)
    dec, tgt = dec.to(ids.device), tgt.to(ids.device)
    out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False)
    return out.logits, tgt


def lm_loss(bb: Backbone, model, ids, mask, labels) -> torch.Tensor:
    logits, tgt = full_logits(bb, model, ids, mask, labels)
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100)
