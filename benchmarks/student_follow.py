"""Does E2URec's student follow its forgetting teacher on D_f? (issue #25, item 5)

Mean p(true answer) on D_f of the Original, Retrain, the forgetting teacher (from
aug_strength.py's JSON, aug_lr 1e-4 x 5 epochs, alpha 1) and the students of finished
`--scenario memorize` runs (their adapter/ on the cached Original), seeds 1-5:

    python benchmarks/student_follow.py AUG_GRID.json OUT.json TAG=RUN [TAG=RUN ...]

RUN holds seed-N/adapter (a --seeds run of the same scenario). Nothing from test is read.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aug_strength import p_true  # noqa: E402

from e2urec_fast.config import from_fields, max_samples, split_seed  # noqa: E402
from e2urec_fast.data import prepare  # noqa: E402
from e2urec_fast.evaluate import predict_logits  # noqa: E402
from e2urec_fast.methods.common import Job  # noqa: E402
from e2urec_fast.methods.retrain import finetune_config, train_on  # noqa: E402
from e2urec_fast.models import resolve_backbone  # noqa: E402
from e2urec_fast.models.lora import load_adapter  # noqa: E402

grid = json.load(open(sys.argv[1]))
runs = [a.split("=", 1) for a in sys.argv[3:]]
out = []
for s in range(1, 6):
    cfg = from_fields(scenario="memorize", seed=s, quiet=True)
    cache = Path(cfg.data.cache_dir).expanduser()
    prep = prepare(cfg.data.dataset, None, cache, max_samples(cfg), cfg.data.forget_ratio, split_seed(cfg),
                   holdout_ratio=cfg.data.holdout_ratio, scenario="memorize")
    job = Job(prep, resolve_backbone(cfg.backbone_name, prep, cache, seed=s), Path("/tmp/student_follow"), seed=s, progress=False)
    orig, _, _ = train_on(job, "train", finetune_config(cfg), cache, "Original")
    f = prep.index("forget")
    y = prep.labels[f]
    row = dict(seed=s)
    for tag, run in runs:
        st = orig.clone()
        load_adapter(st.model, f"{run}/seed-{s}/adapter")
        st.model.eval()
        row[tag] = p_true(orig, predict_logits(st, st.model, job.seqs, f, 8, full=True).double(), y)
    g = next(x for x in grid["seeds"] if x["seed"] == s)
    t = next(r for r in g["settings"] if r["aug_lr"] == 1e-4 and r["aug_epochs"] == 5)
    row.update(original=g["p_true"]["original"], retrain=g["p_true"]["retrain"],
               teacher_aug5_alpha1=next(x["p_true"] for x in t["teacher"] if x["alpha"] == 1.0))
    out.append(row)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
Path(sys.argv[2]).write_text(json.dumps(out, indent=1) + "\n")
