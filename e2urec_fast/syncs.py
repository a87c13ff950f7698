"""Counting host syncs: the calls that make the host wait for the device.

On a GPU a training step is fast only if the host can queue the next step's kernels
while the device still runs this one; every `.item()`, `bool(tensor)`, boolean-mask
index or device-to-host copy in the step stops that. `count_host_syncs()` counts them:

- on CUDA: `torch.cuda.set_sync_debug_mode("warn")` reports every synchronizing call,
  wherever it comes from (ours, transformers', torch's);
- everywhere (the only way on the CPU, where nothing waits): the calls made *from this
  package's code* (`e2urec_fast/`, its `kernels/` included) that would synchronize on a device:
  `.item()`, `.tolist()`, `bool()/float()/int()` of a tensor, `.nonzero()`, `.numpy()`,
  `.cpu()` and indexing with a boolean tensor (seen through a `TorchFunctionMode`).

    with count_host_syncs() as c:
        step(...)
    c.ours, c.cuda
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

_OURS = (str(Path(__file__).resolve().parent),)
_METHODS = {"item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "numpy", "cpu"}


@dataclass
class SyncCount:
    ours: int = 0  # syncing calls made from this package's code
    cuda: int = 0  # synchronizations CUDA's sync debug mode reported (0 off CUDA)
    where: list = field(default_factory=list)  # (file:line, call) of ours


def _is_bool_index(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys)


class _Counter(torch.overrides.TorchFunctionMode):
    """Sees every tensor method call (no class patching) and counts ours that sync."""

    def __init__(self, c: SyncCount):
        super().__init__()
        self.c = c

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _METHODS or (name == "__getitem__" and len(args) > 1 and _is_bool_index(args[1])):
            fr = sys._getframe(1)
            if fr.f_code.co_filename.startswith(_OURS):
                self.c.ours += 1
                self.c.where.append((f"{Path(fr.f_code.co_filename).name}:{fr.f_lineno}", name))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs():
    c = SyncCount()
    cuda = torch.cuda.is_available()
    try:
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught, _Counter(c):
            warnings.simplefilter("always")
            yield c
        c.cuda = sum("synchroniz" in str(w.message) for w in caught)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
