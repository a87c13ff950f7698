import importlib.util

import pytest
import torch
from torch import nn

from e2urec_fast.batching import pad
from e2urec_fast.models.lora import (
    LoraConfig,
    LoRALinear,
    adapter_disabled,
    inject_lora,
    load_adapter,
    lora_modules,
    save_adapter,
)
from e2urec_fast.models.scoring import answer_logits


def test_lora_linear_init_disable_merge():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    m = LoRALinear(base, r=4, lora_alpha=8, dropout=0.0)
    x = torch.randn(5, 12)
    assert torch.equal(m(x), base(x))  # B = 0: a fresh adapter is the identity
    assert m.scaling == 2.0
    nn.init.normal_(m.lora_B.weight)
    want = base(x) + (x @ m.lora_A.weight.T @ m.lora_B.weight.T) * 2.0
    assert torch.allclose(m(x), want, atol=1e-6)
    m.disabled = True
    assert torch.equal(m(x), base(x))
    m.disabled = False
    m.merge()
    assert torch.allclose(m(x), want, atol=1e-5)
    m.disabled = True
    assert torch.allclose(m(x), nn.functional.linear(x, base.weight - m.delta_weight(), base.bias), atol=1e-5)
    m.disabled = False
    m.unmerge()
    assert torch.allclose(m(x), want, atol=1e-5)


def test_inject_save_load_roundtrip(tmp_path):
    from helpers import tiny_job

    job = tiny_job(tmp_path)
    bb = job.fresh()
    names = inject_lora(bb.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q", "v"]))
    assert names and all(n.endswith((".q", ".v")) for n in names)
    assert all(("lora_" in n) == p.requires_grad for n, p in bb.model.named_parameters())
    for m in lora_modules(bb.model).values():
        nn.init.normal_(m.lora_B.weight, std=0.05)
    save_adapter(bb.model, tmp_path / "ad")
    other = job.fresh()
    load_adapter(other.model, tmp_path / "ad")
    for (n1, p1), (n2, p2) in zip(bb.model.named_parameters(), other.model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)  # bit-exact
    ids, mask = pad(job.seqs[:3], bb.pad_id)
    bb.model.eval()
    other.model.eval()
    with torch.no_grad():
        a, b = answer_logits(bb, bb.model, ids, mask), answer_logits(other, other.model, ids, mask)
        assert torch.equal(a, b)
        with adapter_disabled(bb.model):
            base = answer_logits(bb, bb.model, ids, mask)
        plain = job.fresh()
        plain.model.eval()
        assert torch.allclose(base, answer_logits(plain, plain.model, ids, mask), atol=1e-6)
        assert not torch.allclose(base, a, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed (never a runtime dependency)")
def test_loads_in_peft(tmp_path):
    from peft import PeftModel

    from helpers import tiny_job

    job = tiny_job(tmp_path)
    bb = job.fresh()
    inject_lora(bb.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q", "v"]))
    for m in lora_modules(bb.model).values():
        nn.init.normal_(m.lora_B.weight, std=0.05)
    save_adapter(bb.model, tmp_path / "ad")
    pm = PeftModel.from_pretrained(job.fresh().model, str(tmp_path / "ad")).eval()
    bb.model.eval()
    ids, mask = pad(job.seqs[:3], bb.pad_id)
    with torch.no_grad():
        assert torch.allclose(answer_logits(bb, bb.model, ids, mask), answer_logits(bb, pm, ids, mask), atol=1e-5)


def test_lora_over_8bit_base():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    q = bnb.nn.Linear8bitLt(32, 16, has_fp16_weights=False, threshold=0.0)
    q.load_state_dict(lin.state_dict())
    q = q.to("cpu")
    m = LoRALinear(q, r=4, lora_alpha=8, dropout=0.0)
    nn.init.normal_(m.lora_B.weight)
    x = torch.randn(6, 32, requires_grad=True)
    y = m(x)
    want = lin(x) + (x @ m.lora_A.weight.T @ m.lora_B.weight.T) * 2.0
    assert torch.allclose(y, want, rtol=0.05, atol=0.05)
    y.sum().backward()
    assert m.lora_A.weight.grad is not None and x.grad is not None
    with pytest.raises(TypeError):
        m.merge()
