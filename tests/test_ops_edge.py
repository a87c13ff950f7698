"""teacher_kl where mixed precision and extreme logits break naive kernels, every backend
that runs here (torch, native, Triton under the interpreter; CUDA when present) against
float64 on the very same input values.

- an fp32 teacher (the cache) with a bf16/fp16 student: the teacher keeps its precision
  (a kernel that casts it to the student's dtype first is off by up to 15% at V=2);
- -inf logits: 0 log 0 = 0 (a teacher -inf entry contributes nothing; no NaN);
- logits offset by 1e4 and 3e4: the result must not cancel to 0;
- all-equal rows: KL exactly 0 when teacher and student agree.
Tolerances: KL absolute 2e-6 + 1e-4 relative (fp32 arithmetic on exact inputs); gradients
(written in the student's dtype) by that dtype's resolution.
"""

from pathlib import Path

import pytest
import torch

from e2urec_fast import ops
from test_ops import backends

GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def ref64(s, t, a, alpha):
    """KL(softmax(t_f) || softmax(s)) in float64 with 0 log 0 = 0, and d sum(KL) / d s."""
    s64 = s.detach().cpu().double().requires_grad_()
    t64 = t.cpu().double()
    tf = t64 if a is None else t64 - alpha * torch.relu(a.cpu().double() - t64)
    lp_t = torch.log_softmax(tf, -1)
    p_t = lp_t.exp()
    terms = torch.where(p_t > 0, p_t * (lp_t - torch.log_softmax(s64, -1)), torch.zeros_like(p_t))
    kl = terms.sum(-1)
    kl.sum().backward()
    return kl.detach(), s64.grad


def check(backend, device, s, t, a=None, alpha=0.0):
    s = s.detach().clone().to(device).requires_grad_()  # a fresh leaf: no gradient carried over between checks
    t, a = t.to(device), a.to(device) if a is not None else None
    kl = ops.teacher_kl(s, t, a, alpha, reduction="none", backend=backend)
    kl.sum().backward()
    want, want_g = ref64(s, t, a, alpha)
    got = kl.detach().cpu().double()
    assert torch.isfinite(got).all(), f"{backend}: non-finite KL {got}"
    assert torch.allclose(got, want, atol=2e-6, rtol=1e-4), f"{backend}: KL {got[:4]} vs {want[:4]}"
    g = s.grad.cpu().double()
    assert torch.isfinite(g).all()
    assert torch.allclose(g, want_g, atol=GRAD_TOL[s.dtype], rtol=0), f"{backend}: grad off by {(g - want_g).abs().max()}"


@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("V", [2, 1271])
@pytest.mark.parametrize("sdt", [torch.bfloat16, torch.float16])
def test_fp32_teacher_keeps_its_precision(backend, device, V, sdt):
    gen = torch.Generator().manual_seed(V)
    s = (torch.randn(33, V, generator=gen) * 3).to(sdt)
    t = torch.randn(33, V, generator=gen) * 3 + 0.001 * torch.randn(33, V, generator=gen)  # fp32 detail a downcast loses
    a = t + torch.randn(33, V, generator=gen).abs() * 2
    check(backend, device, s, t, a, alpha=2.0)


@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("V", [2, 5, 600])
def test_minus_inf_logits(backend, device, V):
    gen = torch.Generator().manual_seed(V)
    s = torch.randn(6, V, generator=gen)
    t = torch.randn(6, V, generator=gen)
    t[0, 0] = float("-inf")  # the first value of a row: the online max starts at -inf
    t[1, -1] = float("-inf")
    t[2, : V // 2] = float("-inf")
    s[3, 0] = float("-inf")  # the student may put -inf where the teacher has -inf too
    t[3, 0] = float("-inf")
    check(backend, device, s, t)
    check(backend, device, s, t, torch.full_like(t, 0.5), alpha=1.0)  # finite augmented: relu(a - (-inf)) = inf keeps -inf


@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("offset", [1e4, 3e4])
@pytest.mark.parametrize("V", [2, 700])
def test_large_logits_do_not_cancel(backend, device, offset, V):
    gen = torch.Generator().manual_seed(int(offset) + V)
    base = torch.randn(8, V, generator=gen)
    s = base + offset
    t = base + 0.01 * torch.randn(8, V, generator=gen) + offset  # KL ~ 1e-5: lost if lse_t and lse_s cancel
    check(backend, device, s, t)


@pytest.mark.parametrize("backend,device", backends())
def test_equal_rows_give_zero(backend, device):
    s = torch.full((5, 300), 7.0)
    kl = ops.teacher_kl(s.to(device), s.clone().to(device), reduction="none", backend=backend)
    assert torch.equal(kl.cpu(), torch.zeros(5))


def test_native_build_folder_keyed_by_source(tmp_path):
    from e2urec_fast import native

    src = native._source()
    copy = tmp_path / "teacher_kl.cpp"
    copy.write_bytes(src.read_bytes())
    flags = dict(extra_cflags=["-O3"])
    first = native.build_name("x", copy, flags)
    assert native.build_name("x", copy, flags) == first  # same checkout, same build
    assert native.build_name("x", src, flags) != first  # another checkout (path), its own build folder
    copy.write_bytes(src.read_bytes() + b"// an edit\n")
    assert native.build_name("x", copy, flags) != first  # edited source: a new build
    assert native.build_name("x", src, flags) != native.build_name("x", src, dict(extra_cflags=["-O2"]))


def test_native_stale_lock_falls_back_instead_of_hanging(tmp_path, monkeypatch):
    import time as _time

    from torch.utils.cpp_extension import _get_build_directory

    from e2urec_fast import native

    copy = tmp_path / "teacher_kl.cpp"
    copy.write_bytes(native._source().read_bytes() + b"// stale-lock test\n")
    monkeypatch.setattr(native, "_source", lambda name="teacher_kl.cpp": copy)
    monkeypatch.setenv("E2UREC_NATIVE_LOCK_TIMEOUT", "0.3")
    flags = dict(extra_cflags=["-O1"])
    build = Path(_get_build_directory(native.build_name("e2urec_lock_test", copy, flags), False))
    build.mkdir(parents=True, exist_ok=True)
    (build / "lock").write_text("")  # what a build killed midway leaves behind
    t0 = _time.monotonic()
    with pytest.warns(UserWarning, match="still held"):
        mod, why = native._build(None, "e2urec_lock_test", "teacher_kl.cpp", "CPU", **flags)
    assert mod is None and "lock" in why and _time.monotonic() - t0 < 10
    (build / "lock").unlink()
