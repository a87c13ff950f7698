"""Deletion requests as the product's unit of work, timed on the default data.

    python benchmarks/bench_requests.py [--work DIR] [--cache-dir DIR] [--dry-run]
    python benchmarks/bench_requests.py --timing [--before REV] [--seeds 1,2,3] [--work DIR]

--timing: before and after, side by side in one sitting. For each seed (it draws the users
and seeds the training; the prepared data's split stays at seed 42), a request for 5 users
and one for 20% of the train users, each `python -m e2urec_fast.unlearn --original BASE
--forget-users ... --no-retrain` in its own process, once with the code at --before (a
`git archive` of that revision on PYTHONPATH) and once with this checkout, interleaved.
Wall clock is the process's (start-up included: what a user waits for); the stages are
the report's. After each request of this checkout, the floor: one no-grad forward pass of
the Original over the rows the request touched (the D_r rows its teacher cache holds, D_f,
test and D_h), timed in this process; the request's time is quoted as a multiple of it.
A warm-up request per revision (not timed) prepares the data and builds what each builds
once. Each variant has its own cache folder under --work (what a request caches, its prepared
data, the Original's teacher rows and predictions, would otherwise be ready for every variant
that runs after the first one of a seed: until 2026-12-07 the first paid for the others).
A third variant, this checkout with LoRA everywhere (`--lora-scope all`: the full
augmented model and a student over the whole network, the request's default before the
cached boundary became it), is timed beside them, and a fourth: this checkout with
`--holdout-users` (10 train users outside the request), so that the request calibrates its
strength (calibrate.py) and its report gives the calibration's seconds (time only: these users
are members of the Original, so its verdict means nothing here); `calib_before` is the same
request with the --before code, for a calibrated ratio in one sitting. Writes `request_timing.json`
into --work.

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
    ap.add_argument("--timing", action="store_true", help="before/after request timing (see above)")
    ap.add_argument("--before", default="84cf380", help="--timing: the revision to compare against")
    ap.add_argument("--seeds", default="1,2,3", help="--timing: the seeds")
    ap.add_argument("--base", default=None, help="--timing: this Original (a HuggingFace folder of the tiny preset) "
                    "instead of training ours on the default data (the request's cost does not depend on the weights)")
    ap.add_argument("--variants", default="before,after,all,calib", help="--timing: which of before, after, all, calib, "
                    "calib_before (the --before code with the same --holdout-users as calib)")
    a = ap.parse_args(argv)
    if a.timing:
        return timing(a)

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
        return _stages(res.report)

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


def _request(src, base, users, seed, out, cache, dataset_args, extra=()):
    """One request in its own process: (wall seconds, report)."""
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, "-m", "e2urec_fast.unlearn", "--original", str(base), "--forget-users", ",".join(map(str, users)),
           "--no-retrain", "--seed", str(seed), "--split-seed", "42", "--cache-dir", str(cache), "--out", str(out),
           *dataset_args, *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=str(src), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"request failed ({src}): {p.stderr[-2000:]}")
    return wall, json.loads((out / "report.json").read_text())


def _stages(rep, wall=None):
    """Where a request's wall clock went, flat: start-up (the process before the job's clock:
    imports), load (data, models, checks), the CTR floor and the Original's (cached)
    predictions, E2URec's augment / cache / student, the evaluation, the audit, the write
    (merged model, report, cards) and what is left of the methods' stage."""
    d = rep["details"]
    e = d.get("e2urec_fast", {})
    st = dict(e.get("stages", {}))
    ss, ev = d.get("stage_s", {}), d["eval_s"]
    st["evaluation"] = sum(ev.values())
    st["audit"] = d["audit_s"]
    st["report_total"] = rep["total_s"]
    if rep.get("stages_s"):  # the report's own flat stages (report.flat_stages)
        st |= {k: v for k, v in rep["stages_s"].items() if k not in st}
    elif ss:
        st["load"] = ss.get("prepare", 0.0) + ss.get("models", 0.0)
        st["references"] = ss.get("references", 0.0) - ev.get("Original", 0.0) - ev.get("Retrain", 0.0)
        st["methods_other"] = ss.get("methods", 0.0) - e.get("time_s", 0.0) - ev.get("E2URec", 0.0)
        st["write"] = rep["total_s"] - sum(ss.values()) - d["audit_s"]
    if wall is not None:
        st["start_up"] = wall - rep["total_s"]
    return st


def _floor(base, users, out, cache, dataset, data_dir, max_samples, scratch):
    """Seconds of one no-grad forward of the Original over the rows the request touched."""
    import torch

    from e2urec_fast.data import prepare
    from e2urec_fast.evaluate import predict_logits
    from e2urec_fast.files import load_safetensors
    from e2urec_fast.methods.common import Job
    from e2urec_fast.models import load_backbone
    from e2urec_fast.request import apply_holdout, apply_request

    prep = prepare(dataset, data_dir, cache, max_samples, 0.2, 42)
    apply_request(prep, dataset, users, set())
    apply_holdout(prep, dataset, [])
    job = Job(prep, Path(base), Path(scratch), seed=42, batch_size=16, progress=False)
    _ = job.seqs  # tokenized before the clock starts
    bb = load_backbone(base)
    tc = out / "cache" / "teacher_retain.safetensors"
    r_idx = load_safetensors(tc).get("orig_r.idx") if tc.is_file() else None
    parts = [prep.index("forget_all"), prep.index("test"), prep.index("holdout")]
    parts.append(r_idx if r_idx is not None else torch.empty(0, dtype=torch.long))
    idx = torch.cat(parts).unique()
    predict_logits(bb, bb.model, job.seqs, idx[:job.eval_batch_size], job.eval_batch_size, "cpu")  # warm-up
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        predict_logits(bb, bb.model, job.seqs, idx, job.eval_batch_size, "cpu")
        ts.append(time.perf_counter() - t0)
    return dict(rows=int(len(idx)), retain_rows=0 if r_idx is None else int(len(r_idx)), seconds=sorted(ts)[1])


def summarize(rows) -> dict:
    """Per request size: medians and ranges of the wall clock before and after, the paired
    speed-up, the floor and the request's multiple of it, the median stages after, and the
    teacher-cache pass's rows/s against the floor's (a plain no-grad forward)."""
    import statistics

    med = statistics.median
    out = {}
    for size in dict.fromkeys(r["request"] for r in rows):
        b = {r["seed"]: r["wall_s"] for r in rows if r["request"] == size and r["code"] == "before"}
        f = [r for r in rows if r["request"] == size and r["code"] == "after"]
        af = [r["wall_s"] for r in f]
        bd = {r["seed"]: r["wall_s"] for r in rows if r["request"] == size and r["code"] == "all"}
        stages = {k: med([r["stages"][k] for r in f]) for k in f[0]["stages"]}
        fb = [r for r in rows if r["request"] == size and r["code"] == "all"]
        cache = [(c["retain"] + 2 * c["forget"]) / r["stages"]["cache"] for r in f if (c := r.get("cache_rows"))]
        out[size] = dict(users=f[0]["users"], forget_samples_median=med([r["forget_samples"] for r in f]),
                         before_median_s=med(b.values()) if b else None,
                         before_range=[min(b.values()), max(b.values())] if b else None,
                         after_median_s=med(af), after_range=[min(af), max(af)],
                         speedup_median=med([b[r["seed"]] / r["wall_s"] for r in f]) if b else None,
                         floor_median_s=med([r["floor"]["seconds"] for r in f]),
                         multiple_of_floor_median=med([r["wall_s"] / r["floor"]["seconds"] for r in f]),
                         after_stages_median=stages, cache_rows_per_s_median=med(cache) if cache else None,
                         floor_rows_per_s_median=med([r["floor"]["rows"] / r["floor"]["seconds"] for r in f]))
        cal = [r for r in rows if r["request"] == size and r["code"] == "calib"]
        if cal:
            out[size] |= dict(calib_median_s=med([r["wall_s"] for r in cal]), calib_range=[min(r["wall_s"] for r in cal),
                                                                                         max(r["wall_s"] for r in cal)],
                              calibrate_stage_median_s=med([r["stages"].get("calibrate", 0.0) for r in cal]),
                              calibrate_share_median=med([r["stages"].get("calibrate", 0.0) / r["wall_s"] for r in cal]))
        cb = {r["seed"]: r["wall_s"] for r in rows if r["request"] == size and r["code"] == "calib_before"}
        if cb:
            out[size] |= dict(calib_before_median_s=med(cb.values()), calib_before_range=[min(cb.values()), max(cb.values())])
            if cal:
                out[size]["calib_ratio_after_to_before_median"] = med([r["wall_s"] / cb[r["seed"]] for r in cal if r["seed"] in cb])
        if bd:
            out[size] |= dict(all_median_s=med(bd.values()), all_range=[min(bd.values()), max(bd.values())],
                              all_stages_median={k: med([r["stages"][k] for r in fb]) for k in fb[0]["stages"]},
                              all_multiple_of_floor_median=med([r["wall_s"] / r["floor"]["seconds"] for r in fb]),
                              after_speedup_vs_all_median=med([bd[r["seed"]] / r["wall_s"] for r in f if r["seed"] in bd]))
    return out


def timing(a) -> int:
    import random
    import subprocess

    from e2urec_fast import forget
    from e2urec_fast.data import prepare
    from e2urec_fast.data.prepare import SPLIT_TRAIN
    from e2urec_fast.data.synthetic import make_ml1m
    from e2urec_fast.report import env_info

    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(a.cache_dir).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if a.dry_run:
        data = make_ml1m(work / "ml1m", n_users=30, per_user=14)
        dataset, data_dir, max_samples = "ml-1m", str(data), 100_000
        dargs = ["--dataset", "ml-1m", "--data-dir", str(data), "--max-samples", "100000", "--batch-size", "8", "--epochs", "1",
                 "--student-steps", "8"]
        common = dict(dataset=dataset, data_dir=data_dir, max_samples=None, epochs=1, batch_size=8)
    else:
        dataset, data_dir, max_samples, dargs, common = "ml-100k", None, 10_000, [], dict(dataset="ml-100k")
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    base = Path(a.base).resolve() if a.base else forget(work / "base", methods="original", cache_dir=str(cache), quiet=True,
                                                         seed=42, **common).original
    before = work / f"src-{a.before}"
    if {"before", "calib_before"} & set(variants) and not before.is_dir():
        before.mkdir()
        arch = subprocess.run(["git", "-C", str(here), "archive", a.before], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=arch, check=True)
        if (before / "kernels").is_dir() and not (before / "e2urec_fast" / "kernels").exists():
            # revisions before the move installed `kernels/` as `e2urec_fast.kernels` (setup.py's package_dir); on the
            # path as a top-level folder it shadows the PyPI `kernels` that transformers imports: put it where it installs
            (before / "kernels").rename(before / "e2urec_fast" / "kernels")
    rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    prep = prepare(dataset, data_dir, cache, max_samples, 0.2, 42)
    train_users = sorted(set(prep.users[prep.split == SPLIT_TRAIN].tolist()))
    sizes = dict(five=min(5, len(train_users) - 1), twenty=max(1, round(0.2 * len(train_users))))
    # the default (a request on t5: the cached boundary) beside LoRA everywhere (`--lora-scope all`, the full augmented
    # model: the request default until #26's evidence)
    srcs = dict(before=(before, ()), after=(here, ()), all=(here, ("--lora-scope", "all")), calib=(here, ()),
                calib_before=(before, ()))
    srcs = {k: v for k, v in srcs.items() if k in variants}

    def held(order):  # the calibrated variant's non-members: the last 10 users of the seed's order (never asked to forget)
        return ("--holdout-users", ",".join(map(str, order[-10:])))

    # each variant its own cache folder: a request caches its prepared data, the Original's teacher rows and
    # predictions, so in one shared folder the variants run after the first of a seed found them ready
    vcache = {name: work / "caches" / name for name in srcs}
    for name, (src, extra) in srcs.items():  # warm-up: data prepared, native op built
        _request(src, base, train_users[:1], 0, work / f"warm-{name}", vcache[name], dargs,
                 held(train_users) if name.startswith("calib") else extra)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        order = list(train_users)
        random.Random(seed).shuffle(order)
        for size, n in sizes.items():
            for name, (src, extra) in srcs.items():
                out = work / f"{name}-{size}-seed{seed}"
                if out.exists():
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                wall, rep = _request(src, base, order[:n], seed, out, vcache[name], dargs,
                                     held(order) if name.startswith("calib") else extra)
                row = dict(seed=seed, request=size, users=n, code=name, wall_s=wall, stages=_stages(rep, wall),
                           forget_samples=rep["counts"]["forget"], steps=rep["details"]["e2urec_fast"].get("steps"),
                           cache_rows=rep["details"]["e2urec_fast"].get("teacher_cache", {}).get("rows"),
                           boundary=(rep["details"]["e2urec_fast"].get("teacher_cache") or {}).get("boundary"),
                           auc=next(r["auc"] for r in rep["rows"] if r["method"] == "E2URec"),
                           loss_auc=rep.get("audit", {}).get("E2URec", {}).get("loss_auc"))
                if src != before:
                    row["floor"] = _floor(base, order[:n], out, cache, dataset, data_dir, max_samples, work / "floor_scratch")
                rows.append(row)
                print(f"seed {seed} {size} {name}: {wall:.1f} s", file=sys.stderr)
    summary = summarize(rows)
    res = dict(summary=summary, rows=rows, before=a.before, after=rev, env=env_info("cpu"), dry_run=a.dry_run,
               command="python benchmarks/bench_requests.py " + " ".join(sys.argv[1:]))
    (work / "request_timing.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
