"""Seeds as an axis: one benchmark run per seed, one report with the spread.

Per method and metric: the mean, the sample standard deviation and the half-width of a 95%
confidence interval for the mean (Student's t with n - 1 degrees of freedom), over the
seeds. Per method against E2URec: the paired difference (method - E2URec, seed by seed)
with its own interval: a ranking claim holds only where that interval excludes 0. And
E2URec's share of the Original-to-Retrain JSD gap it closes on D_f, per seed
((JSD_Original - JSD_E2URec) / JSD_Original, Retrain's own JSD being 0).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from .config import replace_fields
from .errors import UserError
from .files import json_key, write_json_atomic, write_text_atomic

METRICS = ["auc", "acc", "logloss", "jsd", "l2", "time_s", "mia_loss_auc", "mia_ref_auc", "mia_floor_auc", "privleak", "forget_quality",
           "target_p_yes", "target_p_yes_test", "target_p_yes_forget", "strength", "teacher_gamma", "teacher_pull", "rewound_step",
           "item_spread", "item_rate_corr"]
SCALE = {"auc": 100, "acc": 100, "logloss": 100, "jsd": 100, "l2": 100, "time_s": 1, "mia_loss_auc": 1, "mia_ref_auc": 1, "mia_floor_auc": 1,
         "privleak": 1, "forget_quality": 1, "target_p_yes": 1, "target_p_yes_test": 1, "target_p_yes_forget": 1, "strength": 1,
         "teacher_gamma": 1, "teacher_pull": 1, "rewound_step": 1, "item_spread": 1, "item_rate_corr": 1}
# the Original-to-Retrain gaps a method is asked to close: (O - M) / (O - R), seed by seed
GAPS = ("jsd", "mia_loss_auc", "mia_ref_auc", "mia_floor_auc", "target_p_yes")
# where Retrain's own value is fixed: JSD to itself 0, its reference-calibrated AUC against itself 0.5
GAP_IDEAL = {"jsd": 0.0, "mia_ref_auc": 0.5}
REF = "E2URec"


def summarize(values) -> dict | None:
    """{n, mean, std, ci95 (half-width; None for n < 2), values} of the finite values, or None."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None
    n = len(v)
    mean = float(np.mean(v))
    if n < 2:
        return dict(n=n, mean=mean, std=None, ci95=None, values=v)
    from scipy.stats import t

    std = float(np.std(v, ddof=1))
    return dict(n=n, mean=mean, std=std, ci95=float(t.ppf(0.975, n - 1) * std / math.sqrt(n)), values=v)


def aggregate(reports: list[dict], seeds: list[int]) -> dict:
    """One summary over per-seed reports (each a report.json dict, same methods)."""
    order, kinds = [], {}
    for rep in reports:
        for r in rep["rows"]:
            if r["method"] not in kinds:
                order.append(r["method"])
                kinds[r["method"]] = r.get("kind", "unlearn")
    by = [{r["method"]: r for r in rep["rows"]} for rep in reports]
    rows = []
    for m in order:
        row = dict(method=m, kind=kinds[m])
        for k in METRICS:
            row[k] = summarize([b[m].get(k) if m in b else None for b in by])
        row["trainable_params"] = next((b[m].get("trainable_params") for b in by if m in b), None)
        row["diverged_seeds"] = [s for s, b in zip(seeds, by) if m in b and b[m].get("diverged")]
        rows.append(row)
    paired = {}
    if any(REF in b for b in by):
        for m in order:
            if m == REF or m.startswith("CTR floor"):
                continue
            paired[m] = {}
            for k in METRICS:
                d = [b[m][k] - b[REF][k] for b in by if m in b and REF in b
                     and b[m].get(k) is not None and b[REF].get(k) is not None]
                paired[m][k] = summarize(d)
    from .report import below_floor

    low = [s for s, rep in zip(seeds, reports) if below_floor(rep["rows"])]
    closed = gaps_closed(by, order)
    return dict(seeds=seeds, rows=rows, paired_vs_e2urec=paired, jsd_gap_closed=closed.get(REF, {}).get("jsd"),
                gap_closed=closed, original_vs_retrain=original_vs_retrain(by), below_floor_seeds=low)


def _gap_share(o, m, r):
    if o is None or m is None or r is None or o == r:
        return None
    return (o - m) / (o - r)


def gaps_closed(by: list[dict], order: list[str]) -> dict:
    """{method: {metric: summary of the share of the Original-to-Retrain gap it closes}}: 1 is
    Retrain's value, 0 the Original's, below 0 further away than the Original."""
    out = {}
    for m in order:
        if m in ("Original", "Retrain") or m.startswith("CTR floor"):
            continue
        out[m] = {}
        for k in GAPS:
            vals = [_gap_share(b.get("Original", {}).get(k), b[m].get(k), GAP_IDEAL[k] if k in GAP_IDEAL else b.get("Retrain", {}).get(k))
                    for b in by if m in b]
            out[m][k] = summarize(vals)
    return out


def original_vs_retrain(by: list[dict]) -> dict:
    """Is there something to forget: Original - Retrain, seed by seed, per audit metric (the
    JSD row of Original is already that gap), and the Original's forget quality."""
    out = {}
    for k in ("mia_loss_auc", "mia_ref_auc", "mia_floor_auc", "target_p_yes", "target_p_yes_test", "target_p_yes_forget", "auc"):
        ideal = GAP_IDEAL.get(k)
        d = [b["Original"][k] - (ideal if ideal is not None else b["Retrain"][k]) for b in by if "Original" in b and "Retrain" in b
             and b["Original"].get(k) is not None and (ideal is not None or b["Retrain"].get(k) is not None)]
        out[k] = summarize(d)
    return out


def csv_text(agg: dict) -> str:
    """One line per method and metric: n, mean, std, 95% half-width (raw units, not x100),
    and the paired difference to E2URec with its half-width."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "metric", "n", "mean", "std", "ci95", "diff_vs_e2urec_mean", "diff_vs_e2urec_ci95"])
    for row in agg["rows"]:
        for k in METRICS:
            s = row.get(k)
            if s is None:
                continue
            d = agg["paired_vs_e2urec"].get(row["method"], {}).get(k)
            cells = [s["n"], s["mean"], s["std"], s["ci95"], d and d["mean"], d and d["ci95"]]
            w.writerow([row["method"], k, *("" if c is None else repr(c) for c in cells)])
    return buf.getvalue()


def _cell(s: dict | None, scale: float, digits: int = 2) -> str:
    if s is None:
        return "-"
    if s["ci95"] is None:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['ci95'] * scale:.{digits}f}"


def _interval(s: dict | None, sc: float, dg: int) -> str:
    """'mean [lo, hi]' with `*` where the 95% interval excludes 0."""
    if s is None:
        return "-"
    if s["ci95"] is None:
        return f"{s['mean'] * sc:+.{dg}f}"
    lo, hi = (s["mean"] - s["ci95"]) * sc, (s["mean"] + s["ci95"]) * sc
    return f"{s['mean'] * sc:+.{dg}f} [{lo:+.{dg}f}, {hi:+.{dg}f}]" + ("*" if lo > 0 or hi < 0 else "")


def markdown(agg: dict) -> str:
    cols = [("auc", "AUC"), ("acc", "ACC"), ("logloss", "LogLoss"), ("jsd", "JSD"), ("l2", "L2"), ("time_s", "Time(s)")]
    audit = [("mia_loss_auc", "LOSS-attack AUC", 4), ("mia_ref_auc", "ref-calibrated AUC", 4), ("mia_floor_auc", "floor-calibrated AUC", 4),
             ("forget_quality", "forget quality", 3)]
    if any(r.get("strength") for r in agg["rows"]):
        audit.append(("strength", "strength (calibrated)", 2))
    if any(r.get("rewound_step") is not None for r in agg["rows"]):
        audit.append(("rewound_step", "step kept (rewind)", 0))
    if any(r.get("teacher_gamma") is not None for r in agg["rows"]):
        audit.append(("teacher_gamma", "teacher offset (calibrated)", 2))
    if any(r.get("teacher_pull") is not None for r in agg["rows"]):
        audit.append(("teacher_pull", "teacher pull (calibrated)", 2))
    if any(r.get("item_spread") for r in agg["rows"]):
        audit += [("item_spread", "item spread", 3), ("item_rate_corr", "item-rate corr.", 3)]
    if any(r.get("target_p_yes") for r in agg["rows"]):
        audit.append(("target_p_yes", "Target p(yes)", 3))
    n = len(agg["seeds"])
    low = agg.get("below_floor_seeds") or []
    lines = ([f"**WARNING: on seed(s) {', '.join(map(str, low))} Original's test AUC does not beat the CTR floor: on those "
              "seeds the recommender learned no more than a logistic regression on ids, and their unlearning figures are "
              "noise (see each seed's report).**", ""] if low else [])
    lines += [f"Mean ± 95% confidence half-width over {n} seeds ({', '.join(map(str, agg['seeds']))}); metrics x100 as in "
              "the paper, time in seconds; the audit's columns as fractions.", "",
              "| Method | " + " | ".join(c for _, c in cols) + " | " + " | ".join(c for _, c, _ in audit) + " | #Params |",
              "|" + "---|" * (len(cols) + len(audit) + 2)]
    for r in agg["rows"]:
        cells = [_cell(r[k], SCALE[k], 1 if k == "time_s" else 2) for k, _ in cols] + [_cell(r.get(k), 1, d) for k, _, d in audit]
        p = r.get("trainable_params")
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {'-' if not p else (f'{p:.2e}' if p >= 1e5 else p)} |")
    ovr = agg.get("original_vs_retrain") or {}
    if any(ovr.values()):
        names = dict(mia_loss_auc=("LOSS-attack AUC", 4), mia_ref_auc=("ref-calibrated AUC (Retrain's: 0.5)", 4),
                     mia_floor_auc=("floor-calibrated AUC", 4),
                     target_p_yes=("Target p(yes), every real test user (probes)", 3),
                     target_p_yes_test=("Target p(yes), real test samples about a target", 3),
                     target_p_yes_forget=("Target p(yes) on D_f", 3), auc=("test AUC (x100)", 2))
        lines += ["", "Something to forget? Original - Retrain, seed by seed (mean [95% interval]; `*`: excludes 0):", ""]
        lines += [f"- {names[k][0]}: {_interval(v, 100 if k == 'auc' else 1, names[k][1])}" for k, v in ovr.items() if v]
    if agg["paired_vs_e2urec"]:
        keys = [("auc", "ΔAUC"), ("logloss", "ΔLogLoss"), ("jsd", "ΔJSD"), ("l2", "ΔL2"), ("mia_loss_auc", "ΔLOSS-AUC"),
                ("forget_quality", "ΔFQ"), ("time_s", "ΔTime(s)")]
        lines += ["", "Paired differences to E2URec (method - E2URec, seed by seed; mean [95% interval]); `*`: the interval "
                  "excludes 0, so the difference is resolved at this number of seeds.", "",
                  "| Method | " + " | ".join(c for _, c in keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for m, d in agg["paired_vs_e2urec"].items():
            cells = [_interval(d.get(k), SCALE[k], 1 if k == "time_s" else 4 if k in ("mia_loss_auc", "forget_quality") else 2)
                     for k, _ in keys]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    closed = agg.get("gap_closed") or {}
    if closed:
        lines += ["", "Share of the Original-to-Retrain gap closed, % (1 - (M - Retrain)/(Original - Retrain); 100 = "
                  "Retrain, 0 = untouched, below 0 = further away than the Original):", "",
                  "| Method | JSD | LOSS-attack AUC | ref-calibrated AUC | floor-calibrated AUC | Target p(yes) |",
                  "|---|---|---|---|---|---|"]
        for m, d in closed.items():
            lines.append(f"| {m} | " + " | ".join(_cell(d.get(k), 100, 1) for k in GAPS) + " |")
    g = agg["jsd_gap_closed"]
    if g:
        lines += ["", f"E2URec closes {_cell(g, 100, 1)} % of the Original-to-Retrain JSD gap on D_f "
                  f"(per seed: {', '.join(f'{v * 100:.1f}' for v in g['values'])})."]
    return "\n".join(lines) + "\n"


def plot(agg: dict, path, title: str = "") -> bool:
    """D_f JSD against time, means with 95% intervals as error bars."""
    pts = [r for r in agg["rows"] if r["method"] != "Retrain" and r["jsd"] and r["time_s"]]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import finish_plot

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in pts:
        j, t = r["jsd"], r["time_s"]
        ax.errorbar([t["mean"]], [j["mean"] * 100], xerr=[t["ci95"] or 0], yerr=[(j["ci95"] or 0) * 100], fmt="o", capsize=3,
                    color="tab:red" if r["method"].startswith("E2URec") else "tab:blue")
        ax.annotate(r["method"], (t["mean"], j["mean"] * 100), textcoords="offset points", xytext=(5, 4), fontsize=8)
    js = [r["jsd"]["mean"] * 100 for r in pts]
    orig = next((r for r in agg["rows"] if r["method"] == "Original" and r.get("jsd")), None)
    if orig is not None:  # reference lines: the untouched Original's mean (band: its 95% interval); Retrain is 0
        o, c = orig["jsd"]["mean"] * 100, (orig["jsd"]["ci95"] or 0) * 100
        ax.axhline(o, color="tab:gray", linestyle="--", linewidth=1, label="Original (untouched)")
        if c:
            ax.axhspan(o - c, o + c, color="tab:gray", alpha=0.15)
        ax.legend(loc="lower right", fontsize=8)
    if len(js) > 1 and max(js) / max(min(js), 1e-3) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("unlearning time (s), mean ± 95% CI")
    ax.set_ylabel("JSD on D_f vs Retrain (x100), mean ± 95% CI")
    if agg.get("below_floor_seeds"):
        from .report import mark_below_floor

        mark_below_floor(ax, f"Original below the CTR floor on seed(s) {', '.join(map(str, agg['below_floor_seeds']))}")
    finish_plot(fig, ax, path, title or f"over {len(agg['seeds'])} seeds")
    return True


# ----------------------------------------------------------------- the run over seeds
def parse_seeds(spec: str) -> list[int]:
    toks = [t.strip() for t in str(spec).split(",")]
    if not toks or any(not re.fullmatch(r"-?[0-9]+", t) for t in toks):
        raise UserError(f"--seeds {spec!r}: give integer seeds separated by commas, e.g. 1,2,3")
    seeds = [int(t) for t in toks]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {spec!r}: a seed is repeated")
    return seeds


def settings_key(cfg) -> str:
    """What decides a seed's run (not where it is written, nor how it reports progress)."""
    # not the users of a request (a digest of a few small ids is reversed by trying them; requests run no seeds)
    flat = {k: v for k, v in sorted(cfg.flat().items())
            if k not in ("out", "quiet", "threads", "seeds", "seed_axis", "forget_users", "holdout_users")}
    return json_key(flat)


def seed_configs(cfg) -> list:
    """One Config per seed: its own seed and OUT/seed-N/, the split seed per --seed-axis."""
    seeds = parse_seeds(cfg.bench.seeds)
    out = Path(cfg.run.out)
    subs = []
    for s in seeds:
        sub = replace_fields(cfg, seeds=None, seed=s, out=str(out / f"seed-{s}"))
        if cfg.bench.seed_axis == "train":
            sub = dataclasses.replace(sub, data=dataclasses.replace(sub.data, split_seed=cfg.run.seed if cfg.data.split_seed is None
                                                                    else cfg.data.split_seed))
        subs.append(sub)
    return subs


def run_seeds(cfg, run_one) -> dict:
    """The benchmark once per seed (`run_one(sub_cfg) -> report`, each in OUT/seed-N/, a finished
    seed with the same settings reused, so an interrupted multi-seed run resumes), then one
    summary written to OUT (report.json/.csv/.md/.png); returns the summary."""
    subs = seed_configs(cfg)
    seeds = [s.run.seed for s in subs]
    out = Path(cfg.run.out)
    reports, t0 = [], time.perf_counter()
    for k, sub in enumerate(subs):
        key, done = settings_key(sub), Path(sub.run.out) / "report.json"
        if done.is_file():
            try:
                rep = json.loads(done.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                rep = {}  # a truncated seed report (the run was cut while writing it... or edited): the seed runs again
                print(f"{done}: unreadable; seed {seeds[k]} runs again", file=sys.stderr)
            if isinstance(rep, dict) and rep.get("settings_key") == key:
                print(f"seed {seeds[k]} ({k + 1}/{len(seeds)}): reusing {done}", file=sys.stderr, flush=True)
                reports.append(rep)
                continue
        print(f"seed {seeds[k]} ({k + 1}/{len(seeds)}) ...", file=sys.stderr, flush=True)
        rep = run_one(sub)
        rep["settings_key"] = key
        write_json_atomic(done, rep)
        reports.append(rep)
    agg = aggregate(reports, seeds)
    s0 = reports[0]["settings"]
    summary = dict(kind="multi-seed", settings={k: v for k, v in s0.items() if k not in ("seed", "split_seed")} | dict(
        seeds=seeds, seed_axis=cfg.bench.seed_axis), summary=agg, per_seed=[str((out / f"seed-{s}").resolve()) for s in seeds],
        env=reports[-1]["env"], total_s=time.perf_counter() - t0, per_seed_total_s=[r.get("total_s") for r in reports])
    write_json_atomic(out / "report.json", summary)
    write_text_atomic(out / "report.csv", csv_text(agg))
    plotted = plot(agg, out / "report.png", title=f"{s0['dataset']}, backbone {s0['backbone']}, {len(seeds)} seeds")
    scen = f", scenario {s0['scenario']}" if s0.get("scenario", "random") != "random" else ""
    md = (f"# E2URec over seeds: {s0['dataset']}, backbone {s0['backbone']}{scen}\n\n" + markdown(agg)
          + ("\n![D_f JSD against unlearning time, means with 95% intervals](report.png)\n" if plotted else "")
          + f"\nPer-seed reports: {', '.join(f'seed-{s}/report.md' for s in seeds)}. Wall clock of this run "
          f"{summary['total_s']:.0f} s; {reports[-1]['env']['device']}, git {reports[-1]['env']['git']}.\n")
    write_text_atomic(out / "report.md", md)
    print(markdown(agg))
    return summary
