"""Every setting and path checked before any work (a bad one never costs a training run):
`check(cfg)` returns what the run needs, or raises UserError (exit 2)."""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config, check_fields
from .errors import UserError, fail


@dataclass
class JobPlan:
    methods: list[str]  # resolved names, in the registry's order of the request
    users: list | None  # a deletion request's users (ints; the data set's own string ids for GoodReads)
    holdout: list | None = None  # a deletion request's --holdout-users (the audit's non-members)


def check(cfg: Config) -> JobPlan:
    """Fields (types, ranges, choices), their conflicts, the device, the methods and every path."""
    check_fields(cfg)
    _check_scope(cfg)
    if cfg.student.lora_r > 4096:
        raise UserError(f"--lora-r must be at most 4096, got {cfg.student.lora_r}")
    if cfg.data.paper_scale and cfg.data.max_samples is not None:
        raise UserError("--paper-scale and --max-samples conflict: --paper-scale means --max-samples 100000")
    if (cfg.finetune.item_lr != 1.0 or cfg.finetune.item_init != "random") and not cfg.data.item_tokens and not cfg.is_request:
        raise UserError("--item-lr and --item-init set the item tokens' training: they need --item-tokens")
    _check_device(str(cfg.run.device))
    if cfg.student.load_in_8bit:
        from .models.quant import bitsandbytes_or_error

        bitsandbytes_or_error()  # here, not after the Original is trained
    methods = resolve_methods(cfg)
    _check_paths(cfg, methods)
    names = cfg.data.dataset == "goodreads"  # the UCSD layout names users by strings (request.resolve_users)
    users = parse_user_list(cfg.request.forget_users, names=names) if cfg.request.forget_users is not None else None
    if (cfg.request.original is not None or cfg.request.previous is not None) and users is None:
        raise UserError("--original/--previous serve a deletion request: name the users with --forget-users")
    held = None
    if cfg.request.holdout_users is not None:
        if users is None:
            raise UserError("--holdout-users belongs to a deletion request (--forget-users); the benchmark draws its holdout "
                            "with --holdout-ratio")
        held = parse_user_list(cfg.request.holdout_users, "--holdout-users", names=names)
        both = sorted(set(held) & set(users))
        if both:
            raise UserError(f"--holdout-users and --forget-users share user id(s) {', '.join(map(str, both))}")
    if cfg.data.scenario != "random" and cfg.is_request:
        raise UserError(f"--scenario {cfg.data.scenario} is a benchmark; a deletion request forgets the users it names")
    return JobPlan(methods, users, held)


def _check_scope(cfg: Config) -> None:
    from .models.backbone import BACKBONE_PRESETS
    from .models.boundary import ENC_DEC, parse_scope, scope_conflicts

    if str(cfg.student.lora_scope).strip() == "auto":  # resolved to what the family and the settings allow (boundary.py)
        return
    scope = parse_scope(cfg.student.lora_scope)  # its fit to the backbone's family: here for presets, at load time otherwise
    name = cfg.backbone_name
    given = cfg.run.backbone is None and (cfg.request.original is not None or cfg.request.previous is not None)
    fam = BACKBONE_PRESETS[name].family if name in BACKBONE_PRESETS and not given else None  # a given Original's family: checked at load
    if fam and ((scope.kind == "decoder") != (fam in ENC_DEC)) and scope.cached:
        raise UserError(f"--lora-scope {scope}: the {name} preset is a {fam} model; "
                        + ("use decoder" if fam in ENC_DEC else "use top:K (decoder is for t5 and bart)"))
    scope_conflicts(scope, cfg)


def _check_device(dev: str) -> None:
    if dev == "auto":
        return
    try:
        d = torch.device(dev)
    except RuntimeError:
        raise UserError(f"--device {dev!r}: not a device (cpu, cuda, cuda:N or auto)") from None
    if d.type not in ("cpu", "cuda"):
        raise UserError(f"--device {dev!r}: only cpu, cuda, cuda:N or auto")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {dev}: no CUDA device available")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UserError(f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s)")


def resolve_methods(cfg: Config) -> list[str]:
    """--methods (or the job kind's default) as registry names, with Retrain dropped under --no-retrain."""
    from .methods.registry import ALL_METHODS, DEFAULT_METHODS, REQUEST_METHODS

    given = cfg.run.methods
    if given is None:
        methods = list(REQUEST_METHODS if cfg.is_request else DEFAULT_METHODS)
    else:
        methods = [m.strip().lower() for m in str(given).split(",") if m.strip()]
        if methods == ["all"]:
            methods = list(ALL_METHODS)
        bad = [m for m in methods if m not in ALL_METHODS]
        if bad or not methods:
            raise UserError(f"--methods: unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_METHODS)} or all")
    if cfg.request.no_retrain:
        if given is not None and ("retrain" in methods or "retrain2" in methods):
            raise UserError(f"--no-retrain conflicts with --methods naming {'retrain' if 'retrain' in methods else 'retrain2'}")
        methods = [m for m in methods if m != "retrain"]
    if cfg.student.impl == "both" and "e2urec" not in methods:
        raise UserError("--impl both compares E2URec's two paths: add e2urec to --methods")
    if cfg.request.merge and "e2urec" not in methods:
        raise UserError("--merge merges E2URec's adapter: add e2urec to --methods")
    return methods


def needs_retrain(cfg: Config, methods: list[str]) -> bool:
    """Whether the job trains Retrain: named, or the reference of any other method's JSD/L2."""
    return "retrain" in methods or (not cfg.request.no_retrain and methods != ["original"])


def _check_paths(cfg: Config, methods: list[str]) -> None:
    from .models.backbone import BACKBONE_PRESETS, FETCHED, check_model_folder, probe_model_folder

    r = cfg.request
    if cfg.data.data_dir is not None:
        d = Path(cfg.data.data_dir)
        if not d.exists():
            raise fail(d, "data folder not found")
        if not (d.is_dir() or d.is_file()):
            raise fail(d, "--data-dir is neither a folder nor a file (a device or a socket?)")
    writable_dir(Path(os.path.expanduser(cfg.data.cache_dir)), "--cache-dir")
    writable_dir(Path(cfg.run.out), "--out")
    if r.previous is not None and r.original is not None:
        raise UserError("--previous and --original conflict: --previous OUT1 continues from OUT1's model")
    if r.previous is not None:
        prev = Path(r.previous)
        if not (prev / "report.json").is_file():
            raise fail(prev, "--previous: no report.json (not the output folder of an earlier request)")
        if prev.resolve() == Path(cfg.run.out).resolve():
            raise UserError(f"--previous {prev}: give the next request its own --out")
    if r.original is not None:
        check_model_folder(Path(r.original), "--original", "--original: model folder not found")
        probe_model_folder(Path(r.original), "--original")  # before the data is prepared, not after
    needs_pretrained = needs_retrain(cfg, methods) or any(m in methods for m in ("sisa", "receraser"))
    if (r.original is not None or r.previous is not None) and needs_pretrained and cfg.run.backbone is None:
        raise UserError("Retrain (and the JSD/L2 against it) needs the pretrained model your Original was fine-tuned from: "
                        "give --backbone, or --no-retrain to skip Retrain")
    _check_overlap(cfg)
    name = cfg.backbone_name
    if name not in BACKBONE_PRESETS and name not in FETCHED:
        check_model_folder(Path(name), "--backbone", f"backbone not found: neither a preset ({', '.join([*BACKBONE_PRESETS, *FETCHED])}) "
                           "nor a folder")
        probe_model_folder(Path(name), "--backbone")


def _check_overlap(cfg: Config) -> None:
    """--out must neither contain nor lie inside a folder the user owns and we read: the
    --original model, the --previous output, the --cache-dir, the --backbone folder, the
    --data-dir (a run replaces OUT's merged/, original/ and adapter/, and a failed run
    removes what it created there)."""
    out = Path(cfg.run.out).resolve()
    r = cfg.request
    owned = [("--original", r.original), ("--previous", r.previous), ("--cache-dir", os.path.expanduser(cfg.data.cache_dir)),
             ("--data-dir", cfg.data.data_dir)]
    if cfg.run.backbone is not None and Path(cfg.run.backbone).exists():
        owned.append(("--backbone", cfg.run.backbone))
    for flag, spec in (("--forget-users", r.forget_users), ("--holdout-users", r.holdout_users)):
        if spec is not None and str(spec).startswith("@"):
            owned.append((flag, str(spec)[1:]))
    owned += _lineage_folders(cfg)
    for flag, p in owned:
        if p is None:
            continue
        q = Path(p).resolve()
        if q == out or q.is_relative_to(out) or out.is_relative_to(q):
            raise UserError(f"--out {cfg.run.out} and {flag} {p} overlap: the run would write into (or over) a folder it reads; "
                            "give --out a folder of its own")


def _lineage_folders(cfg: Config) -> list[tuple[str, str]]:
    """What a request reads through its history: the first Original (every later request's
    remembering teacher), the previous request's model, adapter and merged folder. Also checks,
    before any work, that the history is readable and its record of forgotten users is there."""
    from .request import earlier_forgotten, lineage_of

    r = cfg.request
    if r.previous is None and r.original is None:
        return []
    lineage, model_dir, prev = lineage_of(cfg)
    earlier_forgotten(lineage, cfg.data.dataset)  # a missing or foreign record: refused here, not after the work
    found = [("the first Original of this model's history", lineage.get("root_original"))]
    if prev is not None:
        req = prev.get("request") or {}
        if not req.get("adapter") and not req.get("merged"):
            raise fail(Path(r.previous) / "report.json", "--previous: this output handed out no adapter (a benchmark without "
                                                         "E2URec?); give the output of a deletion request")
        if model_dir is None and not (Path(str(req.get("original"))) / "config.json").is_file():
            raise fail(Path(str(req.get("original"))), f"--previous {r.previous}: the model its adapter applies to is gone "
                                                       "(moved or deleted); restore it, or give --original OUT1/merged")
        found += [("--previous's Original", req.get("original")), ("--previous's adapter", req.get("adapter")),
                  ("--previous's merged model", req.get("merged"))]
    return [(f, p) for f, p in found if p]


def writable_dir(path: Path, flag: str) -> None:
    """`path` is a folder or can become one, and we can write there (probed with a real file)."""
    if path.exists() and not path.is_dir():
        raise fail(path, f"{flag} exists and is not a folder")
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # mkdir would fail on it only when the work is done
            try:
                target = os.readlink(probe)
            except OSError:
                target = "?"
            raise fail(probe, f"{flag}: a symbolic link to nothing ({target}: missing, or a loop of links); remove it or "
                              "give another folder")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise fail(path, f"{flag} cannot be created: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise fail(path, f"{flag} is not writable ({e.strerror or e})") from None


def parse_user_list(spec: str, flag: str = "--forget-users", names: bool = False) -> list:
    """'1,2,3' or '@FILE' (one id per line; blank lines and '#' comments skipped; a UTF-8
    byte-order mark ignored). Integer ids, or with `names` the data set's own ids as strings
    (any token without spaces, commas or '#'; mapped to codes once the data is read)."""
    spec = str(spec).strip()
    path = None
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise fail(path, f"{flag} file not found")
        try:
            lines = path.read_text(encoding="utf-8-sig").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise fail(path, f"unreadable {flag} file ({e})") from None
        toks = [ln.split("#", 1)[0].strip() if "#" in ln else ln.strip() for ln in lines]
    elif not spec:
        raise UserError(f"{flag}: no user ids (the {flag[2:].split('-')[0]} set is empty)")
    else:
        toks = [t.strip() for t in spec.split(",")]
        if not all(toks):
            raise UserError(f"{flag} {spec!r}: an empty id (give ids separated by commas, or @FILE)")

    def bad(t: str, why: str):
        if path is None:
            return UserError(f"{flag}: user id {t!r} {why}")
        return fail(path, f"user id {t!r} {why}", toks.index(t) + 1)  # the line, found only on the way out

    ids = [t for t in toks if t]
    if names:
        odd = next((t for t in ids if re.search(r"[\s,]", t)), None)
        if odd is not None:
            raise bad(odd, "has spaces or commas")
    else:
        odd = next((t for t in ids if not (t.isascii() and t.isdigit())), None)
        if odd is not None:
            raise bad(odd, "is not an integer id")
        ids = list(map(int, ids))
    if not ids:
        raise UserError(f"{flag} {spec}: no user ids (the {flag[2:].split('-')[0]} set is empty)")
    dup = sorted(u for u, n in Counter(ids).items() if n > 1)  # linear: a million ids in well under a second
    if dup:
        raise UserError(f"{flag}: duplicate user id(s) {', '.join(map(str, dup))}")
    return ids


def resolve_policies(cfg: Config, family: str) -> Config:
    """Every "auto" the methods read, turned into the concrete choice once, when the model's
    family is known (device and dtype are resolved before, in `api.run`); the report's settings
    show these values. The rules live in the functions named; lower-level callers that pass an
    unresolved config (benchmarks, tests) reach the same rules there.

    - lora_scope: `boundary.resolve_scope` (the cached boundary for a request on t5/bart's fast
      path, else all); aug_mode: `boundary.aug_is_lora` (lora where auto chose the boundary; on
      the fast path only);
    - student_schedule: sized for a deletion request, fixed for the benchmark (#26 item 1);
    - batch_fusion: on off the CPU (one forward over both halves pays on a GPU, not here);
    - kernel_backend: `ops.resolve_backend` on the job's device (torch where the native op did not
      build);
    - calibrate: teacher, E2URec's forgetting target pulled toward a non-member's answers, the
      baselines' strength (calibrate.py; measured on memorize, #37: docs/results.md)."""
    from .config import replace_fields
    from .models.boundary import aug_is_lora, resolve_scope

    s, sp, d = cfg.student, cfg.speed, str(cfg.run.device)
    new = {}
    scope = resolve_scope(cfg, family, "fast")  # (the fast path's: --impl reference runs every q/v, e2urec.plan_run)
    if str(s.lora_scope).strip() == "auto":
        new["lora_scope"] = str(scope)
    if s.aug_mode == "auto" and s.impl == "fast":  # (--impl reference|both: each path's own, at its plan)
        new["aug_mode"] = "lora" if aug_is_lora(cfg, scope) else "full"
    if s.student_schedule == "auto":
        new["student_schedule"] = "sized" if cfg.is_request else "fixed"
    if sp.batch_fusion == "auto":
        new["batch_fusion"] = "off" if d.startswith("cpu") else "on"
    if sp.kernel_backend == "auto":
        from .ops import resolve_backend

        new["kernel_backend"] = resolve_backend("auto", torch.empty(0, device=d))
    if cfg.calibration.calibrate == "auto":
        new["calibrate"] = "teacher"
    return replace_fields(cfg, **new) if new else cfg
