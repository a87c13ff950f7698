"""The native (C++/OpenMP) teacher-KL op from csrc/, compiled at first use.

torch.utils.cpp_extension.load builds csrc/teacher_kl.cpp once (about 30 s) into
the torch extensions cache; later imports reuse it. Without a compiler, or with
E2UREC_NO_NATIVE=1, `available()` is False and ops.teacher_kl falls back to torch
with a warning.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch

_mod = None
_error: str | None = None


def _source() -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "csrc" / "teacher_kl.cpp", here / "csrc" / "teacher_kl.cpp"):
        if cand.exists():
            return cand
    raise FileNotFoundError("csrc/teacher_kl.cpp not found beside the package")


def load():
    """Compile (once) and return the extension module, or None when it cannot be built."""
    global _mod, _error
    if _mod is not None or _error is not None:
        return _mod
    if os.environ.get("E2UREC_NO_NATIVE") == "1":
        _error = "disabled by E2UREC_NO_NATIVE=1"
        return None
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        _error = "no C++ compiler found"
        return None
    try:
        from torch.utils.cpp_extension import load as _load

        _mod = _load(name="e2urec_teacher_kl", sources=[str(_source())], extra_cflags=["-O3", "-fopenmp", "-march=native", "-ffast-math"],
                     extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # a failed build falls back to torch
        _error = f"{type(e).__name__}: {str(e)[:300]}"
        warnings.warn(f"native teacher_kl op could not be built ({_error}); using the torch reference", stacklevel=2)
    return _mod


def available(device: torch.device) -> bool:
    return torch.device(device).type == "cpu" and load() is not None


class TeacherKLFunction(torch.autograd.Function):
    """Per-row KL (fp32, shape (N,)); gradient for the student logits only."""

    @staticmethod
    def forward(ctx, student, teacher, augmented, alpha):
        m = load()
        has_a = augmented is not None
        a = augmented if has_a else teacher
        teacher = teacher.to(student.dtype)
        a = a.to(student.dtype)
        kl, lse_s, lse_t = m.forward(student.detach(), teacher.detach(), a.detach(), has_a, alpha)
        ctx.save_for_backward(student.detach(), teacher.detach(), a.detach(), lse_s, lse_t)
        ctx.has_a, ctx.alpha = has_a, alpha
        return kl

    @staticmethod
    def backward(ctx, grad):
        s, t, a, lse_s, lse_t = ctx.saved_tensors
        g = load().backward(grad.contiguous(), s, t, a, ctx.has_a, ctx.alpha, lse_s, lse_t)
        return g, None, None, None
