"""A small synthetic ML-1M-format data set, for tests, dry runs and the device script."""

from __future__ import annotations

import random
from pathlib import Path

TITLES = ["Toy Story (1995)", "Jumanji (1995)", "Heat (1995)", "Sabrina (1995)", "Casino (1995)",
          "Se\u00f1or Amor (1999)", "Godfather, The (1972)", "Schindler's List (1993)", "Fargo (1996)", "Alien (1979)"]


def make_ml1m(folder: Path, n_users: int = 24, n_items: int = 30, per_user: int = 14, seed: int = 0, taste: bool = True) -> Path:
    """A small ML-1M-format data set (movies.dat in Latin-1, with a non-ASCII title).

    Every third item is liked; with `taste`, half of the users invert that (harder to learn).
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    titles = [TITLES[i] if i < len(TITLES) else f"Movie {i} ({1950 + i})" for i in range(n_items)]
    (folder / "movies.dat").write_bytes("".join(f"{i + 1}::{t}::Drama\n" for i, t in enumerate(titles)).encode("latin-1"))
    ages = [1, 18, 25, 35, 45, 50, 56]
    (folder / "users.dat").write_text("".join(f"{u}::{'MF'[u % 2]}::{ages[u % 7]}::{u % 21}::0000{u}\n" for u in range(1, n_users + 1)))
    lines = []
    for u in range(1, n_users + 1):
        items = rng.sample(range(1, n_items + 1), per_user)
        t0 = rng.randrange(10**6)
        flip = taste and rng.random() < 0.5
        for k, it in enumerate(items):
            stars = 5 if (it % 3 == 0) ^ flip else rng.choice([1, 2, 3])
            lines.append(f"{u}::{it}::{stars}::{t0 + 1000 * k + rng.randrange(500)}\n")
    rng.shuffle(lines)
    (folder / "ratings.dat").write_text("".join(lines))
    return folder


# ------------------------------------------------------------ latent-factor data sets
# Star shares of the real data sets (ML-1M: 5.6 / 10.8 / 26.1 / 34.9 / 22.6 %; goodbooks-10k:
# 2.2 / 7.2 / 23.2 / 35.9 / 31.5 %), used to cut the latent scores into 1-5 stars.
STAR_SHARES = {"ml-1m": (0.056, 0.108, 0.261, 0.349, 0.226), "goodreads": (0.022, 0.072, 0.232, 0.359, 0.315)}
ML1M_AGE_CODES = (1, 18, 25, 35, 45, 50, 56)


def make_latent(folder: Path, fmt: str, titles: list[str], n_users: int = 1500, n_ratings: int = 145_000, dim: int = 16,
                user_bias: float = 0.38, item_bias: float = 0.44, taste: float = 0.3, noise: float = 0.9, seed: int = 0) -> Path:
    """A rating data set in the ML-1M (`movies.dat`/`users.dat`/`ratings.dat`, Latin-1 titles)
    or goodbooks-10k GoodReads (`books.csv`/`ratings.csv`, rows in time order) layout, its
    ratings drawn from a latent-factor model over the given item titles.

    score(u, i) = b_u + b_i + p_u . q_i + noise, with standard deviations `user_bias`,
    `item_bias`, `taste` (of the dot product) and `noise`; p_u is partly shared by the users
    of one age bucket and gender (ML-1M profiles carry signal, as in the real data). The
    defaults are what a regularised biases model fitted on the real ML-100K finds (user and
    item bias spread 0.38 / 0.44 stars, held-out residual variance 0.89 of 1.28, to which a
    factor model adds little): biases carry most of the signal. Stars cut the scores at the
    real data set's star shares (`STAR_SHARES`). Each user rates n_u items (log-normal around
    n_ratings / n_users, at least 20, as ML-1M's filter), chosen by popularity (Zipf-like over
    a random item order) tilted toward what the user likes, one by one from a random start
    over three years. Deterministic in `seed`.
    """
    import numpy as np

    if fmt not in STAR_SHARES:
        raise ValueError(f"fmt must be one of {sorted(STAR_SHARES)}, got {fmt!r}")
    rng = np.random.default_rng(seed)
    n_items = len(titles)
    # users: ML-1M profile codes (the GoodReads layout has none, the factors stay)
    gender = rng.integers(0, 2, n_users)
    age = rng.choice(len(ML1M_AGE_CODES), n_users, p=(0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06))
    job = rng.integers(0, 21, n_users)
    sd = taste / np.sqrt(dim)  # per component of p (q's are N(0, 1)): p . q has standard deviation `taste`
    group = rng.normal(0, sd, (2, len(ML1M_AGE_CODES), dim))
    p = np.sqrt(0.3) * group[gender, age] + np.sqrt(0.7) * rng.normal(0, sd, (n_users, dim))
    q = rng.normal(0, 1, (n_items, dim))
    b_u = rng.normal(0, user_bias, n_users)
    b_i = rng.normal(0, item_bias, n_items)
    pop = np.empty(n_items)
    pop[rng.permutation(n_items)] = 1.0 / np.arange(1, n_items + 1) ** 0.8
    counts = np.maximum(20, np.round(rng.lognormal(np.log(n_ratings / n_users) - 0.35, 0.85, n_users))).astype(int)
    counts = np.minimum(counts, n_items)
    users, items, scores = [], [], []
    for u in range(n_users):
        affinity = p[u] @ q.T + b_i
        keys = np.log(pop) + 0.5 * affinity + rng.gumbel(size=n_items)  # Gumbel top-k: weighted draws without replacement
        chosen = np.argpartition(-keys, counts[u] - 1)[: counts[u]]
        rng.shuffle(chosen)
        users.append(np.full(len(chosen), u))
        items.append(chosen)
        scores.append(b_u[u] + affinity[chosen] + rng.normal(0, noise, len(chosen)))
    users, items, scores = np.concatenate(users), np.concatenate(items), np.concatenate(scores)
    cuts = np.quantile(scores, np.cumsum(STAR_SHARES[fmt])[:-1])
    stars = 1 + np.searchsorted(cuts, scores)
    start = rng.integers(956_703_932, 956_703_932 + 3 * 365 * 86_400, n_users)  # ML-1M's first timestamp
    gaps = rng.integers(60, 4 * 3600, len(users))  # seconds between a user's consecutive ratings
    ends = np.cumsum(counts)
    run = np.cumsum(gaps)
    ts = start[users] + run - np.repeat(run[ends - counts], counts)  # each user's own running sum from 0
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "ml-1m":
        (folder / "movies.dat").write_bytes("".join(f"{i + 1}::{t}::Drama\n" for i, t in enumerate(titles)).encode("latin-1"))
        (folder / "users.dat").write_text("".join(f"{u + 1}::{'MF'[gender[u]]}::{ML1M_AGE_CODES[age[u]]}::{job[u]}::{10000 + u}\n"
                                                  for u in range(n_users)))
        (folder / "ratings.dat").write_text("".join(f"{u + 1}::{i + 1}::{s}::{t}\n" for u, i, s, t in zip(users, items, stars, ts)))
    else:
        import csv

        with open(folder / "books.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["book_id", "title", "authors"])
            w.writerows([i + 1, t, "Anonymous"] for i, t in enumerate(titles))
        order = np.argsort(ts, kind="stable")  # goodbooks-10k has no timestamps: rows in time order
        with open(folder / "ratings.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["user_id", "book_id", "rating"])
            w.writerows((int(users[k]) + 1, int(items[k]) + 1, int(stars[k])) for k in order)
    return folder
