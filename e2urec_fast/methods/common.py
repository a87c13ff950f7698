"""What every method needs: the job context and a full fine-tune with the LM loss."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..batching import Batcher
from ..data.prepare import Prepared
from ..errors import UserError
from ..models.backbone import Backbone, load_backbone
from ..models.scoring import lm_loss
from ..train import TrainConfig, TrainResult, fit


@dataclass
class Job:
    """One unlearning job: data, backbone folder, settings shared by all methods."""

    prepared: Prepared
    backbone_dir: Path
    out: Path
    device: str = "cpu"
    seed: int = 42
    batch_size: int = 16
    eval_batch_size: int = 0  # 0: 8 on the CPU (measured fastest for T5 there), 64 on a GPU
    bucket: bool = True
    progress: bool = True
    dtype: str = "fp32"  # "fp32" or "bf16" (precision.py); the caller runs the job under precision.autocast
    extras: dict = field(default_factory=dict)
    _bb: Backbone | None = None

    def __post_init__(self):
        if not self.eval_batch_size:
            self.eval_batch_size = 8 if self.device == "cpu" else 64

    def backbone(self) -> Backbone:
        """The pretrained backbone (loaded once; callers get a deep copy of the model)."""
        if self._bb is None:
            self._bb = load_backbone(self.backbone_dir, self.device)
        return self._bb

    def fresh(self) -> Backbone:
        return self.backbone().clone()

    def with_weights(self, state: dict) -> Backbone:
        bb = self.fresh()
        bb.model.load_state_dict(state, strict=False)
        return bb

    @property
    def seqs(self) -> list[torch.Tensor]:
        bb = self.backbone()
        return self.prepared.tokens(bb.tokenizer, bb.tokenizer_key(), suffix=bb.suffix)

    def batcher(self, batch_size: int | None = None, bucket: bool | None = None, seed: int | None = None) -> Batcher:
        return Batcher(self.seqs, self.prepared.labels, self.backbone().pad_id, batch_size or self.batch_size,
                       bucket=self.bucket if bucket is None else bucket, seed=self.seed if seed is None else seed,
                       device=self.device)


@torch.no_grad()
def mean_lm_loss(job: Job, bb: Backbone, idx: torch.Tensor) -> float:
    bb.model.eval()
    b = job.batcher(job.eval_batch_size, bucket=True)
    tot, n = 0.0, 0
    for batch in b.epoch(idx, 0, shuffle=False):
        tot += float(lm_loss(bb, bb.model, batch.ids, batch.mask, batch.labels)) * len(batch)
        n += len(batch)
    return tot / max(n, 1)


def finetune(job: Job, bb: Backbone, train_idx: torch.Tensor, cfg: TrainConfig, desc: str,
             valid_idx: torch.Tensor | None = None, ckpt=None, full: bool = True, train_mode=None,
             boundary=None) -> TrainResult:
    """Fine-tune on the answer cross-entropy (Original, Retrain, augment): every weight when
    `full`, else only the parameters that already require grad (an injected adapter).
    `boundary` = (BoundaryTable, Scope): each batch starts from its cached states (an
    adapter above them; models/boundary.py)."""
    if full:
        for p in bb.model.parameters():
            p.requires_grad_(True)
    batcher = job.batcher(cfg.batch_size)

    def step(batch):
        if boundary is None:
            return lm_loss(bb, bb.model, batch.ids, batch.mask, batch.labels), len(batch)
        from ..models.boundary import from_states

        with from_states(bb, bb.model, boundary[0].gather(batch.idx, batch.ids.shape[1]), boundary[1]):
            return lm_loss(bb, bb.model, batch.ids, batch.mask, batch.labels), len(batch)

    valid = (lambda: mean_lm_loss(job, bb, valid_idx)) if valid_idx is not None else None
    if cfg.max_steps is None and cfg.epochs <= 0:
        raise ValueError("epochs must be positive")
    if cfg.schedule != "constant" and cfg.max_steps is None and cfg.total_steps is None:
        from dataclasses import replace

        cfg = replace(cfg, total_steps=cfg.epochs * len(batcher.order(train_idx, 0)))
    rows = None
    if cfg.row_lr != 1.0 or cfg.row_zero:  # --item-lr, --item-init: the item tokens' embedding rows
        from ..models.backbone import item_token_rows

        ids = item_token_rows(bb.tokenizer)
        if not len(ids):
            raise UserError(f"{bb.folder}: --item-lr/--item-init need item tokens (<item_ID>) in the tokenizer (--item-tokens)")
        w = bb.model.get_input_embeddings().weight
        rows = (w, ids.to(w.device))
        if cfg.row_zero:
            with torch.no_grad():
                w[rows[1]] = 0.0
    res = fit(bb.model, lambda e: batcher.epoch(train_idx, e), step, cfg, valid=valid, ckpt=ckpt, desc=desc,
              progress=job.progress, train_mode=train_mode, scaled_rows=rows if cfg.row_lr != 1.0 else None)
    for p in bb.model.parameters():
        p.requires_grad_(False)
    return res


def n_params(model: torch.nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _epoch(b: Batcher, idx: list[int], e: int, index_only: bool):
    return (torch.tensor(c) for c in b.order(idx, e)) if index_only else b.epoch(idx, e)


def paired_batches(job: Job, forget_steps: int, total: int, bucket: bool, retain: bool = True, index_only: bool = False):
    """The authors' unlearning schedule: ('f', None, D_f batch) for `forget_steps` steps, then
    ('j', D_r batch, D_f batch) from zip(retain, forget) (which stops at the shorter loader; a
    new epoch of both follows), `total` steps in all. retain=False: D_f batches only
    throughout. index_only: sample-index tensors instead of batches (what a run will visit)."""
    b = job.batcher(bucket=bucket)
    f_idx, r_idx = job.prepared.index("forget").tolist(), job.prepared.index("retain").tolist()  # host lists, read once
    step, ep = 0, 0
    first = forget_steps if retain else total
    while step < first:
        for fb in _epoch(b, f_idx, ep, index_only):
            if step >= first:
                break
            yield ("f", None, fb)
            step += 1
        ep += 1
    ep_r = 0
    while step < total:
        for rb, fb in zip(_epoch(b, r_idx, ep_r + 1000, index_only), _epoch(b, f_idx, ep, index_only)):
            if step >= total:
                break
            yield ("j", rb, fb)
            step += 1
        ep, ep_r = ep + 1, ep_r + 1


def retain_batches(job: Job, total: int, bucket: bool, index_only: bool = False):
    """('r', D_r batch, None), `total` steps (E2URec without the forgetting loss)."""
    b = job.batcher(bucket=bucket)
    r_idx = job.prepared.index("retain").tolist()
    step, ep = 0, 1000
    while step < total:
        for rb in _epoch(b, r_idx, ep, index_only):
            if step >= total:
                break
            yield ("r", rb, None)
            step += 1
        ep += 1


# ----------------------------------------------------------------- the unlearning schedules
@dataclass
class Schedule:
    forget_steps: int
    total: int


def schedule(n_forget: int, batch: int, forget_epochs: int, total: int, joint: bool = True) -> Schedule:
    """Up to `forget_epochs` epochs of forget-only steps over D_f, then joint steps, `total` in
    all. With a joint phase (`joint`), only whole forget-only epochs that leave at least
    MIN_JOINT joint steps run (fewer where `total` is small, at least one): a large D_f under the
    default 10 epochs gets as many as fit. Where not even one epoch leaves a joint step the run
    would silently be E2URec without L_REM (at --paper-scale: ~812 forget-only steps per epoch
    against 300): refused, naming the numbers."""
    per = math.ceil(n_forget / batch)
    if not joint or forget_epochs == 0 or per == 0:
        return Schedule(min(total, forget_epochs * per), total)
    keep = min(MIN_JOINT, max(1, total - per))  # the joint steps left at least
    epochs = min(forget_epochs, max(0, total - keep) // per)
    if epochs == 0:
        raise UserError(f"--student-steps {total}: one forget-only epoch over |D_f| = {n_forget} (batch {batch}) takes "
                        f"{per} steps, leaving no joint step, so L_REM would never train; give --student-steps above {per} "
                        f"or --forget-epochs 0")
    return Schedule(epochs * per, total)


MIN_JOINT = 20  # the floor of joint steps of both schedules (a 1-sample D_f still gets its teachers' pull)


def sized_steps(n_forget: int, batch: int, forget_epochs: int, joint_epochs: int, cap: int) -> int:
    """The student's steps sized to D_f (the authors' shape): `forget_epochs` forget-only
    epochs over D_f, then `joint_epochs` epochs of joint steps over D_f (at least MIN_JOINT),
    at most `cap` steps in all (--student-steps; `schedule` refuses a cap the forget-only
    epochs fill)."""
    per_epoch = math.ceil(n_forget / batch)
    return min(forget_epochs * per_epoch + max(MIN_JOINT, joint_epochs * per_epoch), cap)


def student_batches(job: Job, sched: Schedule, bucket: bool, parts=("rem", "fgt"), index_only: bool = False):
    """('f', None, D_f batch) for the forget-only epochs, then ('j', D_r batch, D_f batch);
    the ablations: D_r batches only (without L_FGT), D_f batches only (without L_REM)."""
    if "fgt" not in parts:
        return retain_batches(job, sched.total, bucket, index_only)
    return paired_batches(job, sched.forget_steps, sched.total, bucket, retain="rem" in parts, index_only=index_only)


def visited(job: Job, sched: Schedule, bucket: bool, parts) -> tuple[torch.Tensor, torch.Tensor]:
    """The D_r and D_f samples the student's schedule will visit (the teacher cache needs no more)."""
    r, f = set(), set()
    for _, rb, fb in student_batches(job, sched, bucket, parts, index_only=True):
        r.update(rb.tolist() if rb is not None else ())
        f.update(fb.tolist() if fb is not None else ())
    return torch.tensor(sorted(r), dtype=torch.long), torch.tensor(sorted(f), dtype=torch.long)


def unlearn_full(job: Job, orig: Backbone, cfg, loss_fn, desc: str, resume=None, steps: int | None = None) -> tuple[Backbone, dict]:
    """A full fine-tune of a copy of Original on the paired D_r / D_f schedule (NegGrad,
    NegKL, Bad-T; `cfg`: the job's Config, its `baselines` group), `steps` steps (default
    baseline_steps).

    `loss_fn(bb, rb, fb) -> {term: tensor, "loss": tensor}`; returns (model, info)."""
    from ..train import DivergedError

    b = cfg.baselines
    steps = b.baseline_steps if steps is None else steps
    if steps < 1:
        raise UserError("--baseline-steps must be at least 1")
    bb = orig.clone()
    for p in bb.model.parameters():
        p.requires_grad_(True)
    torch.manual_seed(job.seed + 5)
    tc = TrainConfig(lr=b.baseline_lr, batch_size=job.batch_size, epochs=1, max_steps=steps, weight_decay=b.baseline_weight_decay,
                     grad_clip=b.baseline_grad_clip)

    def step(batch):
        _, rb, fb = batch
        return loss_fn(bb, rb, fb)["loss"], len(rb) + len(fb)

    info = dict(trainable_params=n_params(bb.model))
    try:
        res = fit(bb.model, lambda e: paired_batches(job, 0, steps, job.bucket), step, tc, desc=desc,
                  progress=job.progress, resume=resume)
        info |= dict(time_s=res.seconds, steps=res.steps, final_loss=res.loss_history[-1])
    except DivergedError as e:  # a baseline that diverges is a result, not a crash of the whole job
        info |= dict(diverged=str(e))
    for p in bb.model.parameters():
        p.requires_grad_(False)
    bb.model.eval()
    return bb, info


class Ensemble(torch.nn.Module):
    """Shard models behind one scorer: logits averaged (SISA, RecEraser in the authors'
    code) or weighted per sample by a learned attention over the shards' last hidden
    states at the answer position (the RecEraser paper's aggregation). `answer_logits`
    (which scoring.answer_logits defers to) works for every backbone family."""

    def __init__(self, models: list[torch.nn.Module], attention: torch.nn.Module | None = None):
        super().__init__()
        self.models = torch.nn.ModuleList(models)
        self.attention = attention

    def answer_logits(self, bb, ids, mask, hidden: bool = False, rows=None):
        from ..models.scoring import answer_logits

        outs = [answer_logits(bb, m, ids, mask, hidden=True, rows=rows) for m in self.models]
        logits = torch.stack([lg for lg, _ in outs])  # (K, B, V)
        states = torch.stack([h for _, h in outs])  # (K, B, d)
        lg = logits.mean(0) if self.attention is None else (self.attention(states).unsqueeze(-1) * logits).sum(0)
        return (lg, states.mean(0)) if hidden else lg
