"""Triton kernels for the fused teacher KL (see e2urec_fast.ops for the op).

    t = teacher - alpha * relu(augmented - teacher)
    kl[i] = sum_v softmax(t_i)_v (log_softmax(t_i)_v - log_softmax(s_i)_v)
    grad_s[i] = g[i] * (softmax(s_i) - softmax(t_i))

Two layouts:
- narrow V (the Yes/No pair, V <= 256): a program handles ROWS rows at once, the
  whole row in one tile;
- wide V (full vocabulary): a program per row walks V in chunks with a running max
  and rescaled sums (online softmax), so no (N, V) fp32 probabilities are formed;
  backward writes the gradient chunk by chunk from the saved log-sum-exps.
Runs on CUDA, and on the CPU under TRITON_INTERPRET=1 (tests).

Numerics: the teacher and augmented logits are read in their own dtype (an fp32 cache stays
fp32 beside a bf16 student); -inf logits contribute 0 (0 log 0 = 0, no (-inf) - (-inf));
the row's KL is A / Z_t - (m_t - m_s) - log Z_t + log Z_s, which never subtracts two large
log-sum-exps (logits offset by 3e4 would cancel to 0 in fp32); offsets are int64.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - triton missing
    HAVE_TRITON = False

NARROW_MAX_V = 256


def available(device) -> bool:
    if not HAVE_TRITON:
        return False
    dev = torch.device(device)
    return dev.type == "cuda" or (dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


if HAVE_TRITON:

    @triton.jit
    def _teacher(t_ptr, a_ptr, offs, mask, alpha, HAS_AUG: tl.constexpr):
        t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_AUG:
            a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            t = t - alpha * tl.maximum(a - t, 0.0)
        return t

    @triton.jit
    def _store_stats(st_s_ptr, st_t_ptr, rows, N, m_s, lz_s, m_t, lz_t, mask):
        """Each side's softmax as (max, log-sum) rows of a (2, N) buffer: the backward's
        exp((x - m) - log Z) never subtracts a large log-sum-exp from a large logit."""
        tl.store(st_s_ptr + rows, m_s, mask=mask)
        tl.store(st_s_ptr + N + rows, lz_s, mask=mask)
        tl.store(st_t_ptr + rows, m_t, mask=mask)
        tl.store(st_t_ptr + N + rows, lz_t, mask=mask)

    @triton.jit
    def _narrow_fwd_kernel(s_ptr, t_ptr, a_ptr, kl_ptr, lse_s_ptr, lse_t_ptr, N, V, alpha,
                           HAS_AUG: tl.constexpr, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # int64: N * V may pass 2^31
        cols = tl.arange(0, BLOCK_V)
        mask = (rows[:, None] < N) & (cols[None, :] < V)
        offs = rows[:, None] * V + cols[None, :]
        s = tl.load(s_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        t = _teacher(t_ptr, a_ptr, offs, mask, alpha, HAS_AUG)
        t = tl.where(mask, t, float("-inf"))
        m_t = tl.max(t, 1)
        m_s = tl.max(s, 1)
        e_t = tl.where(t == float("-inf"), 0.0, tl.exp(t - m_t[:, None]))
        z_t = tl.sum(e_t, 1)
        z_s = tl.sum(tl.where(s == float("-inf"), 0.0, tl.exp(s - m_s[:, None])), 1)
        acc = tl.sum(tl.where(e_t > 0.0, e_t * (t - s), 0.0), 1)  # 0 log 0 = 0
        rmask = rows < N
        # no large-number cancellation: (m_t - m_s) first, then the small log-sums
        tl.store(kl_ptr + rows, acc / z_t - (m_t - m_s) - tl.log(z_t) + tl.log(z_s), mask=rmask)
        _store_stats(lse_s_ptr, lse_t_ptr, rows, N, m_s, tl.log(z_s), m_t, tl.log(z_t), rmask)

    @triton.jit
    def _narrow_bwd_kernel(g_ptr, s_ptr, t_ptr, a_ptr, lse_s_ptr, lse_t_ptr, out_ptr, N, V, alpha,
                           HAS_AUG: tl.constexpr, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_V)
        rmask = rows < N
        mask = rmask[:, None] & (cols[None, :] < V)
        offs = rows[:, None] * V + cols[None, :]
        s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        t = _teacher(t_ptr, a_ptr, offs, mask, alpha, HAS_AUG)
        g = tl.load(g_ptr + rows, mask=rmask, other=0.0)
        m_s = tl.load(lse_s_ptr + rows, mask=rmask, other=0.0)
        lz_s = tl.load(lse_s_ptr + N + rows, mask=rmask, other=0.0)
        m_t = tl.load(lse_t_ptr + rows, mask=rmask, other=0.0)
        lz_t = tl.load(lse_t_ptr + N + rows, mask=rmask, other=0.0)
        grad = g[:, None] * (tl.exp((s - m_s[:, None]) - lz_s[:, None]) - tl.exp((t - m_t[:, None]) - lz_t[:, None]))
        tl.store(out_ptr + offs, grad.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _wide_fwd_kernel(s_ptr, t_ptr, a_ptr, kl_ptr, lse_s_ptr, lse_t_ptr, N, V, alpha,
                         HAS_AUG: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = row * V
        m_t = tl.full((BLOCK,), float("-inf"), tl.float32)  # per-lane running state, merged at the end
        m_s = tl.full((BLOCK,), float("-inf"), tl.float32)
        z_t = tl.zeros((BLOCK,), tl.float32)
        z_s = tl.zeros((BLOCK,), tl.float32)
        acc = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < V
            s = tl.load(s_ptr + base + cols, mask=mask, other=float("-inf")).to(tl.float32)
            t = _teacher(t_ptr, a_ptr, base + cols, mask, alpha, HAS_AUG)
            t = tl.where(mask, t, float("-inf"))
            new_t = tl.maximum(m_t, t)
            r_t = tl.where(m_t == float("-inf"), 0.0, tl.exp(m_t - new_t))
            e_t = tl.where(t == float("-inf"), 0.0, tl.exp(t - new_t))  # (-inf) - (-inf) is NaN: 0 log 0 = 0
            z_t = z_t * r_t + e_t
            acc = acc * r_t + tl.where(e_t > 0.0, e_t * (t - s), 0.0)
            m_t = new_t
            new_s = tl.maximum(m_s, s)
            r_s = tl.where(m_s == float("-inf"), 0.0, tl.exp(m_s - new_s))
            z_s = z_s * r_s + tl.where(s == float("-inf"), 0.0, tl.exp(s - new_s))
            m_s = new_s
        M_t = tl.max(m_t, 0)
        M_s = tl.max(m_s, 0)
        w_t = tl.where(m_t == float("-inf"), 0.0, tl.exp(m_t - M_t))
        w_s = tl.where(m_s == float("-inf"), 0.0, tl.exp(m_s - M_s))
        Z_t = tl.sum(z_t * w_t, 0)
        Z_s = tl.sum(z_s * w_s, 0)
        A = tl.sum(acc * w_t, 0)
        tl.store(kl_ptr + row, A / Z_t - (M_t - M_s) - tl.log(Z_t) + tl.log(Z_s))  # no large-number cancellation
        _store_stats(lse_s_ptr, lse_t_ptr, row, N, M_s, tl.log(Z_s), M_t, tl.log(Z_t), True)

    @triton.jit
    def _wide_bwd_kernel(g_ptr, s_ptr, t_ptr, a_ptr, lse_s_ptr, lse_t_ptr, out_ptr, N, V, alpha,
                         HAS_AUG: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = row * V
        g = tl.load(g_ptr + row)
        m_s = tl.load(lse_s_ptr + row)
        lz_s = tl.load(lse_s_ptr + N + row)
        m_t = tl.load(lse_t_ptr + row)
        lz_t = tl.load(lse_t_ptr + N + row)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < V
            s = tl.load(s_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
            t = _teacher(t_ptr, a_ptr, base + cols, mask, alpha, HAS_AUG)
            grad = g * (tl.exp((s - m_s) - lz_s) - tl.exp((t - m_t) - lz_t))
            tl.store(out_ptr + base + cols, grad.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_cfg(V: int):
    if V <= NARROW_MAX_V:
        block_v = max(2, triton.next_power_of_2(V))
        rows = max(1, min(128, 2048 // block_v))
        return "narrow", rows, block_v
    return "wide", 1, min(4096, triton.next_power_of_2(V))


def teacher_kl_forward(s, t, a, alpha: float):
    N, V = s.shape
    kl = torch.empty(N, device=s.device, dtype=torch.float32)
    lse_s = torch.empty(2, N, device=s.device, dtype=torch.float32)  # (max, log-sum) per row
    lse_t = torch.empty_like(lse_s)
    has_a = a is not None
    a_ = a if has_a else t
    kind, rows, block = _launch_cfg(V)
    if kind == "narrow":
        _narrow_fwd_kernel[(triton.cdiv(N, rows),)](s, t, a_, kl, lse_s, lse_t, N, V, alpha, HAS_AUG=has_a, ROWS=rows,
                                                    BLOCK_V=block)
    else:
        _wide_fwd_kernel[(N,)](s, t, a_, kl, lse_s, lse_t, N, V, alpha, HAS_AUG=has_a, BLOCK=block, num_warps=8)
    return kl, lse_s, lse_t


def teacher_kl_backward(g, s, t, a, alpha: float, lse_s, lse_t):
    N, V = s.shape
    out = torch.empty_like(s)
    has_a = a is not None
    a_ = a if has_a else t
    kind, rows, block = _launch_cfg(V)
    g = g.float().contiguous()
    if kind == "narrow":
        _narrow_bwd_kernel[(triton.cdiv(N, rows),)](g, s, t, a_, lse_s, lse_t, out, N, V, alpha, HAS_AUG=has_a,
                                                    ROWS=rows, BLOCK_V=block)
    else:
        _wide_bwd_kernel[(N,)](g, s, t, a_, lse_s, lse_t, out, N, V, alpha, HAS_AUG=has_a, BLOCK=block, num_warps=8)
    return out


def _wide(x: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision inputs; fp32/fp64 as they are (never a downcast)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class TeacherKLFunction(torch.autograd.Function):
    """Per-row KL (fp32, (N,)); gradient for the student logits only."""

    @staticmethod
    def forward(ctx, student, teacher, augmented, alpha):
        s = student.detach().contiguous()
        # the teachers keep (at least) fp32, whatever the student's dtype: a bf16 copy of an fp32
        # cache is off by up to 15% in KL at V=2
        t = _wide(teacher.detach()).contiguous()
        a = _wide(augmented.detach()).contiguous() if augmented is not None else None
        kl, lse_s, lse_t = teacher_kl_forward(s, t, a, alpha)
        ctx.save_for_backward(s, t, a if a is not None else t, lse_s, lse_t)
        ctx.has_a, ctx.alpha = a is not None, alpha
        return kl

    @staticmethod
    def backward(ctx, grad):
        s, t, a, lse_s, lse_t = ctx.saved_tensors
        return teacher_kl_backward(grad, s, t, a if ctx.has_a else None, ctx.alpha, lse_s, lse_t), None, None, None
