"""Microbenchmark of the fused teacher KL: torch eager, torch.compile, native, triton.

Times forward, backward and full (forward + backward) as median and p20/p80 in ms,
and the peak memory of one full step, over V = 2 (the Yes/No pair) and V = 32,128 (the
full T5 vocabulary). Prints a table; appends rows to benchmarks/results/teacher_kl.csv.

    python benchmarks/bench_teacher_kl.py            # CPU: torch, compile, native
    python benchmarks/bench_teacher_kl.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, append_csv, env_row, peak_memory, timeit  # noqa: E402

from e2urec_fast import native, ops  # noqa: E402

CPU_SHAPES = [(4096, 2), (65536, 2), (48, 32128), (512, 32128)]
GPU_SHAPES = [(4096, 2), (16384, 2), (65536, 2), (48, 32128), (512, 32128), (4096, 32128)]


def make_fn(backend: str):
    if backend == "torch":
        return lambda s, t, a: ops.teacher_kl_ref(s, t, a, 2.0)
    if backend == "compile":
        f = torch.compile(lambda s, t, a: ops.teacher_kl_ref(s, t, a, 2.0), dynamic=False)
        return f
    return lambda s, t, a: ops.teacher_kl(s, t, a, 2.0, backend=backend)


def bench(backend, N, V, dtype, device, reps):
    g = torch.Generator(device="cpu").manual_seed(0)
    # the student's logits in `dtype`; the teachers stay fp32 (the cache's dtype, kept by every backend)
    s = (torch.randn(N, V, generator=g) * 3).to(device, dtype).requires_grad_()
    t = (torch.randn(N, V, generator=g) * 3).to(device, torch.float32)
    a = (torch.randn(N, V, generator=g) * 3).to(device, torch.float32)
    fn = make_fn(backend)
    out = fn(s, t, a)  # warm (and compile)
    fwd = timeit(lambda: fn(s, t, a), device, reps)

    def full():
        s.grad = None
        fn(s, t, a).backward()

    def bwd_only():
        loss = fn(s, t, a)
        loss.backward()

    fb = timeit(full, device, reps)
    # backward alone: full minus forward (the two are timed back to back on the same inputs)
    bwd = dict(median=max(fb["median"] - fwd["median"], 0.0), p20=float("nan"), p80=float("nan"))
    s.grad = None
    mem = peak_memory(full, device)
    del out
    return dict(fwd_ms=fwd["median"], fwd_p20=fwd["p20"], fwd_p80=fwd["p80"], bwd_ms=bwd["median"],
                full_ms=fb["median"], full_p20=fb["p20"], full_p80=fb["p80"], peak_mib=mem / 2**20)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--backends", default=None, help="comma list (default: all that run on the device)")
    ap.add_argument("--shapes", default=None, help="e.g. 48x32128,4096x2")
    ap.add_argument("--compile-shapes", type=int, default=None,
                    help="run the torch.compile backend on the first N shapes only (each shape is a compilation)")
    ap.add_argument("--csv", default=str(RESULTS / "teacher_kl.csv"))
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = ["torch", "compile"] + (["native"] if native.available(dev) else [])  # native: the CUDA op on a GPU
        if dev.type == "cuda":
            backends.append("triton")
    shapes = [tuple(map(int, x.split("x"))) for x in args.shapes.split(",")] if args.shapes else (
        GPU_SHAPES if dev.type == "cuda" else CPU_SHAPES)
    env = env_row(dev)
    rows = []
    print(f"# teacher_kl on {env['device']}, {args.dtype}, torch {env['torch']}, git {env['git']}")
    print(f"{'N':>6} {'V':>6} {'backend':>8} {'fwd ms':>9} {'full ms':>9} {'p20-p80':>15} {'peak MiB':>9} {'x eager':>8}")
    for k, (N, V) in enumerate(shapes):
        base = None
        for b in backends:
            if b == "compile" and args.compile_shapes is not None and k >= args.compile_shapes:
                continue
            try:
                r = bench(b, N, V, dtype, dev, args.reps if N * V < 10**7 else max(3, args.reps // 3))
            except Exception as e:  # e.g. torch.compile without a working toolchain
                print(f"{N:>6} {V:>6} {b:>8}  failed: {type(e).__name__}: {str(e)[:80]}")
                continue
            base = r["full_ms"] if b == "torch" else base
            sp = base / r["full_ms"] if base else float("nan")
            print(f"{N:>6} {V:>6} {b:>8} {r['fwd_ms']:>9.3f} {r['full_ms']:>9.3f} {r['full_p20']:>7.2f}-{r['full_p80']:<7.2f}"
                  f" {r['peak_mib']:>9.2f} {sp:>7.2f}x")
            rows.append(env | dict(dtype=args.dtype, N=N, V=V, backend=b, speedup_vs_eager=round(sp, 3))
                        | {k: round(v, 4) for k, v in r.items()})
    if rows and not args.no_csv:
        append_csv(Path(args.csv), rows)
        print(f"appended {len(rows)} rows to {args.csv}")
    return rows


if __name__ == "__main__":
    main()
