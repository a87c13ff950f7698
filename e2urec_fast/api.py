"""The Python API: one call runs a deletion request (or the paper's benchmark).

    from e2urec_fast import forget

    res = forget(out="erase_1", dataset="ml-100k", original="my_recommender/",
                 forget_users=[13, 42, 7], no_retrain=True, merge=True)
    res.merged          # a HuggingFace folder with the adapter merged in
    res.adapter         # PEFT adapter; its base_model_name_or_path is res.original
    res.metrics("E2URec")["auc"], res.audit["E2URec"]["loss_auc"]

`forget(**options)` takes every option of `python -m e2urec_fast.unlearn` under its Python
name (`--student-lr` -> `student_lr`); the command line is a thin shell over it. Every
option and path is checked before any data is prepared or any model trained; a problem
raises `UserError` (one line) and removes only what this call created.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError, fail

REQUEST_METHODS = ["original", "retrain", "e2urec"]
_OUR_STATE = re.compile(r".*-[0-9a-f]{16}\.safetensors$|^\..*\.tmp$")  # resumable states and temporaries we write in work/


@dataclass
class ForgetResult:
    """What a request or benchmark run produced (every path absolute)."""

    out: Path
    report: dict
    adapter: Path | None = None
    original: Path | None = None
    merged: Path | None = None
    audit: dict = field(default_factory=dict)

    @property
    def rows(self) -> list[dict]:
        return self.report["rows"]

    def metrics(self, method: str) -> dict:
        """The report row of `method` ('Original', 'Retrain', 'E2URec', ...)."""
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(f"no row {method!r}; rows: {[r['method'] for r in self.rows]}")


def forget(out: str | os.PathLike = "e2urec_out", **options) -> ForgetResult:
    """Run one job; see the module docstring. Raises UserError on bad input."""
    from .unlearn import build_parser

    ap = build_parser()
    args = ap.parse_args([])
    known = set(vars(args))
    bad = sorted(k for k in options if k not in known)
    if bad:
        raise UserError(f"forget(): unknown option(s) {', '.join(bad)} (every option of `python -m e2urec_fast.unlearn --help`, "
                        "with '_' for '-')")
    if isinstance(options.get("forget_users"), (list, tuple, set)):
        options["forget_users"] = ",".join(str(u) for u in options["forget_users"])
    for k, v in options.items():
        setattr(args, k, v)
    args.out = str(out)
    return run_guarded(args, explicit=set(options))


def run_guarded(args, explicit: set[str]) -> ForgetResult:
    """Check everything, run, and on failure remove only what this run created."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()  # our own progress bars and log lines only
    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    snap = _snapshot(out)
    try:
        return _run_seeds(args, explicit) if args.seeds is not None else _run(args, explicit)
    except UserError:
        _clean(out, snap)  # a divergence or an interrupt keeps <out>/work/ on purpose: the run resumes from it
        raise


# ----------------------------------------------------------------- never destroy
def _snapshot(out: Path):
    if not out.is_dir():
        return None
    work = out / "work"
    return dict(top={p.name for p in out.iterdir()}, work={p.name for p in work.iterdir()} if work.is_dir() else None)


def _clean(out: Path, snap) -> None:
    """Remove what this run created under `out`, nothing else (under torchrun: rank 0 does)."""
    from .dist import is_main

    if not is_main():
        return
    if snap is None:
        if out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
        return
    for p in out.iterdir():
        if p.name not in snap["top"]:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    work = out / "work"
    if snap["work"] is not None and work.is_dir():
        for p in work.iterdir():
            if p.name not in snap["work"]:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _finish_work(work: Path) -> None:
    """After a completed run: remove our resumable states (derived from D_f) from work/,
    never a file of the user's; work/ goes only when empty (under torchrun: rank 0 does)."""
    from .dist import barrier, is_main

    barrier()  # every rank is done with the states
    if not is_main():
        return
    if not work.is_dir():
        return
    for p in work.iterdir():
        if p.is_file() and _OUR_STATE.match(p.name):
            p.unlink(missing_ok=True)
    if not any(work.iterdir()):
        work.rmdir()


# ----------------------------------------------------------------- fail fast
def _writable_dir(path: Path, flag: str) -> None:
    """`path` is a folder or can become one, and we can write there (probed with a real file)."""
    if path.exists() and not path.is_dir():
        raise fail(path, f"{flag} exists and is not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise fail(path, f"{flag} cannot be created: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise fail(path, f"{flag} is not writable ({e.strerror or e})") from None


def parse_user_list(spec: str) -> list[int]:
    """'1,2,3' or '@FILE' (one id per line; blank lines and '#' comments skipped)."""
    spec = str(spec).strip()
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise fail(path, "--forget-users file not found")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise fail(path, f"unreadable --forget-users file ({e})") from None
        items = [(ln.split("#", 1)[0].strip(), (path, n + 1)) for n, ln in enumerate(lines)]
        items = [(t, w) for t, w in items if t]
    elif not spec:
        raise UserError("--forget-users: no user ids (the forget set is empty)")
    else:
        items = [(t.strip(), None) for t in spec.split(",")]
        if any(not t for t, _ in items):
            raise UserError(f"--forget-users {spec!r}: an empty id (give ids separated by commas, or @FILE)")
    ids = []
    for t, where in items:
        if not re.fullmatch(r"[0-9]+", t):
            raise fail(where[0], f"user id {t!r} is not an integer id", where[1]) if where else UserError(
                f"--forget-users: user id {t!r} is not an integer id")
        ids.append(int(t))
    if not ids:
        raise UserError(f"--forget-users {spec}: no user ids (the forget set is empty)")
    dup = sorted({u for u in ids if ids.count(u) > 1})
    if dup:
        raise UserError(f"--forget-users: duplicate user id(s) {', '.join(map(str, dup))}")
    return ids


def finetune_config(args):
    """The training settings of the full fine-tunes (Original, Retrain, shards) from the flags."""
    from .models.backbone import PRESETS
    from .train import TrainConfig

    lr = args.lr if args.lr is not None else (1e-3 if args.backbone in PRESETS else 5e-5)
    return TrainConfig(lr=lr, batch_size=args.batch_size, epochs=args.epochs, patience=args.patience,
                       schedule=args.lr_schedule, warmup=args.warmup if args.lr_schedule == "linear" else 0.0)


def check(args, explicit: set[str]) -> dict:
    """Every flag and path, before any work. Returns what the run needs (parsed ids, ...)."""
    import torch

    from .methods.e2urec import AUTHORS, scope_conflicts
    from .models.backbone import FETCHED, PRESETS, check_model_folder
    from .unlearn import ALL_METHODS

    ints = dict(threads=1, lora_r=1, patience=0, epochs=1, batch_size=1, student_steps=1, baseline_steps=1, checkpoint_every=1,
                shards=1, forget_epochs=0, aug_epochs=1)
    for k, lo in ints.items():
        v = getattr(args, k)
        if v is None and k == "threads":
            continue
        if not isinstance(v, int) or v < lo:
            raise UserError(f"--{k.replace('_', '-')} must be at least {lo}, got {v}")
    for k in ("lr", "student_lr", "aug_lr", "baseline_lr"):
        v = getattr(args, k)
        if v is not None and not v > 0:
            raise UserError(f"--{k.replace('_', '-')} must be positive, got {v}")
    for k, lo, hi, hi_open in (("warmup", 0, 1, True), ("lora_dropout", 0, 1, True), ("retain_weight", 0, 1, False), ("neg_weight", 0, None, False),
                               ("alpha", 0, None, False), ("lora_alpha", 0, None, False)):
        v = getattr(args, k)
        if not (v >= lo and (hi is None or (v < hi if hi_open else v <= hi))) or v != v:
            rng = f"[{lo}, {hi})" if hi_open else (f"[{lo}, {hi}]" if hi is not None else f">= {lo}")
            raise UserError(f"--{k.replace('_', '-')} must be in {rng}, got {v}")
    if args.lora_alpha == 0:
        raise UserError("--lora-alpha must be positive, got 0")
    from .models.boundary import ENC_DEC, parse_scope

    scope = parse_scope(args.lora_scope)  # its fit to the backbone's family: here for presets, at load time otherwise
    fam = PRESETS[args.backbone].family if args.backbone in PRESETS else None
    if fam and ((scope.kind == "decoder") != (fam in ENC_DEC)) and scope.cached:
        raise UserError(f"--lora-scope {scope}: the {args.backbone} preset is a {fam} model; "
                        + ("use decoder" if fam in ENC_DEC else "use top:K (decoder is for t5 and bart)"))
    scope_conflicts(scope, args)
    if not args.boundary_max_gib > 0:
        raise UserError(f"--boundary-max-gib must be positive, got {args.boundary_max_gib}")
    if args.forget_users is None and not 0.0 < args.forget_ratio < 1.0:
        raise UserError(f"--forget-ratio must be in (0, 1), got {args.forget_ratio}")
    if args.paper_scale and args.max_samples is not None:
        raise UserError("--paper-scale and --max-samples conflict: --paper-scale means --max-samples 100000")
    if args.authors_settings:
        clash = sorted([k for k in AUTHORS if k in explicit and getattr(args, k) != AUTHORS[k]]
                       + (["baseline_steps"] if "baseline_steps" in explicit else []))
        if clash:
            raise UserError(f"--authors-settings conflicts with {', '.join('--' + k.replace('_', '-') for k in clash)} "
                            "(the preset sets them; drop one or the other)")
    # device
    dev = str(args.device)
    if dev != "auto":
        try:
            d = torch.device(dev)
        except RuntimeError:
            raise UserError(f"--device {dev!r}: not a device (cpu, cuda, cuda:N or auto)") from None
        if d.type not in ("cpu", "cuda"):
            raise UserError(f"--device {dev!r}: only cpu, cuda, cuda:N or auto")
        if d.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"--device {dev}: no CUDA device available")
            if d.index is not None and d.index >= torch.cuda.device_count():
                raise UserError(f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s)")
    # methods
    methods = [m.strip().lower() for m in str(args.methods).split(",") if m.strip()]
    if methods == ["all"]:
        methods = list(ALL_METHODS)
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods:
        raise UserError(f"--methods: unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_METHODS)} or all")
    request = args.forget_users is not None or args.original is not None or args.previous is not None
    if request and "methods" not in explicit:
        methods = list(REQUEST_METHODS)
    if args.no_retrain:
        if "methods" in explicit and "retrain" in methods:
            raise UserError("--no-retrain conflicts with --methods naming retrain")
        methods = [m for m in methods if m != "retrain"]
    if args.impl == "both" and "e2urec" not in methods:
        raise UserError("--impl both compares E2URec's two paths: add e2urec to --methods")
    if args.merge and "e2urec" not in methods:
        raise UserError("--merge merges E2URec's adapter: add e2urec to --methods")
    # paths
    _writable_dir(Path(os.path.expanduser(args.cache_dir)), "--cache-dir")
    _writable_dir(Path(args.out), "--out")
    if args.previous is not None and args.original is not None:
        raise UserError("--previous and --original conflict: --previous OUT1 continues from OUT1's model")
    if args.previous is not None:
        prev = Path(args.previous)
        if not (prev / "report.json").is_file():
            raise fail(prev, "--previous: no report.json (not the output folder of an earlier request)")
        if prev.resolve() == Path(args.out).resolve():
            raise UserError(f"--previous {prev}: give the next request its own --out")
    if args.original is not None:
        check_model_folder(Path(args.original), "--original", "--original: model folder not found")
    needs_pretrained = any(m in methods for m in ("retrain", "sisa", "receraser")) or (
        not args.no_retrain and any(m != "original" for m in methods))
    if (args.original is not None or args.previous is not None) and needs_pretrained and "backbone" not in explicit:
        raise UserError("Retrain (and the JSD/L2 against it) needs the pretrained model your Original was fine-tuned from: "
                        "give --backbone, or --no-retrain to skip Retrain")
    if args.backbone not in PRESETS and args.backbone not in FETCHED:
        check_model_folder(Path(args.backbone), "--backbone", f"backbone not found: neither a preset "
                           f"({', '.join([*PRESETS, *FETCHED])}) nor a folder")
    users = parse_user_list(args.forget_users) if args.forget_users is not None else None
    if (args.original is not None or args.previous is not None) and users is None:
        raise UserError("--original/--previous serve a deletion request: name the users with --forget-users")
    return dict(methods=methods, users=users)


# ----------------------------------------------------------------- the request
def user_hash(dataset: str, user) -> str:
    return hashlib.sha256(f"{dataset}:{user}".encode()).hexdigest()


def apply_request(prep, dataset: str, users: list[int], forgotten: set[str]) -> dict:
    """Make D_f exactly `users`' train samples; users forgotten by earlier requests (their
    hashes in `forgotten`) leave D_r too. Errors name the offending ids."""
    import torch

    from .data.prepare import SPLIT_TRAIN

    tr = prep.split == SPLIT_TRAIN
    present = set(prep.users.unique().tolist())
    in_train = set(prep.users[tr].unique().tolist())
    unknown = [u for u in users if u not in present]
    if unknown:
        raise UserError(f"--forget-users: unknown user id(s) {', '.join(map(str, unknown))} (not in the prepared {dataset} data: "
                        f"{prep.folder})")
    no_train = [u for u in users if u not in in_train]
    if no_train:
        raise UserError(f"--forget-users: user id(s) {', '.join(map(str, no_train))} have no train samples (only valid/test), "
                        "nothing to forget")
    again = [u for u in users if user_hash(dataset, u) in forgotten]
    if again:
        raise UserError(f"--forget-users: user id(s) {', '.join(map(str, again))} were already forgotten by an earlier request")
    prev = [u for u in in_train if user_hash(dataset, u) in forgotten]
    req = torch.tensor(users)
    prep.forget = tr & torch.isin(prep.users, req)
    prep.excluded = (tr & torch.isin(prep.users, torch.tensor(prev, dtype=torch.long))) if prev else None
    n_r = len(prep.index("retain"))
    if n_r == 0:
        raise UserError(f"--forget-users: forgetting {', '.join(map(str, users))} would leave D_r empty (no train samples of "
                        "any other user)")
    c = prep.manifest["counts"]
    c.update(forget_users=len(users), forget=int(prep.forget.sum()), retain=n_r, earlier_forgotten_users=len(prev),
             forget_all=len(prep.index("forget_all")))
    return dict(previous_users=len(prev))


def _lineage_of(args) -> tuple[dict, Path | None, dict | None]:
    """(history manifest, the model folder to unlearn, the previous output's report)."""
    from .models.export import read_manifest

    if args.previous is not None:
        prev = Path(args.previous)
        rep = json.loads((prev / "report.json").read_text())
        req = rep.get("request") or {}
        if not req.get("lineage"):
            raise fail(prev / "report.json", "--previous: this output has no request history (run with --forget-users)")
        return req["lineage"], Path(req["merged"]) if req.get("merged") else None, rep
    if args.original is not None:
        return read_manifest(args.original), Path(args.original), None
    return {}, None, None


def _run(args, explicit: set[str]) -> ForgetResult:
    """Check every flag, resolve the device and precision, and run the job under that
    precision's forward context (precision.py)."""
    import torch

    from . import dist, precision

    plan = check(args, explicit)
    dist.check_launch(args)
    args.device = dist.init(args.device)  # torchrun: join the group, this rank's GPU (dist.py)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = precision.resolve(args.dtype, args.device)
    if args.dtype == "bf16" and torch.device(args.device).type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--dtype bf16: {torch.cuda.get_device_name(args.device)} has no bf16 support; use --dtype fp32")
    with precision.autocast(args.dtype, args.device):
        return _run_checked(args, explicit, plan)


def _run_checked(args, explicit: set[str], plan: dict) -> ForgetResult:
    import torch

    from . import dist as ranks
    from .audit import answer_losses, audit, audit_markdown
    from .data import prepare
    from .errors import write_json_atomic, write_text_atomic
    from .evaluate import ctr_metrics, jsd_l2, p_yes, predict_logits
    from .floor import floor_row
    from .methods import badt, e2urec, neggrad, negkl, receraser, sisa
    from .methods.common import Job, n_params
    from .methods.e2urec import run_key
    from .methods.retrain import train_on
    from .models import load_backbone, resolve_backbone
    from .models.export import merged_backbone, save_hf_folder
    from .models.lora import load_adapter
    from .report import below_floor, csv_table, markdown_table, plot_jsd_time, render_markdown
    from .train import Resume
    from .unlearn import LABELS, env_info

    t_start = time.perf_counter()
    methods, users = plan["methods"], plan["users"]
    e2u_settings = e2urec.settings(args)  # applies --authors-settings (conflicts were refused above)
    args.max_samples = 100_000 if args.paper_scale else (10_000 if args.max_samples is None else args.max_samples)
    if args.lr is None:
        from .models.backbone import PRESETS

        args.lr = 1e-3 if args.backbone in PRESETS else 5e-5
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(os.path.expanduser(args.cache_dir))
    out = Path(args.out)
    lineage, model_dir, prev_rep = _lineage_of(args)

    def log(msg):
        if ranks.is_main():  # torchrun: one log, rank 0's
            print(msg, file=sys.stderr, flush=True)

    split_seed = args.seed if args.split_seed is None else args.split_seed
    with ranks.main_first():  # torchrun: rank 0 prepares (and caches) the data, the others then read it
        prep = prepare(args.dataset, args.data_dir, cache, args.max_samples, args.forget_ratio if users is None else 0.2, split_seed)
    if lineage.get("data_hash") and lineage["data_hash"] != prep.manifest["content_hash"]:
        raise UserError(f"{model_dir or args.previous}: its earlier requests were served on other data (prepared set "
                        f"{lineage['data_hash'][:12]}, this run {prep.manifest['content_hash'][:12]}); use the same "
                        "--dataset/--data-dir/--max-samples")
    history = list(lineage.get("requests", []))
    if users is not None:
        forgotten = {h for r in history for h in r.get("users_sha256", [])}
        apply_request(prep, args.dataset, users, forgotten)
    c = prep.manifest["counts"]
    log(f"data {args.dataset}: {c['samples_after_filter']} samples after the history filter, using the last {c['samples']}: "
        f"train {c['train']} / valid {c['valid']} / test {c['test']}; forgetting users {c['forget_users']} of "
        f"{c['train_users']}; |D_f| = {c['forget']}, |D_r| = {c['retain']}"
        + (f" ({c['earlier_forgotten_users']} users forgotten by earlier requests left out of both)" if c.get("earlier_forgotten_users") else ""))

    # the model to unlearn: ours (trained here) or the user's; the job's backbone is the
    # pretrained model Retrain and the shards start from
    orig, orig_s, extra = None, None, {}
    if args.previous is not None and model_dir is None:  # the previous output was not merged: merge it here
        base = load_backbone(prev_rep["request"]["original"], args.device)
        stud = base.clone()
        load_adapter(stud.model, prev_rep["request"]["adapter"])
        orig = merged_backbone(stud, base)
        model_dir = out / "original"
    elif model_dir is not None:
        orig = load_backbone(model_dir, args.device)
    if orig is not None and "backbone" not in explicit:
        bdir = Path(orig.folder)
    else:
        with ranks.main_first():  # the preset's tokenizer and weights built once, by rank 0
            bdir = resolve_backbone(args.backbone, prep, cache, seed=args.seed)
    job = Job(prep, bdir, out, device=args.device, seed=args.seed, batch_size=args.batch_size,
              progress=not args.quiet and ranks.is_main(), dtype=args.dtype, bucket=not args.no_train_bucketing)
    if orig is not None and job.backbone().tokenizer_key() != orig.tokenizer_key():
        raise UserError(f"--backbone {args.backbone}: its tokenizer differs from the Original's ({orig.folder}); give the "
                        "pretrained folder the Original was fine-tuned from")
    log(f"backbone {bdir} ({n_params(job.backbone().model, False):,} parameters)")
    test_idx, forget_idx = prep.index("test"), prep.index("forget_all")
    test_labels = prep.labels[test_idx].numpy()
    forget_labels = prep.labels[forget_idx].numpy()
    cfg = finetune_config(args)
    model_cache = None if args.no_model_cache else cache
    losses, handed = {}, {}

    eval_s = {}

    def evaluate(bb, name):
        t0 = time.perf_counter()
        seqs = job.seqs
        yn = predict_logits(bb, bb.model, seqs, test_idx, job.eval_batch_size, job.device)
        full = predict_logits(bb, bb.model, seqs, forget_idx, job.eval_batch_size, job.device, full=True)
        from .models.scoring import yes_no

        losses[name] = (answer_losses(yes_no(bb, full), forget_labels), answer_losses(yn, test_labels))
        eval_s[name] = time.perf_counter() - t0
        return ctr_metrics(test_labels, p_yes(yn)), full

    rows = [floor_row(prep)]
    if any(m.startswith("e2urec") for m in methods) and args.kernel_backend in ("auto", "native") and job.device == "cpu":
        from . import native

        t0 = time.perf_counter()  # the op compiles once per machine (~30 s): an install cost, not an unlearning cost
        if native.load() is not None and time.perf_counter() - t0 > 1.0:
            extra["native_build_s"] = time.perf_counter() - t0
            log(f"built the native teacher-KL op once ({extra['native_build_s']:.0f} s; cached for later runs)")
    root = None
    if orig is None:
        log("Original: fine-tuning on train (or reusing it from the model cache) ...")
        orig, orig_s, extra["original"] = train_on(job, "train", cfg, model_cache, "Original")
        # hand it out as a complete HuggingFace folder: the adapter's base_model_name_or_path
        handed["original"] = save_hf_folder(orig, out / "original", dict(
            dataset=args.dataset, data_hash=prep.manifest["content_hash"], root_original=str((out / "original").resolve()),
            retain_cache=None, requests=[]))
        model_dir = out / "original"
    elif args.previous is not None and model_dir == out / "original":
        handed["original"] = save_hf_folder(orig, model_dir, dict(lineage))
    else:
        handed["original"] = model_dir
    orig.folder = Path(model_dir).resolve()
    if lineage.get("root_original") and Path(lineage["root_original"]).resolve() != orig.folder:
        rp = Path(lineage["root_original"])
        if (rp / "config.json").is_file():
            root = load_backbone(rp, args.device)  # the remembering teacher of every later request
            log(f"remembering teacher: the first Original {rp}")
        else:
            log(f"{rp}: the first Original is gone; the model being unlearned is the remembering teacher")
    if lineage.get("retain_cache") and "e2urec" in methods and args.impl != "reference":
        src, dst = Path(lineage["retain_cache"]), out / "cache" / "teacher_retain.safetensors"
        if src.is_file() and src.resolve() != dst.resolve() and not dst.exists():
            from .teachers import import_rows

            n = import_rows(src, dst, prep.index("retain"))
            extra["retain_cache_imported"] = dict(source=str(src), rows=n)
            log(f"reused {n} D_r teacher rows from {src} (the newly forgotten users' rows left out)")

    orig_m, orig_full = evaluate(orig, "Original")
    retr_full = None
    if "retrain" in methods or (not args.no_retrain and methods != ["original"]):
        log("Retrain: fine-tuning on D_r (or reusing it from the model cache) ...")
        retr, retr_s, extra["retrain"] = train_on(job, "retain", cfg, model_cache, "Retrain")
        retr_m, retr_full = evaluate(retr, "Retrain")

    def dist(full):
        return jsd_l2(retr_full, full) if retr_full is not None else dict(jsd=None, l2=None)

    warn = below_floor(rows + [dict(method="Original", auc=orig_m["auc"])])
    if warn:
        log(warn)
    if "original" in methods:
        rows.append(dict(method="Original", kind="reference", **orig_m, **dist(orig_full), time_s=None, train_time_s=orig_s,
                         trainable_params=n_params(orig.model, False)))
    if "retrain" in methods:
        rows.append(dict(method="Retrain", kind="reference", **retr_m, **dist(retr_full), time_s=retr_s,
                         trainable_params=n_params(retr.model, False)))

    def add(name, bb, info, kind="unlearn", **more):
        if info.get("diverged"):
            log(f"{name}: diverged ({info['diverged']}); its row is left empty")
            rows.append(dict(method=name, kind=kind, auc=None, acc=None, logloss=None, jsd=None, l2=None, time_s=None,
                             trainable_params=info["trainable_params"], diverged=info["diverged"]))
            return
        m, full = evaluate(bb, name)
        rows.append(dict(method=name, kind=kind, **m, **dist(full), time_s=info["time_s"], trainable_params=info["trainable_params"],
                         **more))

    work = out / "work"
    student = None
    for meth in methods:
        if meth in ("original", "retrain"):
            continue
        if meth == "e2urec":
            for impl in (["reference", "fast"] if args.impl == "both" else [args.impl]):
                log(f"E2URec ({impl} path) ...")
                bb, info = e2urec.unlearn(job, orig, args, impl, rem=root)
                add("E2URec" if args.impl != "both" else f"E2URec ({impl})", bb, info, stages=info["stages"], impl=impl)
                extra[f"e2urec_{impl}"] = info
                if impl == "fast" or args.impl == "reference":
                    student, handed["adapter"] = bb, Path(info["adapter"])
        elif meth.startswith("e2urec-"):
            log(f"{LABELS[meth]} (fast path) ...")
            bb, info = e2urec.unlearn(job, orig, args, "fast", parts=("rem",) if meth == "e2urec-no-fgt" else ("fgt",),
                                      name=meth.replace("-", "_"), rem=root)
            add(LABELS[meth], bb, info, kind="ablation", stages=info["stages"])  # not ranked (a separate table in the paper)
            extra[meth] = info
        elif meth in ("neggrad", "negkl", "badt"):
            log(f"{LABELS[meth]} ...")
            mod = {"neggrad": neggrad, "negkl": negkl, "badt": badt}[meth]
            key = run_key(job, orig, args, meth, ("baseline",))
            bb, info = mod.unlearn(job, orig, args, resume=Resume(work / f"{meth}-{key}.safetensors", key, args.checkpoint_every))
            add(LABELS[meth], bb, info)
            extra[meth] = info
        else:
            log(f"{LABELS[meth]}: {args.shards} shards ...")
            if meth == "sisa":
                bb, info = sisa.unlearn(job, cfg, model_cache, args.shards, args.shard_scheme)
            else:
                bb, info = receraser.unlearn(job, cfg, model_cache, args.shards, args.receraser_agg, args.shard_scheme)
            add(LABELS[meth] + (" (attention)" if meth == "receraser" and args.receraser_agg == "attention" else ""), bb, info)
            extra[meth] = info

    # the audit: can D_f be told from unseen data, before and after (Retrain: the gold standard)
    t0 = time.perf_counter()
    ref = "Retrain" if "Retrain" in losses else None
    aud = audit(losses, reference=ref)
    for r in rows:
        if r["method"] in aud:
            a = aud[r["method"]]
            r.update(mia_loss_auc=a["loss_auc"], mia_ref_auc=a["ref_auc"], privleak=a["privleak"])
    extra["audit_s"] = time.perf_counter() - t0  # (the losses come with the evaluation: eval_s holds their cost)
    extra["eval_s"] = eval_s

    this_request = None
    if users is not None:
        this_request = dict(n_users=len(users), users_sha256=sorted(user_hash(args.dataset, u) for u in users),
                            forget_samples=c["forget"], retain_samples=c["retain"], out=str(out.resolve()),
                            date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    new_lineage = dict(dataset=args.dataset, data_hash=prep.manifest["content_hash"],
                       root_original=lineage.get("root_original") or str(orig.folder),
                       retain_cache=lineage.get("retain_cache"), requests=history + ([this_request] if this_request else []))
    if (out / "cache" / "teacher_retain.safetensors").exists():
        new_lineage["retain_cache"] = str((out / "cache" / "teacher_retain.safetensors").resolve())
    if args.merge and student is not None:
        handed["merged"] = save_hf_folder(merged_backbone(student, orig), out / "merged", new_lineage)
        log(f"merged model: {out / 'merged'}")

    report = dict(
        rows=rows,
        settings=dict(dataset=args.dataset, backbone=args.backbone, backbone_dir=str(bdir), max_samples=args.max_samples,
                      forget_ratio=None if users is not None else args.forget_ratio, seed=args.seed, split_seed=split_seed, methods=methods,
                      epochs=args.epochs, lr=args.lr, lr_schedule=args.lr_schedule, warmup=args.warmup if args.lr_schedule == "linear" else 0.0,
                      batch_size=args.batch_size, shards=args.shards, shard_scheme=args.shard_scheme,
                      receraser_agg=args.receraser_agg, no_retrain=bool(args.no_retrain), dtype=args.dtype, **e2u_settings),
        backbone_params=n_params(job.backbone().model, False),
        counts=c,
        # which users were forgotten (this request and every earlier one), hashed, never in clear
        forgotten_users_sha256=sorted(user_hash(args.dataset, u) for u in prep.users[prep.index("forget_all")].unique().tolist()),
        audit=dict(reference=ref, members="D_f (every request so far)", nonmembers="test samples", models=aud),
        # what was handed out, and every deletion request served so far (users hashed)
        request=dict(original=str(orig.folder), adapter=str(handed["adapter"].resolve()) if "adapter" in handed else None,
                     merged=str(handed["merged"].resolve()) if "merged" in handed else None, lineage=new_lineage,
                     requests=new_lineage["requests"]),
        details=extra,
        env=env_info(args.device),
        total_s=time.perf_counter() - t_start,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.csv", csv_table(rows))
    plotted = retr_full is not None and plot_jsd_time(rows, out / "report.png", title=f"{args.dataset}, backbone {args.backbone}")
    md = render_markdown(report, plot="report.png" if plotted else None)
    md += "\n## Membership-inference audit\n\n" + audit_markdown(aud, ref)
    if retr_full is None:
        md += ("\nNo Retrain in this run (--no-retrain): JSD and L2, which compare with Retrain, are not measured; the audit "
               "above is the evidence of forgetting.\n")
    write_text_atomic(out / "report.md", md)
    _finish_work(work)  # resumable states and the augmented model: derived from D_f, done with
    if ranks.is_main():  # torchrun: one table
        print(markdown_table(rows))
    log(f"wrote {out / 'report.json'}, report.md, report.csv{', report.png' if plotted else ''} ({report['total_s']:.0f} s in all)")
    def absolute(key):
        return Path(handed[key]).resolve() if key in handed else None

    return ForgetResult(out.resolve(), report, adapter=absolute("adapter"), original=absolute("original"), merged=absolute("merged"),
                        audit=aud)


# ----------------------------------------------------------------- seeds
def parse_seeds(spec: str) -> list[int]:
    toks = [t.strip() for t in str(spec).split(",")]
    if not toks or any(not re.fullmatch(r"-?[0-9]+", t) for t in toks):
        raise UserError(f"--seeds {spec!r}: give integer seeds separated by commas, e.g. 1,2,3")
    seeds = [int(t) for t in toks]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {spec!r}: a seed is repeated")
    return seeds


def _settings_key(args) -> str:
    skip = {"out", "quiet", "threads", "seeds", "seed_axis"}
    blob = json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in skip and not k.startswith("_")}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _run_seeds(args, explicit: set[str]) -> ForgetResult:
    """The benchmark once per seed (OUT/seed-N/, each a complete run; a finished seed with the
    same settings is reused, so an interrupted multi-seed run resumes), then one summary."""
    import copy

    from .errors import write_json_atomic, write_text_atomic
    from .seeds import aggregate, csv_text, markdown, plot

    seeds = parse_seeds(args.seeds)
    if args.forget_users is not None or args.original is not None or args.previous is not None:
        raise UserError("--seeds is the benchmark's axis; a deletion request (--forget-users/--original/--previous) runs once")
    if "seed" in explicit:
        raise UserError("--seed and --seeds conflict: --seeds lists every seed to run")
    out = Path(args.out)
    check(copy.copy(args), explicit)  # every flag, before the first seed trains anything
    reports, t0 = [], time.perf_counter()
    for k, seed in enumerate(seeds):
        sub = copy.copy(args)
        sub.seeds, sub.seed, sub.out = None, seed, str(out / f"seed-{seed}")
        if args.seed_axis == "train":
            sub.split_seed = args.seed if args.split_seed is None else args.split_seed
        key = _settings_key(sub)
        done = Path(sub.out) / "report.json"
        if done.is_file():
            rep = json.loads(done.read_text())
            if rep.get("settings_key") == key:
                print(f"seed {seed} ({k + 1}/{len(seeds)}): reusing {done}", file=sys.stderr, flush=True)
                reports.append(rep)
                continue
        print(f"seed {seed} ({k + 1}/{len(seeds)}) ...", file=sys.stderr, flush=True)
        res = _run(sub, explicit | {"seed"})
        res.report["settings_key"] = key
        write_json_atomic(done, res.report)
        reports.append(res.report)
    agg = aggregate(reports, seeds)
    s0 = reports[0]["settings"]
    summary = dict(kind="multi-seed", settings={k: v for k, v in s0.items() if k not in ("seed", "split_seed")} | dict(
        seeds=seeds, seed_axis=args.seed_axis), summary=agg, per_seed=[str((out / f"seed-{s}").resolve()) for s in seeds],
        env=reports[-1]["env"], total_s=time.perf_counter() - t0, per_seed_total_s=[r.get("total_s") for r in reports])
    write_json_atomic(out / "report.json", summary)
    write_text_atomic(out / "report.csv", csv_text(agg))
    plotted = plot(agg, out / "report.png", title=f"{s0['dataset']}, backbone {s0['backbone']}, {len(seeds)} seeds")
    md = (f"# E2URec over seeds: {s0['dataset']}, backbone {s0['backbone']}\n\n" + markdown(agg)
          + ("\n![D_f JSD against unlearning time, means with 95% intervals](report.png)\n" if plotted else "")
          + f"\nPer-seed reports: {', '.join(f'seed-{s}/report.md' for s in seeds)}. Wall clock of this run "
          f"{summary['total_s']:.0f} s; {reports[-1]['env']['device']}, git {reports[-1]['env']['git']}.\n")
    write_text_atomic(out / "report.md", md)
    print(markdown(agg))
    return ForgetResult(out.resolve(), summary)
