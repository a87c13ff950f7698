"""Metrics (DESIGN.md section 4; the authors' evaluate.py).

- AUC, ACC (p(yes) > 0.5), LogLoss of p(yes) = softmax([No, Yes] logits)[1] on test.
- "JSD" (the authors' symmetric KL): 0.5*KL(p||q) + 0.5*KL(q||p) with
  KL(a||b) = sum a * log((a + 1e-12) / (b + 1e-12)), p = the retrained model's
  full-vocabulary softmax at the answer position, q = the evaluated model's; mean over D_f.
- L2: ||p - q||_2 of the same distributions, mean over D_f.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .batching import pad
from .metrics import binary_log_loss, roc_auc  # noqa: F401 (roc_auc: part of this module's interface)
from .models.scoring import answer_logits, yes_no_rows

EPS = 1e-12


@torch.no_grad()
def predict_logits(bb, model, seqs: list[torch.Tensor], idx: torch.Tensor, batch_size: int = 64,
                   device: str = "cpu", full: bool = False, desc: str | None = None, boundary=None) -> torch.Tensor:
    """Answer-position logits for samples `idx`: (N, V) if full else (N, 2) [No, Yes].
    `boundary` = (BoundaryTable, Scope): start from those cached states (models/boundary.py)."""
    import contextlib
    import sys

    from tqdm.auto import tqdm

    from . import dist

    model.eval()
    order = sorted(idx.tolist(), key=lambda i: len(seqs[i]))  # length-sorted: less padding
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    quiet = desc is None or len(chunks) < 50 or not dist.is_main()
    bar = tqdm(total=len(chunks), desc=desc, disable=quiet, leave=False, mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def one(k):  # under torchrun each rank runs every N-th batch (dist.gather_batches)
        chunk = chunks[k]
        ids, mask = pad([seqs[i] for i in chunk], bb.pad_id)
        ctx = contextlib.nullcontext()
        if boundary is not None:
            from .models.boundary import from_states

            ctx = from_states(bb, model, boundary[0].gather(torch.tensor(chunk), ids.shape[1]), boundary[1])
        with ctx:
            lg = answer_logits(bb, model, ids.to(device), mask.to(device), rows=None if full else yes_no_rows(bb)).float()
        bar.update(dist.world())
        return lg

    lg = dist.gather_batches([len(c) for c in chunks], one).cpu() if chunks else torch.empty(0, 0)
    bar.close()
    # rows are in `order`; bring them back to the order of `idx`
    pos = {i: k for k, i in enumerate(order)}
    return lg[torch.tensor([pos[i] for i in idx.tolist()], dtype=torch.long)]


def p_yes(yes_no_logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(yes_no_logits.double(), -1)[:, 1].numpy()


def ctr_metrics(labels, prob) -> dict:
    labels = np.asarray(labels)
    prob = np.asarray(prob, dtype=np.float64)
    return dict(auc=roc_auc(labels, prob), acc=float(np.mean((prob > 0.5) == (labels == 1))),
                logloss=binary_log_loss(labels, prob))


def jsd_l2(p_logits: torch.Tensor | None, q_logits: torch.Tensor) -> dict:
    """The authors' "JSD" and L2 between two (N, V) logit tensors (p = retrained; None: no
    Retrain, both None)."""
    if p_logits is None:
        return dict(jsd=None, l2=None)
    p = torch.softmax(p_logits.double(), -1)
    q = torch.softmax(q_logits.double(), -1)
    kl_pq = (p * torch.log((p + EPS) / (q + EPS))).sum(-1)
    kl_qp = (q * torch.log((q + EPS) / (p + EPS))).sum(-1)
    return dict(jsd=float((0.5 * kl_pq + 0.5 * kl_qp).mean()), l2=float(torch.linalg.vector_norm(p - q, dim=-1).mean()))


class Evaluator:
    """A model's test metrics and its D_f answer distribution (against Retrain's: JSD, L2),
    with the per-sample losses the audit needs, and the seconds each evaluation took.

    `ev(bb, name) -> (metrics, (|D_f|, V) logits)`; `ev.losses[name] = (D_f losses,
    non-member losses)`. The non-members are the audit part of D_h (train-period samples of
    held-out users; calibrate.py reads the calibration part) when the data has a holdout, else the test samples (`ev.nonmembers` says which). In the
    shilling scenario the metrics carry the attack's effect: the targets' mean p(yes) over every
    real test user (`target_p_yes`: the probes, each user's latest test prompt asked about each
    target), on the real test samples that are about a target (`target_p_yes_test`) and on D_f
    (`target_p_yes_forget`)."""

    CACHED = ("Original", "Retrain")  # the references: the same predictions in every request or rerun against them
    CACHE_MAX_BYTES = 256 * 2**20  # D_f's full-vocabulary logits beyond this are recomputed, not stored

    def __init__(self, job, cache_dir=None):
        self.job = job
        prep = job.prepared
        self.test_idx, self.forget_idx = prep.index("test"), prep.index("forget_all")
        self.test_labels, self.forget_labels = prep.labels[self.test_idx].numpy(), prep.labels[self.forget_idx].numpy()
        self.holdout_idx = prep.index("holdout")
        self.nonmembers = "holdout" if len(self.holdout_idx) else "test"
        self.holdout_labels = prep.labels[self.holdout_idx].numpy()
        # D_h is predicted whole (one cached part); the audit reads its audit users only (the
        # calibration part, prepare.calib_users, is calibrate.py's)
        self.audit_pos = torch.isin(self.holdout_idx, prep.index("audit")).numpy()
        # the users of the audit's rows (its bootstrap resamples users): D_f's, the non-members'
        nonmember_users = prep.users[self.holdout_idx][torch.from_numpy(self.audit_pos)] if self.nonmembers == "holdout" \
            else prep.users[self.test_idx]
        self.groups = (prep.users[self.forget_idx].numpy(), nonmember_users.numpy())
        # the rows of ev.losses[name]: (D_f's, the non-members')
        self.audit_rows = (self.forget_idx, self.holdout_idx[torch.from_numpy(self.audit_pos)] if self.nonmembers == "holdout"
                           else self.test_idx)
        targets = (prep.manifest.get("scenario") or {}).get("targets")
        self.targets = None
        if targets:
            t = torch.tensor(targets)
            self.targets = (torch.isin(prep.items[self.test_idx], t).numpy(), torch.isin(prep.items[self.forget_idx], t).numpy())
        self.losses: dict = {}
        self.seconds: dict = {}
        self.held_out: dict = {}  # a reference's [No, Yes] logits on D_h, kept (held_out_answers)
        # cache_dir: the references' predictions are kept there, keyed by the model's fingerprint,
        # the prepared data, each part's rows, the dtype and the batch size (evaluate.cache_key)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.from_cache: set = set()  # the names whose predictions were all read back
        self.parts_from_cache: dict = {}  # name -> the parts (test, forget_full, holdout) read back

    def _parts(self):
        """(part name, rows, full vocabulary) of one evaluation: test (the same in every request
        against a model), D_f (full vocabulary: JSD, L2) and D_h (when the data has a holdout)."""
        parts = [("test", self.test_idx, False), ("forget_full", self.forget_idx, True)]
        return parts + ([("holdout", self.holdout_idx, False)] if self.nonmembers == "holdout" else [])

    def predict_part(self, bb, idx, full: bool, states=None):
        """`states` (a BoundarySource: a cached boundary's student, or the Original of a request
        on one): the model runs from the frozen part's states, test's and D_h's read back from the
        store when an earlier run on the same model left them; None: a full forward."""
        job = self.job
        if states is None or not len(idx):
            return predict_logits(bb, bb.model, job.seqs, idx, job.eval_batch_size, job.device, full=full)
        bs = max(job.eval_batch_size, 32)  # a decoder step: wider batches pay (as the teacher cache)
        return predict_logits(bb, bb.model, job.seqs, idx, bs, job.device, full=full, boundary=states.covering(idx))

    def cache_key(self, bb, part: str, idx) -> str:
        """One part's key: the model's fingerprint, the prepared data, the part's rows, the dtype,
        the batch size and the device. Parts are keyed apart, so a later request with another D_f
        reads the test predictions back."""
        import hashlib

        from .files import json_key

        job = self.job
        blob = dict(model=bb.fingerprint(), data=job.prepared.manifest["content_hash"], part=part,
                    rows=hashlib.sha256(idx.numpy().tobytes()).hexdigest(), dtype=job.dtype, batch=job.eval_batch_size,
                    device=torch.device(job.device).type, version=2)
        return json_key(blob)

    def _predict_cached(self, bb, name: str, states=None):
        from .files import load_safetensors, save_safetensors_atomic

        got = {}
        for part, idx, full in self._parts():
            if self.cache_dir is None or name not in self.CACHED:
                got[part] = self.predict_part(bb, idx, full, states)
                continue
            path = self.cache_dir / "predictions" / f"{name.lower()}-{part}-{self.cache_key(bb, part, idx)}.safetensors"
            if path.is_file():
                try:
                    got[part] = load_safetensors(path)["logits"]
                    self.parts_from_cache.setdefault(name, []).append(part)
                    continue
                except Exception:  # a damaged file: computed again and rewritten
                    pass
            got[part] = t = self.predict_part(bb, idx, full, states)
            if t.numel() * t.element_size() <= self.CACHE_MAX_BYTES:
                save_safetensors_atomic(dict(logits=t), path)
        if len(self.parts_from_cache.get(name, [])) == len(got):
            self.from_cache.add(name)
        return got["test"], got["forget_full"], got.get("holdout")

    def held_out_answers(self, name: str, idx: torch.Tensor):
        """The [No, Yes] logits reference `name` (the Original) gave the held-out rows `idx` when it
        was evaluated: the calibration users' answers without another forward pass. None where it
        was not evaluated or a row is not in D_h."""
        h = self.held_out.get(name)
        if h is None:
            return None
        pos = torch.searchsorted(self.holdout_idx, idx)  # (D_h's rows are sorted: Prepared.index)
        if len(idx) and (pos.max() >= len(self.holdout_idx) or not torch.equal(self.holdout_idx[pos], idx)):
            return None
        return h[pos]

    def probe_p_yes(self, bb) -> float | None:
        """The targets' mean p(yes) over the probes (None without probes). The whole model runs
        (a cached boundary's student too: its LoRA sits in the model)."""
        job = self.job
        if not job.prepared.probes:
            return None
        seqs = job.prepared.probe_tokens(bb.tokenizer, bb.tokenizer_key(), suffix=bb.suffix)
        lg = predict_logits(bb, bb.model, seqs, torch.arange(len(seqs)), job.eval_batch_size, job.device)
        return float(p_yes(lg).mean())

    def item_separation(self, bb) -> dict:
        """How much a model's answer depends on which item it is asked about, for a fixed user
        (Prepared.item_swaps: test users x popular items, the whole model): `item_spread`, the
        mean over users of the standard deviation of p(yes) over the items; `item_rate_corr`,
        the Spearman correlation over the items of their mean p(yes) with their positive rate in
        D_r (does the model attach the right preference to an item)."""
        from scipy.stats import spearmanr

        job = self.job
        sw = job.prepared.item_swaps()
        if len(sw["items"]) < 3 or not sw["users"]:
            return dict(item_spread=None, item_rate_corr=None)
        enc = bb.tokenizer([t + bb.suffix for t in sw["prompts"]], truncation=True, max_length=512)["input_ids"]
        seqs = [torch.tensor(e, dtype=torch.int64) for e in enc]
        p = p_yes(predict_logits(bb, bb.model, seqs, torch.arange(len(seqs)), job.eval_batch_size, job.device))
        p = p.reshape(len(sw["users"]), len(sw["items"]))
        corr = spearmanr(p.mean(0), sw["rate"]).statistic
        return dict(item_spread=float(p.std(1).mean()), item_rate_corr=None if np.isnan(corr) else float(corr))

    def __call__(self, bb, name: str, states=None):
        """`states`: the BoundarySource the model runs from (a cached boundary's student, the
        Original of a request on one: methods/states.py); None: full forwards."""
        import time

        from .audit import answer_losses
        from .models.scoring import yes_no

        t0 = time.perf_counter()
        yn, full, h_yn = self._predict_cached(bb, name, states)
        if name in self.CACHED and h_yn is not None:
            self.held_out[name] = h_yn
        f_yn = yes_no(bb, full)
        unseen = answer_losses(h_yn, self.holdout_labels)[self.audit_pos] if self.nonmembers == "holdout" \
            else answer_losses(yn, self.test_labels)
        self.losses[name] = (answer_losses(f_yn, self.forget_labels), unseen)
        py = p_yes(yn)
        m = ctr_metrics(self.test_labels, py)
        if self.job.extras.get("item_separation"):
            m |= self.item_separation(bb)
        if self.targets is not None:
            te, fo = self.targets
            m["target_p_yes"] = self.probe_p_yes(bb)
            m["target_p_yes_test"] = float(py[te].mean()) if te.any() else None
            m["target_p_yes_forget"] = float(p_yes(f_yn)[fo].mean()) if fo.any() else None
        self.seconds[name] = time.perf_counter() - t0
        return m, full
