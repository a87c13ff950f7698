"""The full fine-tunes' learning-rate schedule (--lr-schedule linear --warmup W)."""

import pytest
import torch

from e2urec_fast.train import TrainConfig, fit, lr_factor


def test_linear_warmup_then_decay_to_zero():
    cfg = TrainConfig(lr=1.0, schedule="linear", warmup=0.2, max_steps=10)
    f = [lr_factor(cfg, s) for s in range(10)]
    assert f[:2] == [0.5, 1.0]  # 2 warm-up steps
    assert f[2] == 1.0 and f[-1] == pytest.approx(1 / 8) and all(a > b for a, b in zip(f[2:], f[3:]))
    assert lr_factor(TrainConfig(), 5) == 1.0
    with pytest.raises(ValueError):
        lr_factor(TrainConfig(schedule="linear"), 0)  # no planned length


def test_fit_applies_the_schedule_per_update():
    torch.manual_seed(0)
    w = torch.nn.Linear(3, 1)

    def step(batch):
        return (w(batch) ** 2).mean(), len(batch)

    opt_lrs = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        opt_lrs.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        cfg = TrainConfig(lr=0.1, schedule="linear", warmup=0.25, epochs=2, total_steps=8, grad_clip=None)
        fit(w, lambda e: (torch.randn(4, 3) for _ in range(4)), step, cfg, progress=False)
    finally:
        torch.optim.AdamW.step = orig
    assert opt_lrs == pytest.approx([0.1 * lr_factor(cfg, s) for s in range(8)])
    assert opt_lrs[0] == pytest.approx(0.05) and opt_lrs[-1] == pytest.approx(0.1 / 6)


def test_sized_schedule_follows_the_forget_set():
    """#26 item 1: the authors' shape sized to D_f: one forget-only epoch over D_f, one joint
    epoch over D_f (at least 20 joint steps), --student-steps the cap."""
    from e2urec_fast.methods.common import MIN_JOINT, sized_steps

    assert sized_steps(175, 16, 1, 1, 300) == 11 + MIN_JOINT  # 5 users, 175 samples: 31 steps, not 300
    assert sized_steps(548, 16, 1, 1, 300) == 35 + 35
    assert sized_steps(548, 16, 1, 2, 300) == 35 + 70
    assert sized_steps(3000, 16, 1, 1, 300) == 300  # capped: 188 forget-only + 188 joint
    assert sized_steps(1, 16, 0, 1, 300) == MIN_JOINT
    assert sized_steps(175, 16, 1, 1, 6) == 6  # a small --student-steps caps it
