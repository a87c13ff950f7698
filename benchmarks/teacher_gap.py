"""How close can E2URec's forgetting teacher come to Retrain on D_f? (issue #25, item 5)

The student follows the forgetting teacher v - alpha * relu(v_aug - v) on D_f (v: the
Original's answer-position logits, v_aug: the augmented model's). If that teacher is itself
no closer to Retrain than the Original, no student schedule can close the gap by following
it. This script reads one finished run kept with `--keep-artifacts` (its Original, its
augmented model) and the Retrain of the same settings from the model cache, and prints per
alpha the teacher's JSD and L2 to Retrain on D_f (the authors' "JSD", full vocabulary), the
same restricted to the [No, Yes] pair, and the augmented model's own. No test data is read.

    python -m e2urec_fast.unlearn --scenario memorize --seed 1 --methods original,retrain,e2urec \
        --keep-artifacts --out RUN
    python benchmarks/teacher_gap.py RUN [--alphas 0,0.5,1,2,4,8] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from e2urec_fast.config import from_fields  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="output folder of a run made with --keep-artifacts")
    ap.add_argument("--alphas", default="0,0.5,1,2,4,8")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from e2urec_fast.data import prepare
    from e2urec_fast.evaluate import jsd_l2, predict_logits
    from e2urec_fast.files import load_safetensors
    from e2urec_fast.methods.common import Job
    from e2urec_fast.methods.retrain import finetune_config, train_on
    from e2urec_fast.models import load_backbone, resolve_backbone
    from e2urec_fast.models.scoring import yes_no

    run = Path(a.run)
    rep = json.loads((run / "report.json").read_text())
    s = rep["settings"]
    known = from_fields().flat()
    cfg = from_fields(**{k: v for k, v in s.items() if k in known and k not in ("methods",)} | {"out": str(run)})
    cache = Path(cfg.data.cache_dir).expanduser()
    prep = prepare(cfg.data.dataset, cfg.data.data_dir, cache, s["max_samples"], cfg.data.forget_ratio, s["split_seed"],
                   holdout_ratio=cfg.data.holdout_ratio, scenario=cfg.data.scenario)
    job = Job(prep, resolve_backbone(cfg.backbone_name, prep, cache, seed=cfg.run.seed), run / "scratch", seed=cfg.run.seed,
              batch_size=cfg.finetune.batch_size, progress=False)
    retr, _, info = train_on(job, "retain", finetune_config(cfg), cache, "Retrain")
    if "cached" not in info:
        print("note: Retrain was not in the model cache; trained it again", file=sys.stderr)
    orig = load_backbone(run / "original")
    aug = job.fresh()
    arts = sorted((run / "artifacts").glob("augmented_model*.safetensors"))
    if not arts:
        print(f"error: {run / 'artifacts'}: no augmented model (run with --keep-artifacts)", file=sys.stderr)
        return 2
    aug.model.load_state_dict(load_safetensors(arts[0]), strict=True)
    f_idx = prep.index("forget")
    lg = {n: predict_logits(m, m.model, job.seqs, f_idx, job.eval_batch_size, full=True).double()
          for n, m in (("retrain", retr), ("original", orig), ("aug", aug))}
    v, va, r = lg["original"], lg["aug"], lg["retrain"]
    rows = []
    for alpha in [float(x) for x in a.alphas.split(",")]:
        t = v - alpha * torch.relu(va - v)
        full, yn = jsd_l2(r, t), jsd_l2(yes_no(retr, r), yes_no(retr, t))
        rows.append(dict(alpha=alpha, jsd=full["jsd"], l2=full["l2"], jsd_yes_no=yn["jsd"], l2_yes_no=yn["l2"]))
    aug_gap = jsd_l2(r, va)
    e2 = next((x for x in rep["rows"] if x["method"] == "E2URec"), None)
    res = dict(run=str(run), n_forget=len(f_idx), teacher=rows, augmented=aug_gap,
               e2urec_student=dict(jsd=e2 and e2["jsd"], l2=e2 and e2["l2"]), settings=dict(scenario=s.get("scenario"),
               seed=cfg.run.seed, alpha_run=cfg.student.alpha, student_lr=cfg.student.student_lr))
    print(f"D_f: {len(f_idx)} samples; JSD x100 to Retrain (full vocabulary / [No, Yes] only)")
    print(f"  augmented model: {100 * aug_gap['jsd']:.2f}")
    for x in rows:
        tag = " (= the Original)" if x["alpha"] == 0 else ""
        print(f"  teacher alpha {x['alpha']:g}: {100 * x['jsd']:.2f} / {100 * x['jsd_yes_no']:.2f}{tag}")
    if e2:
        print(f"  the run's E2URec student (alpha {cfg.student.alpha:g}): {100 * e2['jsd']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
