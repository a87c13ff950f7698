"""A deletion request: D_f made exactly the named users' train samples, and the request
history (lineage) that travels with every model handed out.

Users are recorded hashed (`user_hash`), never in clear. The lineage names the first
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


def user_hash(dataset: str, user) -> str:
    return hashlib.sha256(f"{dataset}:{user}".encode()).hexdigest()


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


def shown(prep, users) -> str:
    """Users as the data set names them (UCSD GoodReads: its string ids), for messages."""
    names = {c: n for n, c in prep.user_codes.items()} if prep.user_codes is not None else {}
    return ", ".join(names.get(u, str(u)) for u in users)


def apply_request(prep, dataset: str, users: list[int], forgotten: set[str]) -> dict:
    """Make D_f exactly `users`' train samples; users forgotten by earlier requests (their
    hashes in `forgotten`) leave D_r too. Errors name the offending ids."""
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
    again = [u for u in users if user_hash(dataset, u) in forgotten]
    if again:
        raise UserError(f"--forget-users: user id(s) {shown(prep, again)} were already forgotten by an earlier request")
    prev = [u for u in in_train if user_hash(dataset, u) in forgotten]
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
    """The lineage after this run: the earlier one plus this request (users hashed)."""
    this = None
    if users is not None:
        c = prep.manifest["counts"]
        this = dict(n_users=len(users), users_sha256=sorted(user_hash(cfg.data.dataset, u) for u in users),
                    forget_samples=c["forget"], retain_samples=c["retain"], out=str(out.resolve()),
                    date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    lin = dict(dataset=cfg.data.dataset, data_hash=prep.manifest["content_hash"],
               root_original=lineage.get("root_original") or str(orig_folder), retain_cache=lineage.get("retain_cache"),
               requests=history + ([this] if this else []))
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

