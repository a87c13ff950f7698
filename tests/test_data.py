import json
import random

import pytest
import torch

from e2urec_fast.data import build_samples, load_goodreads, load_ml1m, prepare, render_prompt, split_samples
from e2urec_fast.data.loaders import Interactions, User, age_bucket, load_ml100k
from e2urec_fast.errors import UserError


def hand_table() -> Interactions:
    users = {1: User("male", "25-34", "doctor/health care"), 2: User("female", "18-24", "artist")}
    titles = {10: "A (1990)", 11: "B (1991)", 12: "C (1992)", 13: "D's (1993)", 14: "E (1994)", 15: "F (1995)"}
    r = [  # (user, item, stars, ts), deliberately out of order; ties broken by (user, item)
        (1, 10, 5, 100), (2, 10, 1, 100), (1, 11, 4, 101), (1, 12, 1, 102), (1, 13, 3, 103), (1, 14, 2, 104),
        (1, 15, 4, 105), (2, 11, 2, 101), (2, 12, 3, 102), (2, 13, 4, 103), (2, 14, 5, 104), (2, 15, 4, 106),
        (1, 11, 5, 107),
    ]
    random.Random(0).shuffle(r)
    return Interactions("hand", "movie", users, titles, r)


def test_history_filter_and_order():
    s = build_samples(hand_table(), min_history=5, k=3)
    # user 1 reaches 5 earlier ratings at ts 105; user 2 at ts 106; user 1 again at 107
    assert [(x.user, x.item, x.ts) for x in s] == [(1, 15, 105), (2, 15, 106), (1, 11, 107)]
    assert s[0].hist == [(12, 1), (13, 3), (14, 2)] and s[0].hist_len == 5 and s[0].label == 1
    assert s[1].hist == [(12, 3), (13, 4), (14, 5)] and s[1].label == 1
    assert s[2].hist == [(13, 3), (14, 2), (15, 4)] and s[2].hist_len == 6 and s[2].label == 1


def test_tie_break_by_user_then_item():
    inter = Interactions("t", "movie", {1: User("male", "x", "y"), 2: User("male", "x", "y")},
                         {i: str(i) for i in range(10)},
                         [(2, 1, 3, 5), (1, 2, 3, 5), (1, 1, 3, 5)] + [(1, i, 4, 9) for i in range(3, 9)])
    s = build_samples(inter, min_history=3, k=10)
    assert [h[0] for h in s[0].hist] == [1, 2, 3]  # (ts 5, user 1, item 1) before (ts 5, user 1, item 2)


def test_split_and_forget_selection():
    inter = hand_table()
    many = Interactions("m", "movie", {u: User("male", "a", "b") for u in range(1, 41)}, {i: str(i) for i in range(1, 11)},
                        [(u, i, 1 + (u + i) % 5, 10 * i + u) for u in range(1, 41) for i in range(1, 11)])
    samples = build_samples(many, min_history=5, k=10)
    sp = split_samples(samples, max_samples=150, forget_ratio=0.2, seed=42)
    kept = samples[-150:]
    assert sp.train == kept[:90] and sp.valid == kept[90:120] and sp.test == kept[120:]
    users = list(dict.fromkeys(x.user for x in sp.train))
    random.seed(42)
    random.shuffle(users)
    assert sp.forget_users == users[: int(0.2 * len(users))]
    assert sp.forget_mask == [x.user in set(sp.forget_users) for x in sp.train]
    del inter


def test_prompt_text_exact():
    inter = hand_table()
    s = build_samples(inter, min_history=5, k=10)[2]
    p = render_prompt(s, inter)
    assert p == (
        "The user is a male. His job is doctor/health care. His age is 25-34.\n"
        "He watched the following movies in order in the past, and rated them:\n"
        "['0. A (1990) (5 stars)', '1. B (1991) (4 stars)', '2. C (1992) (1 star)', \"3. D's (1993) (3 stars)\", "
        "'4. E (1994) (2 stars)', '5. F (1995) (4 stars)']\n"
        "Based on the movies he has watched, deduce if he will like the movie ***B (1991)***.\n"
        "Note that more stars the user rated the movie, the user liked the movie more.\n"
        "You should ONLY tell me yes or no."
    )
    s2 = build_samples(inter, min_history=5, k=10)[1]
    assert render_prompt(s2, inter).startswith("The user is a female. Her job is artist. Her age is 18-24.\nShe watched")


def test_ml1m_occupation_zero_is_other_or_not_specified(ml1m_dir):
    # the authors' ml-1m.ipynb: code 0 is "other or not specified" (not "other")
    (ml1m_dir / "users.dat").write_text("1::F::1::0::48067\n2::M::56::16::70072\n")
    (ml1m_dir / "ratings.dat").write_text("".join(f"{u}::{i}::4::{100 * u + i}\n" for u in (1, 2) for i in range(1, 8)))
    inter = load_ml1m(ml1m_dir)
    s = next(s for s in build_samples(inter, min_history=5, k=10) if s.user == 1)
    assert render_prompt(s, inter).startswith("The user is a female. Her job is other or not specified. Her age is under 18.\n")
    assert inter.users[2].job == "self-employed"


def test_ml1m_latin1_titles(ml1m_dir):
    inter = load_ml1m(ml1m_dir)
    assert "Se\u00f1or Amor (1999)" in inter.titles.values()
    assert inter.users[1].gender == "female" and inter.users[2].gender == "male" and inter.users[1].age == "18-24"


def test_age_buckets():
    assert [age_bucket(a) for a in (7, 18, 24, 25, 44, 49, 50, 55, 56, 73)] == [
        "under 18", "18-24", "18-24", "25-34", "35-44", "45-49", "50-55", "50-55", "above 56", "above 56"]


def test_ml100k_raw_and_atomic(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (raw / "u.item").write_bytes("1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n2|Se\u00f1or (1996)|x||y|0\n".encode("latin-1"))
    (raw / "u.data").write_text("1\t1\t5\t100\n2\t2\t3\t101\n")
    a = load_ml100k(raw, tmp_path)
    at = tmp_path / "atomic"
    at.mkdir()
    (at / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                                     "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n")
    (at / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                     "1\tToy Story\t1995\tAnimation\n2\tSe\u00f1or\t1996\tDrama\n")
    (at / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t100\n2\t2\t3\t101\n")
    b = load_ml100k(at, tmp_path)
    assert a.ratings == b.ratings and a.titles == b.titles
    assert a.users[2].age == "50-55" and a.users[2].gender == "female"


def test_goodbooks(tmp_path):
    d = tmp_path / "gb"
    d.mkdir()
    (d / "books.csv").write_text('book_id,authors,title\n1,X,"Dune, Part 1"\n2,Y,Emma\n')
    (d / "ratings.csv").write_text("user_id,book_id,rating\n5,1,4\n5,2,2\n")
    inter = load_goodreads(d)
    assert inter.titles[1] == "Dune, Part 1" and inter.ratings == [(5, 1, 4, 0), (5, 2, 2, 1)]
    s = build_samples(Interactions("g", "book", {}, inter.titles, inter.ratings * 1), min_history=1, k=10)
    assert render_prompt(s[0], inter).startswith("The user read the following books in order in the past")


@pytest.mark.parametrize("name,content,msg", [
    ("ratings.dat", "1\t2\t3\t4\n", "ratings.dat:1: expected 4 '::'-separated fields, found 1 (wrong separator?)"),
    ("ratings.dat", "1::2::9::4\n", "ratings.dat:1: rating 9 outside 1..5"),
    ("ratings.dat", "1::2::x::4\n", "ratings.dat:1: rating 'x' is not a number"),
    ("ratings.dat", "1::999::3::4\n", "ratings.dat:1: item id 999 has no title"),
    ("ratings.dat", "", "ratings.dat: file is empty"),
    ("users.dat", b"1::M::25::3::\xff\xfe\n", "users.dat:1: not utf-8 text"),
])
def test_bad_ml1m_files(ml1m_dir, name, content, msg):
    p = ml1m_dir / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError) as e:
        load_ml1m(ml1m_dir)
    assert msg in str(e.value) and str(ml1m_dir) in str(e.value)


def test_missing_file(ml1m_dir):
    (ml1m_dir / "movies.dat").unlink()
    with pytest.raises(UserError, match="movies.dat: file not found"):
        load_ml1m(ml1m_dir)


def test_prepare_writes_once_and_reuses(ml1m_dir, tmp_path):
    p = prepare("ml-1m", ml1m_dir, tmp_path / "cache", max_samples=None, forget_ratio=0.25, seed=42)
    m = json.loads((p.folder / "manifest.json").read_text())
    c = m["counts"]
    assert c["train"] + c["valid"] + c["test"] == c["samples"] == c["samples_after_filter"] == 24 * (14 - 5)
    assert c["forget"] + c["retain"] == c["train"] and c["forget"] == int(p.forget.sum())
    assert (p.index("forget").numel(), p.index("retain").numel()) == (c["forget"], c["retain"])
    mtime = (p.folder / "manifest.json").stat().st_mtime_ns
    q = prepare("ml-1m", ml1m_dir, tmp_path / "cache", max_samples=None, forget_ratio=0.25, seed=42)
    assert (q.folder / "manifest.json").stat().st_mtime_ns == mtime and q.prompts == p.prompts
    assert torch.equal(q.forget, p.forget)
    with pytest.raises(UserError, match="selects no user"):
        prepare("ml-1m", ml1m_dir, tmp_path / "cache", max_samples=None, forget_ratio=0.01, seed=42)


def test_ucsd_book_graph(tmp_path):
    d = tmp_path / "ucsd"
    d.mkdir()
    (d / "goodreads_books.json").write_text('{"book_id": "7", "title": "Emma"}\n{"book_id": "9", "title": "Dune"}\n')
    (d / "goodreads_interactions_dedup.json").write_text(
        '{"user_id": "abc", "book_id": "7", "rating": 5, "date_added": "Tue Nov 17 11:37:35 -0800 2015"}\n'
        '{"user_id": "abc", "book_id": "9", "rating": 0, "date_added": "Tue Nov 17 11:38:35 -0800 2015"}\n'
        '{"user_id": "xyz", "book_id": "9", "rating": 2, "date_added": "Mon Nov 16 11:37:35 -0800 2015"}\n')
    inter = load_goodreads(d)
    assert [(r[0], r[1], r[2]) for r in inter.ratings] == [(1, 7, 5), (2, 9, 2)]  # the unrated shelf entry is skipped
    assert inter.ratings[1][3] < inter.ratings[0][3]
    (d / "goodreads_interactions_dedup.json").write_text('{"user_id": "abc", "book_id": "7"}\n')
    with pytest.raises(UserError, match="goodreads_interactions_dedup.json:1: a record needs the keys"):
        load_goodreads(d)


@pytest.mark.parametrize("fmt", ["ml-1m", "goodreads"])
def test_latent_factor_data_sets_load_and_follow_the_star_shares(tmp_path, fmt):
    from e2urec_fast.data.synthetic import STAR_SHARES, make_latent

    titles = ["Misérables, Les (1995)"] + [f"Film {i} ({1900 + i})" for i in range(199)]
    d = make_latent(tmp_path / "a", fmt, titles, n_users=60, n_ratings=3000, seed=3)
    inter = load_ml1m(d) if fmt == "ml-1m" else load_goodreads(d)
    assert inter.titles[1] == titles[0]  # the Latin-1 (ML-1M) / UTF-8 (CSV) title reads back
    assert 2500 <= len(inter.ratings) <= 3600 and len({r[0] for r in inter.ratings}) == 60
    per_user = {}
    for u, *_ in inter.ratings:
        per_user[u] = per_user.get(u, 0) + 1
    assert min(per_user.values()) >= 20  # ML-1M's filter
    shares = [sum(r[2] == s for r in inter.ratings) / len(inter.ratings) for s in range(1, 6)]
    assert max(abs(a - b) for a, b in zip(shares, STAR_SHARES[fmt])) < 0.01
    if fmt == "goodreads":  # rows in time order (the row index is the timestamp)
        assert [r[3] for r in inter.ratings] == list(range(len(inter.ratings)))
    else:  # a user's ratings come one after another in time, in the shuffled order they were drawn
        assert len({(r[0], r[3]) for r in inter.ratings}) == len(inter.ratings)
    again = make_latent(tmp_path / "b", fmt, titles, n_users=60, n_ratings=3000, seed=3)
    assert all((d / f).read_bytes() == (again / f).read_bytes() for f in (p.name for p in d.iterdir()))
    samples = build_samples(inter)  # and the pipeline takes it: labels of both kinds
    assert {s.label for s in samples} == {0, 1}
