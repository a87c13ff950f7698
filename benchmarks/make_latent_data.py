"""Build an ML-1M- or GoodReads-format data set with ratings from a latent-factor model.

No ML-1M or GoodReads file can be downloaded here, so the second and third data sets of the
README are built: the real ML-100K movie titles (from the recbole wheel, the same source as
the default job; Latin-1 in movies.dat as in the real ML-1M), user profiles in ML-1M's
codes, and ratings drawn from a latent-factor model cut at the real data set's star shares
(`e2urec_fast.data.synthetic.make_latent`; by default its spreads of user bias, item bias,
taste and noise are what a biases model fitted on the real ML-100K finds). The GoodReads layout reuses the movie titles
without their year (no book titles are within reach) and writes rows in time order, as
goodbooks-10k's ratings.csv.

    python benchmarks/make_latent_data.py --format ml-1m --out /tmp/ml1m_latent
    python -m e2urec_fast.unlearn --dataset ml-1m --data-dir /tmp/ml1m_latent
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from e2urec_fast.data import load_ml100k  # noqa: E402
from e2urec_fast.data.synthetic import make_latent  # noqa: E402
from e2urec_fast.files import staged_dir  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", required=True, choices=["ml-1m", "goodreads"])
    ap.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    ap.add_argument("--ratings", type=int, default=145_000, help="about this many ratings")
    ap.add_argument("--users", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--user-bias", type=float, default=0.38, help="standard deviation of the user bias (stars)")
    ap.add_argument("--item-bias", type=float, default=0.44, help="standard deviation of the item bias")
    ap.add_argument("--taste", type=float, default=0.3, help="standard deviation of the user-item factor product")
    ap.add_argument("--noise", type=float, default=0.9, help="standard deviation of the per-rating noise")
    ap.add_argument("--cache-dir", default=os.environ.get("E2UREC_CACHE", "~/.cache/e2urec_fast"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out}: exists and is not empty (give a new folder)", file=sys.stderr)
        raise SystemExit(2)
    inter = load_ml100k(None, a.cache_dir)
    titles = [inter.titles[k] for k in sorted(inter.titles)]
    if a.format == "goodreads":
        titles = [re.sub(r"\s*\(\d{4}\)\s*$", "", t) for t in titles]
    with staged_dir(out) as tmp:  # built aside, moved into place when whole: a failed run leaves nothing
        make_latent(tmp, a.format, titles, n_users=a.users, n_ratings=a.ratings, seed=a.seed, user_bias=a.user_bias,
                    item_bias=a.item_bias, taste=a.taste, noise=a.noise)
    print(f"{out}: {a.format} layout, {len(titles)} items, {a.users} users")


if __name__ == "__main__":
    main()
