"""The GPU path, checked on the CPU: a student step that never waits for the device
(syncs counted from our code), the loss read every `sync_every` steps."""

import torch

from e2urec_fast.methods import e2urec
from e2urec_fast.syncs import count_host_syncs
from e2urec_fast.unlearn import build_parser
from helpers import tiny_job


def _syncs_per_step(job, *flags):
    args = build_parser().parse_args(["--student-steps", "12", "--forget-epochs", "1", "--checkpoint-every", "1000",
                                      "--quiet", *flags])
    e2urec.settings(args)
    seen = []
    with count_host_syncs() as c:
        e2urec.unlearn(job, job.fresh(), args, "fast", probe=lambda k, s, st: seen.append((k, c.ours, len(c.where))))
    counts = [b[1] - a[1] for a, b in zip(seen, seen[1:])]  # the syncs of steps 2..12 (step 1 starts the generators)
    where = [c.where[a[2] : b[2]] for a, b in zip(seen, seen[1:])]
    return counts, where


def test_student_step_has_no_host_sync(tmp_path):
    job = tiny_job(tmp_path)
    for flags in ((), ("--batch-fusion", "on"), ("--kl-scope", "full")):
        counts, where = _syncs_per_step(job, *flags)
        assert len(counts) == 11
        # one read of the losses every 20 steps (TrainConfig.sync_every) and at the end; none within
        assert counts == [0] * 11, (flags, [w for w in where if w])


def test_counter_sees_our_syncs(tmp_path):
    """The counter is able to fail: a boolean-mask index and an .item() in our code are counted."""
    from e2urec_fast import teachers

    t = teachers.TeacherTable(torch.randn(4, 2), torch.arange(4), 4)
    with count_host_syncs() as c:
        t.require(torch.tensor([0, 1]))  # one bool() of a tensor, by design outside the steps
        torch.arange(3)[torch.tensor([True, False, True])]  # from the test file: not ours, not counted
    assert c.ours == 1 and c.where[0][1] == "__bool__"
