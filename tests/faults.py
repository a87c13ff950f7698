"""The command line with a fault injected (tests/test_dist.py launches this under torchrun):
rank E2UREC_TEST_KILL_RANK dies at the step E2UREC_TEST_KILL_AT = "<part of the run's
description>:<steps done>" (default: the first step of any run). The hook is installed
here, in the test's process, through train.BEFORE_STEP; the training loop itself has none."""

import os
import sys

from e2urec_fast import dist, train, unlearn

KILL_RANK = int(os.environ.get("E2UREC_TEST_KILL_RANK", "-1"))
KILL_DESC, _, KILL_STEP = os.environ.get("E2UREC_TEST_KILL_AT", ":0").rpartition(":")


def kill(desc: str, steps: int) -> None:
    if dist.world() > 1 and dist.rank() == KILL_RANK and KILL_DESC in desc and steps == int(KILL_STEP):
        os._exit(3)


if __name__ == "__main__":
    train.BEFORE_STEP.append(kill)
    sys.exit(unlearn.main())
