"""Merge the per-seed reports of several runs that share their Original and Retrain (the model
cache) into one table: the first run gives every row, each later run adds its unlearned rows
under `method (label)`. Per seed it checks that the runs read the same Original (test AUC and
LOSS-attack AUC equal), then writes the merged per-seed reports, the aggregate (seeds.py: mean
± 95% half-width, the share of each attack gap closed, paired differences to E2URec) and the
paired differences of every method to the Original and to the second Retrain, with the
overshoot count (a method below the second Retrain's attack AUC by more than Retrain and the
second Retrain differ on that seed).

    python benchmarks/merge_runs.py --seeds 1,2,3,4 --run OUT/main --run "OUT/both:teacher and strength" --out DIR
    (--rename "E2URec=E2URec (before)" --rename "E2URec (new)=E2URec": which row the others are paired to)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from e2urec_fast.seeds import _interval, aggregate, markdown, summarize  # noqa: E402

SHARED = ("Original", "Retrain", "Retrain (2nd)")
PAIRED = (("auc", 100, 2), ("mia_loss_auc", 1, 4), ("mia_floor_auc", 1, 4), ("mia_ref_auc", 1, 4))


def merge_seed(runs: list[tuple[Path, str]], seed: int) -> dict:
    base = None
    for d, label in runs:
        rep = json.loads((d / f"seed-{seed}" / "report.json").read_text())
        if base is None:
            base = rep
            base["merged_from"] = [str(d)]
            continue
        o0 = next(r for r in base["rows"] if r["method"] == "Original")
        o1 = next(r for r in rep["rows"] if r["method"] == "Original")
        for k in ("auc", "mia_loss_auc"):
            if abs(o0[k] - o1[k]) > 1e-9:
                raise SystemExit(f"{d}/seed-{seed}: its Original differs from {runs[0][0]}'s ({k} {o1[k]} vs {o0[k]})")
        for r in rep["rows"]:
            if r["method"] in SHARED or r["method"].startswith("CTR floor"):
                continue
            r = dict(r, method=f"{r['method']} ({label})")
            base["rows"].append(r)
            for kind in ("methods", "teachers"):  # the strength's (or rewind's) record, the teacher's
                cal = (rep.get("calibration") or {}).get(kind, {}).get(r["method"].rsplit(" (", 1)[0])
                if cal is not None:
                    base.setdefault("calibration", {}).setdefault(kind, {})[r["method"]] = cal
        base["merged_from"].append(str(d))
    return base


def rename(rep: dict, names: dict) -> dict:
    """The merged report with its rows (and their calibration records) renamed: `names` {old: new}."""
    for r in rep["rows"]:
        r["method"] = names.get(r["method"], r["method"])
    for kind in ("methods", "teachers"):
        recs = (rep.get("calibration") or {}).get(kind)
        if recs:
            rep["calibration"][kind] = {names.get(k, k): v for k, v in recs.items()}
    return rep


def paired(by: list[dict], to: str) -> dict:
    out = {}
    for m in by[0]:
        if m == to or m.startswith("CTR floor"):
            continue
        out[m] = {k: summarize([b[m][k] - b[to][k] for b in by if m in b and to in b
                                and b[m].get(k) is not None and b[to].get(k) is not None]) for k, _, _ in PAIRED}
    return out


def overshoot(by: list[dict], seeds: list[int]) -> dict:
    """Per method, the seeds where its LOSS-attack AUC is below the second Retrain's by more than
    |Retrain - Retrain (2nd)| on that seed (the noise floor)."""
    out = {}
    for m in by[0]:
        if m in SHARED or m.startswith("CTR floor"):
            continue
        out[m] = [s for s, b in zip(seeds, by) if m in b and "Retrain (2nd)" in b
                  and b[m]["mia_loss_auc"] < b["Retrain (2nd)"]["mia_loss_auc"]
                  - abs(b["Retrain"]["mia_loss_auc"] - b["Retrain (2nd)"]["mia_loss_auc"])]
    return out


def verdicts(reports: list[dict], seeds: list[int]) -> dict:
    out = {}
    for s, rep in zip(seeds, reports):
        for kind in ("teachers", "methods"):
            for m, c in ((rep.get("calibration") or {}).get(kind) or {}).items():
                out.setdefault(m, {}).setdefault(s, []).append(c.get("verdict"))
    return {m: {s: "; ".join(v) for s, v in d.items()} for m, d in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--run", action="append", required=True, help="DIR or DIR:LABEL (the first run's rows keep their names)")
    ap.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                    help="a merged row renamed (e.g. the first run's E2URec, so that another is the one paired to)")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    seeds = [int(x) for x in a.seeds.split(",")]
    runs = [(Path(r.split(":", 1)[0]), r.split(":", 1)[1] if ":" in r else "") for r in a.run]
    names = dict(x.split("=", 1) for x in a.rename)
    reports = [rename(merge_seed(runs, s), names) for s in seeds]
    for s, rep in zip(seeds, reports):
        (a.out / f"seed-{s}").mkdir(parents=True, exist_ok=True)
        (a.out / f"seed-{s}" / "report.json").write_text(json.dumps(rep, indent=1))
    agg = aggregate(reports, seeds)
    by = [{r["method"]: r for r in rep["rows"]} for rep in reports]
    extra = dict(paired_to_original=paired(by, "Original"), paired_to_retrain2=paired(by, "Retrain (2nd)"),
                 overshoot_seeds=overshoot(by, seeds), verdicts=verdicts(reports, seeds))
    (a.out / "report.json").write_text(json.dumps(dict(agg, **extra), indent=1))
    lines = [markdown(agg)]
    for key, name in (("paired_to_original", "Original"), ("paired_to_retrain2", "Retrain (2nd)")):
        lines += ["", f"Paired differences to {name} (method - {name}, seed by seed; mean [95% interval], `*`: excludes 0; "
                  "test AUC x100):", "", "| Method | test AUC | LOSS-attack AUC | floor-calibrated AUC | ref-calibrated AUC |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m} | " + " | ".join(_interval(d[k], sc, dg) for k, sc, dg in PAIRED) + " |" for m, d in extra[key].items()]
    lines += ["", "Overshoot (LOSS-attack AUC below the second Retrain's by more than Retrain and the second Retrain differ), "
              "seeds: " + "; ".join(f"{m}: {', '.join(map(str, s)) or 'none'}" for m, s in extra["overshoot_seeds"].items())]
    lines += ["", "Calibration's verdicts, seed by seed:", ""]
    for m, v in extra["verdicts"].items():
        lines += [f"- {m}:"] + [f"  - seed {s}: {t}" for s, t in v.items()]
    (a.out / "report.md").write_text("\n".join(lines) + "\n")
    print((a.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
