"""Public fused ops with one dispatch point: triton | native | torch.

teacher_kl(student, teacher, augmented=None, alpha=0.0, reduction="mean", backend="auto")

    t = teacher                                   if augmented is None
    t = teacher - alpha * relu(augmented - teacher)   (the forgetting teacher)
    per row: KL(softmax(t) || softmax(student)) = sum_v p_t (log p_t - log p_s)

Inputs (N, V), any V >= 2, fp32/bf16/fp16; result fp32; gradient w.r.t. student only.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "torch", "native", "triton")


def forgetting_teacher(teacher: torch.Tensor, augmented: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """v_f = v - alpha * relu(v_aug - v) (in fp32)."""
    t = teacher.float()
    if augmented is None:
        return t
    return t - alpha * torch.relu(augmented.float() - t)


def lowered_teacher(teacher: torch.Tensor, answer_col: torch.Tensor, gamma: float) -> torch.Tensor:
    """The calibrated forgetting target (calibrate.teacher_offset): the teacher's logit of
    each row's true answer lowered by `gamma` (raised where gamma < 0), in fp32; UNDIAL's
    adjusted target (arXiv 2402.10052) with the amount chosen on non-members. `answer_col`:
    (N,) the column of each row's true answer."""
    t = teacher.float().clone()
    t[torch.arange(len(t), device=t.device), answer_col.to(t.device)] -= gamma
    return t


def pulled_teacher(teacher: torch.Tensor, cols, proxy_margin: torch.Tensor, lam: float) -> torch.Tensor:
    """The calibrated forgetting target pulled toward a non-member's prediction (calibrate.teacher_pull):
    each row's Yes logit moved so that its Yes-minus-No margin goes a share `lam` of the way to
    `proxy_margin` (N,), what a model that never saw the row would predict; every other logit as it
    is; in fp32. `cols`: the [No, Yes] columns."""
    t = teacher.float().clone()
    no, yes = int(cols[0]), int(cols[1])
    t[:, yes] += lam * (proxy_margin.to(t.device, t.dtype) - (t[:, yes] - t[:, no]))
    return t


def teacher_kl_ref(student, teacher, augmented=None, alpha: float = 0.0, reduction: str = "mean", upcast: bool = True):
    """Plain PyTorch reference in fp32 (0 log 0 = 0: a teacher -inf entry contributes nothing)."""
    s = student.float() if upcast else student
    t = forgetting_teacher(teacher, augmented, alpha).detach()
    logp_t = F.log_softmax(t, -1)
    p_t = logp_t.exp()
    kl = torch.where(p_t > 0, p_t * (logp_t - F.log_softmax(s, -1)), torch.zeros((), dtype=p_t.dtype, device=p_t.device)).sum(-1)
    return _reduce(kl, reduction)


def _reduce(kl: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return kl.mean()
    if reduction == "sum":
        return kl.sum()
    if reduction == "none":
        return kl
    raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")


_warned: set = set()


def _available(backend: str, x: torch.Tensor) -> bool:
    if backend == "torch":
        return True
    if backend == "native":
        from . import native

        return native.available(x.device)
    if backend == "triton":
        from .kernels import teacher_kl as tk

        return tk.available(x.device)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    if backend == "auto":
        order = ["triton", "native"] if x.is_cuda else ["native"]
        if x.is_cuda and "triton-missing" not in _warned:
            from .kernels import teacher_kl as tk

            if not tk.HAVE_TRITON:  # (a CPU never uses triton: no word there)
                warnings.warn("triton is not installed: the fused teacher KL runs on the native op (or torch) on "
                              f"{x.device}; pip install triton for the Triton kernels", stacklevel=3)
                _warned.add("triton-missing")
        for b in order:
            try:
                if _available(b, x):
                    return b
            except Exception:
                pass
        return "torch"
    if _available(backend, x):
        return backend
    if backend not in _warned:
        warnings.warn(f"teacher_kl backend {backend!r} is not available on {x.device}; using the torch reference",
                      stacklevel=3)
        _warned.add(backend)
    return "torch"


def teacher_kl(student, teacher, augmented=None, alpha: float = 0.0, reduction: str = "mean", backend: str = "auto"):
    if student.dim() != 2 or student.shape != teacher.shape or (augmented is not None and augmented.shape != teacher.shape):
        raise ValueError(f"teacher_kl wants equal (N, V) shapes, got {tuple(student.shape)}, {tuple(teacher.shape)}"
                         + (f", {tuple(augmented.shape)}" if augmented is not None else ""))
    if student.shape[1] < 2:
        raise ValueError("teacher_kl needs V >= 2")
    b = resolve_backend(backend, student)
    if b == "torch":
        return teacher_kl_ref(student, teacher, augmented, alpha, reduction)
    if b == "native":
        from . import native

        return _reduce(native.TeacherKLFunction.apply(student, teacher, augmented, float(alpha)), reduction)
    from .kernels import teacher_kl as tk

    return _reduce(tk.TeacherKLFunction.apply(student, teacher, augmented, float(alpha)), reduction)
