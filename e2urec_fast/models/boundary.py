"""The cached boundary (`--lora-scope`): LoRA only above a fixed layer, so the frozen
states below it are computed once per sample and every student step starts there.

- `decoder` (T5, BART): LoRA in the decoder only (self- and cross-attention); the boundary
  is the encoder's output, (L, d) per prompt. A student step runs the decoder's answer
  step over the cached states instead of the encoder forward and backward over ~270 tokens.
- `top:K` (causal, masked): LoRA in the top K layers only; the boundary is the hidden
  state entering layer L-K at every prompt position (the top layers' attention reads
  every earlier position of a causal prompt, and every position of a masked one). The
  model still embeds the ids (a lookup), then a pre-hook swaps the cached states in and
  only the top K layers run: masks and rotary positions come from the model's own forward.

States live flat in one (tokens, d) tensor, a sample's rows next to each other (no
padding stored); `BoundaryTable.gather(idx, L)` pads a batch's states on the device with
one host-built index, so a step waits for no host sync. Memory: L x d x 4 bytes per
sample in fp32 (2 in bf16): ~69 KB for the `tiny` T5 at 270 tokens, ~830 KB at d = 768,
~2.2 MB for a 2048-wide causal LM; `--boundary-max-gib` caps the cache (exit 2 above it).

Below the boundary nothing trains, so nothing there can differ from the Original: with
`--base-dropout` the frozen layers below run once, without dropout; with `--load-in-8bit`
the states come from the unquantized Original (the 8-bit base serves the layers above).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..batching import to_device
from ..errors import UserError
from ..rowcache import positions, read_rows, write_rows
from .backbone import Backbone

ENC_DEC = ("t5", "bart")


@dataclass(frozen=True)
class Scope:
    kind: str = "all"  # "all", "decoder" or "top"
    k: int = 0  # top:K

    def __str__(self) -> str:
        return f"top:{self.k}" if self.kind == "top" else self.kind

    @property
    def cached(self) -> bool:
        return self.kind != "all"


def scope_conflicts(scope: Scope, cfg) -> None:
    """Refuse settings a cached boundary cannot go with (exit 2): checked before any work
    (checks.py), and here for callers of `unlearn` itself."""
    if scope.cached and cfg.speed.no_teacher_cache:
        raise UserError(f"--lora-scope {scope} caches the states below the adapter beside the teacher logits: "
                        "it cannot go with --no-teacher-cache")
    if scope.cached and cfg.speed.compile:
        raise UserError(f"--lora-scope {scope} does not go with --compile (the cached states change the forward every step)")


META_KEYS = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "_commit_hash")


def frozen_fingerprint(bb: Backbone, scope: Scope) -> str:
    """What a model's cached states depend on. `decoder`: the encoder's weights (its embedding
    included), the config and the tokenizer, so the states are shared by every model whose
    decoder alone differs: a request's merged model (its LoRA sat in the decoder) and the
    model it came from, i.e. every request of a chain. `top:K`: the whole model's fingerprint."""
    if scope.kind != "decoder":
        return bb.fingerprint()
    import json

    from .backbone import weights_hash

    conf = {k: v for k, v in bb.model.config.to_dict().items() if k not in META_KEYS}
    return "enc-" + weights_hash(bb.model.get_encoder(), json.dumps(conf, sort_keys=True, default=str),
                                 json.dumps(bb.tokenizer.get_vocab(), sort_keys=True))


def resolve_scope(cfg, family: str, impl: str = "fast") -> Scope:
    """The student's scope. `auto` (the default): the cached boundary (`decoder`) for a
    deletion request on the fast path of an encoder-decoder model, where #26 measured it
    forgetting no differently from LoRA everywhere at a third of the request's time; `all`
    (the authors' layout) for the benchmark, the reference path and the other families."""
    text = str(cfg.student.lora_scope).strip()
    if text == "auto":
        boundary = (cfg.is_request and impl == "fast" and family in ENC_DEC and not cfg.speed.no_teacher_cache
                    and not cfg.speed.compile)
        text = "decoder" if boundary else "all"
    return parse_scope(text)


def aug_is_lora(cfg, scope: Scope) -> bool:
    """The augmented model as a LoRA adapter (`--aug-mode lora`, or `auto` where `auto` chose
    the cached boundary: the combination measured) rather than a full fine-tune."""
    mode = cfg.student.aug_mode
    return mode == "lora" or (mode == "auto" and str(cfg.student.lora_scope).strip() == "auto" and scope.cached)


def parse_scope(text: str) -> Scope:
    """`all`, `decoder` or `top:K` (K >= 1)."""
    t = str(text).strip()
    if t in ("all", "decoder"):
        return Scope(t)
    m = re.fullmatch(r"top:(\d+)", t)
    if m and int(m.group(1)) >= 1:
        return Scope("top", int(m.group(1)))
    raise UserError(f"--lora-scope {text!r}: give auto, all, decoder or top:K with K >= 1")


def layer_stack(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The name and the ModuleList of a causal or masked model's transformer layers."""
    n_layers = model.config.num_hidden_layers
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers and name.split(".")[-1] in ("layers", "layer", "h"):
            return name, m
    raise UserError(f"--lora-scope top:K: no stack of {n_layers} layers found in {type(model).__name__}")


def check_scope(scope: Scope, bb: Backbone) -> Scope:
    """Refuse a scope the backbone's family cannot have (exit 2)."""
    if scope.kind == "decoder" and bb.family not in ENC_DEC:
        raise UserError(f"--lora-scope decoder needs an encoder-decoder backbone (t5, bart), not {bb.family}; use top:K")
    if scope.kind == "top":
        if bb.family in ENC_DEC:
            raise UserError(f"--lora-scope top:K is for causal and masked backbones; a {bb.family} backbone takes decoder")
        n = len(layer_stack(bb.model)[1])
        if scope.k > n:
            raise UserError(f"--lora-scope top:{scope.k}: the backbone has only {n} layers")
    return scope


def target_modules(bb: Backbone, scope: Scope, names: list[str]) -> list[str] | str:
    """LoRA's target_modules for `scope`: the short names (`names`) for `all`, else one
    regular expression (PEFT's full-match rule) naming exactly the modules above the boundary,
    so PEFT's `from_pretrained` puts the adapter where it was trained."""
    if not scope.cached:
        return list(names)
    model = bb.model
    if scope.kind == "decoder":
        dec = model.get_decoder()
        prefix = next(n for n, m in model.named_modules() if m is dec) + "."
        keep = lambda n: n.startswith(prefix)  # noqa: E731
    else:
        stack_name, stack = layer_stack(model)
        top = tuple(f"{stack_name}.{i}." for i in range(len(stack) - scope.k, len(stack)))
        keep = lambda n: n.startswith(top)  # noqa: E731
    full = [n for n, m in model.named_modules() if hasattr(m, "in_features") and n.split(".")[-1] in names and keep(n)]
    if not full:
        raise UserError(f"--lora-scope {scope}: no module named {names} above the boundary")
    return "(?:" + "|".join(re.escape(n) for n in full) + ")"


class _Stop(Exception):
    pass


@torch.no_grad()
def states_of(bb: Backbone, model, ids: torch.Tensor, mask: torch.Tensor, scope: Scope) -> torch.Tensor:
    """(B, L, d) states at the boundary of a padded batch (the model's frozen part only)."""
    if bb.family in ENC_DEC:
        return model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    from .scoring import answer_logits

    _, stack = layer_stack(model)
    got = {}

    def grab(mod, args, kwargs):
        got["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop  # nothing above the boundary is needed

    h = stack[len(stack) - scope.k].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        answer_logits(bb, model, ids, mask, rows=[0])
    except _Stop:
        pass
    finally:
        h.remove()
    return got["h"]


@contextlib.contextmanager
def from_states(bb: Backbone, model, states: torch.Tensor, scope: Scope):
    """Inside, `model`'s forward starts at the boundary with `states` ((B, L, d), the
    batch's ids still passed as usual): an encoder-decoder's encoder returns them; a causal
    or masked model runs only its top K layers, the first fed `states`."""
    if bb.family in ENC_DEC:
        from transformers.modeling_outputs import BaseModelOutput

        enc = model.get_encoder()
        enc.forward = lambda *a, **k: BaseModelOutput(last_hidden_state=states)
        try:
            yield model
        finally:
            del enc.forward
        return
    stack_name, stack = layer_stack(model)
    parent_name, _, attr = stack_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    top = torch.nn.ModuleList(list(stack)[len(stack) - scope.k :])

    def feed(mod, args, kwargs):
        if args:
            return (states.to(args[0].dtype), *args[1:]), kwargs
        return args, kwargs | {"hidden_states": states.to(kwargs["hidden_states"].dtype)}

    h = top[0].register_forward_pre_hook(feed, with_kwargs=True)
    parent._modules[attr] = top
    try:
        yield model
    finally:
        parent._modules[attr] = stack
        h.remove()


class BoundaryTable:
    """Cached boundary states of some samples, looked up by sample index.

    `states` is (tokens + 1, d): each sample's real positions one after another and a last
    all-zero row that pads every batch; `start`/`length` (host) locate a sample's rows."""

    def __init__(self, states: torch.Tensor, idx: torch.Tensor, length: torch.Tensor, n_total: int):
        self.states, self.idx, self.length = states, idx, length
        self.start = torch.cumsum(length, 0) - length
        self.pos = positions(idx, n_total)

    @classmethod
    def build(cls, per_sample: list[torch.Tensor], idx: torch.Tensor, n_total: int, dtype=None) -> BoundaryTable:
        """From one (L_i, d) tensor per sample of `idx`."""
        d = per_sample[0].shape[-1]
        flat = torch.cat([*per_sample, per_sample[0].new_zeros(1, d)])
        flat = flat if dtype is None else flat.to(dtype)
        return cls(flat, idx.clone(), torch.tensor([len(s) for s in per_sample], dtype=torch.long), n_total)

    def has(self, sample_idx: torch.Tensor) -> bool:
        return not len(sample_idx) or bool((self.pos[sample_idx] >= 0).all())

    def gather(self, sample_idx: torch.Tensor, L: int) -> torch.Tensor:
        """(B, L, d) states of a batch right-padded to L (`sample_idx` on the host)."""
        p = self.pos[sample_idx]
        ar = torch.arange(L)
        rows = torch.where(ar < self.length[p, None], self.start[p, None] + ar, len(self.states) - 1)
        return self.states[to_device(rows, self.states.device)]

    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()

    def rows_of(self, sample_idx: torch.Tensor) -> torch.Tensor:
        """The flat state rows of the samples `sample_idx` (all held), one after another."""
        p = self.pos[sample_idx]
        n = self.length[p]
        offset = torch.repeat_interleave(self.start[p] - (torch.cumsum(n, 0) - n), n)
        return offset + torch.arange(int(n.sum()))

    @classmethod
    def union(cls, tables: list[BoundaryTable], n_total: int) -> BoundaryTable:
        """One table of the samples of `tables` (disjoint), on the host."""
        tables = [t for t in tables if t is not None and len(t.idx)]
        states = [t.states[: len(t.states) - 1].cpu() for t in tables]
        return cls(torch.cat(states + [tables[0].states.new_zeros(1, tables[0].states.shape[1]).cpu()]),
                   torch.cat([t.idx for t in tables]), torch.cat([t.length for t in tables]), n_total)

    def without(self, sample_idx: torch.Tensor, n_total: int) -> BoundaryTable:
        """The same table less the samples `sample_idx` (those it does not hold are ignored)."""
        return self.subset(self.idx[~torch.isin(self.idx, sample_idx)], n_total)

    def subset(self, keep: torch.Tensor, n_total: int) -> BoundaryTable:
        """A table of the samples `keep` only (all held); the same table when it holds no more."""
        if len(keep) == len(self.idx):
            return self
        rows = self.rows_of(keep)
        states = torch.cat([self.states[to_device(rows, self.states.device)], self.states[-1:]])
        return BoundaryTable(states, keep, self.length[self.pos[keep]], n_total)

    def tensors(self) -> dict:
        return {"states": self.states, "idx": self.idx, "length": self.length}

    def to(self, device) -> BoundaryTable:
        self.states = self.states.to(device)
        return self


def width(model) -> int:
    c = model.config
    return int(getattr(c, "d_model", None) or c.hidden_size)


@torch.no_grad()
def build_table(bb: Backbone, model, seqs: list[torch.Tensor], idx: torch.Tensor, scope: Scope, n_total: int,
                batch_size: int, device: str, dtype: torch.dtype | None = None, max_gib: float | None = None,
                desc: str | None = None) -> BoundaryTable:
    """The boundary states of samples `idx` from one inference pass over length-sorted batches.
    `max_gib`: refuse (exit 2) a cache that would be larger, before computing anything."""
    import sys

    from tqdm.auto import tqdm

    from ..batching import pad

    model.eval()
    elt = torch.finfo(dtype).bits // 8 if dtype is not None else 4
    need = sum(len(seqs[i]) for i in idx.tolist()) * width(model) * elt
    if max_gib is not None and need > max_gib * 2**30:
        per = need / max(len(idx), 1)
        raise UserError(f"--lora-scope {scope}: the cached boundary of {len(idx)} samples needs {need / 2**30:.2f} GiB "
                        f"({per / 2**10:.0f} KiB per sample), above --boundary-max-gib {max_gib:g}; raise the cap, "
                        f"use fewer --student-steps, or --lora-scope all")
    order = sorted(idx.tolist(), key=lambda i: len(seqs[i]))
    per_sample = {}
    starts = range(0, len(order), batch_size)
    quiet = desc is None or len(starts) < 50
    for s in tqdm(starts, desc=desc, disable=quiet, leave=False, mininterval=0.5 if sys.stderr.isatty() else 30.0):
        chunk = order[s : s + batch_size]
        ids, mask = pad([seqs[i] for i in chunk], bb.pad_id)
        st = states_of(bb, model, ids.to(device), mask.to(device), scope)
        for j, i in enumerate(chunk):
            per_sample[i] = st[j, : len(seqs[i])]
    return BoundaryTable.build([per_sample[i] for i in idx.tolist()], idx, n_total, dtype)


def cached_boundary(path, fingerprint: dict, build, idx: torch.Tensor, n_total: int, rebuild: bool = True,
                    device: str = "cpu") -> tuple[BoundaryTable, str]:
    """The boundary table of `idx` from `path` when its fingerprint matches and it holds
    every row ("reused"), else `build(idx)` written atomically there ("built"); a stale file
    without `rebuild` is refused, naming it (`rowcache.py`)."""
    t = read_rows(path, fingerprint, rebuild, "boundary cache")
    if t is not None:
        table = BoundaryTable(t["states"], t["idx"], t["length"], n_total)
        if table.has(idx):
            return table.to(device), "reused"
    table = build(idx)
    write_rows(path, table.tensors(), fingerprint)
    return table.to(device), "built"


def shared_boundary(store, local, fingerprint: dict, build, shared_idx: torch.Tensor, private_idx: torch.Tensor,
                    drop_idx: torch.Tensor, n_total: int, rebuild: bool = True, device: str = "cpu"):
    """The boundary table of `shared_idx` and `private_idx`, and {status, built, reused}.

    `store` (a file in the cache folder, named by the fingerprint; None: no store) holds the
    rows derived from no forgotten data (D_r, test, D_h), shared by every run on the same model
    and extended by each: the next request against it reads them back. The rows of `drop_idx`
    (every forgotten user's) leave the store first. The private rows (D_f) live in `local`,
    this output's cache, removed with it (None: built, not written). Without a store `local`
    holds every row (as `cached_boundary`)."""
    if store is None:
        shared_idx, private_idx = torch.empty(0, dtype=torch.long), torch.unique(torch.cat([shared_idx, private_idx]))
    t = None if store is None else read_rows(store, fingerprint, rebuild, "boundary cache")
    shared = None if t is None else BoundaryTable(t["states"], t["idx"], t["length"], n_total)
    changed = False
    if shared is not None and bool(torch.isin(shared.idx, drop_idx).any()):
        shared, changed = shared.without(drop_idx, n_total), True
    held = torch.zeros(n_total, dtype=torch.bool)
    if shared is not None:
        held[shared.idx] = True
    missing = shared_idx[~held[shared_idx]]
    if len(missing):
        shared, changed = BoundaryTable.union([shared, build(missing).to("cpu")], n_total), True
    if changed and len(shared.idx):
        write_rows(store, shared.tensors(), fingerprint)
    elif changed:  # every row it held was a forgotten user's
        Path(store).unlink(missing_ok=True)
    private, p_status = None, "reused"
    if len(private_idx):
        if local is None:
            private, p_status = build(private_idx).to("cpu"), "built"
        else:
            private, p_status = cached_boundary(local, fingerprint, build, private_idx, n_total, rebuild, "cpu")
    p_built = len(private_idx) if p_status == "built" else 0
    built = len(missing) + p_built
    status = "reused" if not built else ("built" if built == len(shared_idx) + len(private_idx) else "extended")
    table = BoundaryTable.union([shared.subset(shared_idx, n_total) if shared is not None else None, private], n_total)
    return table.to(device), dict(status=status, built=built, reused=len(shared_idx) + len(private_idx) - built)


class BoundarySource:
    """A model's frozen-part states at hand (`table`), more fetched on demand (`fetch(idx)`:
    a table of those rows, e.g. through `shared_boundary`): the evaluation reads its rows from
    it instead of running the frozen part again."""

    def __init__(self, table: BoundaryTable, scope: Scope, fetch, n_total: int):
        self.table, self.scope, self.fetch, self.n_total = table, scope, fetch, n_total

    def covering(self, idx: torch.Tensor) -> tuple[BoundaryTable, Scope]:
        missing = idx[self.table.pos[idx] < 0]
        if len(missing):
            dev = self.table.states.device
            self.table = BoundaryTable.union([self.table, self.fetch(torch.unique(missing))], self.n_total).to(dev)
        return self.table, self.scope
