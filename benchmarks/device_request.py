"""A deletion request on the device (issue #26 item 6): the device script's `request` part.

    python benchmarks/device_request.py --device cuda --dtype bf16 --backbone t5-base-config \\
        [--data-dir recbole-1.2.1.whl] [--max-samples 10000] [--epochs 1] [--seeds 1,2] --out OUT
    python benchmarks/device_request.py --dry-run --out OUT   # tiny, synthetic, CPU, fp32, 8 student steps, no warm-up (CI)

1. Our Original at the given shapes (`--methods original`, one fine-tune; cached).
2. A warm-up request per path (one user: data prepared, ops built, the boundary store made),
   not timed.
3. Per seed (it draws the users): a 5-user request, `python -m e2urec_fast.unlearn --original
   BASE --forget-users ... --no-retrain --device D --dtype T`, each in its own process (start-up
   included), with LoRA everywhere (`--lora-scope all`) and on the cached boundary (`--lora-scope
   decoder --aug-mode lora`, a request's default on t5), interleaved; both named explicitly.
   Wall clock, the report's flat stages, test AUC and the audit's LOSS AUC.

Writes OUT/device_request.json: every row, the medians per path, the device's name. No figure
is estimated: this runs where it is run, and the JSON names the device it ran on.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PATHS = dict(all=("--lora-scope", "all"), boundary=("--lora-scope", "decoder", "--aug-mode", "lora"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backbone", default="t5-base-config")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--max-samples", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=1, help="the Original's fine-tune")
    ap.add_argument("--users", type=int, default=5)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--cache-dir", default="~/.cache/e2urec_fast")
    ap.add_argument("--dry-run", action="store_true", help="tiny backbone, synthetic ML-1M-format data, CPU")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    import torch
    from bench_requests import _request, _stages

    from e2urec_fast import forget
    from e2urec_fast.data import prepare
    from e2urec_fast.data.prepare import SPLIT_TRAIN

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(a.cache_dir).expanduser()
    if a.dry_run:
        from e2urec_fast.data.synthetic import make_ml1m

        a.dataset, a.data_dir = "ml-1m", str(make_ml1m(out / "data", n_users=40, per_user=20))
        a.backbone, a.device, a.dtype, a.seeds = "tiny", "cpu", "fp32", "1"
    data = dict(dataset=a.dataset) | (dict(data_dir=a.data_dir) if a.data_dir else {})
    dargs = ["--dataset", a.dataset, "--max-samples", str(a.max_samples)] + (["--data-dir", a.data_dir] if a.data_dir else [])
    common = dict(max_samples=a.max_samples, device=a.device, dtype=a.dtype, cache_dir=str(cache), quiet=True, **data)
    base = forget(out / "base", methods="original", backbone=a.backbone, epochs=a.epochs, seed=42, **common).original
    prep = prepare(a.dataset, a.data_dir, cache, a.max_samples, 0.2, 42)
    train_users = sorted(set(prep.users[prep.split == SPLIT_TRAIN].tolist()))
    n = min(a.users, len(train_users) - 1)
    extra = ("--device", a.device, "--dtype", a.dtype) + (("--student-steps", "8") if a.dry_run else ())
    for name, flags in PATHS.items() if not a.dry_run else ():  # warm-up, not timed
        _request(HERE.parent, base, train_users[:1], 0, out / f"warm-{name}", cache, dargs, extra + flags)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        order = list(train_users)
        random.Random(seed).shuffle(order)
        for name, flags in PATHS.items():
            wall, rep = _request(HERE.parent, base, order[:n], seed, out / f"{name}-seed{seed}", cache, dargs, extra + flags)
            rows.append(dict(seed=seed, path=name, users=n, wall_s=wall, stages=_stages(rep, wall),
                             forget_samples=rep["counts"]["forget"],
                             auc=next(r["auc"] for r in rep["rows"] if r["method"] == "E2URec"),
                             loss_auc=rep.get("audit", {}).get("E2URec", {}).get("loss_auc")))
            print(f"seed {seed} {name}: {wall:.1f} s", file=sys.stderr)
    device = torch.cuda.get_device_name() if a.device == "cuda" and torch.cuda.is_available() else "cpu"
    med = {p: statistics.median(r["wall_s"] for r in rows if r["path"] == p) for p in PATHS}
    res = dict(device=device, backbone=a.backbone, dtype=a.dtype, users=n, seeds=a.seeds, median_wall_s=med, rows=rows,
               dry_run=a.dry_run, command="python benchmarks/device_request.py " + " ".join(sys.argv[1:]))
    (out / "device_request.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    print("request medians: " + ", ".join(f"{p} {v:.1f} s" for p, v in med.items()) + f" ({device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
