"""End-to-end E2URec unlearning: the reference path against the fast path, side by side.

Same data, backbone, Original, seeds and schedule for both. Each path runs in its own
subprocess (clean timings and a clean peak RSS) from an empty output folder (no teacher
cache left over), and is probed every `--eval-every` student steps: test AUC and D_f JSD/L2
against Retrain, evaluated outside the timed loop. Time to quality: the reference path's
final test AUC and D_f JSD set the target; a path reaches it at its first probe with AUC
no more than 0.5 points below and JSD no more than 10% above; its time to quality is
augment + teacher cache + the student's time up to that probe. The last line printed is
`time-to-quality speedup: <x>x`.

    python benchmarks/bench_unlearn.py                       # ML-100K default job, CPU
    python benchmarks/bench_unlearn.py --ablation            # + the fast path with each feature off
    python benchmarks/bench_unlearn.py --dry-run             # tiny synthetic data (CI, device script)
    python benchmarks/bench_unlearn.py --summarize s1.json s2.json s3.json --out over_seeds.json  # median, range

`--fast-args` / `--ref-args` set config fields of one path, NAME=VALUE separated by spaces
(for instance a shorter schedule for the fast path: `--fast-args "student_steps=150"`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, env_row  # noqa: E402

ABLATIONS = [  # (label, extra flags): each switches one fast-path feature off (or, for 8-bit, on)
    ("fast path (all features)", []),
    ("- teacher cache (teachers run every step)", ["no_teacher_cache=true"]),
    ("- Yes/No head (full-vocabulary KL)", ["kl_scope=full"]),
    ("- length bucketing", ["no_bucketing=true"]),
    ("D_r+D_f fusion switched from its auto setting", ["batch_fusion=SWITCH"]),
    ("- fused KL op (torch eager)", ["kernel_backend=torch"]),
    ("- base in eval mode (base dropout on)", ["base_dropout=true"]),
    ("+ torch.compile of the student", ["compile=true"]),
    ("+ 8-bit frozen base (bitsandbytes)", ["load_in_8bit=true"]),
]


def setup(a):
    """Data, backbone, Original and Retrain (cached in --cache-dir), Retrain's D_f logits."""
    import torch

    from e2urec_fast.config import preset
    from e2urec_fast.data import prepare
    from e2urec_fast.evaluate import predict_logits
    from e2urec_fast.methods.common import Job
    from e2urec_fast.methods.retrain import finetune_config, train_on
    from e2urec_fast.models import resolve_backbone

    cache = Path(a.cache_dir).expanduser()
    if a.dry_run:
        from e2urec_fast.data.synthetic import make_ml1m

        data = make_ml1m(cache / "dry_ml1m", n_users=40, per_user=16)
        prep = prepare("ml-1m", data, cache, None, 0.2, a.seed)
    else:
        prep = prepare(a.dataset, a.data_dir, cache, a.max_samples, 0.2, a.seed)
    job = Job(prep, resolve_backbone(a.backbone, prep, cache, a.seed), Path(a.work), device=a.device, seed=a.seed,
              batch_size=a.batch_size, progress=False, dtype=a.dtype)
    # the shipped fine-tune settings (python -m e2urec_fast.unlearn's defaults: epochs, lr, schedule), so a
    # benchmark run shares its Original/Retrain with the default job's model cache
    fields = dict(backbone=a.backbone, batch_size=a.batch_size) | (dict(epochs=1) if a.dry_run else {})
    cfg = replace(finetune_config(preset(**fields)), max_steps=a.orig_steps)
    orig, _, _ = train_on(job, "train", cfg, cache, "Original")
    retr, _, _ = train_on(job, "retain", cfg, cache, "Retrain")
    torch.manual_seed(0)
    r_full = predict_logits(retr, retr.model, job.seqs, prep.index("forget"), job.eval_batch_size, a.device, full=True)
    job.extras["retrain_test"] = predict_logits(retr, retr.model, job.seqs, prep.index("test"), job.eval_batch_size, a.device)
    return job, orig, r_full


def one_path(a) -> dict:
    """Run one path in this process (every stage under --dtype's forward context);
    returns its timings, probes and peak RSS."""
    from e2urec_fast import precision

    with precision.autocast(a.dtype, a.device):
        return _one_path(a)


def _one_path(a) -> dict:
    import torch

    from e2urec_fast.audit import answer_losses, audit
    from e2urec_fast.config import parse_assignments, preset
    from e2urec_fast.evaluate import ctr_metrics, jsd_l2, p_yes, predict_logits
    from e2urec_fast.methods import e2urec
    from e2urec_fast.models.quant import peak_rss_mib
    from e2urec_fast.models.scoring import yes_no

    if a.threads:
        torch.set_num_threads(a.threads)
    job, orig, r_full = setup(a)
    prep = job.prepared
    test, forget = prep.index("test"), prep.index("forget")
    y = prep.labels[test].numpy()
    args = preset(**(dict(quiet=True, student_steps=a.steps) | parse_assignments(shlex.split(a.path_args))))
    probes = []

    y_f = prep.labels[forget].numpy()
    r_losses = (answer_losses(yes_no(orig, r_full), y_f), answer_losses(job.extras["retrain_test"], y))

    def metrics(bb, mia: bool = False):
        """Test AUC/ACC/LogLoss, D_f JSD/L2 against Retrain; with `mia` the membership audit
        (D_f against test, audit.py): LOSS-attack AUC, Retrain-calibrated AUC, privleak."""
        t_lg = predict_logits(bb, bb.model, job.seqs, test, job.eval_batch_size, a.device)
        f_full = predict_logits(bb, bb.model, job.seqs, forget, job.eval_batch_size, a.device, full=True)
        m = ctr_metrics(y, p_yes(t_lg)) | jsd_l2(r_full, f_full)
        if mia:
            row = audit({"M": (answer_losses(yes_no(orig, f_full), y_f), answer_losses(t_lg, y)), "Retrain": r_losses},
                        reference="Retrain")["M"]
            m |= dict(mia_loss_auc=row["loss_auc"], mia_ref_auc=row["ref_auc"], privleak=row["privleak"])
        return m

    cum = []  # the student's cumulative seconds after each step (per-step times)

    def probe(k, seconds, student):
        cum.append(seconds)
        if a.eval_every and (k % a.eval_every == 0) and k < args.student.student_steps:
            probes.append(dict(step=k, student_s=seconds, **metrics(student)))

    rss0 = peak_rss_mib()
    if a.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    bb, info = e2urec.unlearn(job, orig, args, a.path, probe=probe)
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if a.device.startswith("cuda") else None
    probes.append(dict(step=info["steps"], student_s=info["stages"]["student"], **metrics(bb, mia=True)))
    step_s = [b - a_ for a_, b in zip([0.0, *cum[:-1]], cum)]
    return dict(impl=a.path, args=a.path_args, steps=info["steps"], stages=info["stages"], time_s=info["time_s"],
                step_s=step_s, forget_steps=info["forget_steps"], teacher_cache=info["teacher_cache"],
                samples_per_s=info["samples_per_s"], peak_rss_mib=peak_rss_mib(), rss_before_mib=rss0, gpu_peak_mib=gpu_peak,
                base_model_bytes=info["base_model_bytes"], probes=probes, final=probes[-1],
                mfu=mfu(job, orig, args, a.path, info["stages"]["student"], a.device))


def matmul_rate(device: str) -> tuple[float, str]:
    """Measured dense matmul FLOP/s: bf16 8192^3 on CUDA, fp32 1024^3 on the CPU."""
    import torch

    cuda = device.startswith("cuda")
    n, dt = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    x = torch.randn(n, n, device=device, dtype=dt)
    y = torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        x @ y
    if cuda:
        torch.cuda.synchronize()
    reps, t0 = 10, time.perf_counter()
    for _ in range(reps):
        x @ y
    if cuda:
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0), f"{'bf16' if cuda else 'fp32'} {n}^3 matmul"


def mfu(job, orig, args, impl, student_s, device) -> dict:
    """Model-FLOPs utilisation of the student loop: useful FLOPs (real tokens, no padding)
    over time, against the measured matmul rate. Per encoder token 2 N_enc forward + 2 N_enc
    backward to the LoRA inputs (the frozen weights get no gradient); per decoder position
    the same with N_dec (+ lm_head); the reference path adds its teachers' forwards (2 N per
    token, three per step) and decodes every target position."""
    from e2urec_fast.methods import e2urec

    model = orig.model
    emb = model.get_input_embeddings().weight.numel()
    if orig.family in ("t5", "bart"):
        n_enc = sum(p.numel() for p in model.get_encoder().parameters()) - emb
        n_dec = sum(p.numel() for p in model.get_decoder().parameters()) - emb + model.get_output_embeddings().weight.numel()
    else:  # one stack over every token; the vocabulary projection only at the answer positions
        head = emb if orig.family == "masked" else model.get_output_embeddings().weight.numel()
        n_enc = sum(p.numel() for p in model.parameters()) - emb - (0 if orig.family == "masked" else head)
        n_dec = head
    sched = e2urec.schedule(len(job.prepared.index("forget")), job.batch_size, args.student.forget_epochs, args.student.student_steps)
    parts = ("rem", "fgt")
    lens = [len(s) for s in job.seqs]
    dec_pos = len(orig.prefix) if impl == "fast" else max(len(t) for t in orig.targets.values())
    student = teacher = 0.0
    for _, rb, fb in e2urec.student_batches(job, sched, impl == "fast" and not args.speed.no_bucketing, parts, index_only=True):
        for b, n_teachers in ((rb, 1), (fb, 2)):
            if b is None:
                continue
            tok = sum(lens[i] for i in b.tolist())
            f = 2 * (n_enc * tok + n_dec * dec_pos * len(b))
            student += 2 * f
            teacher += n_teachers * f if impl == "reference" or args.speed.no_teacher_cache else 0.0
    rate, what = matmul_rate(device)
    return dict(model_flops=student + teacher, student_flops=student, teacher_flops=teacher, seconds=student_s,
                achieved_flops_per_s=(student + teacher) / student_s, peak_flops_per_s=rate, peak_measured_with=what,
                mfu=(student + teacher) / student_s / rate)


def spawn(a, path: str, extra: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="e2u_bench_") as work:
        out = Path(work) / "result.json"
        cmd = [sys.executable, __file__, "--one-path", path, f"--path-args={extra}", "--result", str(out), "--work", work,
               "--cache-dir", a.cache_dir, "--backbone", a.backbone, "--dataset", a.dataset, "--max-samples", str(a.max_samples),
               "--steps", str(a.steps), "--eval-every", str(a.eval_every), "--batch-size", str(a.batch_size), "--seed", str(a.seed),
               "--device", a.device] + (["--data-dir", a.data_dir] if a.data_dir else []) \
            + (["--orig-steps", str(a.orig_steps)] if a.orig_steps else []) + (["--dry-run"] if a.dry_run else []) \
            + (["--threads", str(a.threads)] if a.threads else []) + ["--dtype", a.dtype]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stderr[-4000:])
            raise SystemExit(f"bench_unlearn: the {path} path ({extra or 'defaults'}) failed with exit status {r.returncode}")
        res = json.loads(out.read_text())
        res["process_s"] = time.perf_counter() - t0
        return res


def time_to_quality(run: dict, target: dict) -> dict:
    """First probe meeting the target: AUC >= target - 0.5 points, JSD <= 1.1 x target."""
    pre = run["stages"].get("augment", 0.0) + run["stages"].get("cache", 0.0)
    for p in run["probes"]:
        if p["auc"] >= target["auc"] - 0.005 and p["jsd"] <= 1.1 * target["jsd"]:
            return dict(reached=True, step=p["step"], seconds=pre + p["student_s"])
    return dict(reached=False, step=None, seconds=None)


def fmt_row(name, r):
    f = r["final"]
    st = r["stages"]
    return (f"| {name} | {st.get('augment', 0):.1f} | {st.get('cache', 0):.1f} | {st['student']:.1f} | {r['time_s']:.1f} | "
            f"{r['samples_per_s']:.0f} | {r['peak_rss_mib']:.0f} | {100 * f['auc']:.2f} | {100 * f['jsd']:.2f} | {100 * f['l2']:.2f} |")


HEAD = ("| Run | Augment (s) | Cache (s) | Student (s) | Unlearning (s) | Student samples/s | Peak RSS (MiB) | AUC | JSD | L2 |\n"
        "|---|---|---|---|---|---|---|---|---|---|")


def summarize(runs: list[dict]) -> tuple[dict, str]:
    """Runs of this script (one per seed) -> the median and range of each ratio, and a table."""
    keys = ("time_to_quality", "whole_unlearning", "student")

    def ratio(r, k):
        return r["time_to_quality"]["speedup"] if k == "time_to_quality" else r[f"{k}_speedup"]

    rows = [dict(seed=r["seed"], reference_s=r["reference"]["time_s"], fast_s=r["fast"]["time_s"],
                 reference_auc=r["reference"]["final"]["auc"], fast_auc=r["fast"]["final"]["auc"],
                 reference_jsd=r["reference"]["final"]["jsd"], fast_jsd=r["fast"]["final"]["jsd"],
                 **{k: ratio(r, k) for k in keys}) for r in runs]
    out = dict(n=len(rows), seeds=[r["seed"] for r in rows], rows=rows)
    for k in keys:
        got = [r[k] for r in rows if r[k] is not None]
        out[k] = dict(median=statistics.median(got) if got else None, min=min(got, default=None), max=max(got, default=None),
                      reached=len(got))

    def x(v):
        return "not reached" if v is None else f"{v:.2f}x"

    md = ["| Seed | Reference unlearning (s) | Fast unlearning (s) | Reference AUC / JSD | Fast AUC / JSD | Time to quality | "
          "Whole unlearning | Student stage |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['seed']} | {r['reference_s']:.1f} | {r['fast_s']:.1f} | {100 * r['reference_auc']:.2f} / "
                  f"{100 * r['reference_jsd']:.2f} | {100 * r['fast_auc']:.2f} / {100 * r['fast_jsd']:.2f} | "
                  f"{x(r['time_to_quality'])} | {x(r['whole_unlearning'])} | {x(r['student'])} |")
    md.append("| **median [min, max]** | | | | | " + " | ".join(
        f"**{x(out[k]['median'])}** [{x(out[k]['min'])}, {x(out[k]['max'])}]" + ("" if out[k]["reached"] == len(rows) else
                                                                                 f" ({out[k]['reached']} of {len(rows)} reached)")
        for k in keys) + " |")
    return out, "\n".join(md)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--max-samples", type=int, default=10_000)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--cache-dir", default=os.environ.get("E2UREC_CACHE", "~/.cache/e2urec_fast"))
    ap.add_argument("--steps", type=int, default=300, help="student steps of both paths (unless --fast-args changes the fast one)")
    ap.add_argument("--eval-every", type=int, default=25, help="probe every N student steps (0: only at the end)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="precision of every stage of both paths (the unlearn flag --dtype; Original/Retrain too)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each path; times are medians")
    ap.add_argument("--fast-args", default="", help="config fields of the fast path, NAME=VALUE separated by spaces "
                    "(e.g. 'lora_scope=decoder aug_mode=lora'; every field: python -m e2urec_fast.unlearn --help-all)")
    ap.add_argument("--ref-args", default="", help="config fields of the reference path, as --fast-args")
    ap.add_argument("--ablation", action="store_true", help="also the fast path with each feature switched off in turn")
    ap.add_argument("--ablation-steps", type=int, default=100)
    ap.add_argument("--orig-steps", type=int, default=None, help="cap the Original/Retrain training (speed runs at scale)")
    ap.add_argument("--dry-run", action="store_true", help="tiny synthetic data and few steps (CI)")
    ap.add_argument("--out", default=None, help="JSON result (default benchmarks/results/bench_unlearn_<dataset>_<backbone>.json)")
    ap.add_argument("--summarize", nargs="+", metavar="JSON", default=None,
                    help="no run: read these results (one per seed), write the median and range of each ratio to --out (.json + .md)")
    ap.add_argument("--one-path", dest="path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path-args", default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.summarize:
        if not a.out:
            ap.error("--summarize needs --out (the summary's .json; the table goes beside it as .md)")
        summary, md = summarize([json.loads(Path(p).read_text()) for p in a.summarize])
        out = Path(a.out)
        out.write_text(json.dumps(dict(sources=[Path(p).name for p in a.summarize], **summary), indent=2) + "\n")
        out.with_suffix(".md").write_text(md + "\n")
        print(md)
        return
    if a.dry_run:
        a.steps, a.eval_every, a.ablation_steps = min(a.steps, 12), min(a.eval_every or 4, 4), 6
    if a.path:  # child process: one path
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        Path(a.result).write_text(json.dumps(one_path(a)))
        return

    def median_run(path, extra):
        runs = [spawn(a, path, extra) for _ in range(a.repeats)]
        best = runs[len(runs) // 2]
        if len(runs) > 1:
            best["stages"] = {k: statistics.median(r["stages"][k] for r in runs) for k in best["stages"]}
            best["time_s"] = statistics.median(r["time_s"] for r in runs)
            best["repeats"] = [dict(stages=r["stages"], time_s=r["time_s"]) for r in runs]
        return best

    print(f"reference path ({a.steps} steps) ...", file=sys.stderr, flush=True)
    ref = median_run("reference", a.ref_args)
    print(f"fast path ({a.fast_args or 'defaults'}) ...", file=sys.stderr, flush=True)
    fast = median_run("fast", a.fast_args)
    target = dict(auc=ref["final"]["auc"], jsd=ref["final"]["jsd"])
    ttq_ref, ttq_fast = time_to_quality(ref, target), time_to_quality(fast, target)
    speed = ttq_ref["seconds"] / ttq_fast["seconds"] if ttq_fast["reached"] else None
    result = dict(env=env_row(a.device), dataset="synthetic ml-1m (dry run)" if a.dry_run else a.dataset, backbone=a.backbone,
                  max_samples=a.max_samples, steps=a.steps, eval_every=a.eval_every, batch_size=a.batch_size, seed=a.seed,
                  fast_args=a.fast_args, ref_args=a.ref_args, target=target, reference=ref, fast=fast,
                  time_to_quality=dict(reference=ttq_ref, fast=ttq_fast, speedup=speed),
                  whole_unlearning_speedup=ref["time_s"] / fast["time_s"], student_speedup=ref["stages"]["student"] / fast["stages"]["student"])
    lines = [HEAD, fmt_row(f"reference ({ref['steps']} steps)", ref), fmt_row(f"fast ({fast['steps']} steps)", fast), ""]
    for name, r in (("reference", ref), ("fast", fast)):
        m = r["mfu"]
        lines.append(f"{name} student loop: {m['achieved_flops_per_s'] / 1e12:.3f} TFLOP/s of model FLOPs = MFU {100 * m['mfu']:.1f}% "
                     f"of the measured {m['peak_measured_with']} rate ({m['peak_flops_per_s'] / 1e12:.2f} TFLOP/s)"
                     + (f"; GPU peak {r['gpu_peak_mib']:.0f} MiB" if r.get("gpu_peak_mib") else ""))
    if a.ablation:
        rows = []
        for label, flags in ABLATIONS:
            print(f"ablation: {label} ...", file=sys.stderr, flush=True)
            # no forget-only epoch: every step is a paired D_r/D_f step, so the fusion row measures something
            flags = [f.replace("SWITCH", "on" if a.device == "cpu" else "off") for f in flags]
            r = spawn(a, "fast", " ".join(["forget_epochs=0", f"student_steps={a.ablation_steps}", *flags]))
            rows.append(dict(label=label, flags=flags, **{k: r[k] for k in ("stages", "time_s", "samples_per_s", "peak_rss_mib", "final",
                                                                            "base_model_bytes")}))
        base = rows[0]["stages"]["student"]
        result["ablation"] = dict(steps=a.ablation_steps, rows=rows)
        lines += ["", f"Speed ablation ({a.ablation_steps} student steps each):", "",
                  "| Fast path | Cache (s) | Student (s) | Student vs all features | Peak RSS (MiB) | AUC | JSD |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['label']} | {r['stages'].get('cache', 0):.1f} | {r['stages']['student']:.1f} | "
                         f"{r['stages']['student'] / base:.2f}x | {r['peak_rss_mib']:.0f} | {100 * r['final']['auc']:.2f} | "
                         f"{100 * r['final']['jsd']:.2f} |")
    out = Path(a.out) if a.out else RESULTS / f"bench_unlearn_{'dry' if a.dry_run else a.dataset}_{a.backbone}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    fast_s = "not reached" if not ttq_fast["reached"] else f"{ttq_fast['seconds']:.1f} s"
    print(f"\ntarget (reference final): AUC {100 * target['auc']:.2f}, JSD {100 * target['jsd']:.2f}; reference reaches it at step "
          f"{ttq_ref['step']} ({ttq_ref['seconds']:.1f} s), fast at step {ttq_fast['step']} "
          f"({fast_s}); wrote {out}")
    print(f"time-to-quality speedup: {'not reached' if speed is None else f'{speed:.2f}x'}")


if __name__ == "__main__":
    main()
