"""Multi-seed sweep of E2URec's student settings (quality, not speed), chosen without test.

Per seed (training seed = split seed, as `--seeds` does): Original and Retrain exactly as
`python -m e2urec_fast.unlearn --seed S` trains them (the model cache is shared, so a
seeds run before or after reuses them), then E2URec once per setting of the grid from the
same Original. Each setting is scored on

- the **valid** split: AUC and LogLoss (does it keep the recommender?), and
- **D_f against Retrain**: JSD and L2, and the share of the Original-to-Retrain JSD gap it
  closes (does it forget?);

test figures are recorded too but never used to choose. The chosen setting: the lowest
mean D_f JSD among the settings whose valid AUC stays within the seed noise of Original's
(paired difference to Original: its 95% interval reaches above -0.5 AUC points).

    python benchmarks/sweep_e2urec.py --seeds 1,2,3 \
        --grid "student_steps=300,1000;alpha=2,8" --out benchmarks/results/sweep_seeds_ml100k_tiny.json

`--base` holds config fields every setting shares, NAME=VALUE (the shipped defaults when empty).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env_row  # noqa: E402

from e2urec_fast import precision  # noqa: E402
from e2urec_fast.config import max_samples, parse_assignments, preset, replace_fields  # noqa: E402
from e2urec_fast.data import prepare  # noqa: E402
from e2urec_fast.evaluate import ctr_metrics, jsd_l2, p_yes, predict_logits  # noqa: E402
from e2urec_fast.methods import e2urec  # noqa: E402
from e2urec_fast.methods.common import Job  # noqa: E402
from e2urec_fast.methods.retrain import finetune_config, train_on  # noqa: E402
from e2urec_fast.models import resolve_backbone  # noqa: E402
from e2urec_fast.seeds import summarize  # noqa: E402

SLACK = 0.005  # valid AUC: how far below Original's a setting may fall (upper end of its 95% interval)


def parse_grid(text: str) -> list[dict]:
    """'a=1,2;b=x' -> [{a: 1, b: x}, {a: 2, b: x}] (values kept as the CLI strings)."""
    axes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        k, _, vals = part.partition("=")
        if not vals:
            raise SystemExit(f"--grid: {part!r} is not name=v1,v2")
        axes.append([(k.strip(), v.strip()) for v in vals.split(",")])
    return [dict(c) for c in itertools.product(*axes)]


def fields(setting: dict) -> dict:
    """A grid point's config fields, typed (config.parse_assignments)."""
    return parse_assignments(f"{k}={v}" for k, v in setting.items())


def score(bb, job, parts, retr_full, orig_full=None) -> dict:
    prep = job.prepared
    out = {}
    for name in ("valid", "test"):
        idx = parts[name]
        m = ctr_metrics(prep.labels[idx].numpy(), p_yes(predict_logits(bb, bb.model, job.seqs, idx, device=job.device)))
        out |= {f"{name}_{k}": v for k, v in m.items()}
    full = predict_logits(bb, bb.model, job.seqs, parts["forget"], full=True, device=job.device)
    out |= jsd_l2(retr_full, full)
    return out, full


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--grid", default="student_steps=300,1000;alpha=2,8")
    ap.add_argument("--base", default="", help="config fields shared by every setting, NAME=VALUE separated by spaces, "
                    "e.g. 'lora_scope=decoder'")
    ap.add_argument("--cache-dir", default="~/.cache/e2urec_fast")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default="/tmp/e2urec_sweep")
    ap.add_argument("--out", default="benchmarks/results/sweep_seeds_ml100k_tiny.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    grid = parse_grid(a.grid)
    base = parse_assignments(a.base.split())
    cache = Path(os.path.expanduser(a.cache_dir))
    t_all = time.perf_counter()
    per_seed = []
    for seed in seeds:
        args = preset(**(dict(quiet=True, seed=seed) | base))
        device = args.run.device
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        args = replace_fields(args, device=device, dtype=precision.resolve(args.run.dtype, device))
        prep = prepare(args.data.dataset, args.data.data_dir, cache, max_samples(args), args.data.forget_ratio, seed)
        bdir = resolve_backbone(args.backbone_name, prep, cache, seed=seed)
        out = Path(a.work) / f"seed-{seed}"
        job = Job(prep, bdir, out, device=device, seed=seed, batch_size=args.finetune.batch_size, progress=False,
                  dtype=args.run.dtype, bucket=not args.finetune.no_train_bucketing)
        cfg = finetune_config(args)
        orig, _, _ = train_on(job, "train", cfg, cache, "Original")
        retr, _, _ = train_on(job, "retain", cfg, cache, "Retrain")
        parts = {k: prep.index(k) for k in ("valid", "test", "forget")}
        retr_full = predict_logits(retr, retr.model, job.seqs, parts["forget"], full=True, device=job.device)
        rows = {}
        rows["Original"], _ = score(orig, job, parts, retr_full)
        rows["Retrain"], _ = score(retr, job, parts, retr_full)
        print(f"seed {seed}: Original valid AUC {100 * rows['Original']['valid_auc']:.2f} test AUC "
              f"{100 * rows['Original']['test_auc']:.2f} JSD {100 * rows['Original']['jsd']:.2f}; Retrain valid AUC "
              f"{100 * rows['Retrain']['valid_auc']:.2f}", flush=True)
        for s in grid:
            sargs = replace_fields(args, **fields(s))
            name = " ".join(f"{k}={v}" for k, v in s.items())
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            bb, info = e2urec.unlearn(job, orig, sargs, "fast")
            r, _ = score(bb, job, parts, retr_full)
            r["unlearn_s"] = info.get("time_s", time.perf_counter() - t0)
            rows[name] = r
            shutil.rmtree(out / "work", ignore_errors=True)
            print(f"  {name:<36} valid AUC {100 * r['valid_auc']:.2f} LL {100 * r['valid_logloss']:.2f} "
                  f"D_f JSD {100 * r['jsd']:.2f} L2 {100 * r['l2']:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        per_seed.append(dict(seed=seed, rows=rows))
        shutil.rmtree(out, ignore_errors=True)

    names = list(per_seed[0]["rows"])
    summary = {}
    for n in names:
        rs = [p["rows"][n] for p in per_seed]
        o = [p["rows"]["Original"] for p in per_seed]
        d = dict(valid_auc=summarize([r["valid_auc"] for r in rs]), valid_logloss=summarize([r["valid_logloss"] for r in rs]),
                 jsd=summarize([r["jsd"] for r in rs]), l2=summarize([r["l2"] for r in rs]),
                 test_auc=summarize([r["test_auc"] for r in rs]),
                 d_valid_auc_vs_original=summarize([r["valid_auc"] - x["valid_auc"] for r, x in zip(rs, o)]),
                 jsd_gap_closed=summarize([(x["jsd"] - r["jsd"]) / x["jsd"] for r, x in zip(rs, o) if x["jsd"] > 0]))
        summary[n] = d
    eligible, chosen = choose(summary, names[2:])
    total = time.perf_counter() - t_all
    res = dict(env=env_row("cpu"), seeds=seeds, grid=a.grid, base=a.base, rule=f"lowest mean D_f JSD among settings whose "
               f"valid-AUC difference to Original has a 95% interval reaching above -{100 * SLACK:.1f} points",
               eligible=eligible, chosen=chosen, summary=summary, per_seed=per_seed, total_s=total)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    Path(a.out).with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


def choose(summary: dict, settings: list[str]) -> tuple[list[str], str | None]:
    """The settings that keep valid AUC (the upper end of the 95% interval of their paired
    difference to Original reaches -SLACK), and among them the lowest mean D_f JSD."""
    eligible = []
    for n in settings:
        dv = summary[n]["d_valid_auc_vs_original"]
        if dv["mean"] + (dv["ci95"] or 0.0) >= -SLACK:
            eligible.append(n)
    return eligible, (min(eligible, key=lambda n: summary[n]["jsd"]["mean"]) if eligible else None)


def _c(s, scale=100, d=2):
    if s is None:
        return "-"
    return f"{scale * s['mean']:.{d}f}" + (f" ± {scale * s['ci95']:.{d}f}" if s.get("ci95") is not None else "")


def markdown(res: dict) -> str:
    lines = [f"Sweep over seeds {','.join(map(str, res['seeds']))} (base flags: `{res['base'] or 'defaults'}`), "
             f"{res['total_s'] / 60:.1f} min. Mean ± 95% half-width, x100. Chosen on valid and D_f only: {res['rule']}.", "",
             "| setting | valid AUC | Δ valid AUC vs Original | valid LogLoss | D_f JSD | D_f L2 | JSD gap closed (%) | test AUC (not used) |",
             "|---|---|---|---|---|---|---|---|"]
    for n, d in res["summary"].items():
        mark = " **(chosen)**" if n == res["chosen"] else ("" if n in ("Original", "Retrain") or n in res["eligible"] else " (loses valid AUC)")
        lines.append(f"| {n}{mark} | {_c(d['valid_auc'])} | {_c(d['d_valid_auc_vs_original'])} | {_c(d['valid_logloss'])} | "
                     f"{_c(d['jsd'])} | {_c(d['l2'])} | {_c(d['jsd_gap_closed'], 100, 1)} | {_c(d['test_auc'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
