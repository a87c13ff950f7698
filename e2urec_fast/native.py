"""The native teacher-KL op from csrc/, compiled at first use: C++/OpenMP for the CPU
(csrc/teacher_kl.cpp) and CUDA for the GPU (csrc/teacher_kl_cuda.cu).

torch.utils.cpp_extension.load builds each source once (about 30 s) into the torch
extensions cache; later imports reuse it. Without a compiler (nvcc for the CUDA one), or
with E2UREC_NO_NATIVE=1, `available()` is False and ops.teacher_kl falls back to another
backend with a warning.
"""

from __future__ import annotations

import os
import shutil
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


def load_cuda():
    """Compile (once) and return the CUDA extension module, or None when it cannot be built."""
    global _cuda_mod, _cuda_error
    if _cuda_mod is not None or _cuda_error is not None:
        return _cuda_mod
    if os.environ.get("E2UREC_NO_NATIVE") == "1":
        _cuda_error = "disabled by E2UREC_NO_NATIVE=1"
        return None
    if not torch.cuda.is_available() or torch.version.cuda is None:
        _cuda_error = "no CUDA device or a CPU-only torch"
        return None
    try:
        from torch.utils.cpp_extension import load as _load

        _cuda_mod = _load(name="e2urec_teacher_kl_cuda", sources=[str(_source("teacher_kl_cuda.cu"))],
                          extra_cuda_cflags=["-O3", "--use_fast_math"], verbose=False)
    except Exception as e:  # a failed build falls back to triton or torch
        _cuda_error = f"{type(e).__name__}: {str(e)[:300]}"
        warnings.warn(f"native CUDA teacher_kl op could not be built ({_cuda_error}); using another backend", stacklevel=2)
    return _cuda_mod


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
        teacher = teacher.to(student.dtype)
        a = a.to(student.dtype)
        kl, lse_s, lse_t = m.forward(student.detach(), teacher.detach(), a.detach(), has_a, alpha)
        ctx.save_for_backward(student.detach(), teacher.detach(), a.detach(), lse_s, lse_t)
        ctx.has_a, ctx.alpha = has_a, alpha
        return kl

    @staticmethod
    def backward(ctx, grad):
        s, t, a, lse_s, lse_t = ctx.saved_tensors
        g = _module(s).backward(grad.contiguous(), s, t, a, ctx.has_a, ctx.alpha, lse_s, lse_t)
        return g, None, None, None
