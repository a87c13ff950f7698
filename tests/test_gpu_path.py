"""The GPU path, checked on the CPU: a student step that never waits for the device
(syncs counted from our code), the loss read every `sync_every` steps."""

import torch

from e2urec_fast.methods import e2urec
from e2urec_fast.syncs import count_host_syncs
from helpers import cfg, tiny_job


def _syncs_per_step(job, **fields):
    args = cfg(student_steps=12, forget_epochs=1, checkpoint_every=1000, quiet=True, **fields)
    seen = []
    with count_host_syncs() as c:
        e2urec.unlearn(job, job.fresh(), args, "fast", probe=lambda k, s, st: seen.append((k, c.ours, len(c.where))))
    counts = [b[1] - a[1] for a, b in zip(seen, seen[1:])]  # the syncs of steps 2..12 (step 1 starts the generators)
    where = [c.where[a[2] : b[2]] for a, b in zip(seen, seen[1:])]
    return counts, where


def test_student_step_has_no_host_sync(tmp_path):
    job = tiny_job(tmp_path)
    for flags in ({}, dict(batch_fusion="on"), dict(kl_scope="full")):
        counts, where = _syncs_per_step(job, **flags)
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


def test_bf16_student_step_matches_fp32(tmp_path):
    """One fast student step in bf16 (frozen base stored in bf16, forward under autocast,
    fp32 LoRA and teachers) against fp32 with the same weights and batch: loss within 2%
    relative, LoRA gradients within cosine 0.99 and norm 5% (bf16 keeps 8 mantissa bits)."""
    import copy

    from e2urec_fast import precision
    from e2urec_fast.evaluate import predict_logits
    from e2urec_fast.models.lora import DEFAULT_TARGETS, LoraConfig, inject_lora, lora_modules
    from e2urec_fast.teachers import Teachers, TeacherTable

    job = tiny_job(tmp_path)
    torch.manual_seed(0)
    orig = job.fresh()
    with torch.no_grad():
        for p in orig.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    aug = orig.clone()
    with torch.no_grad():
        for p in aug.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = orig.clone()
    inject_lora(student.model, LoraConfig(4, 8, 0.0, DEFAULT_TARGETS[orig.family]))
    for m in lora_modules(student.model).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    student.model.eval()
    b = job.batcher(batch_size=8, bucket=False)
    prep = job.prepared
    rb, fb = b.make(prep.index("retain")[:8].tolist()), b.make(prep.index("forget")[:8].tolist())
    n = len(prep.labels)
    tables = Teachers(*(TeacherTable(predict_logits(orig, m.model, job.seqs, bt.idx, 64), bt.idx, n)
                        for m, bt in ((orig, rb), (orig, fb), (aug, fb))))
    out = {}
    for dtype in ("fp32", "bf16"):
        st = copy.deepcopy(student)
        if dtype == "bf16":
            assert precision.frozen_to_bf16(st.model) > 0
        lora = [p for p in st.model.parameters() if p.requires_grad]
        assert all(p.dtype == torch.float32 for p in lora)
        with precision.autocast(dtype, "cpu"):
            loss = e2urec.combine(e2urec.fast_terms(st, tables, rb, fb, 2.0, "yesno", "torch", True), 0.6)
        out[dtype] = (float(loss.detach()), torch.cat([g.flatten() for g in torch.autograd.grad(loss, lora)]))
    (l32, g32), (l16, g16) = out["fp32"], out["bf16"]
    assert abs(l16 - l32) <= 0.02 * abs(l32), (l16, l32)
    assert float(torch.nn.functional.cosine_similarity(g16, g32, dim=0)) > 0.99
    assert abs(float(g16.norm() / g32.norm()) - 1) < 0.05
    assert not torch.equal(g16, g32)  # bf16 really ran


def test_dtype_resolution():
    from e2urec_fast import precision

    assert precision.resolve("auto", "cpu") == "fp32" and precision.resolve("bf16", "cpu") == "bf16"
    with torch.autocast("cpu", enabled=False):
        with precision.autocast("bf16", "cpu"):
            assert torch.is_autocast_enabled("cpu") and (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
        with precision.autocast("fp32", "cpu"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_training_under_one_long_bf16_context_uses_the_updated_weights():
    """A run lives in one autocast context (api._run); autocast caches a bf16 copy of each
    trainable weight until the outermost context exits, so without fit() dropping those
    copies after each update the forward kept using the first step's weights (a bf16
    Original did not learn at all)."""
    from e2urec_fast import precision
    from e2urec_fast.train import TrainConfig, fit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(64, 8), torch.randn(64, 1)

    def step(_):
        return torch.nn.functional.mse_loss(model(x).float(), y), 64

    with precision.autocast("bf16", "cpu"):
        before = float(step(None)[0].detach())
        res = fit(model, lambda e: range(30), step, TrainConfig(lr=3e-2, max_steps=30, grad_clip=None), progress=False)
        inside = model(x).float().detach()
    with precision.autocast("bf16", "cpu"):
        fresh = model(x).float().detach()
    assert torch.allclose(inside, fresh)  # the open context sees the trained weights
    assert res.loss_history[-1] < 0.7 * before  # and training moved the loss
