"""E2URec's variants side by side over seeds, from finished multi-seed runs of one scenario
(issue #25 item 6, #26 item 1): the reference path, the fast path, the cached boundary, a
schedule sized to D_f... each a row of some run's per-seed reports, paired by seed.

    python benchmarks/paths_in_scenario.py --seeds 1,2,3,4,5 \\
        --run "reference path=/tmp/q/memref:E2URec (reference)" \\
        --run "fast path=/tmp/q/memref:E2URec (fast)" \\
        --run "cached boundary (decoder, LoRA aug)=/tmp/q/membd:E2URec" \\
        --ref "fast path" --time-ref "reference path" --out benchmarks/results/scenario_memorize_paths

Each --run is LABEL=DIR:METHOD (DIR/seed-N/report.json, its row METHOD). The Original and
Retrain of a seed are taken from the first run's report (every run of a seed must share them:
the same data split and models; checked by their test AUC). Written: OUT/report.json and
OUT/report.md: per variant mean ± 95% half-width over seeds of test AUC, JSD and L2 to Retrain
on D_f, the attack AUCs, forget quality, the share of the Original-to-Retrain JSD gap closed,
the student's steps and time (and its median); paired differences to --ref; per-seed time
ratios to --time-ref (median, min, max).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from e2urec_fast.seeds import summarize  # noqa: E402

METRICS = [("auc", 100, "test AUC"), ("jsd", 100, "JSD"), ("l2", 100, "L2"), ("mia_loss_auc", 1, "LOSS AUC (D_f vs D_h)"),
           ("mia_ref_auc", 1, "ref-calibrated AUC"), ("forget_quality", 1, "forget quality"), ("target_p_yes", 1, "target p(yes), probes (shilling)"),
           ("jsd_gap_closed", 100, "JSD gap closed %"),
           ("steps", 1, "student steps"), ("time_s", 1, "time (s)")]


def load(spec: str, seeds: list[int]):
    label, _, rest = spec.partition("=")
    folder, _, method = rest.rpartition(":")
    per = {}
    for s in seeds:
        rep = json.loads((Path(folder) / f"seed-{s}" / "report.json").read_text())
        rows = {r["method"]: r for r in rep["rows"]}
        if method not in rows:
            raise SystemExit(f"{folder}/seed-{s}/report.json: no row {method!r} (rows: {', '.join(rows)})")
        row = dict(rows[method])
        detail = next((v for k, v in rep.get("details", {}).items() if isinstance(v, dict) and v.get("time_s") == row.get("time_s")), {})
        row["steps"] = detail.get("steps")
        per[s] = dict(row=row, original=rows.get("Original"), retrain=rows.get("Retrain"), git=rep["env"].get("git"))
    return label, per


def _fmt(s, scale, digits=2):
    if s is None:
        return "-"
    if s["ci95"] is None:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['ci95'] * scale:.{digits}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--run", action="append", required=True, help="LABEL=DIR:METHOD")
    ap.add_argument("--ref", required=True, help="the label paired differences are taken against")
    ap.add_argument("--time-ref", default=None, help="the label time ratios are taken against (default --ref)")
    ap.add_argument("--title", default="E2URec's variants in the scenario")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = dict(load(spec, seeds) for spec in a.run)
    first = next(iter(runs.values()))
    for label, per in runs.items():
        for s in seeds:
            o, o1 = per[s]["original"], first[s]["original"]
            if o and o1 and abs(o["auc"] - o1["auc"]) > 1e-9:
                raise SystemExit(f"{label}, seed {s}: another Original (test AUC {o['auc']} vs {o1['auc']}): not paired")
            jo = first[s]["original"]["jsd"]
            row = per[s]["row"]
            row["jsd_gap_closed"] = (jo - row["jsd"]) / jo if jo else None
    keys = [k for k, *_ in METRICS]
    summary = {label: {k: summarize([per[s]["row"].get(k) for s in seeds]) for k in keys} for label, per in runs.items()}
    for label, per in runs.items():
        summary[label]["time_median_s"] = statistics.median(per[s]["row"]["time_s"] for s in seeds)
    paired = {label: {k: summarize([per[s]["row"][k] - runs[a.ref][s]["row"][k] for s in seeds
                                    if per[s]["row"].get(k) is not None and runs[a.ref][s]["row"].get(k) is not None])
                      for k in keys} for label, per in runs.items() if label != a.ref}
    tref = a.time_ref or a.ref
    ratios = {label: sorted(runs[tref][s]["row"]["time_s"] / per[s]["row"]["time_s"] for s in seeds) for label, per in runs.items()}
    refs = {k: summarize([first[s][k.lower()][m] for s in seeds]) for k in ("Original", "Retrain") for m in ("auc",)}
    orig_jsd = summarize([first[s]["original"]["jsd"] for s in seeds])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = dict(seeds=seeds, runs={label: {str(s): per[s]["row"] for s in seeds} for label, per in runs.items()}, summary=summary,
               paired_vs_ref=dict(ref=a.ref, diffs=paired), time_ratio_vs=dict(ref=tref, ratios=ratios),
               original=dict(auc=refs["Original"], jsd=orig_jsd), retrain=dict(auc=refs["Retrain"]),
               git={label: sorted({per[s]["git"] for s in seeds}) for label, per in runs.items()}, command=" ".join(sys.argv))
    (out / "report.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# {a.title}", "", f"Seeds {a.seeds}; mean ± 95% half-width (x100 for AUC, JSD, L2, gap %). Original: test AUC "
             f"{_fmt(refs['Original'], 100)}, JSD to Retrain on D_f {_fmt(orig_jsd, 100)}; Retrain test AUC {_fmt(refs['Retrain'], 100)}.", "",
             "| variant | " + " | ".join(t for *_, t in METRICS) + f" | median time (s) | time ratio {tref} / variant (median, min-max) |",
             "|---|" + "---|" * (len(METRICS) + 2)]
    for label in runs:
        r = ratios[label]
        cells = [_fmt(summary[label][k], sc, 1 if k in ("steps", "time_s") else 4 if sc == 1 else 2) for k, sc, _ in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {summary[label]['time_median_s']:.1f} | "
                     f"{statistics.median(r):.2f}x ({r[0]:.2f}-{r[-1]:.2f}) |")
    lines += ["", f"Paired by seed, variant - {a.ref} (mean ± 95% half-width; an interval excluding 0 is a resolved difference):", ""]
    lines += ["| variant | " + " | ".join(t for *_, t in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for label, d in paired.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(d[k], sc, 1 if k in ("steps", "time_s") else 4 if sc == 1 else 2)
                                                  for k, sc, _ in METRICS) + " |")
    lines += ["", f"Command: `{res['command']}`; the runs' git revisions: "
              + "; ".join(f"{k}: {', '.join(v)}" for k, v in res["git"].items()), ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
