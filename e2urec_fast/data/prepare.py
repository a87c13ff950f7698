"""The prepared data set: built once from the raw files, then reused.

Folder `<cache>/prepared/<dataset>-<key>/`:
  manifest.json      parameters, counts, source and content hashes
  prompts.jsonl      one {"prompt", "label", "user", "item"} per sample (train, valid, test order)
  meta.safetensors   labels, users, items, split (0 train, 1 valid, 2 test), forget mask,
                     holdout mask (the audit's same-pool non-members D_h: trained on by no model)
  tokens-<tok>.safetensors   token ids per tokenizer (flat ids + offsets), written on first use
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import fail
from ..files import load_safetensors, save_safetensors_atomic, staged_dir, write_json_atomic
from .loaders import fetch_recbole_wheel, load_dataset
from .samples import Split, build_samples, render_prompt, split_samples
from .scenarios import SCENARIOS

PREP_VERSION = 2  # 2: ML-1M occupation 0 reads 'other or not specified' (the authors' ml-1m.ipynb)
SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = 0, 1, 2


def calib_users(users) -> list[int]:
    """The calibration half of the held-out users D_h (by user, never by sample): the users in
    order of id, shuffled by a fixed seed, the first floor(n/2). The rest are the audit's: the
    two never share a user, so what a request tunes on is not what the audit scores it on.
    Fewer than 2 users: no calibration part."""
    import random

    held = sorted(set(int(u) for u in users))
    random.Random(0).shuffle(held)
    return sorted(held[: len(held) // 2])


@dataclass
class Prepared:
    folder: Path
    manifest: dict
    prompts: list[str]
    labels: torch.Tensor  # (N,) int64
    users: torch.Tensor  # (N,) int64
    items: torch.Tensor  # (N,) int64
    split: torch.Tensor  # (N,) int8
    forget: torch.Tensor  # (N,) bool, True only for D_f samples of train
    _tokens: dict = field(default_factory=dict)
    # (N,) bool: train samples of users forgotten by earlier requests (sequential deletion
    # requests): in neither D_r nor this request's D_f; None when there were none
    excluded: torch.Tensor | None = None
    # (N,) bool: the benchmark split's forget mask (--forget-ratio, split seed) as prepared,
    # kept when a deletion request replaces `forget`: the preset backbones' tokenizer is
    # trained without it (pretrain_prompts)
    split_forget: torch.Tensor | None = None
    # (N,) bool: train-period samples of the held-out users D_h (`--holdout-ratio`, or
    # `--holdout-users` in a request): in no model's training, the audit's non-members
    holdout: torch.Tensor | None = None
    # (N,) bool: the benchmark split's holdout as prepared, kept when a deletion request
    # replaces `holdout` (the preset tokenizers' corpus leaves it out, as split_forget)
    split_holdout: torch.Tensor | None = None
    # the data set's own user id -> the code in `users`, where those ids are not integers
    # (UCSD GoodReads); None where the codes are the data set's ids
    user_codes: dict[str, int] | None = None
    # the shilling scenario's probes: {prompt, user, item} of every real test user's latest
    # test prompt asked about each target (data/scenarios.probe_samples); None elsewhere
    probes: list[dict] | None = None

    def __post_init__(self):
        if self.split_forget is None:
            self.split_forget = self.forget.clone()
        if self.holdout is None:
            self.holdout = torch.zeros_like(self.forget)
        if self.split_holdout is None:
            self.split_holdout = self.holdout.clone()

    def index(self, part: str) -> torch.Tensor:
        """Sample indices of 'train' (what the Original trains on: the train period minus
        D_h), 'valid', 'test', 'forget' (this request's D_f), 'retain' (D_r: train minus every
        forgotten user), 'forget_all' (the cumulative D_f of every request so far),
        'holdout' (D_h), and D_h split by user (calib_users): 'calib' (what a request may
        calibrate its forgetting on) and 'audit' (what only the audit reads)."""
        if part in ("holdout", "calib", "audit"):
            h = (self.split == SPLIT_TRAIN) & self.holdout
            if part != "holdout":
                c = torch.isin(self.users, torch.tensor(calib_users(self.users[h].tolist()), dtype=torch.long))
                h &= c if part == "calib" else ~c
            return h.nonzero().flatten()
        tr = (self.split == SPLIT_TRAIN) & ~self.holdout
        gone = self.forget if self.excluded is None else (self.forget | self.excluded)
        sel = {
            "train": tr,
            "valid": self.split == SPLIT_VALID,
            "test": self.split == SPLIT_TEST,
            "forget": tr & self.forget,
            "retain": tr & ~gone,
            "forget_all": tr & gone,
        }[part]
        return sel.nonzero().flatten()

    def item_swaps(self, n_users: int = 40, n_items: int = 40) -> dict:
        """Does a model tell items apart (issue #40): the latest test prompt of up to `n_users`
        test users (lowest ids), each asked about each of the `n_items` items most often asked
        about in D_r (the target segment `***...***` of the prompt swapped for that item's, its
        item token included). Returns {prompts (users x items, row-major), users, items, rate:
        each item's positive rate in D_r}. Nothing of D_f is read."""
        import re

        pat = re.compile(r"\*\*\*.*?\*\*\*", re.S)
        r_idx = self.index("retain").tolist()
        count: dict[int, list[int]] = {}
        for i in r_idx:
            count.setdefault(int(self.items[i]), []).append(i)
        items = sorted(count, key=lambda it: (-len(count[it]), it))[:n_items]
        seg = {it: pat.search(self.prompts[count[it][0]]).group(0) for it in items}
        latest: dict[int, int] = {}
        for i in self.index("test").tolist():
            latest[int(self.users[i])] = i  # (rows in time order: the last one wins)
        users = sorted(latest)[:n_users]
        prompts = [pat.sub(lambda m, t=seg[it]: t, self.prompts[latest[u]], count=1) for u in users for it in items]
        rate = [float(self.labels[count[it]].float().mean()) for it in items]
        return dict(prompts=prompts, users=users, items=items, rate=rate)

    def forget_key(self) -> str:
        """Hash of which train samples are forgotten (this request and earlier ones): every
        cache of a model trained on D_r or of a run on D_f is keyed by it."""
        h = hashlib.sha256(self.forget.numpy().tobytes())
        if self.holdout.any():
            h.update(b"holdout" + self.holdout.numpy().tobytes())
        if self.excluded is not None:
            h.update(self.excluded.numpy().tobytes())
        return h.hexdigest()[:16]

    def pretrain_prompts(self) -> list[str]:
        """The prompts a preset backbone's tokenizer is trained on: the split's D_r and valid
        (never D_f, nor test: Retrain must not see the forgotten text, even through the
        vocabulary)."""
        keep = ((self.split == SPLIT_TRAIN) & ~self.split_forget & ~self.split_holdout) | (self.split == SPLIT_VALID)
        return [self.prompts[i] for i in keep.nonzero().flatten().tolist()]

    def pretrain_key(self) -> str:
        """Hash of the split's forget and holdout masks (which prompts pretrain_prompts leaves out)."""
        h = hashlib.sha256(self.split_forget.numpy().tobytes())
        if self.split_holdout.any():
            h.update(b"holdout" + self.split_holdout.numpy().tobytes())
        return h.hexdigest()[:8]

    def probe_tokens(self, tokenizer, tok_key: str, max_length: int = 512, suffix: str = "") -> list[torch.Tensor]:
        """Token ids of the probes, as `tokens` makes them (kept in memory: a few thousand prompts)."""
        key = "probes-" + tok_key
        if key not in self._tokens:
            texts = [p["prompt"] + suffix for p in self.probes or []]
            enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"] if texts else []
            self._tokens[key] = [torch.tensor(e, dtype=torch.int64) for e in enc]
        return self._tokens[key]

    def tokens(self, tokenizer, tok_key: str, max_length: int = 512, suffix: str = "") -> list[torch.Tensor]:
        """Token ids of every prompt (+ `suffix`) under `tokenizer`, cached in the folder by
        `tok_key` (which must cover the suffix)."""
        if tok_key in self._tokens:
            return self._tokens[tok_key]
        path = self.folder / f"tokens-{tok_key}.safetensors"
        if path.exists():
            t = load_safetensors(path)
            ids, off = t["ids"].long(), t["offsets"]
        else:
            texts = [p + suffix for p in self.prompts] if suffix else self.prompts
            enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
            lens = torch.tensor([len(e) for e in enc])
            off = torch.zeros(len(enc) + 1, dtype=torch.int64)
            off[1:] = lens.cumsum(0)
            ids = torch.tensor([t for e in enc for t in e], dtype=torch.int64)
            save_safetensors_atomic({"ids": ids.int(), "offsets": off}, path)
        seqs = [ids[off[i] : off[i + 1]] for i in range(len(off) - 1)]
        self._tokens[tok_key] = seqs
        return seqs


def _sha(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def _files_sha(paths: list[Path]) -> str:
    """sha256 over each file's name and bytes, in order, read in 1 MiB chunks (a large
    unrelated file in --data-dir costs time, not its size in memory)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _source_files(dataset: str, data_dir, cache_dir) -> list[Path]:
    if dataset == "ml-100k" and data_dir is None:
        return [fetch_recbole_wheel(cache_dir)]
    if data_dir is None:
        raise fail(None, f"--dataset {dataset} needs --data-dir (the folder with its raw files)")
    d = Path(data_dir)
    if not d.exists():
        raise fail(d, "data folder not found")
    if d.is_file():
        return [d]
    if not d.is_dir():
        raise fail(d, "--data-dir is neither a folder nor a file (a device or a socket?)")
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))


def _check_args(dataset: str, max_samples, forget_ratio: float, holdout_ratio: float, scenario: str) -> None:
    if dataset not in ("ml-100k", "ml-1m", "goodreads"):
        raise fail(None, f"unknown dataset {dataset!r} (choose ml-100k, ml-1m or goodreads)")
    if not 0.0 < forget_ratio < 1.0:
        raise fail(None, f"--forget-ratio must be in (0, 1), got {forget_ratio}")
    if not 0.0 <= holdout_ratio < 1.0:
        raise fail(None, f"--holdout-ratio must be in [0, 1), got {holdout_ratio}")
    if scenario not in SCENARIOS:
        raise fail(None, f"unknown scenario {scenario!r} (choose {', '.join(SCENARIOS)})")
    if max_samples is not None and max_samples < 10:
        raise fail(None, f"--max-samples must be at least 10, got {max_samples}")


def prepare(dataset: str, data_dir=None, cache_dir="~/.cache/e2urec_fast", max_samples: int | None = 100_000,
            forget_ratio: float = 0.2, seed: int = 42, min_history: int = 5, k: int = 10, holdout_ratio: float = 0.0,
            scenario: str = "random", item_tokens: bool = False) -> Prepared:
    """Build (or reuse) the prepared data set. See the module docstring for the layout.
    `scenario` 'shilling' injects fake users into the train period (data/scenarios.py); their
    samples are D_f, and `forget_ratio` is not used. `item_tokens`: each item in the prompts
    preceded by its own token (samples.render_prompt); the manifest then lists the catalogue's
    item ids (`catalogue`), which a preset tokenizer gets one token each for."""
    _check_args(dataset, max_samples, forget_ratio, holdout_ratio, scenario)
    shilling = scenario == "shilling"
    cache_dir = Path(os.path.expanduser(str(cache_dir)))
    sources = _source_files(dataset, data_dir, cache_dir)
    params = dict(dataset=dataset, max_samples=max_samples, forget_ratio=forget_ratio, seed=seed,
                  min_history=min_history, k=k, template="simple", version=PREP_VERSION)
    if holdout_ratio or shilling:  # (absent otherwise: the caches of earlier versions stay valid)
        params |= dict(holdout_ratio=holdout_ratio, scenario="shilling" if shilling else "random")
    params |= dict(shilling=2) if shilling else dict(scenario="canary", canary=1) if scenario == "canary" else {}
    params |= dict(item_tokens=1) if item_tokens else {}
    # (shilling 2: fillers drawn around their mean; the probes; data/scenarios.py)
    if any(p.name.startswith("goodreads_interactions") for p in sources):
        params["user_ids"] = "raw"  # the UCSD layout's string ids are kept (users.json)
    src_hash = _files_sha(sources)
    key = _sha(json.dumps(params, sort_keys=True).encode(), src_hash.encode())[:16]
    folder = cache_dir / "prepared" / f"{dataset}-{key}"
    if (folder / "manifest.json").exists():
        try:
            return _load(folder)
        except Exception as e:  # a damaged cache is rebuilt, with a note
            print(f"{folder}: prepared data unreadable ({e}); rebuilding", file=sys.stderr)

    inter = load_dataset(dataset, data_dir, cache_dir)
    samples = build_samples(inter, min_history=min_history, k=k)
    sp = split_samples(samples, max_samples, forget_ratio, seed, holdout_ratio)
    scen = None
    if scenario in ("shilling", "canary"):
        sp, scen = _with_shilling(sp, inter, samples, max_samples, seed, holdout_ratio, min_history, k) if shilling \
            else _with_canaries(sp, inter, seed, min_history, k)
    all_s = sp.train + sp.valid + sp.test
    prompts = [render_prompt(s, inter, item_tokens) for s in all_s]
    n_tr, n_va = len(sp.train), len(sp.valid)
    split = torch.tensor([SPLIT_TRAIN] * n_tr + [SPLIT_VALID] * n_va + [SPLIT_TEST] * len(sp.test), dtype=torch.int8)
    forget = torch.tensor(sp.forget_mask + [False] * (len(all_s) - n_tr))
    holdout = torch.tensor((sp.holdout_mask or [False] * n_tr) + [False] * (len(all_s) - n_tr))
    labels = torch.tensor([s.label for s in all_s])
    lines = "".join(json.dumps({"prompt": p, "label": s.label, "user": s.user, "item": s.item}) + "\n" for p, s in zip(prompts, all_s))
    n_f = int(forget.sum())
    manifest = dict(
        params=params,
        source_files=[str(p) for p in sources],
        source_hash=src_hash,
        content_hash=_sha(lines.encode()),
        counts=dict(
            ratings=len(inter.ratings), users=len(inter.users) or len({r[0] for r in inter.ratings}), items=len(inter.titles),
            samples_after_filter=sp.n_after_filter, samples=len(all_s), train=n_tr, valid=n_va, test=len(sp.test),
            train_users=len({s.user for s in sp.train}), forget_users=len(sp.forget_users), forget=n_f,
            retain=n_tr - n_f - int(holdout.sum()), holdout_users=len(sp.holdout_users), holdout=int(holdout.sum()),
            positive_rate=round(float(labels.float().mean()), 4),
        ),
    )
    if item_tokens:  # the catalogue (every item of the data set, not only those users rated: no user's trace)
        manifest["catalogue"] = sorted(inter.titles)
    probe_lines = None
    if scen is not None and scen["name"] == "shilling":
        probe_lines, manifest["scenario"] = _probes(sp, inter, scen, item_tokens)
    elif scen is not None:
        manifest["scenario"] = {k: v for k, v in scen.items() if k not in ("members", "nonmembers")}
    with staged_dir(folder) as tmp:
        (tmp / "prompts.jsonl").write_text(lines, encoding="utf-8")
        if probe_lines is not None:
            (tmp / "probes.jsonl").write_text(probe_lines, encoding="utf-8")
        save_safetensors_atomic(dict(labels=labels, users=torch.tensor([s.user for s in all_s]),
                                     items=torch.tensor([s.item for s in all_s]), split=split, forget=forget, holdout=holdout),
                                tmp / "meta.safetensors")
        if inter.user_names:
            present = {s.user for s in all_s}
            write_json_atomic(tmp / "users.json", {inter.user_names[c]: c for c in sorted(present) if c in inter.user_names})
        write_json_atomic(tmp / "manifest.json", manifest)
    return _load(folder)


def _probes(sp: Split, inter, scen: dict, item_tokens: bool = False) -> tuple[str, dict]:
    """The shilling scenario's probes (data/scenarios.probe_samples) as JSON lines, and the
    scenario's description with their count and hash."""
    from .scenarios import probe_samples

    probes = probe_samples(sp.test, scen["targets"])
    lines = "".join(json.dumps({"prompt": render_prompt(s, inter, item_tokens), "user": s.user, "item": s.item}) + "\n" for s in probes)
    return lines, scen | dict(probes=len(probes), probe_hash=_sha(lines.encode()))


def _load(folder: Path) -> Prepared:
    manifest = json.loads((folder / "manifest.json").read_text())
    text = (folder / "prompts.jsonl").read_text(encoding="utf-8")
    if _sha(text.encode()) != manifest["content_hash"]:
        raise ValueError("prompts.jsonl does not match the manifest's content hash")
    prompts = [json.loads(line)["prompt"] for line in text.split("\n") if line]
    m = load_safetensors(folder / "meta.safetensors")
    codes = json.loads((folder / "users.json").read_text()) if (folder / "users.json").exists() else None
    probes = None
    if "probe_hash" in (manifest.get("scenario") or {}):
        ptext = (folder / "probes.jsonl").read_text(encoding="utf-8")
        if _sha(ptext.encode()) != manifest["scenario"]["probe_hash"]:
            raise ValueError("probes.jsonl does not match the manifest's probe hash")
        probes = [json.loads(line) for line in ptext.split("\n") if line]
    return Prepared(folder, manifest, prompts, m["labels"], m["users"], m["items"], m["split"], m["forget"],
                    holdout=m.get("holdout"), user_codes=codes, probes=probes)


def _with_shilling(sp: Split, inter, samples, max_samples, seed: int, holdout_ratio: float, min_history: int, k: int):
    """The split with the fake users' samples added to train (in time order) as D_f, and the
    held-out real users drawn from the shuffled real train users (data/scenarios.py)."""
    from .scenarios import inject_shilling

    try:
        fake, info = inject_shilling(inter, sp.train, sp.test, seed, min_history=min_history, k=k)
    except ValueError as e:
        raise fail(None, f"--scenario shilling: {e}; give more --max-samples") from None
    real = split_samples(samples, max_samples, holdout_ratio, seed) if holdout_ratio else None
    held = set(real.forget_users) if real else set()
    fake_users = set(info["fake_users"])
    train = sorted(sp.train + fake, key=lambda s: (s.ts, s.user, s.item))
    return Split(train, sp.valid, sp.test, info["fake_users"], [s.user in fake_users for s in train], sp.n_after_filter,
                 sorted(held), [s.user in held for s in train]), info



def _with_canaries(sp: Split, inter, seed: int, min_history: int, k: int):
    """The split with the canary users' samples added to train (in time order): the first half
    of them D_f, the second half D_h (data/scenarios.py). The real users are neither."""
    from .scenarios import inject_canaries

    try:
        can, info = inject_canaries(inter, sp.train, seed, min_history=min_history, k=k)
    except ValueError as e:
        raise fail(None, f"--scenario canary: {e}; give more --max-samples") from None
    members, held = set(info["members"]), set(info["nonmembers"])
    train = sorted(sp.train + can, key=lambda s: (s.ts, s.user, s.item))
    return Split(train, sp.valid, sp.test, info["members"], [s.user in members for s in train], sp.n_after_filter,
                 info["nonmembers"], [s.user in held for s in train]), info
