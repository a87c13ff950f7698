"""Batching and the two forward passes every method uses, for three backbone families.

- `answer_logits`: logits over the vocabulary at the answer position.
  * encoder-decoder (T5, BART): the decoder runs only over the prefix that leads to
    the answer (one step for T5);
  * decoder-only (`causal`): the position of the prompt's last real token (right
    padding), through the LM head for those rows only;
  * encoder-only (`masked`): the prompt ends with a mask slot; its hidden state times
    the tied word embeddings plus a bias (see `MaskedScorer`).
- `lm_loss`: the cross-entropy of the whole target ("Yes." / "No." + specials),
  teacher-forced, as in the authors' training code (for `masked`: the answer word at
  the slot). `full_logits` gives its (B, T, V) logits and (B, T) targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batching import pad
from ..precision import fp32_linear, row_index
from .backbone import Backbone

ENC_DEC = ("t5", "bart")


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


def _rows(ids: torch.Tensor) -> torch.Tensor:
    return torch.arange(ids.shape[0], device=ids.device)


def head_rows(head: torch.nn.Module, h: torch.Tensor, rows: list[int] | None) -> torch.Tensor:
    """`head(h)` in fp32, or only its output rows `rows`: `h @ W[rows].T (+ b[rows])`, the
    two-row Yes/No head instead of the (d, V) product. A head that is not a plain Linear
    (an 8-bit one) runs as it is and the columns are gathered."""
    if type(head) is not torch.nn.Linear:
        lg = head(h)
        return lg if rows is None else lg.index_select(-1, row_index(rows, lg.device))
    if rows is None:
        return fp32_linear(h, head.weight, head.bias)
    ix = row_index(rows, head.weight.device)
    return fp32_linear(h, head.weight.index_select(0, ix), None if head.bias is None else head.bias.index_select(0, ix))


def _causal_at(model, ids, mask, pos, hidden: bool, rows=None):
    """LM-head logits of a causal LM at positions `pos` ((B,) or (B, T)) only."""
    base = getattr(model, model.base_model_prefix)
    h = base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    r = _rows(ids) if pos.dim() == 1 else _rows(ids)[:, None]
    h = h[r, pos]
    lg = head_rows(model.get_output_embeddings(), h, rows)
    return (lg, h) if hidden else lg


def _enc_dec_answer(bb: Backbone, model, ids, mask, rows, hidden: bool):
    """Encoder-decoder logits at the answer position (only the output rows `rows` when
    given): the decoder's last state through the LM head (T5: scaled by d_model^-0.5 when
    the config says so; BART: plus `final_logits_bias`), as the models' own forward does,
    but with the head in fp32 and never wider than needed."""
    dec = bb.prefix.to(ids.device).expand(ids.shape[0], -1)
    if bb.family == "t5":
        enc = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        h = model.get_decoder()(input_ids=dec, encoder_hidden_states=enc, encoder_attention_mask=mask,
                                use_cache=False).last_hidden_state[:, -1]
        hs = h * model.model_dim**-0.5 if getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings) else h
        lg = head_rows(model.lm_head, hs, rows)
    else:
        h = model.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False).last_hidden_state[:, -1]
        bias = model.final_logits_bias[0]
        bias = bias if rows is None else bias.index_select(0, row_index(rows, bias.device))
        lg = head_rows(model.lm_head, h, rows) + bias.float()
    return (lg, h) if hidden else lg


def answer_logits(bb: Backbone, model, ids: torch.Tensor, mask: torch.Tensor, hidden: bool = False,
                  rows: list[int] | None = None):
    """(B, V) logits at the answer position; with hidden=True also the (B, d) last hidden
    state there. `rows` (e.g. `yes_no_rows(bb)`): only those vocabulary rows, (B, len(rows)),
    through the same rows of the output embedding (the full (d, V) head is never formed).
    The head runs in fp32 (`fp32_linear`) even under bf16 autocast.
    A model with its own `answer_logits` (an ensemble) is asked directly."""
    if hasattr(model, "answer_logits"):
        return model.answer_logits(bb, ids, mask, hidden, rows=rows)
    if bb.family in ENC_DEC:
        return _enc_dec_answer(bb, model, ids, mask, rows, hidden)
    if bb.family == "causal":
        return _causal_at(model, ids, mask, mask.sum(1) - 1, hidden, rows)
    return model.slot_logits(ids, mask, bb.mask_id, hidden, rows=rows)


def yes_no_rows(bb: Backbone) -> list[int]:
    """The vocabulary rows of [No, Yes] (the order of `yes_no`)."""
    return [bb.no_id, bb.yes_id]


def yes_no(bb: Backbone, logits: torch.Tensor) -> torch.Tensor:
    """(B, 2) [No, Yes] logits from (B, V) logits."""
    return logits.index_select(-1, row_index(yes_no_rows(bb), logits.device))


def full_logits(bb: Backbone, model, ids, mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V) teacher-forced logits over the whole target and the (B, T) targets (-100: padding)."""
    if bb.family in ENC_DEC:
        dec, tgt = decoder_inputs(bb, labels)
        dec, tgt = dec.to(ids.device), tgt.to(ids.device)
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False)
        return out.logits, tgt
    if bb.family == "masked":
        tgt = torch.where(labels.to(ids.device) == 1, bb.yes_id, bb.no_id)[:, None]
        return answer_logits(bb, model, ids, mask)[:, None], tgt
    # causal: append each row's target right after its last real token and read the
    # logits one position earlier than each target token
    tgt = target_batch(bb, labels).to(ids.device)
    B, T = tgt.shape
    pos = mask.sum(1, keepdim=True) + torch.arange(T, device=ids.device)  # (B, T)
    valid = tgt != -100
    ids2 = torch.cat([ids, ids.new_full((B, T), bb.pad_id)], 1).scatter(1, pos, torch.where(valid, tgt, bb.pad_id))
    mask2 = torch.cat([mask, mask.new_zeros((B, T))], 1).scatter(1, pos, valid.to(mask.dtype))
    return _causal_at(model, ids2, mask2, pos - 1, False), tgt


def lm_loss(bb: Backbone, model, ids, mask, labels) -> torch.Tensor:
    logits, tgt = full_logits(bb, model, ids, mask, labels)
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100)
