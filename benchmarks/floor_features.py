"""What signal a data set offers: the test AUC of each CTR-floor feature alone.

The floor (e2urec_fast/floor.py) reads five statistics off each prompt and the train split;
their single-feature test AUCs show whether a data set's signal sits in the user's history
(stars the prompt shows) or in the item's identity (its positive rate on train, which a
language model can learn only by seeing the title often enough).

    python benchmarks/floor_features.py ml-100k
    python benchmarks/floor_features.py ml-1m:/tmp/ml1m_latent goodreads:/tmp/gr_latent
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAMES = ["history mean stars", "history share > 3", "last history stars", "item train positive rate", "item log train count"]


def feature_aucs(prepared) -> dict:
    from e2urec_fast import floor
    from e2urec_fast.evaluate import roc_auc

    x = floor.features(prepared)
    te = prepared.index("test").numpy()
    y = prepared.labels.numpy()[te]
    return {n: roc_auc(y, x[te, k]) for k, n in enumerate(NAMES)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+", help="NAME or NAME:DATA_DIR (ml-100k without a folder: the recbole wheel)")
    ap.add_argument("--max-samples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cache-dir", default=os.environ.get("E2UREC_CACHE", "~/.cache/e2urec_fast"))
    a = ap.parse_args(argv)
    from e2urec_fast.data import prepare

    print("| Data | " + " | ".join(NAMES) + " |\n|---|" + "---|" * len(NAMES))
    for spec in a.datasets:
        name, _, d = spec.partition(":")
        aucs = feature_aucs(prepare(name, d or None, a.cache_dir, a.max_samples, 0.2, a.seed))
        print(f"| {spec} | " + " | ".join(f"{100 * v:.2f}" for v in aucs.values()) + " |")


if __name__ == "__main__":
    main()
