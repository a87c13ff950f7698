"""8-bit frozen backbones with bitsandbytes.

`quantize_8bit` swaps every nn.Linear of a frozen model for a bitsandbytes
`Linear8bitLt` (int8 weights, has_fp16_weights=False), except the modules named in
`skip`: T5's feed-forward output `wo` stays in full precision (it overflows in low
precision, as HuggingFace's own 8-bit loading keeps it), and so does `lm_head` (tied to
the embeddings). LoRA then wraps the 8-bit `q`/`v` projections; the int8 base still
passes input gradients, which is all the adapters need.
"""

from __future__ import annotations

from torch import nn

from ..errors import UserError

SKIP = ("wo", "lm_head")


def bitsandbytes_or_error():
    """The bitsandbytes module, or a UserError saying --load-in-8bit needs it (it installs on
    Linux and Windows only: setup.py's markers)."""
    try:
        import bitsandbytes
    except Exception as e:  # ImportError, or a broken native library
        raise UserError(f"--load-in-8bit needs bitsandbytes, which does not import here ({type(e).__name__}: "
                        f"{str(e)[:120]}); pip install bitsandbytes, or run without --load-in-8bit") from None
    return bitsandbytes


def quantize_8bit(model: nn.Module, skip: tuple[str, ...] = SKIP, threshold: float = 6.0) -> list[str]:
    """Replace frozen nn.Linear modules by Linear8bitLt in place; returns their names."""
    bnb = bitsandbytes_or_error()
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and n.split(".")[-1] not in skip]
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        dev = lin.weight.device
        q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None, has_fp16_weights=False,
                                threshold=threshold)
        q.load_state_dict(lin.state_dict())
        q = q.to(dev)  # quantizes the weights to int8
        for p in q.parameters():
            p.requires_grad_(False)
        setattr(parent, child, q)
    return names


def model_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
