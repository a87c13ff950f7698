"""Sample construction as in the authors' pipeline (DESIGN.md section 2).

ratings --sort (timestamp, user, item)--> per-rating history of the user's earlier
ratings --drop history < min_history--> keep the last N --> 60/20/20 global-time split
--> forgetting users: train users in order of first appearance, shuffled with
Python's `random.seed(seed); random.shuffle(...)`, the first `forget_ratio` of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import fail
from .loaders import Interactions


@dataclass
class Sample:
    user: int
    item: int
    stars: int
    label: int  # 1 if stars > 3
    ts: int
    hist_len: int  # number of earlier ratings of this user
    hist: list[tuple[int, int]]  # the last K (item, stars) of the history, oldest first


@dataclass
class Split:
    train: list[Sample]
    valid: list[Sample]
    test: list[Sample]
    forget_users: list[int]  # in shuffled order
    forget_mask: list[bool]  # per train sample: True if it belongs to D_f
    n_after_filter: int
    # the audit's same-pool non-members D_h: train users drawn like the forget users (the next
    # `holdout_ratio` of the shuffled list), held out of every model's training
    holdout_users: list[int] = field(default_factory=list)
    holdout_mask: list[bool] = field(default_factory=list)  # per train sample


def build_samples(inter: Interactions, min_history: int = 5, k: int = 10) -> list[Sample]:
    """One sample per rating whose user has at least `min_history` earlier ratings."""
    order = sorted(range(len(inter.ratings)), key=lambda i: (inter.ratings[i][3], inter.ratings[i][0], inter.ratings[i][1]))
    history: dict[int, list[tuple[int, int]]] = {}
    out = []
    for i in order:
        u, item, stars, ts = inter.ratings[i]
        h = history.setdefault(u, [])
        if len(h) >= min_history:
            out.append(Sample(u, item, stars, int(stars > 3), ts, len(h), h[-k:]))
        h.append((item, stars))
    return out


def split_samples(samples: list[Sample], max_samples: int | None, forget_ratio: float, seed: int = 42,
                  holdout_ratio: float = 0.0) -> Split:
    """The authors' split; with `holdout_ratio`, the next share of the shuffled train users
    (after the forget users, so the forget set is the same with or without a holdout) is the
    audit's same-pool non-members D_h."""
    n_all = len(samples)
    if max_samples is not None:
        samples = samples[-max_samples:]
    n = len(samples)
    a, b = int(0.6 * n), int(0.8 * n)
    train, valid, test = samples[:a], samples[a:b], samples[b:]
    if not train or not valid or not test:
        raise fail(None, f"only {n} samples after the history filter: too few for a 60/20/20 split")
    users = list(dict.fromkeys(s.user for s in train))
    rng = random.Random()
    rng.seed(seed)
    rng.shuffle(users)
    forget = users[: int(forget_ratio * len(users))]
    if not forget:
        raise fail(None, f"--forget-ratio {forget_ratio} selects no user out of {len(users)} train users (empty forget set)")
    n_f = len(forget)
    held = users[n_f : n_f + int(holdout_ratio * len(users))]
    if holdout_ratio > 0 and not held:
        raise fail(None, f"--holdout-ratio {holdout_ratio} selects no user out of {len(users)} train users (empty holdout)")
    fs, hs = set(forget), set(held)
    mask = [s.user in fs for s in train]
    hmask = [s.user in hs for s in train]
    if all(a or b for a, b in zip(mask, hmask)):
        raise fail(None, f"--forget-ratio {forget_ratio} and --holdout-ratio {holdout_ratio} leave no train sample for D_r")
    return Split(train, valid, test, forget, mask, n_all, held, hmask)


def _stars_text(title: str, stars: int) -> str:
    return f"{title} ({stars} stars)" if stars > 1 else f"{title} ({stars} star)"


ITEM_TOKEN = "<item_{}>"  # an item's own token (--item-tokens; models/backbone.build_preset adds one per catalogue item)


def item_token(item) -> str:
    return ITEM_TOKEN.format(item)


def render_prompt(s: Sample, inter: Interactions, item_tokens: bool = False) -> str:
    """The authors' "simple" template with the K most recent history items. `item_tokens`: each
    title preceded by its item's own token (P5, LC-Rec: an identity the model can attach a
    preference to, where a title cut into BPE pieces is none)."""

    def title(it):
        return f"{item_token(it)} {inter.titles[it]}" if item_tokens else inter.titles[it]

    hist = [f"{i}. {_stars_text(title(it), st)}" for i, (it, st) in enumerate(s.hist)]
    target = title(s.item)
    if inter.kind == "book":
        return (
            "The user read the following books in order in the past, and rated them:\n"
            f"{hist}\n"
            f"Based on the books the user has read, deduce if the user will like the book ***{target}***.\n"
            "Note that more stars the user rated the book, the user liked the book more.\n"
            "You should ONLY tell me yes or no."
        )
    user = inter.users[s.user]
    nom, obj = ("she", "Her") if user.gender == "female" else ("he", "His")
    return (
        f"The user is a {user.gender}. {obj} job is {user.job}. {obj} age is {user.age}.\n"
        f"{nom.capitalize()} watched the following movies in order in the past, and rated them:\n"
        f"{hist}\n"
        f"Based on the movies {nom} has watched, deduce if {nom} will like the movie ***{target}***.\n"
        "Note that more stars the user rated the movie, the user liked the movie more.\n"
        "You should ONLY tell me yes or no."
    )


def target_text(label: int) -> str:
    return "Yes." if label else "No."
