"""How far apart are two Retrains? The noise floor of the forgetting figures (issue #25, item 5)

Retrain is one draw from a distribution: another initialization seed, on the same split and
the same D_r, gives another Retrain. The JSD between two such Retrains on D_f is the smallest
gap any unlearning method can be asked to reach; a method at that distance from Retrain has
forgotten as well as retraining does. Likewise the forget quality (KS p-value) of the second
Retrain against the first is what a perfect unlearning scores. This script trains (or reads
from the model cache) Original and Retrain at the split's own init seed and at `--other`
more seeds (`--vary init`: other initial weights and data order; `--vary shuffle`: the same
initial weights, another data order), and prints for each split seed, on D_f (and on D_h, the same-pool
non-members): the JSD of every model to the first Retrain, its LOSS-attack AUC (D_f vs D_h),
and its forget quality against the first Retrain. Nothing from test is read.

    python benchmarks/seed_floor.py --scenario memorize --seeds 1,2 --other 100 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def one_split(s: int, a) -> dict:
    from common import scenario_job

    from e2urec_fast.audit import answer_losses, forget_quality, mia_auc
    from e2urec_fast.evaluate import jsd_l2, predict_logits
    from e2urec_fast.methods.retrain import finetune_config, train_on
    from e2urec_fast.models.scoring import yes_no

    cfg, cache, prep, _ = scenario_job(a.scenario, s, Path(a.scratch))
    ft = finetune_config(cfg)
    f_idx, h_idx = prep.index("forget"), prep.index("holdout")
    yf, yh = prep.labels[f_idx], prep.labels[h_idx]
    models = {}
    for init in [s, *(s + o for o in a.other)]:
        job = scenario_job(a.scenario, s, Path(a.scratch) / f"split{s}-{a.vary}{init}", train_seed=init,
                           weights_seed=s if a.vary == "shuffle" else init)[3]  # shuffle: the same initial weights
        for part, name in (("retain", "Retrain"), ("train", "Original")):
            if name == "Original" and init != s and not a.originals:
                continue
            bb, sec, info = train_on(job, part, ft, cache, name)
            lf = predict_logits(bb, bb.model, job.seqs, f_idx, job.eval_batch_size, full=True).double()
            lh = predict_logits(bb, bb.model, job.seqs, h_idx, job.eval_batch_size, full=False).double()
            models[f"{name} {a.vary if init != s else 'seed'} {init}"] = (bb, lf, lh, sec, "cached" in info)
            print(f"split {s}: {name} {a.vary} {init} ({'cached' if 'cached' in info else f'trained, {sec:.0f} s'})", flush=True)
    ref_bb, ref_f, _, _, _ = models[f"Retrain seed {s}"]
    ref_loss = answer_losses(yes_no(ref_bb, ref_f), yf)
    rows = []
    for name, (bb, lf, lh, sec, cached) in models.items():
        loss_f, loss_h = answer_losses(yes_no(bb, lf), yf), answer_losses(lh, yh)
        rows.append(dict(model=name, jsd=jsd_l2(ref_f, lf)["jsd"], loss_auc=mia_auc(-loss_f, -loss_h),
                         forget_quality=forget_quality(loss_f, ref_loss), forget_loss=float(loss_f.mean()),
                         unseen_loss=float(loss_h.mean()), train_s=None if cached else sec))
        r = rows[-1]
        print(f"  {name:22s} JSD x100 to Retrain seed {s}: {100 * r['jsd']:6.2f}  LOSS AUC {r['loss_auc']:.4f}  "
              f"forget quality {r['forget_quality']:.3f}", flush=True)
    return dict(split_seed=s, n_forget=len(f_idx), n_holdout=len(h_idx), rows=rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="memorize")
    ap.add_argument("--seeds", default="1", help="split seeds (each one's own init seed is the reference Retrain)")
    ap.add_argument("--other", default="100", help="offsets of the other init seeds (init = split seed + offset)")
    ap.add_argument("--vary", default="init", choices=("init", "shuffle"),
                    help="init: the other seeds draw other initial weights and data order; shuffle: the same initial weights "
                         "(the preset's, seeded by the split seed), another data order and dropout")
    ap.add_argument("--originals", action="store_true", help="also train the Original at the other init seeds")
    ap.add_argument("--scratch", default="/tmp/seed_floor")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    a.other = [int(x) for x in a.other.split(",")]
    res = dict(scenario=a.scenario, other=a.other, vary=a.vary, splits=[one_split(int(s), a) for s in a.seeds.split(",")])
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
