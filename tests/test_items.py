"""Item tokens (--item-tokens, issue #40): each item in the prompt preceded by a token of its
own, one token per catalogue item in a preset's tokenizer, kept through save/load, PEFT and a
later request."""

import json
import re

import pytest
import torch

from conftest import make_ml1m
from e2urec_fast.data import prepare
from e2urec_fast.data.loaders import load_ml1m
from e2urec_fast.data.samples import item_token
from e2urec_fast.models.backbone import build_preset, has_item_tokens, resolve_backbone


def test_prompts_carry_item_tokens_and_the_preset_one_token_each(tmp_path):
    d = make_ml1m(tmp_path / "ml1m", n_users=16, per_user=12)
    plain = prepare("ml-1m", d, tmp_path / "cache", max_samples=None, seed=3)
    p = prepare("ml-1m", d, tmp_path / "cache", max_samples=None, seed=3, item_tokens=True)
    titles = load_ml1m(d).titles
    assert p.manifest["catalogue"] == sorted(titles) and "catalogue" not in plain.manifest
    assert p.manifest["content_hash"] != plain.manifest["content_hash"]  # its own cache entry
    i = int(p.items[0])
    assert f"{item_token(i)} {titles[i]}" in p.prompts[0] and item_token(i) not in plain.prompts[0]
    assert [re.sub(r"<item_\d+> ", "", s) for s in p.prompts] == plain.prompts  # the tokens added, nothing else changed
    folder = resolve_backbone("tiny", p, tmp_path / "cache", seed=1)
    assert has_item_tokens(folder) and not has_item_tokens(resolve_backbone("tiny", plain, tmp_path / "cache", seed=1))
    from e2urec_fast.models import load_backbone

    bb = load_backbone(folder)
    ids = bb.tokenizer.convert_tokens_to_ids([item_token(i) for i in sorted(titles)])
    assert len(set(ids)) == len(titles) and bb.tokenizer.unk_token_id not in ids
    enc = bb.tokenizer(p.prompts[0])["input_ids"]
    assert bb.tokenizer.convert_tokens_to_ids(item_token(i)) in enc  # one token in the prompt, not BPE pieces
    assert bb.model.get_input_embeddings().weight.shape[0] >= len(bb.tokenizer)
    # the same preset built twice with the same seed is the same, bit for bit
    again = build_preset("tiny", p.pretrain_prompts(), tmp_path / "again", seed=1,
                         about=json.loads((folder / "e2urec_preset.json").read_text())["tokenizer_texts"],
                         extra_tokens=[item_token(j) for j in p.manifest["catalogue"]])
    for f in ("model.safetensors", "tokenizer.json"):
        assert (again / f).read_bytes() == (folder / f).read_bytes(), f


def test_item_tokens_through_a_job_peft_and_a_request(tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from e2urec_fast import forget
    from e2urec_fast.errors import UserError
    from e2urec_fast.evaluate import ctr_metrics, p_yes, predict_logits
    from e2urec_fast.models import load_backbone

    data = make_ml1m(tmp_path / "ml1m", n_users=20, per_user=12, n_items=80)  # (items no training prompt names: below)
    common = dict(dataset="ml-1m", max_samples=None, epochs=1, batch_size=8, student_steps=4, forget_epochs=1, quiet=True, seed=5,
                  data_dir=str(data), cache_dir=str(tmp_path / "cache"), calibrate="off")
    r = forget(tmp_path / "b", methods="original,e2urec", item_tokens=True, item_separation=True, item_lr=10.0, item_init="zero",
               **common)
    assert r.report["settings"]["item_tokens"] is True and has_item_tokens(r.original)
    for m in ("Original", "E2URec"):  # --item-separation: every model's row says how much the item matters
        assert 0.0 <= r.metrics(m)["item_spread"] < 0.5 and -1.0 <= r.metrics(m)["item_rate_corr"] <= 1.0
    assert "item spread" in (r.out / "report.md").read_text()
    bb = load_backbone(r.original)
    prep = prepare("ml-1m", data, tmp_path / "cache", max_samples=None, seed=5, holdout_ratio=0.1, item_tokens=True)
    seqs = prep.tokens(bb.tokenizer, bb.tokenizer_key(), suffix=bb.suffix)
    # --item-init zero: the rows of the items no training prompt names started equal and got the
    # same gradient (the tied output head's alone), so they are still equal to one another
    w = bb.model.get_input_embeddings().weight.detach()
    seen = {int(t) for k in prep.index("train").tolist() for t in re.findall(r"<item_(\d+)>", prep.prompts[k])}
    row = lambda i: w[bb.tokenizer.convert_tokens_to_ids(item_token(i))]
    unseen = [i for i in prep.manifest["catalogue"] if i not in seen]
    assert len(unseen) > 1 and all(torch.equal(row(i), row(unseen[0])) for i in unseen)
    assert not any(torch.equal(row(i), row(unseen[0])) for i in seen)
    idx = prep.index("test")
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(str(r.original)), str(r.adapter))
    auc = ctr_metrics(prep.labels[idx].numpy(), p_yes(predict_logits(bb, model, seqs, idx, 8)))["auc"]
    assert abs(auc - r.metrics("E2URec")["auc"]) < 1e-6
    # a request on that Original: its prompts carry the item tokens without the flag (its tokenizer says so)
    users = sorted(set(prep.users[prep.index("train")].tolist()))
    q = forget(tmp_path / "q", original=str(r.original), forget_users=users[:2], no_retrain=True, **common)
    assert q.report["settings"]["item_tokens"] is True and abs(q.metrics("Original")["auc"] - r.metrics("Original")["auc"]) < 1e-9
    # the flag on a model trained without item tokens: a one-line error, nothing written
    plain = forget(tmp_path / "p", methods="original", **common)
    with pytest.raises(UserError, match="no item tokens"):
        forget(tmp_path / "x", original=str(plain.original), forget_users=users[:2], no_retrain=True, item_tokens=True, **common)
    assert not (tmp_path / "x").exists()
    assert torch.equal(prep.labels, prepare("ml-1m", data, tmp_path / "cache", max_samples=None, seed=5, holdout_ratio=0.1).labels)


def test_item_swaps_ask_each_user_about_each_popular_item(tmp_path):
    d = make_ml1m(tmp_path / "ml1m", n_users=16, per_user=12)
    p = prepare("ml-1m", d, tmp_path / "cache", max_samples=None, seed=3, item_tokens=True)
    sw = p.item_swaps(n_users=5, n_items=4)
    assert len(sw["prompts"]) == len(sw["users"]) * len(sw["items"]) and len(sw["items"]) == 4
    r = p.index("retain")
    counts = torch.bincount(p.items[r])
    assert [int(counts[i]) for i in sw["items"]] == sorted((int(counts[i]) for i in sw["items"]), reverse=True)
    assert int(counts[sw["items"][0]]) == int(counts.max())  # the most asked-about item first
    for k, prompt in enumerate(sw["prompts"]):
        u, it = sw["users"][k // 4], sw["items"][k % 4]
        assert f"***{item_token(it)} " in prompt and prompt.count("***") == 2
        latest = max(i for i in p.index("test").tolist() if int(p.users[i]) == u)
        head = p.prompts[latest].split("***")[0]
        assert prompt.startswith(head)  # the user's own history kept, only the target swapped
    assert all(0.0 <= x <= 1.0 for x in sw["rate"])


def test_item_lr_scales_the_item_rows_update_alone(tmp_path):
    """--item-lr: AdamW's step is invariant to a gradient's scale, so the factor multiplies the
    item rows' step itself; every other row moves as without it. Models trained before the
    option keep their cache keys (row_lr left out of the key at 1)."""
    from e2urec_fast import forget
    from e2urec_fast.errors import UserError
    from e2urec_fast.methods.retrain import _settings
    from e2urec_fast.train import TrainConfig, fit

    def one_step(row_lr):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(10, 4)
        batch = torch.tensor([[1, 8], [2, 9], [8, 3]])
        step = lambda b: ((emb(b).sum(1) ** 2).sum(), len(b))
        w0 = emb.weight.detach().clone()
        cfg = TrainConfig(lr=0.1, epochs=1, grad_clip=None, row_lr=row_lr)
        fit(emb, lambda e: [batch], step, cfg, progress=False, scaled_rows=(emb.weight, torch.tensor([7, 8, 9])))
        return emb.weight.detach() - w0

    d1, d5 = one_step(1.0), one_step(5.0)
    assert d1[8].abs().min() > 0 and torch.allclose(d5[7:], 5 * d1[7:]) and torch.equal(d5[:7], d1[:7])
    assert "row_lr" not in _settings(TrainConfig()) and _settings(TrainConfig(row_lr=3.0))["row_lr"] == 3.0
    with pytest.raises(UserError, match="--item-lr and --item-init .* need --item-tokens"):
        forget(tmp_path / "o", item_lr=10.0, methods="original", quiet=True)
    assert not (tmp_path / "o").exists()
