"""User-facing errors and atomic file writes.

Every problem caused by the user's input (a file, a flag, a folder) is raised as
`UserError`; the CLI prints its one-line message and exits with status 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input: one line, naming the thing and the problem."""


def fail(path: str | os.PathLike | None, problem: str, line: int | None = None) -> UserError:
    """Build a UserError of the form '<path>[:line]: <problem>', on one line (a newline or
    carriage return quoted from a file is shown escaped)."""
    problem = problem.replace("\r", "\\r").replace("\n", "\\n")
    where = ""
    if path is not None:
        where = f"{path}:{line}: " if line is not None else f"{path}: "
    return UserError(f"{where}{problem}")


def _writer() -> bool:
    """Whether this process writes files (every process but torchrun's ranks above 0)."""
    from .dist import is_main

    return is_main()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only on success. Under
    torchrun only rank 0 writes: another rank's write goes to a scratch file, then away."""
    path = Path(path)
    if not _writer():
        scratch = tempfile.mkdtemp(prefix="e2urec_rank_")
        try:
            yield Path(scratch) / path.name
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


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
    if not _writer():
        scratch = tempfile.mkdtemp(prefix="e2urec_rank_")
        try:
            yield Path(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
