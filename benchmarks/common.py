"""Shared by the benchmarks: timing with percentiles, peak memory, environment rows."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device="cpu", reps=10, warmup=2, min_time=0.0):
    """Median, p20 and p80 of `fn()` in milliseconds (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    t_start = time.perf_counter()
    while len(ts) < reps or time.perf_counter() - t_start < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
        if len(ts) >= 10 * reps:
            break
    q = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [ts[0]] * 9
    return dict(median=statistics.median(ts), p20=q[1], p80=q[7], n=len(ts))


def peak_memory(fn, device="cpu") -> int:
    """Peak bytes allocated by torch while `fn()` runs, above what was live before.

    CUDA: the allocator's peak statistic. CPU: the profiler's allocation events replayed
    in time order (running sum of allocations and frees), so it is a real peak, not a total.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # every op's own allocations minus frees (children excluded), replayed in start order
    evs = sorted(prof.events(), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in evs:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu {platform.machine()} x{os.cpu_count()} ({torch.get_num_threads()} threads)"


def env_row(device) -> dict:
    import importlib.metadata as md

    def ver(p):
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "-"

    return dict(device=device_name(device), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                torch=torch.__version__, triton=ver("triton"), git=git_rev())


def append_csv(path: Path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        if new:
            w.writeheader()
        w.writerows(rows)


def scenario_job(scenario: str, seed: int, scratch: Path, train_seed: int | None = None, weights_seed: int | None = None):
    """(cfg, model cache, prepared data, Job) of a scenario's default run at `seed` (the split
    and, unless given, the training seed and the preset's initial weights), as the command line
    builds them."""
    from e2urec_fast.config import from_fields, max_samples, split_seed
    from e2urec_fast.data import prepare
    from e2urec_fast.methods.common import Job
    from e2urec_fast.models import resolve_backbone

    train = seed if train_seed is None else train_seed
    cfg = from_fields(scenario=scenario, seed=seed, quiet=True)
    cache = Path(cfg.data.cache_dir).expanduser()
    prep = prepare(cfg.data.dataset, cfg.data.data_dir, cache, max_samples(cfg), cfg.data.forget_ratio, split_seed(cfg),
                   holdout_ratio=cfg.data.holdout_ratio, scenario=cfg.data.scenario)
    bdir = resolve_backbone(cfg.backbone_name, prep, cache, seed=train if weights_seed is None else weights_seed)
    return cfg, cache, prep, Job(prep, bdir, Path(scratch), seed=train, batch_size=cfg.finetune.batch_size, progress=False)
