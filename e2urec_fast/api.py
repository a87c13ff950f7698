"""The Python API: one call runs a deletion request (or the paper's benchmark).

    from e2urec_fast import forget

    res = forget(out="erase_1", dataset="ml-100k", original="my_recommender/", forget_users=[13, 42, 7], no_retrain=True, merge=True)
    res.merged          # a HuggingFace folder with the adapter merged in
    res.adapter         # PEFT adapter (README.md: its model card); base_model_name_or_path is res.original
    res.metrics("E2URec")["auc"], res.audit["E2URec"]["loss_auc"]

`forget(out, config=None, **fields)` takes a typed `Config` (config.py; `preset("authors")`)
and/or any of its fields by name (`student_lr=1e-3`); `python -m e2urec_fast.unlearn` is a
thin shell over it. Every setting and path is checked before any data is prepared or any
model trained (checks.py); a problem raises `UserError` (one line) and removes only what
this call created.

A job is a sequence of stages, each a function below: prepare (data, request, lineage),
resolve models, references (Original, Retrain), methods (methods/registry.py), audit, report.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import dist
from .checks import JobPlan, check, needs_retrain, resolve_policies
from .config import Config, from_fields, max_samples, replace_fields, split_seed
from .errors import UserError
from .files import clean_created, finish_work, out_lock, snapshot, sweep_temporaries
from .progress import job_stages, log
from .result import ForgetResult

__all__ = ["ForgetResult", "forget", "run", "run_guarded"]

# Jobs in one process run one at a time: torch's thread count, transformers' loading (which
# patches global initialisation) and the native op's build are process-wide. Calls in threads
# on different OUTs wait here and give what sequential calls give; on the same OUT the second
# is refused by out_lock before it waits.
_ONE_JOB = threading.Lock()


def forget(out: str | os.PathLike | None = None, config: Config | str | None = None, **fields) -> ForgetResult:
    """Run one job; `fields` replace those of `config` (default: the default preset, or the one
    named by `preset=`; see config.from_fields). Raises UserError on bad input."""
    return run_guarded(from_fields(config, **fields, **({"out": str(out)} if out is not None else {})))


def run_guarded(cfg: Config) -> ForgetResult:
    """Check everything, run, and on failure remove only what this run created."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()  # our own progress bars and log lines only
    transformers.utils.logging.disable_progress_bar()
    out = Path(cfg.run.out)
    snap = snapshot(out)
    with out_lock(out), _ONE_JOB:  # a second run on a busy OUT is refused here, before it could clean anything
        for p in sweep_temporaries(out, ours=True) + sweep_temporaries(Path(os.path.expanduser(cfg.data.cache_dir)), ours=False):
            log(f"removed {p}: a temporary an interrupted run left (it may hold rows of a D_f)")
        try:
            dist.check_launch(cfg)
            return run(cfg) if cfg.bench.seeds is None else _run_seeds(cfg)
        except UserError:
            clean_created(out, snap)  # a divergence or an interrupt keeps <out>/work/ on purpose: the run resumes from it
            raise


def _run_seeds(cfg: Config) -> ForgetResult:
    from .seeds import run_seeds, seed_configs

    if cfg.is_request:
        raise UserError("--seeds is the benchmark's axis; a deletion request (--forget-users/--original/--previous) runs once")
    for sub in seed_configs(cfg)[:1]:
        check(sub)  # every setting, before the first seed trains anything
    summary = run_seeds(cfg, lambda sub: run(sub).report)
    return ForgetResult(Path(cfg.run.out).resolve(), summary)


def run(cfg: Config) -> ForgetResult:
    """One job: check, resolve the device and precision, run under that precision's forward
    context (precision.py)."""
    import torch

    from . import precision, seeds

    plan = check(cfg)
    key = seeds.settings_key(cfg)  # of the settings as given (a --seeds run keys its seeds so), before device and dtype resolve
    dist.check_launch(cfg)
    device = dist.init(cfg.run.device)  # torchrun: join the group, this rank's GPU (dist.py)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = precision.resolve(cfg.run.dtype, device)
    if dtype == "bf16" and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use --dtype fp32")
    cfg = replace_fields(cfg, device=device, dtype=dtype)
    with precision.autocast(dtype, device):
        return _stages(cfg, plan, key)


@dataclass
class State:
    """What the stages hand on to each other."""
    cfg: Config
    plan: JobPlan
    out: Path
    cache: Path
    t_start: float
    ft: object  # train.TrainConfig of the full fine-tunes (Original, Retrain, shards)
    prep: object = None  # data.Prepared
    lineage: dict = field(default_factory=dict)  # the request history of the model being unlearned
    history: list = field(default_factory=list)
    model_dir: Path | None = None
    prev_rep: dict | None = None  # --previous: that output's report
    orig: object = None  # the model being unlearned (Backbone)
    root: object = None  # the remembering teacher when it is not the model being unlearned
    bdir: Path | None = None  # the pretrained backbone's folder
    job: object = None  # methods.common.Job
    ev: object = None  # evaluate.Evaluator
    retrain_full: object = None  # Retrain's D_f logits (JSD, L2)
    rows: list = field(default_factory=list)  # the report's rows
    extra: dict = field(default_factory=dict)  # the report's details
    calibration: dict = field(default_factory=dict)  # how much each method forgot, and why (calibrate.py)
    handed: dict = field(default_factory=dict)  # what is handed out: original, adapter, merged
    student: object = None  # E2URec's student (merged with --merge)
    stage: object = None  # progress.Stages: "[k/N] ..." lines
    settings_key: str = ""  # seeds.settings_key of the settings as given


def _stages(cfg: Config, plan: JobPlan, key: str = "") -> ForgetResult:
    import torch

    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    from .methods.retrain import finetune_config

    st = State(cfg, plan, Path(cfg.run.out), Path(os.path.expanduser(cfg.data.cache_dir)), time.perf_counter(),
               finetune_config(cfg), stage=job_stages(plan.methods, needs_retrain(cfg, plan.methods)), settings_key=key)
    for name, fn in (("prepare", prepare_stage), ("models", resolve_models), ("references", references), ("methods", run_methods)):
        t0 = time.perf_counter()
        fn(st)  # each stage's wall clock in report.json's details.stage_s (the report's own writing excepted)
        st.extra.setdefault("stage_s", {})[name] = time.perf_counter() - t0
    aud = audit_stage(st)
    return report_stage(st, aud)


def prepare_stage(st: State) -> None:
    """The prepared data (cached), the request's D_f and the lineage of earlier requests."""
    import torch

    from .data import prepare
    from .request import apply_holdout, apply_request, earlier_forgotten, lineage_of, resolve_users

    cfg, users = st.cfg, st.plan.users
    st.lineage, st.model_dir, st.prev_rep = lineage_of(cfg)
    items = item_tokens_of(cfg, st.model_dir)
    if items != cfg.data.item_tokens:  # (a request on a model trained with them: the report's settings say so)
        st.cfg = cfg = replace_fields(cfg, item_tokens=items)
    with dist.main_first():  # torchrun: rank 0 prepares (and caches) the data, the others then read it
        st.prep = prepare(cfg.data.dataset, cfg.data.data_dir, st.cache, max_samples(cfg),
                          cfg.data.forget_ratio if users is None else 0.2, split_seed(cfg),
                          holdout_ratio=cfg.data.holdout_ratio, scenario=cfg.data.scenario, item_tokens=items)
    h = st.lineage.get("data_hash")
    if h and h != st.prep.manifest["content_hash"]:
        raise UserError(f"{st.model_dir or cfg.request.previous}: its earlier requests were served on other data (prepared set "
                        f"{h[:12]}, this run {st.prep.manifest['content_hash'][:12]}); use the same --dataset/--data-dir/--max-samples")
    st.history = list(st.lineage.get("requests", []))
    if users is not None:
        st.plan.users = users = resolve_users(st.prep, cfg.data.dataset, users)
        held = resolve_users(st.prep, cfg.data.dataset, st.plan.holdout or [], "--holdout-users")
        apply_request(st.prep, cfg.data.dataset, users, earlier_forgotten(st.lineage, cfg.data.dataset))
        apply_holdout(st.prep, cfg.data.dataset, held)  # the split's holdout: its tokenizer corpus only
    c = st.prep.manifest["counts"]
    if c.get("holdout"):  # D_h split by user: calibration (a request may tune on it) and audit (only the audit reads it)
        for part in ("calib", "audit"):
            idx = st.prep.index(part)
            c[f"{part}_users"], c[part] = len(torch.unique(st.prep.users[idx])), len(idx)
    st.stage(f"data {cfg.data.dataset}: {c['samples_after_filter']} samples after the history filter, using the last {c['samples']}: "
        f"train {c['train']} / valid {c['valid']} / test {c['test']}; forgetting users {c['forget_users']} of "
        f"{c['train_users']}; |D_f| = {c['forget']}, |D_r| = {c['retain']}"
        + (f", held out (D_h) {c['holdout_users']} users / {c['holdout']} samples (calibration {c['calib_users']} users, audit "
           f"{c['audit_users']})" if c.get("holdout") else "")
        + (f" ({c['earlier_forgotten_users']} users forgotten by earlier requests left out of both)" if c.get("earlier_forgotten_users") else ""))


def item_tokens_of(cfg, model_dir) -> bool:
    """Whether the prompts carry item tokens: --item-tokens, or a request's model trained with
    them (its tokenizer has them: the prompts must match what it learned). --item-tokens on a
    model without them is an error."""
    from .models.backbone import has_item_tokens

    folder = model_dir or cfg.request.original
    if folder is None:
        return cfg.data.item_tokens
    has = has_item_tokens(folder)
    if cfg.data.item_tokens and not has:
        raise UserError(f"{folder}: --item-tokens, but this model's tokenizer has no item tokens (<item_ID>): it was "
                        "trained without them; leave the flag out")
    return has


def resolve_models(st: State) -> None:
    """The model to unlearn (the user's, or None: trained in `references`) and the pretrained
    backbone Retrain and the shards start from; the job every method shares."""
    from .evaluate import Evaluator
    from .methods.common import Job, n_params
    from .models import load_backbone, resolve_backbone
    from .models.export import merged_backbone
    from .models.lora import load_adapter

    cfg = st.cfg
    if cfg.request.previous is not None and st.model_dir is None:  # the previous output was not merged: merge it here
        base = load_backbone(st.prev_rep["request"]["original"], cfg.run.device)
        stud = base.clone()
        load_adapter(stud.model, st.prev_rep["request"]["adapter"])
        st.orig, st.model_dir = merged_backbone(stud, base), st.out / "original"
    elif st.model_dir is not None:
        st.orig = load_backbone(st.model_dir, cfg.run.device)
    if st.orig is not None and cfg.run.backbone is None:
        st.bdir = Path(st.orig.folder)
    else:
        with dist.main_first():  # the preset's tokenizer and weights built once, by rank 0
            st.bdir = resolve_backbone(cfg.backbone_name, st.prep, st.cache, seed=cfg.run.seed)
    st.job = Job(st.prep, st.bdir, st.out, device=cfg.run.device, seed=cfg.run.seed, batch_size=cfg.finetune.batch_size,
                 progress=not cfg.run.quiet and dist.is_main(), dtype=cfg.run.dtype, bucket=not cfg.finetune.no_train_bucketing,
                 extras=dict(item_separation=cfg.bench.item_separation))
    if st.orig is not None and st.job.backbone().tokenizer_key() != st.orig.tokenizer_key():
        raise UserError(f"--backbone {cfg.run.backbone}: its tokenizer differs from the Original's ({st.orig.folder}); give the "
                        "pretrained folder the Original was fine-tuned from")
    log(f"backbone {st.bdir} ({n_params(st.job.backbone().model, False):,} parameters)")
    st.ev = Evaluator(st.job, None if cfg.finetune.no_model_cache else st.cache)  # the references' predictions cached
    if any(m.startswith("e2urec") for m in st.plan.methods) and st.cfg.speed.kernel_backend in ("auto", "native") \
            and st.job.device == "cpu":
        from . import native

        t0 = time.perf_counter()  # the op compiles once per machine (~30 s): an install cost, not an unlearning cost
        if native.load() is not None and time.perf_counter() - t0 > 1.0:
            st.extra["native_build_s"] = time.perf_counter() - t0
            log(f"built the native teacher-KL op once ({st.extra['native_build_s']:.0f} s; cached for later runs)")
    st.cfg = resolve_policies(cfg, (st.orig or st.job.backbone()).family)  # every "auto" once: the report's settings show them


def references(st: State) -> None:
    """Original (trained here and handed out, or the user's) and Retrain, both evaluated; the
    first Original of a request history as the remembering teacher; its D_r teacher rows."""
    from .evaluate import jsd_l2
    from .floor import floor_row
    from .methods.common import n_params
    from .methods.retrain import train_on
    from .methods.states import original_states
    from .models import load_backbone
    from .models.export import save_hf_folder
    from .report import below_floor
    from .request import import_retain_cache

    cfg, methods = st.cfg, st.plan.methods
    st.rows = [floor_row(st.prep)]
    orig_s, model_cache = None, None if cfg.finetune.no_model_cache else st.cache
    given = st.orig is not None
    if not given:
        st.stage("Original: fine-tuning on train (or reusing it from the model cache) ...")
        st.orig, orig_s, st.extra["original"] = train_on(st.job, "train", st.ft, model_cache, "Original")
        # hand it out as a complete HuggingFace folder: the adapter's base_model_name_or_path
        st.model_dir = st.out / "original"
        st.handed["original"] = save_hf_folder(st.orig, st.model_dir, dict(
            dataset=cfg.data.dataset, data_hash=st.prep.manifest["content_hash"],
            root_original=str(st.model_dir.resolve()), retain_cache=None, requests=[]))
    elif cfg.request.previous is not None and st.model_dir == st.out / "original":
        st.handed["original"] = save_hf_folder(st.orig, st.model_dir, dict(st.lineage))
    else:
        st.handed["original"] = st.model_dir
    if given:
        st.stage(f"Original: {st.model_dir} (given), evaluated ...")
    st.orig.folder = Path(st.model_dir).resolve()
    rp = Path(st.lineage["root_original"]) if st.lineage.get("root_original") else None
    if rp is not None and rp.resolve() != st.orig.folder:
        if (rp / "config.json").is_file():
            st.root = load_backbone(rp, cfg.run.device)  # the remembering teacher of every later request
            log(f"remembering teacher: the first Original {rp}")
        else:
            log(f"{rp}: the first Original is gone; the model being unlearned is the remembering teacher")
    if "e2urec" in methods and cfg.student.impl != "reference":
        got = import_retain_cache(st.lineage, st.out, st.prep)
        if got:
            st.extra["retain_cache_imported"] = got
            log(f"reused {got['rows']} D_r teacher rows from {got['source']} (the newly forgotten users' rows left out)")
    orig_m, orig_full = st.ev(st.orig, "Original", states=original_states(st.job, st.orig, cfg, methods, model_cache, st.out))
    if needs_retrain(cfg, methods):
        st.stage("Retrain: fine-tuning on D_r (or reusing it from the model cache) ...")
        retr, retr_s, st.extra["retrain"] = train_on(st.job, "retain", st.ft, model_cache, "Retrain")
        retr_m, st.retrain_full = st.ev(retr, "Retrain")
    warn = below_floor(st.rows + [dict(method="Original", auc=orig_m["auc"])])
    if warn:
        log(warn)
    if "original" in methods:
        st.rows.append(dict(method="Original", kind="reference", **orig_m, **jsd_l2(st.retrain_full, orig_full), time_s=None,
                            train_time_s=orig_s, trainable_params=n_params(st.orig.model, False)))
    if "retrain" in methods:
        st.rows.append(dict(method="Retrain", kind="reference", **retr_m, **jsd_l2(st.retrain_full, st.retrain_full), time_s=retr_s,
                            trainable_params=n_params(retr.model, False)))


def run_methods(st: State) -> None:
    """Every unlearning method named, through the registry; each evaluated into a report row."""
    from .evaluate import jsd_l2
    from .methods.registry import METHODS, Context

    cfg = st.cfg
    strength, teacher, rewind = calibrator(st)
    ctx = Context(st.job, st.orig, cfg, st.ft, None if cfg.finetune.no_model_cache else st.cache, rem=st.root,
                  log=log, calibrate=strength, calibrate_teacher=teacher, calibrate_rewind=rewind)
    for name in st.plan.methods:
        if METHODS[name].run is None:
            continue
        st.stage(f"{METHODS[name].label} ...")
        for o in METHODS[name].run(ctx):
            st.extra[o.detail] = o.info
            if o.adapter:
                st.student, st.handed["adapter"] = o.model, Path(o.info["adapter"])
            if o.info.get("diverged"):
                log(f"{o.label}: diverged ({o.info['diverged']}); its row is left empty")
                st.rows.append(dict(method=o.label, kind=o.kind, auc=None, acc=None, logloss=None, jsd=None, l2=None, time_s=None,
                                    trainable_params=o.info["trainable_params"], diverged=o.info["diverged"]))
                continue
            m, full = st.ev(o.model, o.label, states=o.states)
            o.states = None  # its cached states are no longer needed
            cal, tcal = o.info.get("calibration"), o.info.get("teacher_calibration")
            if cal:
                st.calibration.setdefault("methods", {})[o.label] = cal
            if tcal:
                st.calibration.setdefault("teachers", {})[o.label] = tcal
            st.rows.append(dict(method=o.label, kind=o.kind, **m, **jsd_l2(st.retrain_full, full), time_s=o.info["time_s"],
                                trainable_params=o.info["trainable_params"], **o.row,
                                **(dict(strength=cal["strength"]) if cal else {}),
                                **(dict(rewound_step=cal["step"]) if cal and cal.get("step") is not None else {}),
                                **(teacher_row(tcal) if tcal else {})))


def teacher_row(tcal: dict) -> dict:
    """The report row's figure of a calibrated teacher: its offset, or its pull toward the non-member's answers."""
    if tcal.get("kind") == "pull":
        return dict(teacher_pull=tcal["pull"])
    return dict(teacher_gamma=tcal["gamma"]) if "gamma" in tcal else {}


def calibrator(st: State):
    """The calibrations every unlearning method gets (calibrate.py), as (strength, teacher,
    rewind): each None where off (--calibrate; teacher and rewind are E2URec's, the baselines keep
    the strength), or without calibration users (a request without --holdout-users; the report says
    so at its top)."""
    c = st.cfg.calibration
    n = st.prep.manifest["counts"].get("calib_users", 0)  # (prepare_stage counted them)
    mode = c.calibrate  # (resolved in resolve_models: checks.resolve_policies)
    st.calibration = dict(mode=mode, target=c.calib_target, max_drop=c.calib_max_drop,
                          max_strength=c.calib_max_strength, calib_users=n, reference=c.calib_reference,
                          teacher=c.calib_teacher if mode in ("teacher", "both") else None)
    if mode == "off":
        st.calibration["note"] = "NOTE: calibration off (--calibrate off): every update is applied as trained"
        return None, None, None
    if not n:
        st.calibration["note"] = (
            "NOTE: no calibration users (a request without --holdout-users, or a holdout of one user): how much to forget "
            "was not decided from non-members; every update is applied as trained (the fixed schedule), and the audit "
            + ("compares D_f with the later test samples" if not len(st.prep.index("holdout")) else "reads the one held-out user"))
        return None, None, None

    from .calibrate import AtZero

    zero = AtZero()  # the Original's readings (attack, guard), taken once for every method of the job

    def strength(model, base, states=None, guard_only=False):
        from .calibrate import calibrate

        got = calibrate(model, st.ev, base, c.calib_target, c.calib_max_strength, c.calib_max_drop, log=log, states=states,
                        reference=c.calib_reference, guard_only=guard_only, zero=zero)
        return None if got is None else got.to_dict()

    calib_yn = []  # the Original's [No, Yes] logits on the calibration users, read at the first teacher

    def teacher(target_yn, labels, original_yn, rows):
        import torch

        from .audit import answer_losses
        from .calibrate import teacher_offset, teacher_pull
        from .floor import proxy_margins, reference_losses

        floor = c.calib_reference == "floor"
        idx = st.prep.index("calib")
        ref = reference_losses(st.prep, dict(forget=rows, calib=idx)) if floor else None
        if not calib_yn:  # the Original's answers on the calibration users, once (kept from its evaluation)
            kept = st.ev.held_out_answers("Original", idx)
            calib_yn.append((st.ev.predict_part(st.orig, idx, False) if kept is None else kept).float())
        yn = calib_yn[0]
        non = answer_losses(yn, st.prep.labels[idx].numpy()) - (ref["calib"] if floor else 0.0)
        if c.calib_teacher == "pull":
            proxy, line = proxy_margins(st.prep, rows, idx, (yn[:, 1] - yn[:, 0]).numpy())
            got = teacher_pull(target_yn, labels, proxy, non, c.calib_target, original_yn,
                               member_reference=ref["forget"] if floor else None, unreached=c.calib_unreached)
            got.proxy_line = list(line)
        else:
            got = teacher_offset(target_yn, labels, non, c.calib_target, original_yn,
                                 member_reference=ref["forget"] if floor else None)
        got.reference = c.calib_reference
        f_idx = st.prep.index("forget")
        if got.original_auc == got.original_auc and len(rows) == len(f_idx) and \
                torch.equal(torch.as_tensor(rows).sort().values, f_idx.sort().values):
            # the Original's attack AUC on these rows is the strength's at 0: no forward pass for it
            zero.know(("attack", c.calib_reference), got.original_auc)
        log(f"calibration: {got.verdict}")
        return got

    def rewind(model, snaps, states=None):
        from .calibrate import rewind

        got = rewind(model, st.ev, snaps, c.calib_target, c.calib_max_drop, log=log, states=states, reference=c.calib_reference,
                     zero=zero)
        return None if got is None else got.to_dict()

    return ((strength if mode in ("strength", "both", "rewind", "teacher") else None), (teacher if mode in ("teacher", "both") else None),
            (rewind if mode == "rewind" else None))


def audit_stage(st: State) -> dict:
    """Can D_f be told from unseen data, before and after (Retrain: the gold standard)."""
    from .audit import audit

    st.stage("audit and report ...")
    t0 = time.perf_counter()
    from .floor import reference_losses

    ref = "Retrain" if "Retrain" in st.ev.losses else None
    fl = reference_losses(st.prep, dict(zip(("forget", "nonmembers"), st.ev.audit_rows)))
    aud = audit(st.ev.losses, reference=ref, groups=st.ev.groups, floor=(fl["forget"], fl["nonmembers"]))
    for r in st.rows:
        if r["method"] in aud:
            a = aud[r["method"]]
            r.update(mia_loss_auc=a["loss_auc"], mia_ref_auc=a["ref_auc"], mia_floor_auc=a.get("floor_auc"), privleak=a["privleak"],
                     forget_quality=a["forget_quality"])
    st.extra["audit_s"] = time.perf_counter() - t0  # (the losses come with the evaluation: eval_s holds their cost)
    st.extra |= dict(eval_s=st.ev.seconds, predictions_from_cache=sorted(st.ev.from_cache), prediction_parts_from_cache=st.ev.parts_from_cache)
    return dict(reference=ref, models=aud, nonmembers=st.ev.nonmembers)


def report_stage(st: State, aud: dict) -> ForgetResult:
    """The merged model (--merge), report.json/.md/.csv/.png, and the result."""
    from .audit import NONMEMBERS, audit_markdown
    from .card import write_cards
    from .methods.common import n_params
    from .models.export import merged_backbone, save_hf_folder
    from .report import env_info, markdown_table, settings_of, write_report
    from .request import new_lineage

    cfg, out, prep = st.cfg, st.out, st.prep
    lin = new_lineage(cfg, prep, st.lineage, st.history, st.plan.users, st.orig.folder, out)
    if cfg.request.merge and st.student is not None:
        st.handed["merged"] = save_hf_folder(merged_backbone(st.student, st.orig), out / "merged", lin)
        log(f"merged model: {out / 'merged'}")
    absolute = {k: Path(v).resolve() for k, v in st.handed.items()}
    report = dict(
        rows=st.rows, settings=settings_of(cfg, st.plan.methods, st.bdir, st.ft.lr),
        settings_key=st.settings_key,  # a single run into OUT/seed-N is a finished seed of a --seeds run with these settings
        backbone_params=n_params(st.job.backbone().model, False),
        counts=prep.manifest["counts"],
        # how many users were forgotten (this request and every earlier one); who: only the operator's record (request.py)
        forgotten_users=len(prep.users[prep.index("forget_all")].unique()),
        calibration=st.calibration,
        audit=dict(reference=aud["reference"], members="D_f (every request so far)", nonmembers=NONMEMBERS[aud["nonmembers"]],
                   nonmember_kind=aud["nonmembers"], models=aud["models"]), scenario=prep.manifest.get("scenario"),
        # what was handed out, and every deletion request served so far (users hashed)
        request=dict(original=str(st.orig.folder), adapter=str(absolute["adapter"]) if "adapter" in absolute else None,
                     merged=str(absolute["merged"]) if "merged" in absolute else None, lineage=lin, requests=lin["requests"]),
        details=st.extra, env=env_info(cfg.run.device), total_s=time.perf_counter() - st.t_start)
    amd = audit_markdown(aud["models"], aud["reference"], aud["nonmembers"])
    plotted = write_report(out, report, amd, f"{cfg.data.dataset}, backbone {report['settings']['backbone']}",
                           st.retrain_full is not None)
    write_cards(report, absolute, str(st.orig.folder), st.orig.family, amd)  # README.md of adapter/ and merged/
    finish_work(out / "work")  # resumable states and the augmented model: derived from D_f, done with
    if dist.is_main():  # torchrun: one table
        print(markdown_table(st.rows))
    log(f"wrote {out / 'report.json'}, report.md, report.csv{', report.png' if plotted else ''} ({report['total_s']:.0f} s in all)")
    return ForgetResult(out.resolve(), report, adapter=absolute.get("adapter"), original=absolute.get("original"),
                        merged=absolute.get("merged"), audit=aud["models"])
