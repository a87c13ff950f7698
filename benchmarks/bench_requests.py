"""Deletion requests as the product's unit of work, timed on the default data.

    python benchmarks/bench_requests.py [--work DIR] [--cache-dir DIR] [--dry-run]

1. Our Original on the default data (real ML-100K, last 10,000 samples, tiny T5), handed out
   as a HuggingFace folder (`--methods original`; cached across runs).
2. One request for 5 users: `--original BASE --no-retrain` (data already prepared), wall
   clock and where the time goes (augment, teacher cache, student, evaluation, audit).
3. Five requests of 4% of the train users each, one after another (`--previous`), and one
   request for the same 20% at once with Retrain on the final D_r (`--backbone tiny`):
   time and test AUC after each request; at the end JSD/L2 on the cumulative D_f against
   that Retrain, and the membership-inference audit of Original, Retrain and E2URec.

Writes `requests.json` (every figure, the commands' options, git revision) into --work.
--dry-run: the same on a tiny synthetic data set (CI).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="bench_requests_out")
    ap.add_argument("--cache-dir", default="~/.cache/e2urec_fast")
    ap.add_argument("--dry-run", action="store_true", help="tiny synthetic data (seconds)")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--share", type=float, default=0.04, help="share of the train users per request")
    a = ap.parse_args(argv)

    import torch

    from e2urec_fast import forget
    from e2urec_fast.audit import answer_losses, audit
    from e2urec_fast.config import preset
    from e2urec_fast.data import prepare
    from e2urec_fast.data.prepare import SPLIT_TRAIN
    from e2urec_fast.data.synthetic import make_ml1m
    from e2urec_fast.evaluate import jsd_l2, predict_logits
    from e2urec_fast.methods.common import Job
    from e2urec_fast.methods.retrain import finetune_config, train_on
    from e2urec_fast.models import load_backbone, resolve_backbone
    from e2urec_fast.models.scoring import yes_no
    from e2urec_fast.report import env_info
    from e2urec_fast.request import apply_holdout, apply_request

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    common = dict(cache_dir=a.cache_dir, quiet=True, seed=42)
    if a.dry_run:
        data = make_ml1m(work / "ml1m", n_users=30, per_user=14)
        common |= dict(dataset="ml-1m", data_dir=str(data), max_samples=None, epochs=1, batch_size=8, student_steps=8)
        n_five = 2
    else:
        common |= dict(dataset="ml-100k")
        n_five = 5
    t0 = time.perf_counter()
    base = forget(work / "base", methods="original", **common)
    base_s = time.perf_counter() - t0
    prep = prepare(common["dataset"], common.get("data_dir"), Path(common["cache_dir"]).expanduser(), common.get("max_samples", 10_000),
                   0.2, 42, holdout_ratio=preset().data.holdout_ratio)  # the prepared set the requests use
    train_users = sorted(set(prep.users[prep.split == SPLIT_TRAIN].tolist()))
    order = list(train_users)
    random.Random(42).shuffle(order)  # the request order: a fixed random draw of the train users
    n_all = max(a.requests, round(len(train_users) * a.share * a.requests))
    chosen = order[:n_all]
    chunks = [chosen[i::a.requests] for i in range(a.requests)]

    def stages(res):
        info = res.report["details"].get("e2urec_fast", {})
        st = dict(info.get("stages", {}))
        st["evaluation"] = sum(res.report["details"]["eval_s"].values())
        st["audit"] = res.report["details"]["audit_s"]
        return st

    # 2. one request for five users
    t0 = time.perf_counter()
    one = forget(work / "one", original=str(base.original), forget_users=order[n_all:n_all + n_five], no_retrain=True, **common)
    one_s = time.perf_counter() - t0
    result = dict(original=dict(seconds=base_s, auc=base.metrics("Original")["auc"]),
                  five_users=dict(wall_s=one_s, report_total_s=one.report["total_s"], stages=stages(one),
                                  forget_samples=one.report["counts"]["forget"], e2urec_auc=one.metrics("E2URec")["auc"],
                                  audit=one.audit))
    print(f"one request for {n_five} users: {one_s:.1f} s ({stages(one)})", file=sys.stderr)

    # 3. five requests in a row
    seq, prev = [], None
    for k, users in enumerate(chunks):
        t0 = time.perf_counter()
        kw = dict(previous=str(prev)) if prev else dict(original=str(base.original))
        r = forget(work / f"seq{k + 1}", forget_users=users, no_retrain=True, merge=True, **kw, **common)
        s = time.perf_counter() - t0
        seq.append(dict(request=k + 1, users=len(users), forget_samples=r.report["counts"]["forget"],
                        retain_samples=r.report["counts"]["retain"], wall_s=s, stages=stages(r), auc=r.metrics("E2URec")["auc"],
                        original_auc=r.metrics("Original")["auc"], audit_e2urec=r.audit["E2URec"],
                        retain_cache=r.report["details"]["e2urec_fast"]["teacher_cache"],
                        imported_rows=r.report["details"].get("retain_cache_imported", {}).get("rows")))
        print(f"request {k + 1}: {len(users)} users, {s:.1f} s, AUC {seq[-1]['auc']:.4f}", file=sys.stderr)
        prev = r.out
    # the same users in one request, with Retrain on the final D_r (the gold standard)
    t0 = time.perf_counter()
    single = forget(work / "single", original=str(base.original), forget_users=chosen, backbone="tiny", merge=True, **common)
    single_s = time.perf_counter() - t0

    # the sequential chain's final model against that Retrain, on the cumulative D_f
    apply_request(prep, common["dataset"], chosen, set())
    apply_holdout(prep, common["dataset"], [])  # a request has no holdout unless it names one (--holdout-users)
    job = Job(prep, resolve_backbone("tiny", prep, Path(common["cache_dir"]).expanduser(), 42), work / "scratch", seed=42,
              batch_size=common.get("batch_size", 16), progress=False)
    # the shipped settings, as the single request trained it
    cfg = finetune_config(preset(backbone="tiny", batch_size=job.batch_size, **({"epochs": common["epochs"]} if "epochs" in common else {})))
    retr, _, rinfo = train_on(job, "retain", cfg, Path(common["cache_dir"]).expanduser(), "Retrain")
    assert "cached" in rinfo, "Retrain should be the one the single request trained"
    final = load_backbone(prev / "merged")
    f_idx, t_idx = prep.index("forget_all"), prep.index("test")
    full = {n: predict_logits(m, m.model, job.seqs, f_idx, 8, full=True) for n, m in (("Retrain", retr), ("E2URec x5", final))}
    test_yn = {n: predict_logits(m, m.model, job.seqs, t_idx, 8) for n, m in (("Retrain", retr), ("E2URec x5", final))}
    lab_f, lab_t = prep.labels[f_idx].numpy(), prep.labels[t_idx].numpy()
    aud = audit({n: (answer_losses(yes_no(retr, full[n]), lab_f), answer_losses(test_yn[n], lab_t)) for n in full}, "Retrain")
    result["sequential"] = seq
    result["sequential_final"] = dict(**jsd_l2(full["Retrain"], full["E2URec x5"]), audit=aud["E2URec x5"])
    result["single"] = dict(users=len(chosen), wall_s=single_s, rows=single.rows, audit=single.audit, stages=stages(single))
    result["env"] = env_info("cpu")
    result["dry_run"] = a.dry_run
    (work / "requests.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps(dict(five_users_s=one_s, sequential=[(q["wall_s"], q["auc"]) for q in seq],
                          final=result["sequential_final"], single=[(r["method"], r["auc"], r["jsd"], r["l2"]) for r in single.rows]),
                     indent=1, default=float))
    del torch
    return 0


if __name__ == "__main__":
    sys.exit(main())
