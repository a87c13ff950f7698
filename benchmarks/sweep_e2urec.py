"""Sweep of E2URec's student settings on the default job (quality, not speed).

Original, Retrain and one augmented model are built once; every setting then runs
the fast path from the same starting point. Prints a table (x100) and writes JSON.

    python benchmarks/sweep_e2urec.py --out benchmarks/results/sweep_ml100k_tiny.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env_row  # noqa: E402

from e2urec_fast.data import prepare  # noqa: E402
from e2urec_fast.evaluate import ctr_metrics, jsd_l2, p_yes, predict_logits  # noqa: E402
from e2urec_fast.methods import e2urec  # noqa: E402
from e2urec_fast.methods.common import Job  # noqa: E402
from e2urec_fast.methods.retrain import train_on  # noqa: E402
from e2urec_fast.models import resolve_backbone  # noqa: E402
from e2urec_fast.train import TrainConfig  # noqa: E402
from e2urec_fast.unlearn import build_parser  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default="~/.cache/e2urec_fast")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--max-samples", type=int, default=10_000)
    ap.add_argument("--lrs", default="1e-3,3e-4,1e-4")
    ap.add_argument("--alphas", default="2,0.5")
    ap.add_argument("--weights", default="0.6")
    ap.add_argument("--scopes", default="yesno,full")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/sweep_e2urec.json")
    a = ap.parse_args()
    cache = Path(a.cache_dir).expanduser()
    prep = prepare("ml-100k", None, cache, a.max_samples, 0.2, 42)
    job = Job(prep, resolve_backbone(a.backbone, prep, cache, 42), Path("/tmp/e2urec_sweep"), progress=False)
    cfg = TrainConfig(lr=1e-3, batch_size=16, epochs=2, patience=1)
    orig, _, _ = train_on(job, "train", cfg, cache, "Original")
    retr, _, _ = train_on(job, "retain", cfg, cache, "Retrain")
    test, forget = prep.index("test"), prep.index("forget")
    y = prep.labels[test].numpy()
    r_full = predict_logits(retr, retr.model, job.seqs, forget, full=True)

    def metrics(bb):
        m = ctr_metrics(y, p_yes(predict_logits(bb, bb.model, job.seqs, test)))
        return m | jsd_l2(r_full, predict_logits(bb, bb.model, job.seqs, forget, full=True))

    rows = [dict(setting="Original", **metrics(orig)), dict(setting="Retrain", **metrics(retr))]
    base_args = build_parser().parse_args(["--quiet"])
    e2urec.settings(base_args)
    aug, aug_s = e2urec.make_augmented(job, orig, base_args)
    print(f"augmented model built in {aug_s:.0f} s")
    for lr, alpha, w, scope in itertools.product(*(x.split(",") for x in (a.lrs, a.alphas, a.weights, a.scopes))):
        args = build_parser().parse_args(["--quiet", "--student-lr", lr, "--alpha", alpha, "--retain-weight", w,
                                          "--kl-scope", scope, "--student-steps", str(a.steps)])
        e2urec.settings(args)
        t0 = time.perf_counter()
        torch.manual_seed(0)
        bb, info = e2urec.unlearn(job, orig, args, "fast", aug=aug)
        rows.append(dict(setting=f"lr={lr} alpha={alpha} w={w} kl={scope}", **metrics(bb), student_s=info["stages"]["student"]))
        r = rows[-1]
        print(f"{r['setting']:<40} AUC {100 * r['auc']:.2f} ACC {100 * r['acc']:.2f} LL {100 * r['logloss']:.2f} "
              f"JSD {100 * r['jsd']:.3f} L2 {100 * r['l2']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for r in rows[:2]:
        print(f"{r['setting']:<40} AUC {100 * r['auc']:.2f} ACC {100 * r['acc']:.2f} LL {100 * r['logloss']:.2f} "
              f"JSD {100 * r['jsd']:.3f} L2 {100 * r['l2']:.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(env=env_row("cpu"), steps=a.steps, backbone=a.backbone, max_samples=a.max_samples,
                                           rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
