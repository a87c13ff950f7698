"""How far the statistic calibration reads is from its target for models that never saw D_f
(issue #37): the raw LOSS attack against the floor-calibrated one (`--calib-reference`).

Calibration brings the attack AUC of D_f vs the calibration users to 0.5. That target is right
only where a model that never saw D_f reads 0.5 there. Per seed this loads the scenario's
cached Original, Retrain and second Retrain (run the scenario first: nothing is trained here
unless missing) and reads, for each model, the attack AUC of D_f against the calibration users
and against the audit users: raw (per-sample loss) and floor-calibrated (loss less the CTR
floor's refitted on D_r, floor.reference_losses), plus Retrain-calibrated against the audit
users (the audit's ref_auc). The summary: the mean distance from 0.5 of Retrain's and the second
Retrain's calibration AUC (the target's error), and the calibration-vs-audit difference of the
Original's AUC (does the calibration part speak for the audit part).

    python benchmarks/bench_calib_reference.py --scenario memorize --seeds 1,2,3,4,5 --holdout-ratio 0.4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from e2urec_fast import api  # noqa: E402
from e2urec_fast.audit import answer_losses, mia_auc  # noqa: E402
from e2urec_fast.config import from_fields  # noqa: E402
from e2urec_fast.floor import reference_losses  # noqa: E402


def read_seed(scenario: str, seed: int, holdout: float | None, cache: str | None, out: Path) -> dict:
    """The AUCs of one seed (the job's own stages up to its references; the models from the cache)."""
    import torch

    from e2urec_fast.methods.retrain import finetune_config, train_on

    f = dict(scenario=scenario, seed=seed, methods="original,retrain", out=str(out / f"seed-{seed}"), quiet=True, threads=1,
             device="cpu", dtype="fp32")
    if holdout is not None:
        f["holdout_ratio"] = holdout
    if cache:
        f["cache_dir"] = cache
    cfg = from_fields(None, **f)
    torch.set_num_threads(1)
    plan = api.check(cfg)
    st = api.State(cfg, plan, Path(cfg.run.out), Path(cfg.data.cache_dir).expanduser(), 0.0, finetune_config(cfg),
                   stage=lambda *a: None)
    api.prepare_stage(st)
    api.resolve_models(st)
    api.references(st)
    prep, job = st.prep, st.job
    parts = {k: prep.index(k) for k in ("forget", "calib", "audit")}
    lab = {k: prep.labels[i].numpy() for k, i in parts.items()}
    ref = reference_losses(prep, parts)
    models = {"Original": st.orig,
              "Retrain": train_on(job, "retain", st.ft, st.cache, "Retrain")[0],
              "Retrain (2nd)": train_on(dataclasses.replace(job, seed=job.seed + 100), "retain", st.ft, st.cache, "Retrain")[0]}
    loss = {}
    for name, bb in models.items():
        bb.model.eval()
        loss[name] = {k: answer_losses(st.ev.predict_part(bb, i, False), lab[k]) for k, i in parts.items()}
    row = dict(counts={k: len(i) for k, i in parts.items()}, users={k: len(set(prep.users[i].tolist())) for k, i in parts.items()})
    for name, lo in loss.items():
        r = {}
        for nm in ("calib", "audit"):
            r[f"raw_{nm}"] = mia_auc(-lo["forget"], -lo[nm])
            r[f"floor_{nm}"] = mia_auc(ref["forget"] - lo["forget"], ref[nm] - lo[nm])
        if name != "Retrain":
            rt = loss["Retrain"]
            r["retrain_audit"] = mia_auc(rt["forget"] - lo["forget"], rt["audit"] - lo["audit"])
        row[name] = r
    return row


def summary(rows: list[dict]) -> dict:
    out = {}
    for kind in ("raw", "floor"):
        err = [abs(r[m][f"{kind}_calib"] - 0.5) for r in rows for m in ("Retrain", "Retrain (2nd)")]
        agree = [abs(r["Original"][f"{kind}_calib"] - r["Original"][f"{kind}_audit"]) for r in rows]
        out[kind] = dict(target_error_mean=statistics.fmean(err), target_error_max=max(err),
                         original_calib_vs_audit_mean=statistics.fmean(agree))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="memorize")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--holdout-ratio", type=float, default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--work", default="/tmp/bench_calib_reference")
    ap.add_argument("--out", default=None, help="the JSON to write (default: print only)")
    a = ap.parse_args(argv)
    rows = []
    for s in (int(x) for x in a.seeds.split(",")):
        rows.append(dict(seed=s, **read_seed(a.scenario, s, a.holdout_ratio, a.cache_dir, Path(a.work))))
        print(json.dumps(rows[-1]), flush=True)
    res = dict(scenario=a.scenario, holdout_ratio=a.holdout_ratio, seeds=rows, summary=summary(rows))
    print(json.dumps(res["summary"], indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
