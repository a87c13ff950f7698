"""What every method needs: the job context and a full fine-tune with the LM loss."""

from __future__ import annotations

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
    res = fit(bb.model, lambda e: batcher.epoch(train_idx, e), step, cfg, valid=valid, ckpt=ckpt, desc=desc,
              progress=job.progress, train_mode=train_mode)
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


def add_baseline_arguments(ap):
    g = ap.add_argument_group("baselines (NegGrad, NegKL, Bad-T: full fine-tunes of Original; SISA, RecEraser: shards)")
    g.add_argument("--baseline-steps", type=int, default=200,
                   help="steps of NegGrad / NegKL / Bad-T (each step one D_r and one D_f batch, as in the authors' code; "
                   "200 keeps the default job within 15 minutes on 2 CPU cores)")
    g.add_argument("--baseline-lr", type=float, default=1e-4,
                   help="their AdamW learning rate (the authors: 5e-5, a tenth of their training lr; ours is a tenth of --lr)")
    g.add_argument("--neg-weight", type=float, default=0.5,
                   help="w of the D_f term in NegGrad (CE_r - w CE_f), NegKL (KL_r - w KL_f) and Bad-T (CE_r + w CE_f~); "
                   "the authors' scripts pass 0.2 (--authors-settings)")
    g.add_argument("--shards", type=int, default=4, help="SISA / RecEraser shards")
    g.add_argument("--shard-scheme", default="authors", choices=["authors", "balanced"],
                   help="authors: SISA shards drawn by np.random.seed(42) choice over the kept samples, RecEraser groups as "
                   "equal slices of the seed-42-shuffled retained users (the authors' split_ml-1m.ipynb); balanced: equal "
                   "random SISA shards (--seed) and RecEraser groups balanced by sample count")
    g.add_argument("--receraser-agg", default="mean", choices=["mean", "attention"],
                   help="RecEraser aggregation: the mean of the shards' logits (the authors' code) or the RecEraser paper's "
                   "learned attention over the shards")


def unlearn_full(job: Job, orig: Backbone, args, loss_fn, desc: str, resume=None) -> tuple[Backbone, dict]:
    """A full fine-tune of a copy of Original on the paired D_r / D_f schedule.

    `loss_fn(bb, rb, fb) -> {term: tensor, "loss": tensor}`; returns (model, info)."""
    from ..train import DivergedError
    from .e2urec import AUTHORS_BASELINE_STEPS, optimizer_settings

    steps = AUTHORS_BASELINE_STEPS[desc] if getattr(args, "_authors", False) else args.baseline_steps
    if steps < 1:
        raise UserError("--baseline-steps must be at least 1")
    bb = orig.clone()
    for p in bb.model.parameters():
        p.requires_grad_(True)
    torch.manual_seed(job.seed + 5)
    cfg = TrainConfig(lr=args.baseline_lr, batch_size=job.batch_size, epochs=1, max_steps=steps, **optimizer_settings(args))

    def step(batch):
        _, rb, fb = batch
        return loss_fn(bb, rb, fb)["loss"], len(rb) + len(fb)

    info = dict(trainable_params=n_params(bb.model))
    try:
        res = fit(bb.model, lambda e: paired_batches(job, 0, steps, job.bucket), step, cfg, desc=desc,
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


def train_shards(job: Job, shards: list[torch.Tensor], cfg: TrainConfig, cache_dir, name: str):
    """One full fine-tune of the pretrained backbone per shard (cached like Retrain); returns
    (models, seconds summed over the shards, info)."""
    from .retrain import train_on

    models, total, info = [], 0.0, []
    for k, idx in enumerate(shards):
        if len(idx) == 0:
            raise UserError(f"{name}: shard {k} is empty after removing D_f; use fewer --shards")
        bb, s, inf = train_on(job, f"{name.lower()}{k}", cfg, cache_dir, f"{name}-shard{k}", idx=idx)
        models.append(bb)
        total += s
        info.append(dict(samples=len(idx), seconds=s) | inf)
    return models, total, info
