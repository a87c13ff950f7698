"""torchrun: many processes, one job (`torchrun --nproc_per_node N -m e2urec_fast.unlearn ...`).

Under torchrun (WORLD_SIZE > 1 in the environment) `init()` joins the process group: NCCL
on GPUs (one per local rank), gloo on the CPU, with a timeout (E2UREC_DIST_TIMEOUT seconds,
default 600) so a rank that dies makes the others fail with one line instead of hanging.
Outside torchrun every function here is the one-process identity.

- Data preparation, backbone building and the model caches: rank 0 first, the others after
  a barrier (`main_first`), so they read what rank 0 wrote and never race on the cache.
- Inference (`predict_logits`: the teacher cache, the boundary, evaluation): the
  length-sorted batches are dealt round-robin to the ranks and gathered, every row computed
  in the same batch as in one process, so the result is the one-process result bit for bit
  (on the CPU, same threads per process).
- Training (`train.fit`: every stage): each rank takes its share of the global batch
  (`shard`: per-rank batch = global / N), its loss is weighted by its share of the rows, and
  the step runs under DDP (`data_parallel`: the step wrapped as a module, since our steps
  call the encoder, decoder and heads rather than the model's forward), which averages the
  trainable gradients over the ranks in buckets during the backward; every rank takes the
  same optimizer step: the update of one process on the global batch. Frozen weights (the
  base under LoRA) have no gradient and are never communicated.
- Writing: rank 0 writes the output folder; the other ranks write into a private scratch
  folder removed at the end (`scratch_out`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from datetime import timedelta

import torch

from .errors import UserError

_STATE = {"init": False}


def world() -> int:
    return torch.distributed.get_world_size() if active() else 1


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return world_size_env() > 1


def init(device: str) -> str:
    """Join torchrun's process group (once); returns the device this rank uses."""
    if not launched():
        return device
    if not active():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        timeout = timedelta(seconds=float(os.environ.get("E2UREC_DIST_TIMEOUT", "600")))
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        _STATE["init"] = True
        signal.signal(signal.SIGTERM, _stopped)
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _stopped(signum, frame) -> None:
    """torchrun stops the other ranks (SIGTERM) as soon as one fails: rank 0 says so in one
    line, as when its own collective gives up, and every rank leaves its resumable state as it is."""
    if rank() == 0:
        print(f"error: rank 0 of {world()}: stopped by torchrun because another rank failed; resume by launching the same "
              "command again", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def shutdown() -> None:
    if active() and _STATE["init"]:
        torch.distributed.destroy_process_group()
        _STATE["init"] = False


def barrier() -> None:
    if active():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (building data, backbones, caches); the others wait at a
    barrier and then run it (finding what rank 0 wrote). An error on rank 0 reaches the
    others as a failed collective, not as a hang (the group's timeout)."""
    if not active():
        yield
        return
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard_rows(n: int) -> slice:
    """This rank's contiguous share of n rows (sizes differ by at most one)."""
    w, r = world(), rank()
    lo = r * n // w
    return slice(lo, (r + 1) * n // w)


def shard(batch):
    """This rank's share of a training batch: a `Batch`, or a (kind, D_r batch, D_f batch)
    tuple (each half split); returns (local batch, share of the rows)."""
    from .batching import Batch

    def cut(b):
        if b is None:
            return None
        s = shard_rows(len(b))
        return Batch(b.ids[s], b.mask[s], b.labels[s], b.idx[s]) if s.stop > s.start else None

    if isinstance(batch, Batch):
        local = cut(batch)
        if local is None:  # fewer rows than ranks: one row, weight 0 (every rank runs the step: DDP's collective)
            return Batch(batch.ids[:1], batch.mask[:1], batch.labels[:1], batch.idx[:1]), 0.0
        return local, len(local) / len(batch)
    kind, rb, fb = batch
    local = (kind, cut(rb), cut(fb))
    n = sum(len(b) for b in (rb, fb) if b is not None)
    n_local = sum(len(b) for b in local[1:] if b is not None)
    if not n_local:  # as above: one row of weight 0
        first = rb if rb is not None else fb
        one = Batch(first.ids[:1], first.mask[:1], first.labels[:1], first.idx[:1])
        return ((kind, one, None) if rb is not None else (kind, None, one)), 0.0
    return local, n_local / n


class _Step(torch.nn.Module):
    """A training step as a module, so DDP sees its forward: `forward(batch)` is `step(batch)`
    (our steps call the encoder, decoder and heads directly, not the model's forward)."""

    def __init__(self, model: torch.nn.Module, step):
        super().__init__()
        self.model, self.step = model, step

    def forward(self, batch):
        return self.step(batch)


def data_parallel(model: torch.nn.Module, step):
    """DDP over a training step: the trainable parameters' gradients are averaged over the
    ranks in buckets during the backward (frozen ones are left out); parameters a step does
    not use (a loss term absent from a step) are found, not waited for."""
    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    return DistributedDataParallel(_Step(model, step), device_ids=[dev.index] if dev.type == "cuda" else None,
                                   find_unused_parameters=True, broadcast_buffers=False)


def _rng_state() -> torch.Tensor:
    """This process's CPU generator state, and its CUDA device's when one is in use (bytes)."""
    st = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st.append(torch.cuda.get_rng_state())
    return torch.cat(st)


def gather_rng_states() -> list[torch.Tensor]:
    """Every rank's generator states (for a resumable state written by rank 0); [] outside
    torchrun. Ranks whose batches are cut unequally draw unequal dropout masks, so each keeps
    its own stream."""
    if not active():
        return []
    mine = _rng_state().to(_comm_device())
    out = [torch.empty_like(mine) for _ in range(world())]
    torch.distributed.all_gather(out, mine)
    return [o.cpu() for o in out]


def set_rng_state(state: torch.Tensor) -> None:
    n = torch.get_rng_state().numel()
    torch.set_rng_state(state[:n].clone())
    if len(state) > n and torch.cuda.is_available():
        torch.cuda.set_rng_state(state[n:].clone())


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


def _comm_device() -> str:
    return "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"


def gather_batches(sizes: list[int], compute) -> torch.Tensor:
    """`torch.cat([compute(k) for k in range(len(sizes))])` with batch k (of sizes[k] rows,
    each a (sizes[k], W) result) computed on rank k % N and the rows gathered on every rank
    (no pickling: padded all_gather of the row blocks, whose sizes every rank knows)."""
    if not active():
        return torch.cat([compute(k) for k in range(len(sizes))])
    w, r = world(), rank()
    mine = [compute(k) for k in range(r, len(sizes), w)]
    rows = [sum(sizes[k] for k in range(q, len(sizes), w)) for q in range(w)]
    width, dtype = (mine[0].shape[1], mine[0].dtype) if mine else (None, None)
    meta = torch.tensor([width or 0, 0 if dtype is None else 1], dtype=torch.long, device=_comm_device())
    metas = [torch.zeros_like(meta) for _ in range(w)]
    torch.distributed.all_gather(metas, meta)
    width = max(int(m[0]) for m in metas)
    dtype = dtype or torch.float32
    buf = torch.zeros(max(rows), width, dtype=dtype, device=_comm_device())
    if mine:
        local = torch.cat(mine).to(buf.device)
        buf[: len(local)] = local
    bufs = [torch.empty_like(buf) for _ in range(w)]
    torch.distributed.all_gather(bufs, buf)
    out, at = [], [0] * w
    for k, n in enumerate(sizes):
        q = k % w
        out.append(bufs[q][at[q] : at[q] + n])
        at[q] += n
    return torch.cat(out).cpu()


def check_launch(cfg) -> None:
    """Refuse settings a multi-process run cannot honour (exit 2); `cfg`: the job's Config."""
    if not launched():
        return
    if cfg.bench.seeds is not None:
        raise UserError("--seeds under torchrun: launch one torchrun per seed (each seed is a whole job)")
    if cfg.finetune.batch_size < world_size_env():
        raise UserError(f"--batch-size {cfg.finetune.batch_size} is smaller than the {world_size_env()} processes: each rank needs rows")


def world_size_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))

