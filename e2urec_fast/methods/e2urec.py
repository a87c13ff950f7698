"""E2URec: a LoRA student on the frozen Original, guided by two teachers.

    forgetting teacher on D_f:  v_f = v - alpha * relu(v_aug - v)
    L_FGT = KL(softmax(v_f) || student)                    on D_f
    L_REM = CE(answer) + KL(softmax(v) || student)         on D_r
    loss  = w * L_REM + (1 - w) * L_FGT   (w = --retain-weight; the authors' code: w = 0.6)

Schedule (authors' code): `--forget-epochs` epochs over D_f with L_FGT only, then
joint steps that zip a D_r batch with a D_f batch, up to `--student-steps` steps.

Two implementations:
- reference: mirrors the authors' code; teacher forward passes every step, the
  cross-entropy form of "KL" (-sum p log(q + 1e-12)) over the full vocabulary at every
  target position, the full target LM loss, random padded batches, fp32.
- fast: teacher logits cached once (safetensors), the student's decoder run only to
  the answer position, KL over the Yes/No pair there (or the full vocabulary with
  --kl-scope full) through the fused op, length-bucketed pre-tokenized batches, one
  forward over the D_r and D_f halves together, gradients only for LoRA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
from ..errors import UserError, load_safetensors, save_safetensors_atomic
from ..evaluate import predict_logits
from ..models.backbone import Backbone
from ..models.boundary import build_table, cached_boundary, check_scope, from_states, parse_scope, target_modules
from ..models.lora import DEFAULT_TARGETS, TASK_TYPE, LoraConfig, base_eval_mode, inject_lora, merge_and_unload, save_adapter
from ..models.quant import model_bytes, peak_rss_mib, quantize_8bit
from ..models.scoring import answer_logits, full_logits, yes_no, yes_no_rows
from ..precision import cache_tag, frozen_to_bf16
from ..teachers import cached_teachers
from ..train import Resume, TrainConfig, fit
from .common import Job, finetune, n_params, paired_batches, retain_batches

AUTHORS = dict(student_lr=1e-3, alpha=2.0, retain_weight=0.6, student_steps=1000, forget_epochs=1, aug_lr=5e-5, base_dropout=True,
               aug_dropout=True, kl_scope="full", no_bucketing=True, neg_weight=0.2, baseline_lr=5e-5, no_train_bucketing=True)
# with --authors-settings, also as the authors' scripts: AdamW's default weight decay 0.01 and
# no gradient clipping for every unlearning run (student, augmented model, baselines), and the
# baselines' steps of train_ga.sh / train_rl.sh (NegKL has no script there: NegGrad's)
AUTHORS_OPT = dict(weight_decay=0.01, grad_clip=None)
AUTHORS_BASELINE_STEPS = {"NegGrad": 3000, "Bad-T": 2400, "NegKL": 3000}


def optimizer_settings(args, default_clip: float | None = 1.0) -> dict:
    """weight_decay / grad_clip of an unlearning run: the authors' under --authors-settings."""
    return dict(AUTHORS_OPT) if getattr(args, "_authors", False) else dict(weight_decay=0.0, grad_clip=default_clip)


def add_arguments(ap):
    g = ap.add_argument_group("E2URec")
    g.add_argument("--impl", default="fast", choices=["fast", "reference", "both"],
                   help="fast path, the reference path that mirrors the authors' code, or both side by side")
    g.add_argument("--authors-settings", action="store_true",
                   help="the authors' hyper-parameters and objective: student lr 1e-3, alpha 2, retain weight 0.6, 1000 steps, "
                   "aug lr 5e-5 with dropout, full-vocabulary KL, random batches (every training run), AdamW weight decay 0.01 and no gradient "
                   "clipping; baselines: weight 0.2, lr 5e-5, 3000 steps (Bad-T 2400)")
    g.add_argument("--student-lr", type=float, default=1e-4, help="AdamW learning rate of the LoRA student")
    g.add_argument("--alpha", type=float, default=2.0, help="forgetting-teacher strength in v - alpha*relu(v_aug - v)")
    g.add_argument("--retain-weight", type=float, default=0.6,
                   help="w in w*(CE_r + KL_r) + (1-w)*KL_f (the authors' code weights the retain side with 0.6)")
    g.add_argument("--student-steps", type=int, default=300, help="student steps in all (forget-only epochs included)")
    g.add_argument("--forget-epochs", type=int, default=1, help="epochs over D_f with the forgetting loss only, first")
    g.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    g.add_argument("--lora-alpha", type=float, default=32, help="LoRA alpha (scaling alpha/r)")
    g.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout")
    g.add_argument("--aug-lr", type=float, default=1e-4, help="learning rate of the augmented model (Original fine-tuned on D_f)")
    g.add_argument("--aug-epochs", type=int, default=1, help="epochs of the augmented model over D_f")
    g.add_argument("--aug-mode", default="full", choices=["full", "lora"],
                   help="augmented model: full fine-tune (the authors' code) or a LoRA adapter merged into a copy")
    g.add_argument("--aug-dropout", action="store_true",
                   help="fast path: train the augmented model with dropout (the authors' code does; off by default: "
                   "it trains in eval mode, about twice as fast on the CPU)")
    g.add_argument("--kl-scope", default="yesno", choices=["yesno", "full"],
                   help="fast path: KL over the Yes/No pair or the full vocabulary at the answer position")
    g.add_argument("--lora-scope", default="all",
                   help="fast path: where the student's LoRA sits. all: every q/v projection (the authors' code); decoder "
                   "(t5, bart): the decoder only, the encoder's output computed once per sample and cached, each step runs "
                   "the decoder alone; top:K (causal, masked): the top K layers, the states entering them cached")
    g.add_argument("--boundary-max-gib", type=float, default=8.0,
                   help="cap on the cached boundary states of --lora-scope decoder / top:K (exit 2 above it)")
    g.add_argument("--kernel-backend", default="auto", choices=list(ops.BACKENDS), help="teacher-KL op backend")
    g.add_argument("--no-teacher-cache", action="store_true", help="fast path: teacher forward passes every step")
    g.add_argument("--no-bucketing", action="store_true", help="fast path: random padded batches")
    g.add_argument("--batch-fusion", default="auto", choices=["auto", "on", "off"],
                   help="fast path: the D_r and D_f halves of a step in one forward (on) or two (off); auto: on for a GPU, "
                   "off on the CPU (measured 1.3x faster there: the joint batch pads both halves to the longer one)")
    g.add_argument("--no-batch-fusion", action="store_true", help="same as --batch-fusion off")
    g.add_argument("--load-in-8bit", action="store_true",
                   help="the student's frozen base in bitsandbytes int8 (T5's wo and lm_head stay fp32); LoRA on top")
    g.add_argument("--compile", action="store_true", help="fast path: torch.compile the student's forward (dynamic shapes)")
    g.add_argument("--base-dropout", action="store_true",
                   help="fast path: keep the frozen base model's dropout active in the student (the authors' code does; "
                   "off by default: only the LoRA branches drop out, and attention runs in its fused kernel)")
    g.add_argument("--keep-artifacts", action="store_true",
                   help="keep the augmented model and the D_f teacher logits (derived from the forgotten data)")
    g.add_argument("--no-cache-rebuild", action="store_true", help="refuse a stale teacher cache instead of rebuilding it")
    g.add_argument("--checkpoint-every", type=int, default=50,
                   help="steps between resumable states of the unlearning runs (a killed run started again resumes there)")


def settings(args) -> dict:
    if args.authors_settings:
        for k, v in AUTHORS.items():
            setattr(args, k, v)
        args.authors_settings = False  # applied once
        args._authors = True
    keys = ["impl", "student_lr", "alpha", "retain_weight", "student_steps", "forget_epochs", "lora_r", "lora_alpha",
            "neg_weight", "baseline_lr", "baseline_steps",
            "lora_dropout", "lora_scope", "aug_lr", "aug_epochs", "aug_mode", "aug_dropout",
            "kl_scope", "kernel_backend", "no_teacher_cache", "no_bucketing",
            "no_batch_fusion", "batch_fusion", "base_dropout", "load_in_8bit", "compile", "keep_artifacts", "no_train_bucketing"]
    return {k: getattr(args, k) for k in keys} | {"authors_settings": getattr(args, "_authors", False)}


# ----------------------------------------------------------------- loss terms
def ce_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """The authors' "KL": -sum softmax(p) * log(softmax(q) + 1e-12), mean over rows."""
    p = torch.softmax(p_logits.float(), -1)  # in fp32 whatever the logits' dtype (--dtype bf16)
    q = torch.softmax(q_logits.float(), -1)
    return -(p * torch.log(q + 1e-12)).sum(-1).mean()


def reference_terms(student: Backbone, orig, aug, rb, fb, alpha: float, restrict: bool = False, rem=None) -> dict:
    """Loss terms as the authors compute them (teachers run here, every step).

    restrict=True keeps only the [No, Yes] logits at the answer position (the parity oracle
    for the fast path); else full vocabulary at every target position. `rem`: the
    remembering teacher on D_r when it is not `orig` (sequential requests).
    """

    def logits(model, b):
        lg, tgt = full_logits(student, model, b.ids, b.mask, b.labels)
        if restrict:
            return yes_no(student, lg[:, student.answer_pos]), tgt
        return lg, tgt

    out = {}
    if fb is not None:
        s_f, _ = logits(student.model, fb)
        with torch.no_grad():
            v, _ = logits(orig, fb)
            v_aug, _ = logits(aug, fb)
        out["kl_f"] = ce_kl(v - alpha * F.relu(v_aug - v), s_f)
    if rb is not None:
        s_r, tgt = logits(student.model, rb)
        with torch.no_grad():
            v_r, _ = logits(orig if rem is None else rem, rb)
        if restrict:
            out["ce_r"] = F.cross_entropy(s_r.float(), rb.labels)
        else:
            out["ce_r"] = F.cross_entropy(s_r.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100)
        out["kl_r"] = ce_kl(v_r, s_r)
    return out


def fast_terms(student: Backbone, tables: dict, rb, fb, alpha: float, scope: str = "yesno", backend: str = "auto",
               fuse: bool = True, boundary=None) -> dict:
    """Loss terms from cached teachers; one forward over D_r and D_f together when `fuse`.

    No host sync: the two right-padded halves are padded to one length on the device, the
    teacher rows are looked up by index, and with scope "yesno" the student's head is only
    the two [No, Yes] rows of the output embedding (`answer_logits(rows=...)`).
    `boundary` = (BoundaryTable, Scope): the student starts from the cached states of the
    batch's samples (its adapter sits above them: models/boundary.py)."""
    rows = yes_no_rows(student) if scope == "yesno" else None

    def head(b_ids, b_mask, b_idx):
        if boundary is None:
            return answer_logits(student, student.model, b_ids, b_mask, rows=rows)
        with from_states(student, student.model, boundary[0].gather(b_idx, b_ids.shape[1]), boundary[1]):
            return answer_logits(student, student.model, b_ids, b_mask, rows=rows)

    parts = [b for b in (rb, fb) if b is not None]
    if fuse and len(parts) == 2:
        L = max(rb.ids.shape[1], fb.ids.shape[1])
        ids = torch.cat([F.pad(b.ids, (0, L - b.ids.shape[1]), value=student.pad_id) for b in parts])
        mask = torch.cat([F.pad(b.mask, (0, L - b.mask.shape[1]), value=0) for b in parts])
        lg = head(ids, mask, torch.cat([rb.idx, fb.idx]))
        s_r, s_f = lg[: len(rb)], lg[len(rb) :]
    else:
        s_r = head(rb.ids, rb.mask, rb.idx) if rb is not None else None
        s_f = head(fb.ids, fb.mask, fb.idx) if fb is not None else None
    out = {}
    if fb is not None:
        out["kl_f"] = ops.teacher_kl(s_f, tables["orig_f"][fb.idx], tables["aug_f"][fb.idx], alpha, backend=backend)
    if rb is not None:
        yn = s_r if scope == "yesno" else yes_no(student, s_r)
        out["ce_r"] = F.cross_entropy(yn.float(), rb.labels)
        out["kl_r"] = ops.teacher_kl(s_r, tables["orig_r"][rb.idx], backend=backend)
    return out


def combine(terms: dict, w: float) -> torch.Tensor:
    """w * L_REM + (1 - w) * L_FGT; a step with only one side (the forget-only epochs, the
    ablations) is that side's loss alone."""
    if "ce_r" not in terms:
        return terms["kl_f"]
    rem = terms["ce_r"] + terms["kl_r"]
    if "kl_f" not in terms:
        return rem
    return w * rem + (1 - w) * terms["kl_f"]


def scope_conflicts(scope, args) -> None:
    """Refuse flags a cached boundary cannot go with (exit 2): checked by api.check before any
    work, and here for callers of `unlearn` itself."""
    if scope.cached and args.no_teacher_cache:
        raise UserError(f"--lora-scope {scope} caches the states below the adapter beside the teacher logits: "
                        "it cannot go with --no-teacher-cache")
    if scope.cached and getattr(args, "compile", False):
        raise UserError(f"--lora-scope {scope} does not go with --compile (the cached states change the forward every step)")


# ----------------------------------------------------------------- the method
@dataclass
class Schedule:
    forget_steps: int
    total: int


def schedule(n_forget: int, batch: int, forget_epochs: int, total: int, joint: bool = True) -> Schedule:
    """`forget_epochs` epochs of forget-only steps over D_f, then joint steps, `total` in all.
    A setting whose forget-only epochs take every step would silently run E2URec without
    L_REM (at --paper-scale: ~812 forget-only steps per epoch against 300): refused, naming
    the numbers, when the run has a joint phase (`joint`)."""
    forget_steps = forget_epochs * math.ceil(n_forget / batch)
    if joint and forget_steps >= total:
        raise UserError(f"--student-steps {total}: the {forget_epochs} forget-only epoch(s) over |D_f| = {n_forget} "
                        f"(batch {batch}) take {forget_steps} steps, leaving no joint step, so L_REM would never train; "
                        f"give --student-steps above {forget_steps} or fewer --forget-epochs")
    return Schedule(min(total, forget_steps), total)


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


def make_augmented(job: Job, orig: Backbone, args, dropout: bool = True, targets=None, boundary=None) -> tuple[Backbone, float]:
    """Original fine-tuned further on D_f (one epoch; the authors' finetune_aug.py). Without
    `dropout` (the fast path's default) the model trains in eval mode: no dropout masks, and
    attention runs in its fused kernel. With --aug-mode lora: an adapter on `targets` (default:
    every q/v), trained from the cached `boundary` states when given, merged and unloaded."""
    t0 = time.perf_counter()
    mode = None if dropout else (lambda m: m.eval())
    aug = orig.clone()
    torch.manual_seed(job.seed + 1)
    cfg = TrainConfig(lr=args.aug_lr, batch_size=job.batch_size, epochs=args.aug_epochs, **optimizer_settings(args))
    if getattr(args, "aug_mode", "full") == "lora":
        inject_lora(aug.model, LoraConfig(args.lora_r, args.lora_alpha, args.lora_dropout, targets or DEFAULT_TARGETS[orig.family]))
        finetune(job, aug, job.prepared.index("forget"), cfg, desc="augment (LoRA)", full=False, train_mode=mode, boundary=boundary)
        merge_and_unload(aug.model)
    else:
        finetune(job, aug, job.prepared.index("forget"), cfg, desc="augment", train_mode=mode)
    aug.model.eval()
    return aug, time.perf_counter() - t0


def run_key(job: Job, orig: Backbone, args, impl: str, parts) -> str:
    """What determines a student run: a saved state under another key is not resumed."""
    keys = {k: v for k, v in settings(args).items() if k not in ("keep_artifacts",)}
    blob = json.dumps(dict(orig=orig.fingerprint(), data=job.prepared.manifest["content_hash"],
                           forget=job.prepared.forget_key(), impl=impl, parts=sorted(parts),
                           seed=job.seed, batch=job.batch_size, bucket=job.bucket, s=keys)
                      | cache_tag(job.dtype), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def unlearn(job: Job, orig: Backbone, args, impl: str = "fast", aug: Backbone | None = None, parts=("rem", "fgt"),
            name: str = "e2urec", probe=None, rem: Backbone | None = None):
    """Run E2URec; returns (student backbone with its adapter, info dict).

    `aug` reuses an augmented model built earlier (sweeps); its time is then not counted.
    `parts` drops a loss for the ablations: ("rem",) is E2URec without L_FGT, ("fgt",)
    without L_REM. The run is resumable: its state and the augmented model live in
    `<out>/work/` until the caller removes the folder after the report is written.
    `probe(step, seconds, student)` runs after every step, outside the timings (benchmarks).
    `rem`: the remembering teacher on D_r when it is not `orig`: in a sequential request
    the student's base (and the forgetting teacher's v) is the previous request's model,
    while D_r is remembered from the first Original, whose cached logits are reused.
    """
    rem = orig if rem is None else rem
    if args.student_steps < 1:
        raise UserError("--student-steps must be at least 1")
    scope = check_scope(parse_scope(getattr(args, "lora_scope", "all")), orig)
    if impl != "fast":  # the reference path mirrors the authors' code: LoRA on every q/v
        scope = parse_scope("all")
    scope_conflicts(scope, args)
    stages = {}
    t_all = time.perf_counter()
    orig.model.eval()
    key = run_key(job, orig, args, impl, parts)
    work = job.out / "work"
    need_aug = "fgt" in parts
    aug_path = work / f"{name}-{impl}-augmented-{key}.safetensors"
    sched = schedule(len(job.prepared.index("forget")), job.batch_size, args.forget_epochs, args.student_steps,
                     joint="rem" in parts and "fgt" in parts)
    bucket = impl == "fast" and not args.no_bucketing
    cache_dir = job.out / "cache"
    n_total = len(job.prepared.labels)
    aug_lora = need_aug and getattr(args, "aug_mode", "full") == "lora"
    use_cache = impl == "fast" and not args.no_teacher_cache
    r_idx, f_idx = visited(job, sched, bucket, parts) if use_cache else (None, None)  # only the rows the schedule visits
    boundary, boundary_info, aug_targets, aug_train_bd = None, None, None, None
    if scope.cached:  # the frozen states below the adapter, once per sample the run visits
        t0 = time.perf_counter()
        need = [r_idx, f_idx] + ([job.prepared.index("forget")] if aug_lora else [])
        need = torch.unique(torch.cat(need))
        bfp = dict(orig=orig.fingerprint(), tok=orig.tokenizer_key(), data=job.prepared.manifest["content_hash"],
                   scope=str(scope), family=orig.family, prefix=orig.prefix.tolist()) | cache_tag(job.dtype)
        st_dtype = torch.bfloat16 if job.dtype == "bf16" else None

        def build(idx):
            return build_table(orig, orig.model, job.seqs, idx, scope, n_total, job.eval_batch_size, job.device, dtype=st_dtype,
                               max_gib=args.boundary_max_gib, desc=None if not job.progress else "boundary cache")

        table, bstatus = cached_boundary(cache_dir / "boundary.safetensors", bfp, build, need, n_total,
                                         rebuild=not args.no_cache_rebuild, device=job.device)
        boundary = (table, scope)
        boundary_info = dict(status=bstatus, scope=str(scope), rows=len(need), bytes=table.nbytes(),
                             seconds=time.perf_counter() - t0)
        if aug_lora:  # the augmented model's adapter above the same boundary, so its D_f states are these
            aug_targets = target_modules(orig, scope, DEFAULT_TARGETS[orig.family])
            aug_train_bd = boundary if orig.family != "causal" else None  # a causal LM loss reads the target's own states
    if not need_aug:
        stages["augment"] = 0.0
    elif aug is not None:
        stages["augment"] = 0.0
    elif _exists_everywhere(aug_path):  # a resumed run: the augmented model of the interrupted one
        t0 = time.perf_counter()
        aug = orig.clone()
        aug.model.load_state_dict(load_safetensors(aug_path), strict=True)
        aug.model.eval()
        stages["augment"] = time.perf_counter() - t0
    else:
        aug, stages["augment"] = make_augmented(job, orig, args, dropout=impl == "reference" or args.aug_dropout,
                                                targets=aug_targets, boundary=aug_train_bd)
        save_safetensors_atomic(aug.model.state_dict(), aug_path)

    # the student: the Original's weights, frozen, with a fresh adapter
    torch.manual_seed(job.seed + 2)
    student = orig.clone()
    student_bytes = {"fp32": model_bytes(student.model)}
    if getattr(args, "load_in_8bit", False):
        quantize_8bit(student.model)
        student_bytes["8bit"] = model_bytes(student.model)
    cfg = LoraConfig(args.lora_r, args.lora_alpha, args.lora_dropout, target_modules(orig, scope, DEFAULT_TARGETS[orig.family]))
    inject_lora(student.model, cfg)
    if job.dtype == "bf16":  # the frozen base in bf16, the adapter's fp32 master weights (precision.py)
        frozen_to_bf16(student.model)
        student_bytes["bf16"] = model_bytes(student.model)
    runner = student  # what the fast path's forward runs: the student, or its compiled twin
    if getattr(args, "compile", False) and impl == "fast":
        runner = dataclasses.replace(student, model=torch.compile(student.model, dynamic=True))

    cache_status = None
    fusion = "off" if args.no_batch_fusion else getattr(args, "batch_fusion", "auto")
    fuse = fusion == "on" or (fusion == "auto" and not str(job.device).startswith("cpu"))
    if use_cache:
        t0 = time.perf_counter()
        full = args.kl_scope == "full"
        prep = job.prepared
        seqs = job.seqs

        def logits_of(model, bd=None):  # from the cached boundary states when `bd` (the model's frozen part is the Original's)
            bs = job.eval_batch_size if bd is None else max(job.eval_batch_size, 32)  # a decoder step: wider batches pay (CPU: 1.7x)
            return lambda idx: predict_logits(orig, model, seqs, idx, bs, job.device, full=full,
                                              desc=None if not job.progress else "teacher cache", boundary=bd)

        base_fp = dict(orig=orig.fingerprint(), tok=orig.tokenizer_key(), data=prep.manifest["content_hash"],
                       scope=args.kl_scope, prefix=orig.prefix.tolist()) | cache_tag(job.dtype)
        tables, cache_status = {}, {}
        if "rem" in parts:
            rem_fp = base_fp if rem is orig else base_fp | dict(orig=rem.fingerprint())
            t, cache_status["retain"] = cached_teachers(cache_dir / "teacher_retain.safetensors", rem_fp,
                                                        {"orig_r": (logits_of(rem.model, boundary if rem is orig else None), r_idx)},
                                                        len(prep.labels),
                                                        rebuild=not args.no_cache_rebuild, device=job.device)
            tables |= t
        if need_aug:
            t, cache_status["forget"] = cached_teachers(cache_dir / "teacher_forget.safetensors",
                                                        base_fp | dict(aug=aug.fingerprint()),
                                                        {"orig_f": (logits_of(orig.model, boundary), f_idx),
                                                         "aug_f": (logits_of(aug.model, boundary if aug_targets else None), f_idx)},
                                                        len(prep.labels), rebuild=not args.no_cache_rebuild, device=job.device)
            tables |= t
        for n, tab in tables.items():  # every row the schedule visits, checked once (the steps do not)
            tab.require(r_idx if n == "orig_r" else f_idx)
        cache_status["rows"] = dict(retain=len(r_idx), forget=len(f_idx))
        stages["cache"] = time.perf_counter() - t0 + (boundary_info["seconds"] if boundary_info else 0.0)
        if boundary_info:
            cache_status["boundary"] = boundary_info

    w, alpha = args.retain_weight, args.alpha

    def step(batch):
        kind, rb, fb = batch
        if impl == "reference":
            terms = reference_terms(student, orig.model, aug.model if fb is not None else None, rb, fb, alpha, rem=rem.model)
        elif use_cache:
            terms = fast_terms(runner, tables, rb, fb, alpha, args.kl_scope, args.kernel_backend, fuse, boundary=boundary)
        else:  # fast path without the cache: teacher forwards at the answer position only
            live = {}
            with torch.no_grad():
                for tname, model, b in (("orig_r", rem.model, rb), ("orig_f", orig.model, fb),
                                        ("aug_f", aug.model if fb is not None else None, fb)):
                    if b is not None:
                        rows = yes_no_rows(orig) if args.kl_scope == "yesno" else None
                        live[tname] = _Rows(answer_logits(orig, model, b.ids, b.mask, rows=rows), b.idx)
            terms = fast_terms(runner, live, rb, fb, alpha, args.kl_scope, args.kernel_backend, fuse)
        n = sum(len(b) for b in (rb, fb) if b is not None)
        return combine(terms, w if kind == "j" else 0.0), n

    torch.manual_seed(job.seed + 3)
    t0 = time.perf_counter()
    resume = Resume(work / f"{name}-{impl}-student-{key}.safetensors", key, every=getattr(args, "checkpoint_every", 50))
    res = fit(student.model, lambda e: student_batches(job, sched, bucket, parts), step,
              TrainConfig(lr=args.student_lr, batch_size=job.batch_size, epochs=1, max_steps=sched.total,
                          **optimizer_settings(args, default_clip=None)),
              desc=f"{name} student ({impl})", progress=job.progress,
              train_mode=base_eval_mode if impl == "fast" and not args.base_dropout else None, resume=resume,
              hook=None if probe is None else lambda k, sec: probe(k, sec, student))
    stages["student"] = res.seconds
    student.model.eval()
    time_s = time.perf_counter() - t_all - res.hook_seconds  # probes (benchmarks) are not unlearning

    suffix = "" if (impl == "fast" and name == "e2urec") else "_" + (name if impl == "fast" else f"{name}_{impl}")
    adapter_dir = save_adapter(student.model, job.out / f"adapter{suffix}", base_model_name=str(orig.folder),
                               task_type=TASK_TYPE[orig.family])
    kept = []
    if args.keep_artifacts and need_aug:
        save_safetensors_atomic(aug.model.state_dict(), job.out / "artifacts" / f"augmented_model{suffix}.safetensors")
        kept = [f"artifacts/augmented_model{suffix}.safetensors"] + (["cache/teacher_forget.safetensors"] if use_cache else []) \
            + (["cache/boundary.safetensors"] if boundary else [])
    elif use_cache:  # derived from the forgotten data (the boundary holds D_f's states, and is large)
        (cache_dir / "teacher_forget.safetensors").unlink(missing_ok=True)
        (cache_dir / "boundary.safetensors").unlink(missing_ok=True)
    if not args.keep_artifacts and (job.out / "artifacts").exists():
        shutil.rmtree(job.out / "artifacts")
    info = dict(time_s=time_s, stages=stages, trainable_params=n_params(student.model), steps=res.steps,
                forget_steps=sched.forget_steps if need_aug else 0, final_loss=res.loss_history[-1], loss_head=res.loss_history[:5],
                adapter=str(adapter_dir), teacher_cache=cache_status, kept_artifacts=kept, resumed_at_step=res.resumed_at,
                samples_per_s=res.samples / max(stages["student"], 1e-9), base_model_bytes=student_bytes,
                peak_rss_mib=peak_rss_mib())
    return student, info


def _exists_everywhere(path) -> bool:
    from .. import dist

    dist.barrier()  # torchrun: every rank sees what rank 0 left
    return path.exists()


class _Rows:
    """A teacher table over one live batch (for the fast path without the cache)."""

    def __init__(self, logits, idx):
        self.logits, self.idx = logits, idx

    def __getitem__(self, idx):
        assert torch.equal(idx, self.idx)
        return self.logits
