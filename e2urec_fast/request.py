"""A deletion request: D_f made exactly the named users' train samples, and the request
history (lineage) that travels with every model handed out.

Who was forgotten is the operator's secret. The lineage (in report.json and in every model
folder handed out) carries counts, sample counts and dates, never an id nor a digest of one
(a hash of a small id space is reversed by hashing every id). The ids live only in the
operator's record, `OUT/private/forgotten_users.json` (0600, outside every model folder),
cumulative over the chain: the next request reads it (the lineage names its path) to refuse a
user twice and to keep every earlier forgotten user out of D_r. The lineage names the first
Original (the remembering teacher of every later request), its D_r teacher cache, the
prepared data's hash and every request served so far.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from .config import Config
from .errors import UserError, fail
from .files import read_json_object

RECORD = Path("private") / "forgotten_users.json"


def user_hash(dataset: str, user) -> str:
    """The plain digest earlier versions wrote into the lineage (`users_sha256`): read, to honour
    those histories, never written."""
    return hashlib.sha256(f"{dataset}:{user}".encode()).hexdigest()


def earlier_forgotten(lineage: dict, dataset: str) -> tuple[set[str], set[str]]:
    """(ids forgotten by earlier requests, as the data set names them, from the operator's
    record; plain digests of a history written before the record existed)."""
    legacy = {h for r in lineage.get("requests", []) for h in r.get("users_sha256", []) or []}
    n_before = sum(int(r.get("n_users") or 0) for r in lineage.get("requests", []))
    rec = lineage.get("record")
    if not rec:
        if n_before and not legacy:
            raise UserError(f"the model's request history counts {n_before} forgotten user(s) but names no record of who they "
                            "are; start from the folder of the request that made it (--previous)")
        return set(), legacy
    rec = Path(rec)
    if not rec.is_file():
        raise fail(rec, f"the operator's record of the {n_before} user(s) forgotten before is missing (it keeps them out of "
                        "D_r and refuses them twice); restore it from your backup")
    obj = read_json_object(rec, "unreadable record of forgotten users")
    users, old = obj.get("users"), obj.get("legacy_sha256") or []
    legacy |= set(old) if isinstance(old, list) else set()
    if obj.get("dataset") != dataset or not isinstance(users, list) or len(users) + len(legacy) < n_before:
        raise fail(rec, f"not the record of this model's requests (dataset {obj.get('dataset')!r}, {len(users or [])} users; "
                        f"the history counts {n_before} on {dataset})")
    return {str(u) for u in users}, legacy


def write_record(out: Path, dataset: str, before: set[str], names: list[str], legacy: set[str] = frozenset()) -> Path:
    """The operator's record: every user forgotten on this model's line, in clear, readable by
    the owner only (the folder 0700, the file 0600)."""
    import json
    import os

    from . import dist
    from .files import atomic_path

    path = out / RECORD
    if not dist.is_main():  # torchrun: rank 0 writes it
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    body = dict(note="PRIVATE: who asked to be forgotten. Keep it with the operator; never ship it with a model.",
                dataset=dataset, users=sorted(before) + [n for n in names if n not in before],
                this_request=list(names), date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if legacy:  # users of a history written before this record existed: only their plain digests are known
        body["legacy_sha256"] = sorted(legacy)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
    os.chmod(path, 0o600)
    return path


def redact_users(argv: list[str]) -> list[str]:
    """The command line with the ids of --forget-users/--holdout-users replaced by a count
    (what the model cards and reports echo)."""
    out, i = [], 0
    flags = ("--forget-users", "--holdout-users")
    while i < len(argv):
        a = argv[i]
        flag, val = (a.split("=", 1) + [None])[:2] if a.startswith(flags) and "=" in a else (a, None)
        if flag in flags:
            if val is None and i + 1 < len(argv):
                i += 1
                val = argv[i]
            out += [flag, _count_of(val)]
        else:
            out.append(a)
        i += 1
    return out


def _count_of(spec) -> str:
    spec = "" if spec is None else str(spec)
    if spec.startswith("@"):
        return "<ids from a file>"
    n = len([t for t in spec.split(",") if t.strip()])
    return f"<{n} user{'s' if n != 1 else ''}>"


def resolve_users(prep, dataset: str, tokens: list, flag: str = "--forget-users") -> list[int]:
    """The users as the prepared data codes them: the data set's own string ids through
    users.json (UCSD GoodReads), integers otherwise. Unknown names are named."""
    if prep.user_codes is not None:
        unknown = [str(t) for t in tokens if str(t) not in prep.user_codes]
        if unknown:
            raise UserError(f"{flag}: unknown user id(s) {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''} (not "
                            f"in the prepared {dataset} data: {prep.folder})")
        return [prep.user_codes[str(t)] for t in tokens]
    bad = [str(t) for t in tokens if not str(t).isdigit()]
    if bad:
        raise UserError(f"{flag}: user id {bad[0]!r} is not an integer id (this {dataset} layout numbers its users)")
    return [int(t) for t in tokens]


def names_of(prep, users) -> list[str]:
    """Users as the data set names them (string ids), as the operator's record keeps them."""
    names = {c: n for n, c in prep.user_codes.items()} if prep.user_codes is not None else {}
    return [str(names.get(u, u)) for u in users]


def shown(prep, users) -> str:
    """Users as the data set names them (UCSD GoodReads: its string ids), for messages."""
    names = {c: n for n, c in prep.user_codes.items()} if prep.user_codes is not None else {}
    return ", ".join(names.get(u, str(u)) for u in users)


def apply_request(prep, dataset: str, users: list[int], forgotten: tuple[set[str], set[str]] | set[str]) -> dict:
    """Make D_f exactly `users`' train samples; users forgotten by earlier requests (their ids,
    or a legacy history's plain digests, in `forgotten`: earlier_forgotten) leave D_r too.
    Errors name the offending ids."""
    import torch

    from .data.prepare import SPLIT_TRAIN

    tr = prep.split == SPLIT_TRAIN
    present = set(prep.users.unique().tolist())
    in_train = set(prep.users[tr].unique().tolist())
    unknown = [u for u in users if u not in present]
    if unknown:
        raise UserError(f"--forget-users: unknown user id(s) {shown(prep, unknown)} (not in the prepared {dataset} data: "
                        f"{prep.folder})")
    no_train = [u for u in users if u not in in_train]
    if no_train:
        raise UserError(f"--forget-users: user id(s) {shown(prep, no_train)} have no train samples (only valid/test), "
                        "nothing to forget")
    names, legacy = forgotten if isinstance(forgotten, tuple) else (set(forgotten), set())

    def gone(u) -> bool:
        return names_of(prep, [u])[0] in names or (bool(legacy) and user_hash(dataset, u) in legacy)

    again = [u for u in users if gone(u)]
    if again:
        raise UserError(f"--forget-users: user id(s) {shown(prep, again)} were already forgotten by an earlier request")
    prev = [u for u in in_train if gone(u)]
    req = torch.tensor(users)
    prep.forget = tr & torch.isin(prep.users, req)
    prep.excluded = (tr & torch.isin(prep.users, torch.tensor(prev, dtype=torch.long))) if prev else None
    n_r = len(prep.index("retain"))
    if n_r == 0:
        raise UserError(f"--forget-users: forgetting {shown(prep, users)} would leave D_r empty (no train samples of "
                        "any other user)")
    c = prep.manifest["counts"]
    c.update(forget_users=len(users), forget=int(prep.forget.sum()), retain=n_r, earlier_forgotten_users=len(prev),
             forget_all=len(prep.index("forget_all")))
    return dict(previous_users=len(prev))


def apply_holdout(prep, dataset: str, users: list[int]) -> None:
    """A request's --holdout-users: their train-period samples are D_h (no model here trains
    on them; the user says theirs never did), the audit's non-members. The benchmark split's
    holdout stays out of the preset tokenizers' corpus only (Prepared.split_holdout); no
    users: no holdout (the audit then uses the test samples)."""
    import torch

    from .data.prepare import SPLIT_TRAIN

    tr = prep.split == SPLIT_TRAIN
    in_train = set(prep.users[tr].unique().tolist())
    missing = [u for u in users if u not in in_train]
    if missing:
        raise UserError(f"--holdout-users: user id(s) {shown(prep, missing)} have no train-period samples in the "
                        f"prepared {dataset} data ({prep.folder})")
    prep.holdout = tr & torch.isin(prep.users, torch.tensor(users, dtype=torch.long))
    c = prep.manifest["counts"]
    c.update(holdout_users=len(users), holdout=int(prep.holdout.sum()), retain=len(prep.index("retain")))
    if not c["retain"]:
        raise UserError("--holdout-users: with the forgotten users they cover every train sample (D_r would be empty)")


def lineage_of(cfg: Config) -> tuple[dict, Path | None, dict | None]:
    """(history manifest, the model folder to unlearn, the previous output's report)."""
    from .models.export import read_manifest

    r = cfg.request
    if r.previous is not None:
        prev = Path(r.previous)
        rep = read_json_object(prev / "report.json", "--previous: unreadable JSON")
        req = rep.get("request") or {}
        if not isinstance(req, dict) or not isinstance(req.get("lineage"), dict) or not req["lineage"]:
            raise fail(prev / "report.json", "--previous: this output has no request history (run with --forget-users)")
        return req["lineage"], Path(req["merged"]) if req.get("merged") else None, rep
    if r.original is not None:
        return read_manifest(r.original), Path(r.original), None
    return {}, None, None


def new_lineage(cfg: Config, prep, lineage: dict, history: list, users, orig_folder: Path, out: Path) -> dict:
    """The lineage after this run: the earlier one plus this request (counts, no ids); a request
    writes the operator's record of every user forgotten so far and names its path."""
    this, record = None, lineage.get("record")
    if users is not None:
        c = prep.manifest["counts"]
        this = dict(n_users=len(users), forget_samples=c["forget"], retain_samples=c["retain"], out=str(out.resolve()),
                    date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        before, legacy = earlier_forgotten(lineage, cfg.data.dataset)
        record = str(write_record(out, cfg.data.dataset, before, names_of(prep, users), legacy).resolve())
    history = [{k: v for k, v in r.items() if k != "users_sha256"} for r in history]  # a legacy history's digests go
    lin = dict(dataset=cfg.data.dataset, data_hash=prep.manifest["content_hash"],
               root_original=lineage.get("root_original") or str(orig_folder), retain_cache=lineage.get("retain_cache"),
               record=record, requests=history + ([this] if this else []))
    if (out / "cache" / "teacher_retain.safetensors").exists():
        lin["retain_cache"] = str((out / "cache" / "teacher_retain.safetensors").resolve())
    return lin


def import_retain_cache(lineage: dict, out: Path, prep) -> dict | None:
    """A later request reuses the previous request's D_r teacher rows, minus the newly
    forgotten users' (when this output has none yet); returns {source, rows} or None."""
    src = lineage.get("retain_cache")
    if not src:
        return None
    src, dst = Path(src), out / "cache" / "teacher_retain.safetensors"
    if not src.is_file() or src.resolve() == dst.resolve() or dst.exists():
        return None
    from .teachers import import_rows

    return dict(source=str(src), rows=import_rows(src, dst, prep.index("retain")))

