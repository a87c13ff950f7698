"""Numeric precision of a run: `--dtype {auto,fp32,bf16}`.

bf16 (what a GPU's tensor cores run at full speed) follows mixed-precision practice:

- every forward (training, teacher cache, evaluation, audit) runs under
  `torch.autocast(bf16)`: matrix products in bf16, reductions and norms in fp32;
- what trains keeps fp32 master weights (full fine-tunes: Original, Retrain, the
  augmented model, the baselines; the student's LoRA A and B), and backward runs outside
  autocast;
- the E2URec student's frozen linear layers are stored in bf16 (half the memory; no
  re-cast of frozen weights at every step); embeddings and norms stay fp32;
- the teacher cache, the KL kernels' teacher side and every metric stay fp32 (logits are
  cast up before any arithmetic).

auto = bf16 on a CUDA device that supports it, fp32 elsewhere (the CPU).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

DTYPES = ("auto", "fp32", "bf16")


def resolve(dtype: str, device: str) -> str:
    """'auto' -> 'bf16' on a bf16-capable CUDA device, else 'fp32'."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
    if dtype != "auto":
        return dtype
    dev = torch.device(device)
    return "bf16" if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def autocast(dtype: str, device: str):
    """The forward context of a run in `dtype` (a no-op for fp32)."""
    if dtype != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def frozen_to_bf16(model: torch.nn.Module) -> int:
    """Store the frozen nn.Linear weights (and biases) in bf16; returns how many parameters
    were cast. Trainable ones (LoRA's A and B) stay fp32, and so do embeddings and norms:
    the residual stream then stays fp32 (a linear's bf16 output is added to an fp32 sum),
    as mixed-precision practice keeps it; storing every weight in bf16 measurably rounded
    the tiny model's answers to ties here."""
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if type(m) is not torch.nn.Linear:
                continue
            for p in m.parameters(recurse=False):
                if not p.requires_grad and p.dtype == torch.float32:
                    p.data = p.data.to(torch.bfloat16)
                    n += p.numel()
    return n


def cache_tag(dtype: str) -> dict:
    """What a cache key adds for the precision: nothing for fp32 (keys made before --dtype
    existed stay valid), {"dtype": ...} otherwise."""
    return {} if dtype == "fp32" else dict(dtype=dtype)


def fp32_linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`h @ w.T + b` in fp32 whatever autocast says: the answer logits feed the teacher
    cache, the KL and every metric, and a bf16 product would round them to 8 bits (at
    --dtype bf16 the tiny model's p(yes) collapsed into ties). The head is one product
    per row (two rows for Yes/No), so fp32 costs little next to the network."""
    with torch.autocast(h.device.type, enabled=False):
        return F.linear(h.float(), w.float(), None if b is None else b.float())


@functools.lru_cache(maxsize=64)
def _row_index(rows: tuple, device: str) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def row_index(rows, device) -> torch.Tensor:
    """The index tensor of `rows` on `device`, made once: indexing a device tensor with a
    Python list copies the list to the device at every call (a host sync on CUDA, in the
    student's step)."""
    return _row_index(tuple(rows), str(device))
