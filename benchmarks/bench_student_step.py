"""Time of one fast E2URec student step: the Yes/No head and the precision.

A step here is what the fast path runs per joint step: the student's forward over a D_r
batch and a D_f batch (real ML-100K prompts, length-bucketed), the loss terms from cached
teacher rows, backward, and the AdamW update of LoRA. Variants, interleaved step by step
(so a busy machine slows all alike) and reported as medians:

- head: `two-row` (the student's head is the [No, Yes] rows of the output embedding, what
  the fast path ships) or `full` (the (d, V) head, then the two columns gathered: before);
- dtype: fp32, or bf16 (frozen linears in bf16, forward under autocast, fp32 LoRA).

    python benchmarks/bench_student_step.py                        # small and t5-base-config, CPU
    python benchmarks/bench_student_step.py --device cuda --steps 20
    python benchmarks/bench_student_step.py --dry-run              # tiny, a few steps (CI)
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env_row, sync  # noqa: E402

from e2urec_fast import ops, precision  # noqa: E402
from e2urec_fast.data import prepare  # noqa: E402
from e2urec_fast.methods.common import Job  # noqa: E402
from e2urec_fast.models import resolve_backbone  # noqa: E402
from e2urec_fast.models.lora import DEFAULT_TARGETS, LoraConfig, base_eval_mode, inject_lora  # noqa: E402
from e2urec_fast.models.scoring import answer_logits, yes_no, yes_no_rows  # noqa: E402
from e2urec_fast.teachers import Teachers, TeacherTable  # noqa: E402


def variant_step(job: Job, head: str, dtype: str, batches, lr=1e-4):
    """A closure running one student step of the variant on the next batch pair."""
    st = job.fresh()
    inject_lora(st.model, LoraConfig(16, 32, 0.05, DEFAULT_TARGETS[st.family]))
    if dtype == "bf16":
        precision.frozen_to_bf16(st.model)
    base_eval_mode(st.model)
    lora = [p for p in st.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(lora, lr=lr)
    n = len(job.prepared.labels)
    g = torch.Generator().manual_seed(0)
    every = torch.arange(n)
    tables = Teachers(*(TeacherTable(torch.randn(n, 2, generator=g) * 2, every, n).to(job.device) for _ in range(3)))
    rows = yes_no_rows(st) if head == "two-row" else None
    it = itertools.cycle(batches)

    def logits(b):
        lg = answer_logits(st, st.model, b.ids, b.mask, rows=rows)
        return lg if rows is not None else yes_no(st, lg)

    def step():
        rb, fb = next(it)
        with precision.autocast(dtype, job.device):
            s_r, s_f = logits(rb), logits(fb)
            kl_f = ops.teacher_kl(s_f, tables.forget[fb.idx], tables.augmented[fb.idx], 2.0)
            rem = F.cross_entropy(s_r.float(), rb.labels) + ops.teacher_kl(s_r, tables.retain[rb.idx])
            loss = 0.6 * rem + 0.4 * kl_f
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="small,t5-base-config")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per variant (0: 12 for small, 4 for larger)")
    ap.add_argument("--batch-size", type=int, default=16, help="per half (D_r and D_f), as the default job")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default="~/.cache/e2urec_fast")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--dry-run", action="store_true", help="tiny backbone, 2 steps, fp32 and bf16 (CI)")
    a = ap.parse_args(argv)
    if a.dry_run:
        a.backbones, a.steps = "tiny", 2
    torch.manual_seed(0)
    cache = Path(a.cache_dir).expanduser()
    prep = prepare(a.dataset, a.data_dir, cache, 10_000, 0.2, 42)
    results = []
    for name in a.backbones.split(","):
        job = Job(prep, resolve_backbone(name, prep, cache, 42), Path(tempfile.mkdtemp()), device=a.device, seed=42,
                  batch_size=a.batch_size, progress=False)
        b = job.batcher(bucket=True)
        r_order = b.order(prep.index("retain"), 0)
        f_order = b.order(prep.index("forget"), 0)
        batches = [(b.make(r), b.make(f)) for r, f in zip(r_order[:4], f_order[:4])]
        steps = a.steps or (12 if name in ("tiny", "small") else 4)
        variants = [(h, d) for d in a.dtypes.split(",") for h in ("full", "two-row")]
        fns = {v: variant_step(job, *v, batches) for v in variants}
        for fn in fns.values():  # warm-up (allocations, kernel selection)
            fn()
        times = {v: [] for v in variants}
        for _ in range(steps):
            for v, fn in fns.items():
                sync(a.device)
                t0 = time.perf_counter()
                fn()
                sync(a.device)
                times[v].append(time.perf_counter() - t0)
        vocab = job.backbone().model.get_output_embeddings().weight.shape[0]
        lens = [int(x.mask.sum(1).float().mean()) for p in batches for x in p]
        print(f"\n{name}: vocabulary {vocab}, {a.batch_size}+{a.batch_size} prompts of ~{statistics.median(lens):.0f} tokens, "
              f"median of {steps} steps ({a.device})")
        print("| dtype | full head (ms) | two-row head (ms) | saving |")
        print("|---|---|---|---|")
        for d in a.dtypes.split(","):
            full, two = (statistics.median(times[(h, d)]) * 1e3 for h in ("full", "two-row"))
            print(f"| {d} | {full:.1f} | {two:.1f} | {100 * (1 - two / full):.1f}% |")
            results.append(dict(backbone=name, vocab=vocab, dtype=d, steps=steps, batch=a.batch_size, full_ms=full, two_row_ms=two,
                                full_all_ms=[t * 1e3 for t in times[("full", d)]],
                                two_row_all_ms=[t * 1e3 for t in times[("two-row", d)]]))
        if "fp32" in a.dtypes and "bf16" in a.dtypes:
            r = statistics.median(times[("two-row", "fp32")]) / statistics.median(times[("two-row", "bf16")])
            print(f"bf16 vs fp32 (two-row head): {r:.2f}x")
    if a.out:
        Path(a.out).write_text(json.dumps(dict(results=results, env=env_row(a.device), argv=sys.argv[1:]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
