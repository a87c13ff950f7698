"""Side by side with the authors' schedule: our reference path, our fast path and the fast
path over a cached boundary (`--lora-scope decoder`), over seeds.

Each path of each seed runs in its own process (bench_unlearn.py's child: clean timings,
empty output folder) on the same data split, Original and Retrain of that seed, with the
authors' schedule (`--student-steps 204 --forget-epochs 1 --student-lr 1e-3 --aug-lr 5e-5`:
102 forget-only steps over D_f at batch 16, then 102 joint steps). Printed: per-step medians
(forget-only and joint), stage times and whole-unlearning time (medians over seeds), and the
final test AUC and D_f JSD / L2 against Retrain (mean and 95% interval over seeds), plus the
paired difference of each path against the fast path.

The authors' column is a quoted anchor, not rerun here: their unmodified scripts (but for the
Yes/No token ids) measured on this 2-core CPU on 2026-11-28 at 77e4959, seed 42 (issue #16).

    python benchmarks/bench_boundary.py --seeds 1,2,3 --threads 2
    python benchmarks/bench_boundary.py --dry-run          # tiny synthetic data (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import bench_unlearn  # noqa: E402
from common import RESULTS, env_row  # noqa: E402

from e2urec_fast.seeds import summarize  # noqa: E402

AUTHORS_SCHEDULE = "forget_epochs=1 student_lr=1e-3 aug_lr=5e-5"
PATHS = [  # (key, label, impl, config fields NAME=VALUE)
    ("reference", "our reference path", "reference", ""),
    ("fast", "our fast path", "fast", ""),
    ("boundary", "cached boundary (decoder, LoRA aug)", "fast", "lora_scope=decoder aug_mode=lora"),
    ("boundary_fullaug", "cached boundary (decoder, full aug)", "fast", "lora_scope=decoder"),
]
AUTHORS = dict(forget_step=0.470, joint_step=1.119, augment=38.2, cache=None, student=165.0, time_s=203.2, auc=76.00, jsd=4.55)


def run_seed(a, seed: int) -> dict:
    out = {}
    for key, _, impl, extra in PATHS:
        if key not in a.paths:
            continue
        ns = argparse.Namespace(**vars(a))
        ns.seed, ns.eval_every = seed, 0
        print(f"seed {seed}: {key} ...", file=sys.stderr, flush=True)
        r = bench_unlearn.spawn(ns, impl, f"{AUTHORS_SCHEDULE} {extra} {a.extra}".strip())
        k = r["forget_steps"]
        r["forget_step_median"] = statistics.median(r["step_s"][:k]) if k else None
        r["joint_step_median"] = statistics.median(r["step_s"][k:]) if r["step_s"][k:] else None
        out[key] = r
    return out


def table(runs: dict, paths: list[str], anchor: bool = True) -> tuple[str, dict]:
    """Markdown: times as medians over seeds, metrics as mean +- 95% half-width; summary dict."""
    labels = {k: lab for k, lab, _, _ in PATHS}
    summ = {}
    for p in paths:
        per = [runs[s][p] for s in runs]
        summ[p] = dict(
            forget_step=statistics.median(r["forget_step_median"] for r in per),
            joint_step=statistics.median(r["joint_step_median"] for r in per),
            augment=statistics.median(r["stages"].get("augment", 0.0) for r in per),
            cache=statistics.median(r["stages"].get("cache", 0.0) for r in per) if p != "reference" else None,
            student=statistics.median(r["stages"]["student"] for r in per),
            time_s=statistics.median(r["time_s"] for r in per),
            auc=summarize([100 * r["final"]["auc"] for r in per]),
            jsd=summarize([100 * r["final"]["jsd"] for r in per]),
            l2=summarize([100 * r["final"]["l2"] for r in per]),
            mia_loss_auc=summarize([r["final"].get("mia_loss_auc") for r in per]),
            privleak=summarize([r["final"].get("privleak") for r in per]),
        )
        if "fast" in paths and p != "fast":
            summ[p]["vs_fast"] = {m: summarize([100 * (runs[s][p]["final"][m] - runs[s]["fast"]["final"][m]) for s in runs])
                                  for m in ("auc", "jsd", "l2")}
            summ[p]["vs_fast"]["privleak"] = summarize([runs[s][p]["final"].get("privleak", 0) - runs[s]["fast"]["final"].get("privleak", 0)
                                                        for s in runs])

    def t(v):
        return "-" if v is None else f"{v:.3f} s" if v < 10 else f"{v:.1f} s"

    def m(s):
        if s is None:
            return "-"
        return f"{s['mean']:.2f}" + (f" ± {s['ci95']:.2f}" if s.get("ci95") is not None else "")

    A = AUTHORS if anchor else {k: None for k in AUTHORS}
    cols = (["authors' code (anchor, seed 42)"] if anchor else []) + [labels[p] for p in paths]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def a_(text):
        return f"{text} | " if anchor else ""

    for name, key in (("forget-only step", "forget_step"), ("joint step", "joint_step"), ("augment", "augment"),
                      ("teacher (+ boundary) cache", "cache"), ("student", "student"), ("whole unlearning", "time_s")):
        lines.append(f"| {name} | {a_(t(A[key]))}" + " | ".join(t(summ[p][key]) for p in paths) + " |")
    if anchor:
        lines.append("| whole unlearning vs the authors' 203.2 s | 1.0x | "
                     + " | ".join(f"{A['time_s'] / summ[p]['time_s']:.1f}x" for p in paths) + " |")
    ref = "reference" if "reference" in paths else None
    if ref:
        lines.append(f"| whole unlearning vs our reference path | {a_('-')}"
                     + " | ".join(f"{summ[ref]['time_s'] / summ[p]['time_s']:.1f}x" for p in paths) + " |")
    for name, key in (("test AUC", "auc"), ("D_f JSD", "jsd"), ("D_f L2", "l2"), ("MIA LOSS-attack AUC (D_f vs test)", "mia_loss_auc"),
                      ("privleak vs Retrain (0 = Retrain)", "privleak")):
        lines.append(f"| {name} | {a_(f'{A[key]:.2f}' if A.get(key) is not None else '-')}"
                     + " | ".join(m(summ[p][key]) for p in paths) + " |")
    for p in paths:
        if "vs_fast" in summ[p]:
            d = summ[p]["vs_fast"]
            lines.append(f"\n{labels[p]} minus the fast path, paired by seed (mean ± 95% half-width): "
                         + ", ".join(f"{k.upper() if k != 'auc' else 'AUC'} {m(d[k])}" for k in ("auc", "jsd", "l2", "privleak")))
    return "\n".join(lines), summ


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--paths", default=",".join(k for k, *_ in PATHS))
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--max-samples", type=int, default=10_000)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--cache-dir", default=os.environ.get("E2UREC_CACHE", "~/.cache/e2urec_fast"))
    ap.add_argument("--steps", type=int, default=204, help="student steps (the authors' schedule at 10,000 samples: 204)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--orig-steps", type=int, default=None, help="cap the Original/Retrain training (speed runs at scale)")
    ap.add_argument("--extra", default="", help="config fields (NAME=VALUE, space-separated) for every path")
    ap.add_argument("--dry-run", action="store_true", help="tiny synthetic data and 12 steps (CI)")
    ap.add_argument("--out", default=None, help="JSON result (default benchmarks/results/boundary_<dataset>_<backbone>.json)")
    a = ap.parse_args(argv)
    a.paths = a.paths.split(",")
    if a.dry_run:
        a.steps = min(a.steps, 12)
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = {s: run_seed(a, s) for s in seeds}
    anchor = not a.dry_run and (a.dataset, a.backbone, a.steps, a.batch_size, a.max_samples, a.device, a.dtype) == (
        "ml-100k", "tiny", 204, 16, 10_000, "cpu", "fp32")  # the anchor's setting, or no authors' column
    md, summ = table(runs, a.paths, anchor)
    out = Path(a.out) if a.out else RESULTS / f"boundary_{'dry' if a.dry_run else a.dataset}_{a.backbone}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(env=env_row(a.device), command=" ".join(sys.argv), seeds=seeds, steps=a.steps, batch_size=a.batch_size,
                  schedule=AUTHORS_SCHEDULE, paths={k: dict(label=lab, impl=i, flags=f) for k, lab, i, f in PATHS if k in a.paths},
                  authors_anchor=AUTHORS, summary=summ,
                  runs={str(s): {p: {k: v for k, v in r.items() if k not in ("mfu",)} for p, r in rr.items()} for s, rr in runs.items()})
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
