"""Parity of every teacher_kl backend on this machine against a float64 computation.

Tolerances (absolute, on the per-row KL and on the gradient): fp32 1e-5 (values scaled by
the row's magnitude for the 1e4 logits case), bf16 inputs 2e-2 on gradients (bf16 output
rounding) and 1e-4 on values (fp32 accumulation over bf16-rounded inputs, compared with the
float64 result on the same rounded inputs).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from e2urec_fast import native, ops

INTERP = os.environ.get("TRITON_INTERPRET") == "1"


def backends():
    """(backend, device) pairs that run here: CPU always, CUDA when there is a GPU."""
    from e2urec_fast.kernels import teacher_kl as tk

    out = [("torch", "cpu")]
    if native.available("cpu"):
        out.append(("native", "cpu"))
    if tk.available("cpu"):
        out.append(("triton", "cpu"))
    if torch.cuda.is_available():
        out += [("torch", "cuda")] + ([("triton", "cuda")] if tk.available("cuda") else []) \
            + ([("native", "cuda")] if native.available("cuda") else [])
    return out


def ref64(s, t, a, alpha, g):
    s64 = s.detach().cpu().double().requires_grad_()
    t64 = t.cpu().double()
    tf = t64 if a is None else t64 - alpha * torch.relu(a.cpu().double() - t64)
    lp_t = torch.log_softmax(tf, -1)
    kl = (lp_t.exp() * (lp_t - torch.log_softmax(s64, -1))).sum(-1)
    (kl * g.cpu().double()).sum().backward()
    return kl.detach(), s64.grad


SHAPES = [(1, 2), (17, 2), (4096, 2), (17, 3), (41, 1271), (4, 32128)]


@pytest.mark.parametrize("backend,device", backends())
@pytest.mark.parametrize("N,V", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_teacher_kl_parity(backend, device, N, V, alpha, dtype):
    if backend == "triton" and device == "cpu" and N * V > 200_000:
        N = max(1, 200_000 // V)  # the interpreter is slow
    gen = torch.Generator().manual_seed(N * 7 + V)
    s = (torch.randn(N, V, generator=gen) * 4).to(device, dtype)
    t = (torch.randn(N, V, generator=gen) * 4).to(device, dtype)
    a = (torch.randn(N, V, generator=gen) * 4).to(device, dtype) if alpha else None
    g = torch.rand(N, generator=gen).to(device) + 0.5  # grad_output != 1
    s.requires_grad_()
    kl = ops.teacher_kl(s, t, a, alpha, reduction="none", backend=backend)
    assert kl.dtype == torch.float32 and kl.shape == (N,)
    (grad,) = torch.autograd.grad(kl, s, g)
    kl64, grad64 = ref64(s, t, a, alpha, g)
    kl, grad = kl.cpu(), grad.cpu()
    vt, gt = (1e-5 * max(1.0, V / 1000), 1e-6) if dtype == torch.float32 else (1e-4 * max(1.0, V / 1000), 2e-2)
    print(backend, N, V, alpha, dtype, (kl.double() - kl64).abs().max().item(), (grad.double() - grad64).abs().max().item())
    assert torch.allclose(kl.double(), kl64, atol=vt, rtol=1e-5)
    assert torch.allclose(grad.double(), grad64, atol=gt, rtol=1e-2 if dtype != torch.float32 else 1e-5)
    assert grad.dtype == dtype


@pytest.mark.parametrize("backend,device", backends())
def test_extreme_noncontiguous_and_reductions(backend, device):
    gen = torch.Generator().manual_seed(0)
    big = (torch.randn(64, 6, generator=gen) * 1e4).to(device)  # logits of magnitude 1e4
    s = big[:, ::2].clone().requires_grad_()  # (64, 3)
    s_nc = big.t().contiguous().t()[:, ::2]  # non-contiguous view with the same values
    t = (torch.randn(3, 64, generator=gen) * 1e4).to(device).t()  # non-contiguous
    a = (torch.randn(3, 64, generator=gen) * 1e4).to(device).t()
    for x in (s, s_nc.detach().requires_grad_()):
        kl = ops.teacher_kl(x, t, a, 2.0, reduction="none", backend=backend)
        assert torch.isfinite(kl).all()
        kl64, g64 = ref64(x, t, a, 2.0, torch.ones(64))
        assert torch.allclose(kl.cpu().double(), kl64, rtol=1e-4, atol=1e-2)
        (g,) = torch.autograd.grad(kl.sum(), x)
        assert torch.allclose(g.cpu().double(), g64, atol=1e-5)
    m = ops.teacher_kl(s, t, a, 2.0, backend=backend)
    sm = ops.teacher_kl(s, t, a, 2.0, reduction="sum", backend=backend)
    assert m.item() == pytest.approx(sm.item() / 64, rel=1e-6)


def test_forgetting_teacher_formula():
    v = torch.tensor([[1.0, 3.0], [2.0, -1.0]])
    v_aug = torch.tensor([[2.0, 1.0], [2.5, 4.0]])
    # v - alpha * relu(v_aug - v), by hand with alpha = 2
    assert torch.equal(ops.forgetting_teacher(v, v_aug, 2.0), torch.tensor([[-1.0, 3.0], [1.0, -11.0]]))


def test_bad_shapes():
    with pytest.raises(ValueError, match="equal"):
        ops.teacher_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="V >= 2"):
        ops.teacher_kl(torch.zeros(2, 1), torch.zeros(2, 1))


def test_native_build_absent_falls_back_with_warning():
    import subprocess
    import sys

    code = (
        "import warnings, torch\n"
        "from e2urec_fast import ops, native\n"
        "assert not native.available('cpu') and 'E2UREC_NO_NATIVE' in native._error\n"
        "s = torch.randn(4, 3, requires_grad=True); t = torch.randn(4, 3)\n"
        "assert ops.resolve_backend('auto', s) == 'torch'\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    kl = ops.teacher_kl(s, t, backend='native')\n"
        "assert any('not available' in str(x.message) for x in w)\n"
        "assert torch.allclose(kl, ops.teacher_kl_ref(s, t))\n"
        "print('ok')\n"
    )
    env = {**__import__("os").environ, "E2UREC_NO_NATIVE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the op is built and run by the parity tests (built once)")
def test_cuda_source_compiles(tmp_path):
    """csrc/teacher_kl_cuda.cu compiles with nvcc against torch's headers (it runs only on a GPU;
    the device script's parity tests cover its values)."""
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    src = Path(native.__file__).resolve().parent.parent / "csrc" / "teacher_kl_cuda.cu"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    # a CPU-only torch ships c10/cuda headers without the build-generated macros header: stand in for it
    stub = tmp_path / "inc" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = ["nvcc", "-c", str(src), "-o", str(tmp_path / "k.o"), "-std=c++17", "-O1", "-arch=sm_90", "--use_fast_math",
           "-DTORCH_EXTENSION_NAME=e2urec_teacher_kl_cuda", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Xcompiler", "-fPIC",
           "-I", sysconfig.get_paths()["include"]] + [x for p in include_paths() for x in ("-I", p)] + ["-I", str(tmp_path / "inc")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "k.o").stat().st_size > 0
