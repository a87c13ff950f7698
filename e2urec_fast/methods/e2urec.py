"""E2URec: a LoRA student on the frozen Original, guided by two teachers (loss terms:
`losses.py`).

    forgetting teacher on D_f:  v_f = v - alpha * relu(v_aug - v)
    loss = w * (CE_r + KL_r) + (1 - w) * KL_f     (w = retain_weight, the paper's 1 - beta)

Schedule (authors' code): `forget_epochs` epochs over D_f with L_FGT only, then joint
steps that zip a D_r batch with a D_f batch, up to `student_steps` steps.

Two implementations:
- reference: mirrors the authors' code; teacher forward passes every step, the
  cross-entropy form of "KL" (-sum p log(q + 1e-12)) over the full vocabulary at every
  target position, the full target LM loss, random padded batches, fp32.
- fast: teacher logits cached once (safetensors), the student's decoder run only to
  the answer position, KL over the Yes/No pair there (or the full vocabulary with
  kl_scope full) through the fused op, length-bucketed pre-tokenized batches, gradients
  only for LoRA; with lora_scope decoder / top:K the frozen states below the adapter
  are cached too (models/boundary.py).

`unlearn(job, orig, cfg, impl)` runs the stages: plan, boundary, augment, student,
teacher cache, train, write; each is a function below.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import dist, ops
from ..config import Config
from ..errors import UserError
from ..evaluate import predict_logits
from ..files import json_key, load_safetensors, save_safetensors_atomic
from ..models.backbone import Backbone
from ..models.boundary import (
    Scope,
    aug_is_lora,
    check_scope,
    parse_scope,
    resolve_scope,
    scope_conflicts,
    shared_boundary,
    target_modules,
)
from ..models.lora import DEFAULT_TARGETS, TASK_TYPE, LoraConfig, base_eval_mode, inject_lora, merge_and_unload, save_adapter
from ..models.quant import model_bytes, peak_rss_mib, quantize_8bit
from ..models.scoring import answer_logits, yes_no_rows
from ..precision import cache_tag, frozen_to_bf16
from ..teachers import Teachers, TeacherTable, cached_teachers
from ..train import Resume, TrainConfig, fit
from .common import Job, Schedule, finetune, n_params, schedule, sized_steps, student_batches, visited
from .losses import LiveRows, combine, fast_terms, reference_terms
from .states import state_source, state_store

__all__ = ["combine", "fast_terms", "reference_terms", "schedule", "student_batches", "unlearn", "make_augmented", "run_key"]


def make_augmented(job: Job, orig: Backbone, cfg: Config, dropout: bool = True, targets=None, boundary=None,
                   lora: bool | None = None) -> tuple[Backbone, float]:
    """Original fine-tuned further on D_f (aug_epochs; the authors' finetune_aug.py). Without
    `dropout` (the fast path's default) the model trains in eval mode: no dropout masks, and
    attention runs in its fused kernel. With aug_mode lora: an adapter on `targets` (default:
    every q/v), trained from the cached `boundary` states when given, merged and unloaded.
    `lora`: the plan's resolved choice (None: `--aug-mode lora` only)."""
    s = cfg.student
    t0 = time.perf_counter()
    mode = None if dropout else (lambda m: m.eval())
    aug = orig.clone()
    torch.manual_seed(job.seed + 1)
    tc = TrainConfig(lr=s.aug_lr, batch_size=job.batch_size, epochs=s.aug_epochs, weight_decay=s.unlearn_weight_decay,
                     grad_clip=s.aug_grad_clip)
    if s.aug_mode == "lora" if lora is None else lora:
        inject_lora(aug.model, LoraConfig(s.lora_r, s.lora_alpha, s.lora_dropout, targets or DEFAULT_TARGETS[orig.family]))
        finetune(job, aug, job.prepared.index("forget"), tc, desc="augment (LoRA)", full=False, train_mode=mode, boundary=boundary)
        merge_and_unload(aug.model)
    else:
        finetune(job, aug, job.prepared.index("forget"), tc, desc="augment", train_mode=mode)
    aug.model.eval()
    return aug, time.perf_counter() - t0


def run_settings(cfg: Config) -> dict:
    """The settings that decide a student (or baseline) run: a saved state under others is not resumed."""
    skip = {"keep_artifacts", "checkpoint_every", "boundary_max_gib", "no_cache_rebuild"}
    flat = dataclasses.asdict(cfg.student) | dataclasses.asdict(cfg.speed) | dataclasses.asdict(cfg.baselines)
    return {k: v for k, v in flat.items() if k not in skip} | dict(no_train_bucketing=cfg.finetune.no_train_bucketing)


def run_key(job: Job, orig: Backbone, cfg: Config, impl: str, parts) -> str:
    """What determines a run: a saved state under another key is not resumed."""
    return json_key(dict(orig=orig.fingerprint(), data=job.prepared.manifest["content_hash"],
                         forget=job.prepared.forget_key(), impl=impl, parts=sorted(parts),
                         seed=job.seed, batch=job.batch_size, bucket=job.bucket, s=run_settings(cfg)) | cache_tag(job.dtype))


@dataclass
class RunPlan:
    """What one E2URec run will do, decided before any work."""

    impl: str
    parts: tuple
    name: str
    scope: Scope
    key: str
    sched: Schedule
    bucket: bool
    use_cache: bool
    need_aug: bool
    aug_lora: bool
    work: Path
    cache_dir: Path
    r_idx: torch.Tensor | None  # the D_r / D_f rows the schedule visits (the teacher cache needs no more)
    f_idx: torch.Tensor | None


def uses_teacher_cache(cfg: Config, impl: str) -> bool:
    """Whether a run reads cached teacher logits: the fast path unless --no-teacher-cache (and so
    whether its forgetting target can be calibrated, `calibrated_tables`)."""
    return impl == "fast" and not cfg.speed.no_teacher_cache


def plan_run(job: Job, orig: Backbone, cfg: Config, impl: str, parts, name: str) -> RunPlan:
    s = cfg.student
    if s.student_steps < 1:
        raise UserError("--student-steps must be at least 1")
    scope = check_scope(resolve_scope(cfg, orig.family, impl), orig)
    if impl != "fast":  # the reference path mirrors the authors' code: LoRA on every q/v
        scope = parse_scope("all")
    scope_conflicts(scope, cfg)
    need_aug = "fgt" in parts
    n_f = len(job.prepared.index("forget"))
    sized = s.student_schedule == "sized" or (s.student_schedule == "auto" and cfg.is_request)  # measured: #26 item 1
    total = sized_steps(n_f, job.batch_size, s.forget_epochs, s.joint_epochs, s.student_steps) if sized else s.student_steps
    sched = schedule(n_f, job.batch_size, s.forget_epochs, total, joint="rem" in parts and "fgt" in parts)
    bucket = impl == "fast" and not cfg.speed.no_bucketing
    use_cache = uses_teacher_cache(cfg, impl)
    r_idx, f_idx = visited(job, sched, bucket, parts) if use_cache else (None, None)
    return RunPlan(impl, tuple(parts), name, scope, run_key(job, orig, cfg, impl, parts), sched, bucket, use_cache, need_aug,
                need_aug and aug_is_lora(cfg, scope), job.out / "work", job.out / "cache", r_idx, f_idx)


def boundary_stage(job: Job, orig: Backbone, cfg: Config, p: RunPlan, store=None):
    """The frozen states below the adapter, once per sample the run visits (cached scopes only);
    D_r's kept in `store` (a folder; None: none) for the next run on the same model, D_f's in
    this output's cache (models/boundary.py). Returns (boundary, info, the augmented adapter's
    targets, its training boundary, the source the evaluation reads its states from)."""
    if not p.scope.cached:
        return None, None, None, None, None
    t0, prep = time.perf_counter(), job.prepared
    gone = prep.index("forget_all")  # every forgotten user's rows: never in the store
    n_total, rebuild = len(prep.labels), not cfg.speed.no_cache_rebuild
    path, bfp, build = state_store(job, orig, p.scope, cfg, store)
    private = torch.unique(torch.cat([p.f_idx] + ([prep.index("forget")] if p.aug_lora else [])))
    table, got = shared_boundary(path, p.cache_dir / "boundary.safetensors", bfp, build, torch.unique(p.r_idx), private, gone, n_total,
                                 rebuild, job.device)
    info = dict(got, scope=str(p.scope), rows=len(table.idx), bytes=table.nbytes(), seconds=time.perf_counter() - t0,
                store=str(path) if path else None)

    aug_targets = aug_bd = None
    if p.aug_lora:  # the augmented model's adapter above the same boundary, so its D_f states are these
        aug_targets = target_modules(orig, p.scope, DEFAULT_TARGETS[orig.family])
        aug_bd = (table, p.scope) if orig.family != "causal" else None  # a causal LM loss reads the target's own states
    return (table, p.scope), info, aug_targets, aug_bd, state_source(job, orig, p.scope, cfg, store, table=table)


def augment_stage(job: Job, orig: Backbone, cfg: Config, p: RunPlan, aug, targets, train_bd) -> tuple[Backbone | None, float]:
    """The augmented model: given (sweeps: not timed), resumed from work/, or trained here."""
    path = p.work / f"{p.name}-{p.impl}-augmented-{p.key}.safetensors"
    if not p.need_aug or aug is not None:
        return aug, 0.0
    if _exists_everywhere(path):  # a resumed run: the augmented model of the interrupted one
        t0 = time.perf_counter()
        aug = orig.clone()
        aug.model.load_state_dict(load_safetensors(path), strict=True)
        aug.model.eval()
        return aug, time.perf_counter() - t0
    aug, sec = make_augmented(job, orig, cfg, dropout=p.impl == "reference" or cfg.speed.aug_dropout, targets=targets,
                              boundary=train_bd, lora=p.aug_lora)
    save_safetensors_atomic(aug.model.state_dict(), path)
    return aug, sec


def student_stage(job: Job, orig: Backbone, cfg: Config, p: RunPlan):
    """The Original's weights, frozen (int8 or bf16 where asked), with a fresh adapter; returns
    (student, what its forward runs: itself or its compiled twin, the base's bytes)."""
    s = cfg.student
    torch.manual_seed(job.seed + 2)
    student = orig.clone()
    nbytes = {"fp32": model_bytes(student.model)}
    if s.load_in_8bit:
        quantize_8bit(student.model)
        nbytes["8bit"] = model_bytes(student.model)
    inject_lora(student.model, LoraConfig(s.lora_r, s.lora_alpha, s.lora_dropout,
                                          target_modules(orig, p.scope, DEFAULT_TARGETS[orig.family])))
    if job.dtype == "bf16":  # the frozen base in bf16, the adapter's fp32 master weights (precision.py)
        frozen_to_bf16(student.model)
        nbytes["bf16"] = model_bytes(student.model)
    runner = student
    if cfg.speed.compile and p.impl == "fast":
        runner = dataclasses.replace(student, model=torch.compile(student.model, dynamic=True))
    return student, runner, nbytes


def teacher_stage(job: Job, orig: Backbone, rem: Backbone, aug, cfg: Config, p: RunPlan, boundary, aug_targets):
    """The teachers' logits on every row the schedule visits, read from or added to the cache;
    returns (teachers.Teachers of TeacherTables, status)."""
    full = cfg.student.kl_scope == "full"
    prep, seqs = job.prepared, job.seqs

    def logits_of(model, bd=None):  # from the cached boundary states when `bd` (the model's frozen part is the Original's)
        bs = job.eval_batch_size if bd is None else max(job.eval_batch_size, 32)  # a decoder step: wider batches pay (CPU: 1.7x)
        return lambda idx: predict_logits(orig, model, seqs, idx, bs, job.device, full=full,
                                          desc=None if not job.progress else "teacher cache", boundary=bd)

    base_fp = dict(orig=orig.fingerprint(), tok=orig.tokenizer_key(), data=prep.manifest["content_hash"],
                   scope=cfg.student.kl_scope, prefix=orig.prefix.tolist()) | cache_tag(job.dtype)
    rebuild, n = not cfg.speed.no_cache_rebuild, len(prep.labels)
    tables, status = {}, {}
    if "rem" in p.parts:
        rem_fp = base_fp if rem is orig else base_fp | dict(orig=rem.fingerprint())
        t, status["retain"] = cached_teachers(p.cache_dir / "teacher_retain.safetensors", rem_fp,
                                              {"orig_r": (logits_of(rem.model, boundary if rem is orig else None), p.r_idx)},
                                              n, rebuild=rebuild, device=job.device)
        tables |= t
    if p.need_aug:
        t, status["forget"] = cached_teachers(p.cache_dir / "teacher_forget.safetensors", base_fp | dict(aug=aug.fingerprint()),
                                              {"orig_f": (logits_of(orig.model, boundary), p.f_idx),
                                               "aug_f": (logits_of(aug.model, boundary if aug_targets else None), p.f_idx)},
                                              n, rebuild=rebuild, device=job.device)
        tables |= t
    for name, tab in tables.items():  # every row the schedule visits, checked once (the steps do not)
        tab.require(p.r_idx if name == "orig_r" else p.f_idx)
    status["rows"] = dict(retain=len(p.r_idx), forget=len(p.f_idx))
    return Teachers.from_file_names(tables), status


def calibrated_tables(job: Job, orig: Backbone, tables, alpha: float, p: RunPlan, choose):
    """The forgetting target on the D_f rows the schedule visits, calibrated as `choose` finds
    (calibrate.teacher_pull: pulled toward a non-member's answers, its `proxy` margins on the
    record; teacher_offset: its true answer's logit moved), as the D_f teacher itself (no
    augmented table: the fused op reads it as a plain teacher). Returns (tables, record)."""
    if not p.use_cache:
        return tables, dict(skipped="the teacher is calibrated on the cached logits: not on the reference path or "
                                    "under --no-teacher-cache")
    idx = torch.unique(p.f_idx)
    v, v_aug = tables.forget[idx].float().cpu(), tables.augmented[idx].float().cpu()
    t = ops.forgetting_teacher(v, v_aug, alpha)
    cols = torch.tensor([0, 1] if t.shape[1] == 2 else yes_no_rows(orig))
    labels = job.prepared.labels[idx].long()
    rec = choose(t[:, cols], labels, v[:, cols], idx)
    table = TeacherTable(rec.apply(t, cols, labels), idx, len(job.prepared.labels)).to(job.device)
    return dataclasses.replace(tables, forget=table, augmented=None), rec.to_dict()


def step_fn(job: Job, orig: Backbone, rem: Backbone, aug, student: Backbone, runner: Backbone, cfg: Config, p: RunPlan,
            tables, boundary):
    """One student step: (loss, rows) of a ('f'|'j'|'r', D_r batch, D_f batch) item."""
    s, sp = cfg.student, cfg.speed
    fuse = sp.batch_fusion == "on" or (sp.batch_fusion == "auto" and not str(job.device).startswith("cpu"))
    yn_rows = yes_no_rows(orig) if s.kl_scope == "yesno" else None

    def terms_of(rb, fb):
        if p.impl == "reference":
            return reference_terms(student, orig.model, aug.model if fb is not None else None, rb, fb, s.alpha, rem=rem.model)
        if p.use_cache:
            return fast_terms(runner, tables, rb, fb, s.alpha, s.kl_scope, sp.kernel_backend, fuse, boundary=boundary)
        live = Teachers()  # the fast path without the cache: teacher forwards at the answer position only
        with torch.no_grad():
            for field, model, b in (("retain", rem.model, rb), ("forget", orig.model, fb),
                                    ("augmented", aug.model if fb is not None else None, fb)):
                if b is not None:
                    setattr(live, field, LiveRows(answer_logits(orig, model, b.ids, b.mask, rows=yn_rows), b.idx))
        return fast_terms(runner, live, rb, fb, s.alpha, s.kl_scope, sp.kernel_backend, fuse)

    def step(batch):
        kind, rb, fb = batch
        n = sum(len(b) for b in (rb, fb) if b is not None)
        return combine(terms_of(rb, fb), s.retain_weight if kind == "j" else 0.0), n

    return step


def unlearn(job: Job, orig: Backbone, cfg: Config, impl: str = "fast", aug: Backbone | None = None, parts=("rem", "fgt"),
            name: str = "e2urec", probe=None, rem: Backbone | None = None, store=None, calibrate=None,
            calibrate_teacher=None, rewind=None):
    """Run E2URec; returns (student backbone with its adapter, info dict).

    `aug` reuses an augmented model built earlier (sweeps); its time is then not counted.
    `parts` drops a loss for the ablations: ("rem",) is E2URec without L_FGT, ("fgt",)
    without L_REM. The run is resumable: its state and the augmented model live in
    `<out>/work/` until the caller removes the folder after the report is written.
    `probe(step, seconds, student)` runs after every step, outside the timings (benchmarks).
    `rem`: the remembering teacher on D_r when it is not `orig` (a sequential request: the
    student's base is the previous request's model, D_r is remembered from the first Original).
    `store`: the folder where a cached boundary's D_r and evaluation states outlive the run
    (the model cache; None: they go with it).
    `calibrate(student, states)`: sets the adapter's strength from the calibration users before it
    is written (calibrate.py); its record goes into the info, its seconds into the time.
    info["states"]: the BoundarySource the student is evaluated from (a cached boundary's frozen
    part; None: full forwards); not part of the report (the registry takes it out).
    `calibrate_teacher(target_yn, labels, original_yn, rows)`: the forgetting target's offset from the calibration
    users (calibrate.teacher_offset), applied to the cached D_f rows before the student trains.
    `rewind(student, snaps, states)`: the rewind rule instead of the strength (calibrate.rewind):
    the student's trainable weights kept at step 0 and every 1/REWIND_SNAPSHOTS of its schedule.
    """
    rem = orig if rem is None else rem
    t_all = time.perf_counter()
    orig.model.eval()
    p = plan_run(job, orig, cfg, impl, parts, name)
    stages = {}
    boundary, bd_info, aug_targets, aug_bd, source = boundary_stage(job, orig, cfg, p, store)
    aug, stages["augment"] = augment_stage(job, orig, cfg, p, aug, aug_targets, aug_bd)
    student, runner, nbytes = student_stage(job, orig, cfg, p)
    tables, cache_status = None, None
    if p.use_cache:
        t0 = time.perf_counter()
        tables, cache_status = teacher_stage(job, orig, rem, aug, cfg, p, boundary, aug_targets)
        stages["cache"] = time.perf_counter() - t0 + (bd_info["seconds"] if bd_info else 0.0)
        if bd_info:
            cache_status["boundary"] = bd_info
    tcal = None
    if calibrate_teacher is not None and p.need_aug:
        t0 = time.perf_counter()
        tables, tcal = calibrated_tables(job, orig, tables, cfg.student.alpha, p, calibrate_teacher)
        stages["calibrate_teacher"] = time.perf_counter() - t0
    step = step_fn(job, orig, rem, aug, student, runner, cfg, p, tables, boundary)
    torch.manual_seed(job.seed + 3)
    resume = Resume(p.work / f"{name}-{impl}-student-{p.key}.safetensors", p.key, every=cfg.speed.checkpoint_every)
    snaps, hook = snapshot_hook(student, p.sched.total, probe) if rewind is not None else ({}, None)
    res = fit(student.model, lambda e: student_batches(job, p.sched, p.bucket, parts), step,
              TrainConfig(lr=cfg.student.student_lr, batch_size=job.batch_size, epochs=1, max_steps=p.sched.total,
                          weight_decay=cfg.student.unlearn_weight_decay, grad_clip=None),
              desc=f"{name} student ({impl})", progress=job.progress,
              train_mode=base_eval_mode if impl == "fast" and not cfg.speed.base_dropout else None, resume=resume,
              hook=hook or (None if probe is None else lambda k, sec: probe(k, sec, student)))
    stages["student"] = res.seconds
    snap_s = snaps.pop("seconds", 0.0)
    student.model.eval()
    calib = None
    if calibrate is not None or rewind is not None:
        t0 = time.perf_counter()
        calib = rewind(student, snaps, source) if rewind is not None else calibrate(student, source)
        stages["calibrate"] = time.perf_counter() - t0
    # probes (benchmarks) are not unlearning; the rewind rule's snapshots are
    time_s = time.perf_counter() - t_all - res.hook_seconds + snap_s
    adapter_dir, kept = write_stage(job, orig, cfg, p, student, aug, boundary)
    info = dict(time_s=time_s, stages=stages, trainable_params=n_params(student.model), steps=res.steps,
                forget_steps=p.sched.forget_steps if p.need_aug else 0, final_loss=res.loss_history[-1],
                loss_head=res.loss_history[:5], adapter=str(adapter_dir), teacher_cache=cache_status, kept_artifacts=kept,
                resumed_at_step=res.resumed_at, samples_per_s=res.samples / max(stages["student"], 1e-9),
                base_model_bytes=nbytes, peak_rss_mib=peak_rss_mib(), lora_scope=str(p.scope),
                aug_mode=("lora" if p.aug_lora else "full") if p.need_aug else None, calibration=calib,
                teacher_calibration=tcal, states=source)
    return student, info


REWIND_SNAPSHOTS = 12  # the rewind rule's snapshots over a schedule (plus step 0)


def snapshot_hook(student: Backbone, total: int, probe=None):
    """({step: trainable weights}, the fit hook that fills it): step 0 now, then every
    total/REWIND_SNAPSHOTS steps and the last; its seconds under the key "seconds" (unlearning
    time, unlike a probe's). The probe, if any, runs after it."""
    from ..train import named_trainable

    params = named_trainable(student.model)
    every = max(1, total // REWIND_SNAPSHOTS)
    snaps = {0: {n: p.detach().clone() for n, p in params.items()}, "seconds": 0.0}

    def hook(k, sec):
        t0 = time.perf_counter()
        if k % every == 0 or k == total:
            snaps[k] = {n: p.detach().clone() for n, p in params.items()}
        snaps["seconds"] += time.perf_counter() - t0
        return None if probe is None else probe(k, sec, student)

    return snaps, hook


def write_stage(job: Job, orig: Backbone, cfg: Config, p: RunPlan, student: Backbone, aug, boundary):
    """The adapter (PEFT format); what derives from D_f removed unless kept (keep_artifacts)."""
    suffix = "" if (p.impl == "fast" and p.name == "e2urec") else "_" + (p.name if p.impl == "fast" else f"{p.name}_{p.impl}")
    adapter_dir = save_adapter(student.model, job.out / f"adapter{suffix}", base_model_name=str(orig.folder),
                               task_type=TASK_TYPE[orig.family])
    kept, keep = [], cfg.student.keep_artifacts
    if keep and p.need_aug:
        save_safetensors_atomic(aug.model.state_dict(), job.out / "artifacts" / f"augmented_model{suffix}.safetensors")
        kept = [f"artifacts/augmented_model{suffix}.safetensors"] + (["cache/teacher_forget.safetensors"] if p.use_cache else []) \
            + (["cache/boundary.safetensors"] if boundary else [])
    elif p.use_cache:  # derived from the forgotten data (the boundary holds D_f's states, and is large)
        (p.cache_dir / "teacher_forget.safetensors").unlink(missing_ok=True)
        (p.cache_dir / "boundary.safetensors").unlink(missing_ok=True)
    if not keep and (job.out / "artifacts").exists():
        shutil.rmtree(job.out / "artifacts")
    return adapter_dir, kept


def _exists_everywhere(path) -> bool:
    dist.barrier()  # torchrun: every rank sees what rank 0 left
    return path.exists()
