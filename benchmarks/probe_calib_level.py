"""Can the calibration users say where "not a member" lies for this D_f? (issue #37)

    python benchmarks/probe_calib_level.py [--out FILE]

Calibration aims E2URec at a LOSS-attack AUC of 0.5 against the calibration users; the audit
reads D_f against the other held-out users, and Retrain (which never saw D_f) is the level a
forgetting should reach. Per memorize seed (holdout 0.4: 9 users calibrate, 10 audit), from the
stored reports and the prepared data alone (nothing is trained): the attack AUC a model that never
saw D_f gives it, the CTR floor refitted on D_r (floor.reference_losses), against the calibration
users and against the audit users; beside them Retrain's, the second Retrain's and the Original's
audit AUC and the Original's calibration AUC. If the floor's two readings differ, the two halves
of the held-out users differ in difficulty, and 0.5 against one half is not the level of the other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from e2urec_fast.audit import mia_auc  # noqa: E402
from e2urec_fast.data import prepare  # noqa: E402
from e2urec_fast.floor import reference_losses  # noqa: E402

R = HERE / "results"
REPORTS = {s: R / f"scenario_memorize_h04_guarded/seed-{s}/report.json" for s in range(1, 6)} | {
    6: R / "memorize_seed6_unreached_none/report.json", 7: R / "scenario_memorize_h04_fresh7/report.json"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(R / "calib_level_memorize_h04.json"))
    ap.add_argument("--cache-dir", default="~/.cache/e2urec_fast")
    a = ap.parse_args(argv)
    rows = []
    for seed, f in REPORTS.items():
        rep = json.loads(Path(f).read_text())
        st, audit = rep["settings"], rep["audit"]["models"]
        p = prepare(st["dataset"], None, a.cache_dir, st["max_samples"], st["forget_ratio"], st["split_seed"],
                    holdout_ratio=st["holdout_ratio"], scenario=st["scenario"])
        if len(p.index("forget")) != rep["counts"]["forget"] or len(p.index("audit")) != rep["counts"]["audit"]:
            raise SystemExit(f"{f}: the prepared data does not match the report's counts")
        loss = reference_losses(p, dict(f=p.index("forget"), a=p.index("audit"), c=p.index("calib")))
        rows.append(dict(seed=seed, floor_vs_calib=mia_auc(-loss["f"], -loss["c"]), floor_vs_audit=mia_auc(-loss["f"], -loss["a"]),
                         retrain=audit["Retrain"]["loss_auc"], retrain2=audit.get("Retrain (2nd)", {}).get("loss_auc"),
                         original=audit["Original"]["loss_auc"], original_calib=rep["calibration"]["methods"]["E2URec"]["original_auc"],
                         report=str(Path(f).relative_to(R))))
        r = rows[-1]
        print(f"seed {seed}: floor vs calibration {r['floor_vs_calib']:.3f}, vs audit {r['floor_vs_audit']:.3f} | Retrain "
              f"{r['retrain']:.3f} | Original {r['original']:.3f} (calibration {r['original_calib']:.3f})")
    col = lambda k: np.array([r[k] for r in rows], dtype=float)  # noqa: E731
    summary = dict(corr_floor_calib_retrain=float(np.corrcoef(col("floor_vs_calib"), col("retrain"))[0, 1]),
                   corr_floor_audit_retrain=float(np.corrcoef(col("floor_vs_audit"), col("retrain"))[0, 1]),
                   corr_original_calib_audit=float(np.corrcoef(col("original_calib"), col("original"))[0, 1]),
                   floor_halves_abs_diff_mean=float(np.abs(col("floor_vs_calib") - col("floor_vs_audit")).mean()),
                   retrain_range=[float(col("retrain").min()), float(col("retrain").max())])
    print(json.dumps(summary, indent=1))
    Path(a.out).write_text(json.dumps(dict(rows=rows, summary=summary, command="python benchmarks/probe_calib_level.py"), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
