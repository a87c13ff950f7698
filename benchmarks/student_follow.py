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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from aug_strength import p_true  # noqa: E402
from common import scenario_job  # noqa: E402


def main(argv: list[str]) -> int:
    from e2urec_fast.evaluate import predict_logits
    from e2urec_fast.methods.retrain import finetune_config, train_on
    from e2urec_fast.models.lora import load_adapter

    grid = json.loads(Path(argv[0]).read_text())
    runs = [a.split("=", 1) for a in argv[2:]]
    out = []
    for s in range(1, 6):
        cfg, cache, prep, job = scenario_job("memorize", s, Path("/tmp/student_follow"))
        orig, _, _ = train_on(job, "train", finetune_config(cfg), cache, "Original")
        f = prep.index("forget")
        y = prep.labels[f]
        row = dict(seed=s)
        for tag, run in runs:
            st = orig.clone()
            load_adapter(st.model, f"{run}/seed-{s}/adapter")
            st.model.eval()
            row[tag] = p_true(orig, predict_logits(st, st.model, job.seqs, f, job.eval_batch_size, full=True).double(), y)
        g = next(x for x in grid["seeds"] if x["seed"] == s)
        t = next(r for r in g["settings"] if r["aug_lr"] == 1e-4 and r["aug_epochs"] == 5)
        row.update(original=g["p_true"]["original"], retrain=g["p_true"]["retrain"],
                   teacher_aug5_alpha1=next(x["p_true"] for x in t["teacher"] if x["alpha"] == 1.0))
        out.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    Path(argv[1]).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
