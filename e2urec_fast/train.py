"""The one minimal training loop every method shares.

    for each epoch: for each batch: loss = step(batch); loss.backward(); AdamW step
    every `eval_every` steps (or each epoch): valid loss -> keep the best weights,
    stop after `patience` evaluations without improvement; stop at `max_steps`.

A method supplies `batches(epoch)` (any iterable) and `step(batch) -> (loss, n)`.
Checkpoints (the best trainable weights) are written as safetensors, atomically.

Resumable runs: with `resume=Resume(path, key)` the full training state (trainable
weights, AdamW moments, the torch RNG, step and epoch counters, losses) is written
atomically every `every` steps and at the end; a run started again with the same key
skips the batches already done and continues bit-identically (on the CPU). A state
written under another key (other data, model or settings) is ignored and replaced.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import dist
from .files import save_safetensors_atomic


@dataclass
class Resume:
    path: Path
    key: str  # fingerprint of everything that determines the run
    every: int = 50


class DivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 16
    epochs: int = 1
    max_steps: int | None = None
    patience: int = 1
    eval_every: int | None = None  # steps between validations; None = once per epoch
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    fused_optimizer: bool = False
    sync_every: int = 20  # steps between reads of the losses (the only host sync of a step)
    # learning-rate schedule: "constant", or "linear" (warm up over the first `warmup` share
    # of `total_steps`, then decay linearly to 0 at `total_steps`: max_steps, or what
    # `finetune` counts for `epochs` epochs)
    schedule: str = "constant"
    warmup: float = 0.0
    total_steps: int | None = None
    # the update of some rows of one weight scaled by this factor after each optimizer step
    # (`fit(scaled_rows=...)`: the item tokens' embedding rows under --item-lr)
    row_lr: float = 1.0
    row_zero: bool = False  # those rows set to zero before training (finetune; --item-init zero)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The multiplier of `cfg.lr` for the update after `step` updates (0-based)."""
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule != "linear":
        raise ValueError(f"unknown learning-rate schedule {cfg.schedule!r}")
    total = cfg.max_steps or cfg.total_steps
    if not total:
        raise ValueError("a linear schedule needs max_steps or total_steps")
    w = int(round(cfg.warmup * total))
    if step < w:
        return (step + 1) / w
    return max(0.0, (total - step) / max(1, total - w))


@dataclass
class TrainResult:
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    best_valid: float | None = None
    valid_history: list = field(default_factory=list)
    loss_history: list = field(default_factory=list)
    stopped_early: bool = False
    resumed_at: int = 0
    hook_seconds: float = 0.0


def _save_state(resume: Resume, params, opt, res: TrainResult, epoch: int, in_epoch: int, elapsed: float) -> None:
    t = {f"p.{n}": p.detach() for n, p in params.items()}
    names = list(params)
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            t[f"opt.{names[i]}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    t["rng"] = torch.get_rng_state()
    for r, st in enumerate(dist.gather_rng_states()):  # torchrun: every rank's generators (ranks draw unequal masks)
        t[f"rng.rank{r}"] = st
    t["loss_history"] = torch.tensor(res.loss_history, dtype=torch.float64)
    meta = dict(key=resume.key, steps=res.steps, samples=res.samples, epoch=epoch, in_epoch=in_epoch, elapsed=elapsed)
    save_safetensors_atomic(t, resume.path, metadata={"state": json.dumps(meta)})


def _load_state(resume: Resume, params, opt, res: TrainResult):
    """Restore a matching state; returns (epoch, batches done in it, elapsed) or None."""
    from safetensors import safe_open

    from .files import load_safetensors

    if not Path(resume.path).exists():
        return None
    try:
        with safe_open(str(resume.path), "pt") as f:
            meta = json.loads((f.metadata() or {})["state"])
    except Exception:
        meta = {}
    if meta.get("key") != resume.key:
        print(f"{resume.path}: a saved state of another run; starting afresh", file=sys.stderr)
        return None
    t = load_safetensors(resume.path)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(t[f"p.{n}"])
    sd = opt.state_dict()
    names = list(params)
    state = {}
    for i, n in enumerate(names):
        st = {k[len(f"opt.{n}.") :]: v for k, v in t.items() if k.startswith(f"opt.{n}.")}
        if st:
            state[i] = st
    sd["state"] = state
    opt.load_state_dict(sd)
    torch.set_rng_state(t["rng"])
    if f"rng.rank{dist.rank()}" in t:
        dist.set_rng_state(t[f"rng.rank{dist.rank()}"])
    res.loss_history = t["loss_history"].tolist()
    res.steps, res.samples, res.resumed_at = meta["steps"], meta["samples"], meta["steps"]
    return meta["epoch"], meta["in_epoch"], meta["elapsed"]


def named_trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


BEFORE_STEP: list = []  # callables (desc, steps done) run before every step: tests install fault injection here


class _Losses:
    """The losses of the steps since the last read, on the device: read (one host sync) every
    `sync_every` steps, before a state is saved or a validation runs, and at the end; a
    divergence is reported with the step where it began."""

    def __init__(self, res: TrainResult, desc: str, bar, t0: float):
        self.res, self.desc, self.bar, self.t0, self.pending = res, desc, bar, t0, []

    def flush(self) -> None:
        if not self.pending:
            return
        vals = torch.stack(self.pending).tolist()
        first = self.res.steps - len(self.pending) + 1
        self.pending.clear()
        for k, v in enumerate(vals):
            if not math.isfinite(v):
                self.bar.close()
                raise DivergedError(f"{self.desc}: loss became {v} at step {first + k}")
        self.res.loss_history.extend(vals)
        el = time.perf_counter() - self.t0
        self.bar.set_postfix(loss=f"{vals[-1]:.4f}", sps=f"{self.res.samples / max(el, 1e-9):.0f}", refresh=False)


def _update(batch, step, ddp, opt, params: dict, cfg: TrainConfig, steps_done: int, scaled_rows=None):
    """One optimizer update on `batch`; returns (loss on the device, rows). `scaled_rows`:
    (weight, row indices): those rows' update multiplied by `cfg.row_lr` (AdamW's step is
    invariant to a gradient's scale, so the factor is applied to the step itself)."""
    opt.zero_grad(set_to_none=True)
    if ddp is not None:  # torchrun: this rank's share of the global batch through DDP (dist.py)
        local, share = dist.shard(batch)
        loss, n = ddp(local)
        loss = loss * share  # this rank's part of the global batch's loss
        n = round(n / share) if share else 0
        # DDP averages the gradients over the ranks: x world makes them the sum of the
        # weighted parts, the gradient of the global batch's loss
        with torch.autocast(loss.device.type, enabled=False):
            (loss * dist.world()).backward()
        loss = dist.all_sum(loss.detach())
    else:
        loss, n = step(batch)
        with torch.autocast(loss.device.type, enabled=False):  # backward outside autocast (mixed precision)
            loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
    if cfg.schedule != "constant":  # a function of the step count: a resumed run continues it
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, steps_done)
    if scaled_rows is not None:
        w, rows = scaled_rows
        before = w.detach()[rows]
    opt.step()
    if scaled_rows is not None:
        with torch.no_grad():
            w[rows] = before + cfg.row_lr * (w.detach()[rows] - before)
    # autocast keeps a bf16 copy of each trainable weight until its outermost context exits; a
    # run under one long-lived context (precision.autocast) would go on using the weights of the
    # first step: drop the copies after every update
    torch.clear_autocast_cache()
    return loss, n


class _Best:
    """Validation with early stopping: the best trainable weights kept (and checkpointed)."""

    def __init__(self, valid, params: dict, res: TrainResult, cfg: TrainConfig, ckpt):
        self.valid, self.params, self.res, self.cfg, self.ckpt = valid, params, res, cfg, ckpt
        self.state, self.bad = None, 0

    def __call__(self) -> bool:
        """Validate now; True when patience has run out."""
        v = float(self.valid())
        res = self.res
        res.valid_history.append((res.steps, v))
        if res.best_valid is None or v < res.best_valid:
            res.best_valid, self.bad = v, 0
            self.state = {n: p.detach().clone() for n, p in self.params.items()}
            if self.ckpt is not None:
                save_safetensors_atomic(self.state, self.ckpt, metadata={"step": str(res.steps), "valid": repr(v)})
            return False
        self.bad += 1
        return self.bad >= self.cfg.patience


def fit(model: torch.nn.Module, batches, step, cfg: TrainConfig, valid=None, ckpt=None, desc: str = "train",
        progress: bool = True, train_mode=None, resume: Resume | None = None, hook=None, snapshot_every: int = 0,
        scaled_rows=None) -> TrainResult:
    """Train the parameters of `model` that require grad. See the module docstring.

    `train_mode(model)` puts the model in training mode (default `model.train()`); the
    fast E2URec student uses it to keep its frozen base in eval mode. `resume`: see the
    module docstring (not combined with `valid`). `hook(steps, seconds)` runs after every
    step (the benchmarks evaluate there); its time is left out of `seconds`. A method steers
    the loop through it: returning "stop" ends training after this step; ("rewind", j) ends it
    with the trainable weights as they were after step j (a stopping or rewind rule, SCRUB+R),
    which `snapshot_every` (keep the weights every that many steps, in memory) must cover.
    `scaled_rows` = (weight, row indices): those rows learn at `cfg.row_lr` times the rate.
    """
    if resume is not None and valid is not None:
        raise ValueError("resumable runs take no validation")
    train_mode = train_mode or (lambda m: m.train())
    params = named_trainable(model)
    ddp = dist.data_parallel(model, step) if dist.world() > 1 else None
    kw = dict(lr=cfg.lr, weight_decay=cfg.weight_decay) | (dict(fused=True) if cfg.fused_optimizer else {})
    opt = torch.optim.AdamW(list(params.values()), **kw)
    res = TrainResult()
    bar = tqdm(total=cfg.max_steps or cfg.total_steps, desc=desc, disable=not (progress and dist.is_main()), leave=False, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    best = _Best(valid, params, res, cfg, ckpt)
    losses = _Losses(res, desc, bar, time.perf_counter())  # its t0: the start, moved by resumes and hooks
    start_epoch, skip = 0, 0
    if resume is not None:
        dist.barrier()  # torchrun: every rank resumes from the state rank 0 wrote
        got = _load_state(resume, params, opt, res)
        if got is not None:
            start_epoch, skip, before = got
            losses.t0 -= before
            bar.update(res.steps)
            if cfg.max_steps and res.steps >= cfg.max_steps:
                start_epoch = cfg.epochs  # already complete
    stop, snaps = False, {}
    for epoch in range(start_epoch, cfg.epochs):
        train_mode(model)
        in_epoch = 0
        for batch in batches(epoch):
            in_epoch += 1
            if skip:
                skip -= 1
                continue
            for f in BEFORE_STEP:
                f(desc, res.steps)
            loss, n = _update(batch, step, ddp, opt, params, cfg, res.steps, scaled_rows)
            res.steps += 1
            res.samples += n
            losses.pending.append(loss.detach().float())
            bar.update(1)
            if len(losses.pending) >= cfg.sync_every:
                losses.flush()
            if snapshot_every and res.steps % snapshot_every == 0:
                snaps[res.steps] = {k: p.detach().clone() for k, p in params.items()}
            if hook is not None and _call_hook(hook, model, train_mode, res, losses, snaps, params):
                stop = True
            if resume is not None and (res.steps % resume.every == 0 or res.steps == cfg.max_steps):
                losses.flush()
                _save_state(resume, params, opt, res, epoch, in_epoch, time.perf_counter() - losses.t0)
            if valid is not None and cfg.eval_every and res.steps % cfg.eval_every == 0:
                losses.flush()
                stop = best()
                train_mode(model)
            if stop or (cfg.max_steps and res.steps >= cfg.max_steps):
                stop = True
                break
        losses.flush()
        if stop:
            res.stopped_early = cfg.max_steps is None or res.steps < cfg.max_steps
            break
        if valid is not None and not cfg.eval_every and best():
            res.stopped_early = True
            break
    return _finish(model, params, res, best, losses, bar, valid, ckpt, desc)


def _call_hook(hook, model, train_mode, res: TrainResult, losses, snaps: dict, params: dict) -> bool:
    """The hook after a step, its time left out of the training's; True when it ends training."""
    th = time.perf_counter()
    said = hook(res.steps, th - losses.t0)
    train_mode(model)
    res.hook_seconds += time.perf_counter() - th
    losses.t0 += time.perf_counter() - th
    if said is None:
        return False
    _steer(said, snaps, params, res, losses)
    return True


def _steer(said, snaps: dict, params: dict, res: TrainResult, losses) -> None:
    """A hook's "stop", or ("rewind", j): the weights after step j put back, the step count
    and losses cut to j."""
    if said == "stop":
        return
    if not (isinstance(said, tuple) and len(said) == 2 and said[0] == "rewind"):
        raise ValueError(f"a training hook returns None, 'stop' or ('rewind', step); got {said!r}")
    j = int(said[1])
    if j not in snaps:
        raise ValueError(f"cannot rewind to step {j}: no snapshot there (kept: {sorted(snaps)[:10]}; snapshot_every)")
    losses.flush()
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(snaps[j][k])
    res.steps = j
    del res.loss_history[j:]


def _finish(model, params: dict, res: TrainResult, best: _Best, losses: _Losses, bar, valid, ckpt, desc: str) -> TrainResult:
    """The last losses read, the best weights restored (or the last ones checkpointed)."""
    losses.flush()
    bar.close()
    if valid is not None and (not res.valid_history or res.valid_history[-1][0] != res.steps):
        best()
    if best.state is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(best.state[n])
    elif ckpt is not None:
        save_safetensors_atomic({n: p.detach() for n, p in params.items()}, ckpt, metadata={"step": str(res.steps)})
    res.seconds = time.perf_counter() - losses.t0
    if res.steps == 0:
        raise DivergedError(f"{desc}: no training step ran (empty data?)")
    model.eval()
    return res
