"""The job's log lines on stderr (rank 0 only under torchrun) and its stage counter.

    stage = Stages(4); stage("Original: fine-tuning ...")   ->  "[1/4] Original: fine-tuning ..."

Each long stage also has its own bar with a total and an ETA (train.fit: the step budget,
evaluate: the chunks, the boundary cache: the rows).
"""

from __future__ import annotations

import sys

from . import dist


def log(msg: str) -> None:
    if dist.is_main():  # torchrun: one log, rank 0's
        print(msg, file=sys.stderr, flush=True)


class Stages:
    """Numbered stage lines: `[k/total] what`; the total is fixed when the job's plan is known."""

    def __init__(self, total: int):
        self.k, self.total = 0, total

    def __call__(self, msg: str) -> None:
        self.k += 1
        log(f"[{min(self.k, self.total)}/{self.total}] {msg}")


def job_stages(methods: list[str], with_retrain: bool) -> Stages:
    """The default job's stages: data, the Original, Retrain (when run), each unlearning
    method, the audit and report."""
    from .methods.registry import METHODS

    runs = sum(METHODS[m].run is not None for m in methods)
    return Stages(2 + int(with_retrain) + runs + 1)
