"""Is E2URec's augmented model augmented? (issue #25, item 5: why E2URec does not close the gap)

E2URec's forgetting teacher v - alpha * relu(v_aug - v) points away from the augmented model
(the Original fine-tuned further on D_f). That helps only if the augmented model is *more*
D_f-specific than the Original: more confident on D_f's true answers, farther from Retrain.
This script checks that on the Original and Retrain of a scenario (read from the model cache,
or trained), per augmented-model setting (aug_lr x aug_epochs): the mean p(true answer) on D_f
of Original, augmented model, Retrain and the teacher, and the teacher's JSD to Retrain on D_f
per alpha (the authors' "JSD", full vocabulary). Nothing from test is read: a setting chosen
here is chosen on D_f against Retrain, as the issue allows.

    python benchmarks/aug_strength.py --scenario memorize --seeds 1 \
        --aug-lrs 1e-4,1e-3,3e-3 --aug-epochs 1,3 --alphas 0,0.5,1,2 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from e2urec_fast.config import replace_fields  # noqa: E402


def p_true(bb, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean probability of the true answer within [No, Yes]."""
    from e2urec_fast.models.scoring import yes_no

    p_yes = torch.softmax(yes_no(bb, logits).double(), -1)[:, 1]
    return float(torch.where(labels.bool(), p_yes, 1 - p_yes).mean())


def one_seed(seed: int, a) -> dict:
    from common import scenario_job

    from e2urec_fast.evaluate import jsd_l2, predict_logits
    from e2urec_fast.methods.e2urec import make_augmented
    from e2urec_fast.methods.retrain import finetune_config, train_on

    cfg, cache, prep, job = scenario_job(a.scenario, seed, Path(a.scratch) / f"seed-{seed}")
    ft = finetune_config(cfg)
    orig, _, oi = train_on(job, "train", ft, cache, "Original")
    retr, _, ri = train_on(job, "retain", ft, cache, "Retrain")
    f_idx = prep.index("forget")
    y = prep.labels[f_idx]

    def logits(m):
        return predict_logits(m, m.model, job.seqs, f_idx, job.eval_batch_size, full=True).double()

    v, r = logits(orig), logits(retr)
    out = dict(seed=seed, n_forget=len(f_idx), original_cached="cached" in oi, retrain_cached="cached" in ri,
               p_true=dict(original=p_true(orig, v, y), retrain=p_true(orig, r, y)), original_jsd=jsd_l2(r, v)["jsd"], settings=[])
    # the best any confidence-only change of the Original can do: its logits at temperature T
    temps = [dict(t=t, jsd=jsd_l2(r, v / t)["jsd"]) for t in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)]
    out["temperature_oracle"] = min(temps, key=lambda x: x["jsd"]) | dict(grid=temps)
    print(f"seed {seed}: Original JSD x100 {100 * out['original_jsd']:.2f}; best temperature {out['temperature_oracle']['t']:g}: "
          f"{100 * out['temperature_oracle']['jsd']:.2f}", flush=True)
    for lr in a.aug_lrs:
        for ep in a.aug_epochs:
            c = replace_fields(cfg, aug_lr=lr, aug_epochs=ep)
            t0 = time.perf_counter()
            aug, _ = make_augmented(job, orig, c, dropout=c.speed.aug_dropout)
            sec = time.perf_counter() - t0
            va = logits(aug)
            row = dict(aug_lr=lr, aug_epochs=ep, aug_s=sec, aug_p_true=p_true(orig, va, y), aug_jsd=jsd_l2(r, va)["jsd"], teacher=[])
            for al in a.alphas:
                t = v - al * torch.relu(va - v)
                row["teacher"].append(dict(alpha=al, jsd=jsd_l2(r, t)["jsd"], p_true=p_true(orig, t, y)))
            out["settings"].append(row)
            best = min(row["teacher"], key=lambda x: x["jsd"])
            print(f"seed {seed} aug_lr {lr:g} x{ep}: p(true) aug {row['aug_p_true']:.3f} (Original {out['p_true']['original']:.3f}, "
                  f"Retrain {out['p_true']['retrain']:.3f}); JSD x100 aug {100 * row['aug_jsd']:.2f} (Original "
                  f"{100 * out['original_jsd']:.2f}); best teacher alpha {best['alpha']:g}: {100 * best['jsd']:.2f}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="memorize")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--aug-lrs", default="1e-4,1e-3,3e-3")
    ap.add_argument("--aug-epochs", default="1,3")
    ap.add_argument("--alphas", default="0,0.25,0.5,1,2,4")
    ap.add_argument("--scratch", default="/tmp/aug_strength")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    a.aug_lrs = [float(x) for x in a.aug_lrs.split(",")]
    a.aug_epochs = [int(x) for x in a.aug_epochs.split(",")]
    a.alphas = [float(x) for x in a.alphas.split(",")]
    res = dict(scenario=a.scenario, seeds=[one_seed(int(s), a) for s in a.seeds.split(",")])
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
