"""Scenarios with something to forget (`--scenario`; ../EVALUATION.md, issue #25).

- `random` (the paper's): a random 20% of the train users ask to be forgotten.
- `memorize` (privacy): the same split; the recipe (config.SCENARIO_RECIPES) trains Original
  and Retrain to memorization on a small pool, so the Original holds its D_f.
- `shilling` (utility): fake users injected into the real train period promote a few target
  items (the average attack of the recommender-security literature, Lam & Riedl 2004, Mobasher
  et al. 2007: each fake user rates the targets 5 stars and popular fillers with a rating drawn
  around the filler's mean, N(mean, std) of its real train ratings, rounded to 1..5); D_f = the
  fake users. The Original inflates the targets for real users; Retrain, trained without the
  fake users, does not. The attack's effect (the prediction shift of the literature) is the
  targets' mean p(yes) over every real test user: each user's latest test prompt asked about each
  target instead (`probe_samples`), so it does not hang on the few test samples that happen to
  be about a target.

- `canary` (privacy, by construction): canary users whose labels only memorization can fit
  (each rates items of the train period's 100 most popular with stars drawn uniformly from
  {1, 2, 4, 5}, so a 'yes' is a coin flip independent of the item, the history and the
  profile; the secret-sharer canaries of Carlini et al. 2019). Half of them are D_f, the other
  half D_h, held out of every model: members and non-members come from one pool by
  construction, so Retrain's attack AUC is 0.5 up to noise and the Original's excess is
  memorization alone.

`inject_shilling` and `inject_canaries` are deterministic in their seed; the fake users get ids above every real one,
a real user's profile (copied), and train-period timestamps only: they never reach valid or
test.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, replace

from .loaders import Interactions
from .samples import Sample, build_samples

SCENARIOS = ("random", "memorize", "shilling", "canary")


@dataclass(frozen=True)
class Shilling:
    n_fake: int = 20  # fake users
    n_targets: int = 5  # promoted items
    n_fillers: int = 20  # filler items per fake user, drawn from the 50 most popular of the train period


def choose_targets(train: list[Sample], test: list[Sample], n: int) -> list[int]:
    """The items an attacker would promote: ones real users dislike in the train period
    (lowest share of 'yes', at least 3 train samples), among items the test period asks about
    (at least 3 test samples, so the attack's effect is measurable). Ties by item id; no test
    label is read."""
    n_tr, pos = Counter(s.item for s in train), Counter(s.item for s in train if s.label)
    n_te = Counter(s.item for s in test)
    for need in (3, 2, 1):
        cand = [i for i in n_te if n_te[i] >= need and n_tr[i] >= 3]
        if len(cand) >= n:
            break
    cand.sort(key=lambda i: (pos[i] / n_tr[i], i))
    return cand[:n]


def filler_stars(stars: list[int], rng: random.Random) -> int:
    """The average attack's filler rating: drawn from N(mean, std) of the item's real ratings,
    rounded and clipped to 1..5 (a constant mean rating would make every filler a 'yes' and let
    a model fit the fake users without learning which items they promote)."""
    mu = sum(stars) / len(stars)
    sd = statistics.pstdev(stars) if len(stars) > 1 else 0.0
    return min(5, max(1, round(rng.gauss(mu, sd))))


def probe_samples(test: list[Sample], targets: list[int]) -> list[Sample]:
    """The attack's probes: each real test user's latest test sample, asked about each target
    in turn (label 0: a probe has none; only p(yes) is read). Users in order of id."""
    last: dict[int, Sample] = {}
    for s in test:
        if s.user not in last or (s.ts, s.item) >= (last[s.user].ts, last[s.user].item):
            last[s.user] = s
    return [replace(last[u], item=t, stars=0, label=0) for u in sorted(last) for t in targets]


def inject_shilling(inter: Interactions, train: list[Sample], test: list[Sample], seed: int, shill: Shilling = Shilling(),
                    min_history: int = 5, k: int = 10) -> tuple[list[Sample], dict]:
    """Fake users' samples (to add to train) and the scenario's description; `inter` gains
    the fake users' profiles (the prompts need them)."""
    rng = random.Random(seed)
    targets = choose_targets(train, test, shill.n_targets)
    if len(targets) < shill.n_targets:
        raise ValueError(f"only {len(targets)} items qualify as shilling targets (need {shill.n_targets}): too few samples")
    pop = Counter(s.item for s in train)
    stars = defaultdict(list)
    for s in train:
        stars[s.item].append(s.stars)
    fillers_pool = [i for i, _ in sorted(pop.items(), key=lambda kv: (-kv[1], kv[0])) if i not in targets][:50]
    t_lo, t_hi = min(s.ts for s in train), max(s.ts for s in train)
    real = sorted(inter.users) or sorted({s.user for s in train})
    first = max([*real, *(s.user for s in train)]) + 1
    fake_users, ratings = [], []
    for j in range(shill.n_fake):
        u = first + j
        fake_users.append(u)
        if inter.users:
            inter.users[u] = replace(inter.users[rng.choice(real)])
        fill = rng.sample(fillers_pool, min(shill.n_fillers, len(fillers_pool)))
        items = [(i, filler_stars(stars[i], rng)) for i in fill] + [(i, 5) for i in targets]
        rng.shuffle(items)
        ts = sorted(rng.randint(t_lo, t_hi) for _ in items)
        ratings += [(u, i, st, t) for (i, st), t in zip(items, ts)]
    fake = build_samples(Interactions(inter.name, inter.kind, inter.users, inter.titles, ratings), min_history=min_history, k=k)
    info = dict(name="shilling", kind="average attack", targets=targets, fake_users=fake_users, fillers_pool=len(fillers_pool),
                n_fake=shill.n_fake, n_targets=shill.n_targets, n_fillers=shill.n_fillers, fake_samples=len(fake))
    return fake, info


@dataclass(frozen=True)
class Canaries:
    n_users: int = 40  # canary users: the first half D_f, the second half held out (D_h)
    n_ratings: int = 20  # ratings per canary user (min_history of them only form a history: 15 samples each)
    pool: int = 100  # drawn from the train period's most popular items


CANARY_STARS = (1, 2, 4, 5)  # a 'yes' (stars > 3) is a fair coin, whatever the item


def inject_canaries(inter: Interactions, train: list[Sample], seed: int, can: Canaries = Canaries(),
                    min_history: int = 5, k: int = 10) -> tuple[list[Sample], dict]:
    """Canary users' samples (to add to train) and the scenario's description; `inter` gains
    their profiles (each a real user's, copied). Ids above every real one, train-period
    timestamps only (they never reach valid or test)."""
    rng = random.Random(f"canary:{seed}")
    pop = Counter(s.item for s in train)
    pool = [i for i, _ in sorted(pop.items(), key=lambda kv: (-kv[1], kv[0]))][: can.pool]
    if len(pool) < can.n_ratings:
        raise ValueError(f"only {len(pool)} items in the popular pool, fewer than the {can.n_ratings} ratings of a canary")
    t_lo, t_hi = min(s.ts for s in train), max(s.ts for s in train)
    real = sorted(inter.users) or sorted({s.user for s in train})
    first = max([*real, *(s.user for s in train)]) + 1
    users, ratings = [first + j for j in range(can.n_users)], []
    for u in users:
        if inter.users:
            inter.users[u] = replace(inter.users[rng.choice(real)])
        items = rng.sample(pool, can.n_ratings)
        ts = sorted(rng.randint(t_lo, t_hi) for _ in items)
        ratings += [(u, i, rng.choice(CANARY_STARS), t) for i, t in zip(items, ts)]
    samples = build_samples(Interactions(inter.name, inter.kind, inter.users, inter.titles, ratings), min_history=min_history, k=k)
    half = can.n_users // 2
    info = dict(name="canary", members=users[:half], nonmembers=users[half:], pool=len(pool), n_users=can.n_users,
                n_ratings=can.n_ratings, stars=list(CANARY_STARS), canary_samples=len(samples))
    return samples, info
