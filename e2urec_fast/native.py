"""The native teacher-KL op from csrc/, compiled at first use: C++/OpenMP for the CPU
(csrc/teacher_kl.cpp) and CUDA for the GPU (csrc/teacher_kl_cuda.cu).

torch.utils.cpp_extension.load builds each source once (about 30 s) into the torch
extensions cache, in a folder named by the source's hash, the flags and the torch version
(two checkouts never rebuild each other's); a build lock left by a killed build is waited
on for at most E2UREC_NATIVE_LOCK_TIMEOUT seconds (300), then the op falls back with one
warning instead of hanging; a lock whose builder was one of our processes, now gone
(`e2urec.owner` beside it names the pid), is removed at once and the op built again.
Later imports reuse the build. Without a compiler (nvcc for the CUDA one), or with
E2UREC_NO_NATIVE=1, `available()` is False and ops.teacher_kl falls back to another
backend with a warning.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import warnings
from pathlib import Path

import torch

_mod = None
_error: str | None = None
_cuda_mod = None
_cuda_error: str | None = None


def _source(name: str = "teacher_kl.cpp") -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "csrc" / name, here / "csrc" / name):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"csrc/{name} not found beside the package")


def build_name(base: str, source: Path, flags: dict) -> str:
    """The extension's name, keyed by the source's path and bytes, the flags and the torch
    version: two checkouts (or two versions) never share, and rebuild, one build folder
    (torch's build file names the source by path, so one folder per path)."""
    h = hashlib.sha256(str(source.resolve()).encode() + b"\0" + source.read_bytes())
    h.update(repr(sorted(flags.items())).encode() + torch.__version__.encode())
    return f"{base}_{h.hexdigest()[:12]}"


OWNER = "e2urec.owner"  # beside torch's build lock: the pid of our process that builds (torch's lock names none)


def _owner_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for_lock(build_dir: Path, what: str) -> str | None:
    """torch's build lock: another process is building, or a killed build left it behind.
    Wait at most E2UREC_NATIVE_LOCK_TIMEOUT seconds (default 300), then give up (None: go on)."""
    lock, owner = build_dir / "lock", build_dir / OWNER
    limit = float(os.environ.get("E2UREC_NATIVE_LOCK_TIMEOUT", "300"))
    t0 = time.monotonic()
    while lock.exists():
        pid = _owner_pid(owner)
        if pid is not None and not _alive(pid):  # our build was killed (SIGTERM, SIGKILL) holding torch's lock
            warnings.warn(f"{lock}: left by a killed build (pid {pid}); removed, building again", stacklevel=3)
            lock.unlink(missing_ok=True)
            owner.unlink(missing_ok=True)
            break
        if time.monotonic() - t0 >= limit:
            return (f"{lock} is still held after {limit:.0f} s (another build running, or a killed build left it: delete the "
                    f"file to rebuild)")
        time.sleep(min(1.0, max(limit / 10, 0.05)))
    return None


def _build(missing: str | None, name: str, source: str, what: str, **flags):
    """(module, None) or (None, why): `missing` is a reason not to try; a failed build warns."""
    if os.environ.get("E2UREC_NO_NATIVE") == "1":
        return None, "disabled by E2UREC_NO_NATIVE=1"
    if missing:
        return None, missing
    try:
        from torch.utils.cpp_extension import _get_build_directory
        from torch.utils.cpp_extension import load as _load

        src = _source(source)
        name = build_name(name, src, flags)
        bdir = Path(_get_build_directory(name, False))
        stuck = _wait_for_lock(bdir, what)
        if stuck:
            raise TimeoutError(stuck)
        bdir.mkdir(parents=True, exist_ok=True)
        (bdir / OWNER).write_text(str(os.getpid()))
        try:
            return _load(name=name, sources=[str(src)], verbose=False, **flags), None
        finally:
            if _owner_pid(bdir / OWNER) == os.getpid():
                (bdir / OWNER).unlink(missing_ok=True)
    except Exception as e:  # a failed build falls back to another backend
        why = f"{type(e).__name__}: {str(e)[:300]}"
        warnings.warn(f"native {what} teacher_kl op could not be built ({why}); using another backend", stacklevel=3)
        return None, why


def load_cuda():
    """Compile (once) and return the CUDA extension module, or None when it cannot be built."""
    global _cuda_mod, _cuda_error
    if _cuda_mod is None and _cuda_error is None:
        no_cuda = not torch.cuda.is_available() or torch.version.cuda is None
        _cuda_mod, _cuda_error = _build("no CUDA device or a CPU-only torch" if no_cuda else None, "e2urec_teacher_kl_cuda",
                                        "teacher_kl_cuda.cu", "CUDA", extra_cuda_cflags=["-O3", "--use_fast_math"])
    return _cuda_mod


def load():
    """Compile (once) and return the CPU extension module, or None when it cannot be built."""
    global _mod, _error
    if _mod is None and _error is None:
        no_cxx = shutil.which(os.environ.get("CXX", "c++")) is None
        _mod, _error = _build("no C++ compiler found" if no_cxx else None, "e2urec_teacher_kl", "teacher_kl.cpp", "CPU",
                              extra_cflags=["-O3", "-fopenmp", "-march=native", "-ffast-math"], extra_ldflags=["-fopenmp"])
    return _mod


def available(device: torch.device) -> bool:
    kind = torch.device(device).type
    return (kind == "cpu" and load() is not None) or (kind == "cuda" and load_cuda() is not None)


def _module(x: torch.Tensor):
    return load_cuda() if x.is_cuda else load()


class TeacherKLFunction(torch.autograd.Function):
    """Per-row KL (fp32, shape (N,)); gradient for the student logits only."""

    @staticmethod
    def forward(ctx, student, teacher, augmented, alpha):
        m = _module(student)
        has_a = augmented is not None
        a = augmented if has_a else teacher
        teacher = teacher.float().contiguous()  # the teachers stay fp32 whatever the student's dtype (never a downcast)
        a = a.float().contiguous()
        kl, lse_s, lse_t = m.forward(student.detach(), teacher.detach(), a.detach(), has_a, alpha)
        ctx.save_for_backward(student.detach(), teacher.detach(), a.detach(), lse_s, lse_t)
        ctx.has_a, ctx.alpha = has_a, alpha
        return kl

    @staticmethod
    def backward(ctx, grad):
        s, t, a, lse_s, lse_t = ctx.saved_tensors
        g = _module(s).backward(grad.contiguous(), s, t, a, ctx.has_a, ctx.alpha, lse_s, lse_t)
        return g, None, None, None
