"""#38: who was forgotten is the operator's secret; nothing of D_f survives a completed run,
whatever was killed before it; a run never writes over a folder it reads; the API in threads."""

import hashlib
import json
import os
import re
import subprocess
import sys
import threading

import pytest

from conftest import make_ml1m
from e2urec_fast import UserError, forget
from e2urec_fast.data import prepare
from e2urec_fast.data.prepare import SPLIT_TRAIN
from e2urec_fast.unlearn import main

SMALL = dict(dataset="ml-1m", max_samples=None, epochs=1, batch_size=8, student_steps=6, forget_epochs=0, quiet=True, seed=42)
TEMP = re.compile(r"^\..+\.(\d+-)?[A-Za-z0-9_]{8}(\.tmp)?$")  # what atomic_path/staged_dir leave when killed


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("priv")
    data = make_ml1m(tmp / "ml1m", n_users=16, per_user=14)
    common = dict(SMALL, data_dir=str(data), cache_dir=str(tmp / "cache"))
    b = forget(tmp / "base", methods="original", **common)
    prep = prepare("ml-1m", data, tmp / "cache", max_samples=None, forget_ratio=0.2, seed=42)
    users = sorted(set(prep.users[prep.split == SPLIT_TRAIN].tolist()))
    return dict(tmp=tmp, data=data, common=common, original=b.original, users=users)


def _args(base, out, *extra):
    return ["--dataset", "ml-1m", "--data-dir", str(base["data"]), "--cache-dir", str(base["tmp"] / "cache"), "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--student-steps", "6", "--forget-epochs", "0", "--quiet", *extra]


def _files(*roots):
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                yield os.path.join(dirpath, n)


def test_no_forgotten_id_in_anything_served_or_shared(base, tmp_path, capsys):
    users = base["users"][3:5]
    out = tmp_path / "req"
    rc = main(_args(base, out, "--original", str(base["original"]), "--forget-users", ",".join(map(str, users)), "--no-retrain",
                    "--merge"))
    assert rc == 0, capsys.readouterr().err
    digests = {hashlib.sha256(f"ml-1m:{u}".encode()).hexdigest() for u in users}
    digests |= {hashlib.sha256(str(u).encode()).hexdigest() for u in users}
    record = out / "private" / "forgotten_users.json"
    looked = 0
    for f in _files(out, base["tmp"] / "cache"):
        if os.path.abspath(f) == str(record):
            continue
        try:
            text = open(f, encoding="utf-8").read()
        except UnicodeDecodeError:  # tensors: no text of ours in them
            continue
        looked += 1
        assert not any(d in text for d in digests), f
        assert not re.search(r"forget.users\W+" + str(users[0]), text), f  # the command, the settings
    assert looked >= 8  # the reports, both cards, configs, e2urec.json: read, not skipped
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["forget_users"] == "<2 users>" and rep["forgotten_users"] == 2
    card = (out / "merged" / "README.md").read_text()
    assert "--forget-users '<2 users>'" in card
    # the operator's record: every id in clear, readable by the owner alone, outside every model folder
    assert json.loads(record.read_text())["users"] == [str(u) for u in users]
    assert record.stat().st_mode & 0o777 == 0o600 and record.parent.stat().st_mode & 0o777 == 0o700
    assert json.loads((out / "merged" / "e2urec.json").read_text())["record"] == str(record.resolve())
    # the record is what refuses a user twice, down the chain
    with pytest.raises(UserError, match=f"{users[1]} were already forgotten"):
        forget(tmp_path / "again", original=str(out / "merged"), forget_users=[users[1]], no_retrain=True, **base["common"])
    # ... and without it the next request cannot know who must stay out of D_r: refused before any work
    record.rename(tmp_path / "moved.json")
    with pytest.raises(UserError, match="record of the 2 user"):
        forget(tmp_path / "next", previous=str(out), forget_users=[base["users"][6]], no_retrain=True, **base["common"])
    assert not (tmp_path / "next").exists()


_KILLER = """
import os, sys
import e2urec_fast.files as files
real, want = os.replace, sys.argv[1]
def replace(src, dst, *a, **k):
    if want in os.path.basename(str(src)):
        os._exit(137)  # as SIGKILL: no cleanup runs
    return real(src, dst, *a, **k)
files.os = type(os)("os_patched"); files.os.__dict__.update(os.__dict__); files.os.replace = replace
from e2urec_fast.unlearn import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("at", [".teacher_retain.safetensors.", ".boundary", ".merged.", ".adapter_model.safetensors.", ".ml-1m-"])
def test_a_run_killed_at_a_staged_write_then_rerun_leaves_no_temporary(base, tmp_path, at):
    cache = tmp_path / "cache" if at == ".ml-1m-" else base["tmp"] / "cache"  # the prepared data's staging: a fresh cache
    out = tmp_path / "o"
    args = _args(base, out, "--original", str(base["original"]), "--forget-users", str(base["users"][7]), "--no-retrain",
                 "--merge")
    args[args.index("--cache-dir") + 1] = str(cache)
    r = subprocess.run([sys.executable, "-c", _KILLER, at, *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 137, r.stderr[-2000:]
    left = [f for f in _files(out, cache) if TEMP.match(os.path.basename(f))]
    left += [d for d, _, _ in os.walk(out) if TEMP.match(os.path.basename(d))] + \
        [d for d, _, _ in os.walk(cache) if TEMP.match(os.path.basename(d))]
    assert left, "the kill left nothing behind: the test would prove nothing"
    assert main(args) == 0
    left = [p for p in [*_files(out, cache), *(d for d, _, _ in os.walk(out)), *(d for d, _, _ in os.walk(cache))]
            if TEMP.match(os.path.basename(p))]
    assert not left, left


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_out_over_a_folder_the_history_reads_is_refused(base, tmp_path):
    first = base["original"] / "model.safetensors"
    before = _sha(first)
    r1 = forget(tmp_path / "reqN", original=str(base["original"]), forget_users=[base["users"][8]], no_retrain=True, merge=True,
                **base["common"])
    for out in (base["original"].parent, base["original"], r1.merged, r1.out / "adapter", r1.out / "sub"):
        with pytest.raises(UserError, match="overlap"):
            forget(out, previous=str(r1.out), forget_users=[base["users"][9]], no_retrain=True, **base["common"])
    with pytest.raises(UserError, match="overlap"):  # through the merged model's history too
        forget(base["original"].parent, original=str(r1.merged), forget_users=[base["users"][9]], no_retrain=True, **base["common"])
    assert _sha(first) == before and (base["original"] / "config.json").is_file()
    users_file = tmp_path / "ids" / "users.txt"
    users_file.parent.mkdir()
    users_file.write_text(f"{base['users'][9]}\n")
    with pytest.raises(UserError, match="overlap"):
        forget(tmp_path / "ids", previous=str(r1.out), forget_users=f"@{users_file}", no_retrain=True, **base["common"])


def _adapter(out):
    return (out / "adapter" / "adapter_model.safetensors").read_bytes()


def test_threads_on_two_outs_equal_sequential_runs_and_one_out_refuses_the_second(base, tmp_path):
    import shutil

    # each run its own copy of the cache as the base left it: what one run adds to a cache (states built in
    # other batches) may move the next run's figures in the last bit, whichever way runs are ordered
    def cache(name):
        shutil.copytree(base["tmp"] / "cache", tmp_path / name)
        return str(tmp_path / name)

    kw = [dict(original=str(base["original"]), forget_users=[u], no_retrain=True, **base["common"]) for u in base["users"][:2]]
    assert len(kw) == 2
    for i, k in enumerate(kw):
        forget(tmp_path / f"seq{i}", **(k | dict(cache_dir=cache(f"cs{i}"))))
    kw = [k | dict(cache_dir=cache(f"ct{i}")) for i, k in enumerate(kw)]
    errors = []

    def call(out, k):
        try:
            forget(out, **k)
        except Exception as e:  # noqa: BLE001 (the test reports it)
            errors.append(e)

    ts = [threading.Thread(target=call, args=(tmp_path / f"thr{i}", k)) for i, k in enumerate(kw)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    for i in range(2):
        assert _adapter(tmp_path / f"thr{i}") == _adapter(tmp_path / f"seq{i}")
    # one OUT, two threads: the second is refused with the busy error, the first finishes
    started = threading.Event()
    out = tmp_path / "same"
    first = threading.Thread(target=call, args=(out, kw[0]))
    first.start()
    while first.is_alive() and not (out / ".e2urec.lock").exists():
        started.wait(0.01)
    with pytest.raises(UserError, match="another run \\(another thread of this process\\)"):
        forget(out, **kw[1])
    first.join()
    assert not errors, errors
    assert (out / "report.json").is_file()


@pytest.mark.parametrize("args,msg", [
    (["--data-dir", "/dev/null"], "neither a folder nor a file"),
    (["--forget-users", "1", "--forget-users", "2"], "--forget-users given twice"),
    (["--seed", str(2**70)], "--seed must be below 2\\*\\*31"),
    (["--lora-r", str(10**12)], "--lora-r must be"),
    (["--forget-users", "\u0663"], "is not an integer id"),
])
def test_bad_flags_are_one_line_before_work(args, msg, tmp_path, capsys):
    (tmp_path / "d").mkdir()
    data = "/dev/null" if args[:1] == ["--data-dir"] else str(tmp_path / "d")
    extra = args[2:] if args[:1] == ["--data-dir"] else args
    argv = ["--dataset", "ml-1m", "--data-dir", data, "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(msg, err[0]), err
    assert not (tmp_path / "o").exists()


def test_api_takes_a_preset_name_and_paths(base, tmp_path):
    from e2urec_fast.config import from_fields

    assert from_fields("authors").preset == "authors"
    with pytest.raises(UserError, match="--previous: this output handed out no adapter"):  # a benchmark without E2URec
        forget(tmp_path / "o", previous=base["original"].parent, forget_users=[base["users"][0]], no_retrain=True,
               **base["common"])


def test_a_causal_original_takes_its_documented_scope(tmp_path):
    """#38 item 6: the scope was checked against the default preset (t5), not the given Original."""
    from e2urec_fast.checks import _check_scope
    from e2urec_fast.config import from_fields

    _check_scope(from_fields(original=str(tmp_path), forget_users="1", lora_scope="top:1"))
    with pytest.raises(UserError, match="use decoder"):
        _check_scope(from_fields(forget_users="1", lora_scope="top:1"))


def test_a_failed_run_removes_the_parent_folders_it_created(tmp_path):
    with pytest.raises(UserError, match="--forget-ratio"):
        forget(out=tmp_path / "a" / "b" / "OUT", forget_ratio=2.0)
    assert not (tmp_path / "a").exists()


def test_a_truncated_cached_model_is_trained_again_not_a_traceback(tmp_path):
    from e2urec_fast.methods.retrain import _cached

    path = tmp_path / "original-0123456789abcdef.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # a write cut short
    assert _cached(None, path) is None and not path.exists()


def test_a_killed_native_builds_lock_is_removed_at_once(tmp_path, monkeypatch):
    import time

    from e2urec_fast import native

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "lock").write_text("")
    (tmp_path / native.OWNER).write_text(str(dead.pid))
    monkeypatch.setenv("E2UREC_NATIVE_LOCK_TIMEOUT", "30")
    t0 = time.monotonic()
    with pytest.warns(UserWarning, match="left by a killed build"):
        assert native._wait_for_lock(tmp_path, "CPU") is None
    assert time.monotonic() - t0 < 5 and not (tmp_path / "lock").exists()
    (tmp_path / "lock").write_text("")  # a lock with no owner of ours: waited on, up to the limit
    monkeypatch.setenv("E2UREC_NATIVE_LOCK_TIMEOUT", "0.2")
    assert "still held" in native._wait_for_lock(tmp_path, "CPU")
