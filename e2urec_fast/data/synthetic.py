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
