"""The cached boundary (--lora-scope): a student that starts from cached states gives the
uncached forward's answer logits and LoRA gradients, for every family; its adapter loads in
PEFT where it was trained; the unlearning run builds, fingerprints and removes the cache."""

import copy

import pytest
import torch

from e2urec_fast.errors import UserError
from e2urec_fast.evaluate import predict_logits
from e2urec_fast.methods import e2urec
from e2urec_fast.methods import states as states_mod
from e2urec_fast.models.boundary import BoundaryTable, build_table, check_scope, from_states, parse_scope, target_modules
from e2urec_fast.models.lora import DEFAULT_TARGETS, LoraConfig, inject_lora, lora_modules, save_adapter
from e2urec_fast.models.scoring import answer_logits, lm_loss, yes_no_rows
from helpers import cfg, tiny_job

FAMILIES = [("tiny", "decoder"), ("bart-tiny", "decoder"), ("causal-tiny", "top:1"), ("masked-tiny", "top:1")]


def student_of(job, scope_text, seed=0):
    bb = job.fresh()
    scope = check_scope(parse_scope(scope_text), bb)
    names = inject_lora(bb.model, LoraConfig(4, 8, 0.0, target_modules(bb, scope, DEFAULT_TARGETS[bb.family])))
    torch.manual_seed(seed)
    for m in lora_modules(bb.model).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.3)
    bb.model.eval()
    return bb, scope, names


@pytest.mark.parametrize("preset,scope_text", FAMILIES)
def test_cached_states_give_the_uncached_logits_and_gradients(tmp_path, preset, scope_text):
    job = tiny_job(tmp_path, preset, n_users=12, per_user=10)
    bb, scope, names = student_of(job, scope_text)
    everywhere = inject_lora(job.fresh().model, LoraConfig(4, 8, 0.0, DEFAULT_TARGETS[bb.family]))
    assert names and set(names) < set(everywhere)  # only above the boundary
    idx = job.prepared.index("forget")[:6]
    table = build_table(bb, bb.model, job.seqs, idx, scope, len(job.prepared.labels), batch_size=4, device="cpu")
    b = job.batcher(6, bucket=False).make(idx.tolist())
    trainable = [p for p in bb.model.parameters() if p.requires_grad]
    for rows in (yes_no_rows(bb), None):
        ref = answer_logits(bb, bb.model, b.ids, b.mask, rows=rows)
        g_ref = torch.autograd.grad(ref.logsumexp(-1).sum() + ref[:, 0].sum(), trainable)
        with from_states(bb, bb.model, table.gather(b.idx, b.ids.shape[1]), scope):
            got = answer_logits(bb, bb.model, b.ids, b.mask, rows=rows)
            g = torch.autograd.grad(got.logsumexp(-1).sum() + got[:, 0].sum(), trainable)
        assert (got - ref).abs().max() < 1e-5
        for a, c in zip(g_ref, g):
            assert (a - c).abs().max() <= 1e-5 * max(1.0, a.abs().max().item())
    # the frozen part below the boundary has no adapter: the states are the Original's
    plain = job.fresh()
    t2 = build_table(plain, plain.model, job.seqs, idx, scope, len(job.prepared.labels), batch_size=6, device="cpu")
    assert torch.allclose(t2.states, table.states, atol=1e-6)
    if bb.family != "causal":  # the LM loss from states (the augmented model's adapter trains on it)
        with from_states(bb, bb.model, table.gather(b.idx, b.ids.shape[1]), scope):
            got = lm_loss(bb, bb.model, b.ids, b.mask, b.labels)
        assert abs(got.item() - lm_loss(bb, bb.model, b.ids, b.mask, b.labels).item()) < 1e-5


def test_table_gathers_padded_batches():
    per = [torch.full((n, 3), float(k + 1)) for k, n in enumerate((2, 4, 1))]
    t = BoundaryTable.build(per, torch.tensor([5, 1, 7]), n_total=9)
    g = t.gather(torch.tensor([7, 5]), 3)
    assert g.shape == (2, 3, 3)
    assert torch.equal(g[0, :, 0], torch.tensor([3.0, 0, 0])) and torch.equal(g[1, :, 0], torch.tensor([1.0, 1, 0]))
    assert t.has(torch.tensor([1, 5])) and not t.has(torch.tensor([1, 2]))


def test_scope_refusals(tmp_path):
    for bad in ("top:0", "encoder", "top:x"):
        with pytest.raises(UserError, match="--lora-scope"):
            parse_scope(bad)
    job = tiny_job(tmp_path, "causal-tiny", n_users=8, per_user=8)
    with pytest.raises(UserError, match="encoder-decoder"):
        check_scope(parse_scope("decoder"), job.fresh())
    with pytest.raises(UserError, match="only 2 layers"):
        check_scope(parse_scope("top:3"), job.fresh())


def test_decoder_adapter_loads_in_peft_where_it_was_trained(tmp_path):
    peft = pytest.importorskip("peft")
    job = tiny_job(tmp_path, n_users=8, per_user=8)
    bb, scope, names = student_of(job, "decoder")
    assert names and all(n.startswith("decoder.") for n in names)
    save_adapter(bb.model, tmp_path / "ad", base_model_name=str(job.backbone_dir))
    pm = peft.PeftModel.from_pretrained(job.fresh().model, str(tmp_path / "ad")).eval()
    wrapped = [n for n, m in pm.named_modules() if n.endswith(".q") and hasattr(m, "lora_A")]
    assert wrapped and all(".decoder." in n for n in wrapped)  # PEFT put it where it was trained, not in the encoder
    b = job.batcher(4, bucket=False).make(job.prepared.index("test")[:4].tolist())
    with torch.no_grad():
        ours = answer_logits(bb, bb.model, b.ids, b.mask)
        theirs = answer_logits(bb, pm.base_model.model, b.ids, b.mask)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_unlearning_with_a_cached_boundary(tmp_path):
    job = tiny_job(tmp_path, n_users=16, per_user=10)
    orig = job.fresh()
    base = dict(student_steps=6, forget_epochs=1, quiet=True, lora_scope="decoder", keep_artifacts=True)
    args = cfg(**base, aug_mode="lora", aug_lr=1e-2)
    bb, info = e2urec.unlearn(job, copy.deepcopy(orig), args, "fast")
    bd = info["teacher_cache"]["boundary"]
    assert bd["status"] == "built" and bd["scope"] == "decoder" and bd["rows"] > 0
    mods = lora_modules(bb.model)
    assert mods and all(n.startswith("decoder.") for n in mods)
    assert any(m.lora_B.weight.abs().sum() > 0 for m in mods.values())  # it trained
    assert (job.out / "cache" / "boundary.safetensors").exists()  # kept (--keep-artifacts)
    # the aug's adapter sat above the boundary: its cached D_f logits equal its full forward
    from e2urec_fast.files import load_safetensors

    t = load_safetensors(job.out / "cache" / "teacher_forget.safetensors")
    aug = orig.clone()
    aug.model.load_state_dict(load_safetensors(job.out / "artifacts" / "augmented_model.safetensors"))
    full = predict_logits(orig, aug.model, job.seqs, t["aug_f.idx"])
    assert torch.allclose(full, t["aug_f"], atol=1e-5) and not torch.allclose(full, t["orig_f"], atol=1e-3)
    # a stale boundary (another Original's fingerprint) is refused when rebuilding is off, rebuilt otherwise
    other = orig.clone()
    with torch.no_grad():
        other.model.get_encoder().block[0].layer[0].SelfAttention.q.weight.mul_(1.01)
    args = cfg(**base, no_cache_rebuild=True)
    with pytest.raises(UserError, match="stale boundary cache"):
        e2urec.unlearn(job, other, args, "fast")
    job.out.joinpath("cache", "boundary.safetensors").unlink()
    base.pop("keep_artifacts")
    args = cfg(**base, boundary_max_gib=1e-6)
    with pytest.raises(UserError, match="boundary-max-gib"):
        e2urec.unlearn(job, copy.deepcopy(orig), args, "fast")
    args = cfg(**base)
    _, info = e2urec.unlearn(job, copy.deepcopy(orig), args, "fast")
    assert info["teacher_cache"]["boundary"]["status"] == "built"
    assert not (job.out / "cache" / "boundary.safetensors").exists()  # D_f's states go with the run


def test_bench_boundary_dry_run(tmp_path):
    import json

    from conftest import bench_module

    mod = bench_module("bench_boundary")
    out = tmp_path / "b.json"
    mod.main(["--dry-run", "--seeds", "1", "--paths", "fast,boundary", "--threads", "1", "--out", str(out),
              "--cache-dir", str(tmp_path / "c")])
    r = json.loads(out.read_text())
    fast, bd = r["summary"]["fast"], r["summary"]["boundary"]
    assert bd["joint_step"] < fast["joint_step"] and bd["forget_step"] < fast["forget_step"]  # no encoder in the step
    assert r["runs"]["1"]["boundary"]["teacher_cache"]["boundary"]["status"] == "built"
    assert "authors'" not in out.with_suffix(".md").read_text()  # no anchor column off the anchor's setting


def test_boundary_file_is_keyed_by_its_scope(tmp_path):
    from e2urec_fast.models.boundary import cached_boundary

    built = []

    def build(idx):
        built.append(idx.tolist())
        return BoundaryTable.build([torch.full((2, 3), float(i)) for i in idx.tolist()], idx, n_total=6)

    path, idx = tmp_path / "b.safetensors", torch.tensor([1, 4])
    t, st = cached_boundary(path, {"orig": "x", "scope": "top:1"}, build, idx, 6)
    assert st == "built" and torch.equal(t.gather(torch.tensor([4]), 2)[0, :, 0], torch.tensor([4.0, 4.0]))
    assert cached_boundary(path, {"orig": "x", "scope": "top:1"}, build, idx[:1], 6)[1] == "reused" and len(built) == 1
    with pytest.raises(UserError, match="stale boundary cache"):
        cached_boundary(path, {"orig": "x", "scope": "top:2"}, build, idx, 6, rebuild=False)
    assert cached_boundary(path, {"orig": "x", "scope": "top:2"}, build, idx, 6)[1] == "built" and len(built) == 2
    assert cached_boundary(path, {"orig": "x", "scope": "top:2"}, build, torch.tensor([0]), 6)[1] == "built"  # a row it lacks


def test_shared_boundary_store_keeps_no_forgotten_row(tmp_path):
    """The store holds D_r's and the evaluation's rows for the next run on the same model and
    never a forgotten user's; D_f's rows stay in this output's file; rows of varying length
    come back as built."""
    from e2urec_fast.files import load_safetensors
    from e2urec_fast.models.boundary import shared_boundary

    built = []

    def build(idx):
        built.extend(idx.tolist())
        return BoundaryTable.build([torch.full((1 + i % 3, 2), float(i)) for i in idx.tolist()], idx, n_total=10)

    store, local, fp = tmp_path / "store.safetensors", tmp_path / "out" / "b.safetensors", {"orig": "x"}
    t, got = shared_boundary(store, local, fp, build, torch.tensor([0, 2, 5]), torch.tensor([7]), torch.tensor([7]), 10)
    assert got == dict(status="built", built=4, reused=0)
    assert load_safetensors(store)["idx"].tolist() == [0, 2, 5] and load_safetensors(local)["idx"].tolist() == [7]
    for i in (0, 2, 5, 7):
        assert torch.equal(t.gather(torch.tensor([i]), 3)[0, : 1 + i % 3, 0], torch.full((1 + i % 3,), float(i)))
    built.clear()  # the next run: rows 2 and 5 read back, row 1 added; user of row 0 forgotten now
    t, got = shared_boundary(store, None, fp, build, torch.tensor([1, 2, 5]), torch.tensor([0]), torch.tensor([0, 7]), 10)
    assert sorted(built) == [0, 1] and got == dict(status="extended", built=2, reused=2)
    assert load_safetensors(store)["idx"].tolist() == [2, 5, 1]  # row 0 left it
    assert torch.equal(t.gather(torch.tensor([5, 0]), 3)[:, 0, 0], torch.tensor([5.0, 0.0]))
    built.clear()
    t, got = shared_boundary(store, None, fp, build, torch.tensor([1]), torch.empty(0, dtype=torch.long), torch.tensor([2, 5]), 10)
    assert not built and got["status"] == "reused" and t.idx.tolist() == [1]
    assert load_safetensors(store)["idx"].tolist() == [1]
    t, got = shared_boundary(store, None, fp, build, torch.empty(0, dtype=torch.long), torch.tensor([3]), torch.tensor([1]), 10)
    assert not store.exists() and t.idx.tolist() == [3]  # its last row was a forgotten user's: the file goes


def test_evaluation_from_the_cached_boundary_and_its_store(tmp_path, monkeypatch):
    """The student of a cached boundary is evaluated from the frozen part's states: the same
    test and D_f logits as its full forward; the next run on the same Original reads the test
    rows back from the store."""
    from e2urec_fast.evaluate import Evaluator

    job = tiny_job(tmp_path, n_users=16, per_user=10)
    orig, store = job.fresh(), tmp_path / "cache"
    args = cfg(student_steps=4, forget_epochs=1, quiet=True, lora_scope="decoder", aug_mode="lora")
    bb, info = e2urec.unlearn(job, copy.deepcopy(orig), args, "fast", store=store)
    assert info["teacher_cache"]["boundary"]["store"] and info["states"] is not None
    ev = Evaluator(job)
    m, full = ev(bb, "E2URec", states=info["states"])
    n_store = len(list((store / "boundary").glob("*.safetensors")))
    m2, full2 = ev(bb, "E2URec")  # a full forward
    assert n_store == 1 and torch.allclose(full, full2, atol=1e-5) and abs(m["auc"] - m2["auc"]) < 1e-6
    from e2urec_fast.files import load_safetensors

    held = load_safetensors(next((store / "boundary").glob("*.safetensors")))["idx"]
    prep = job.prepared
    assert set(prep.index("test").tolist()) <= set(held.tolist())
    assert not set(held.tolist()) & set(prep.index("forget_all").tolist())
    rows_built = []
    real = states_mod.build_table

    def counting(bb_, model, seqs, idx, *a, **k):
        rows_built.extend(idx.tolist())
        return real(bb_, model, seqs, idx, *a, **k)

    monkeypatch.setattr(states_mod, "build_table", counting)
    bb2, info2 = e2urec.unlearn(job, copy.deepcopy(orig), args, "fast", store=store)
    m3, _ = Evaluator(job)(bb2, "E2URec", states=info2["states"])
    # the next run on the same Original builds D_f's states only: D_r's and test's come from the store
    assert rows_built and set(rows_built) <= set(prep.index("forget_all").tolist())
    assert abs(m3["auc"] - m["auc"]) < 1e-6  # the stored states give the same student and the same test metrics
    other = copy.deepcopy(orig)  # another Original: its own store file, nothing read from the first
    with torch.no_grad():
        other.model.get_encoder().block[0].layer[0].SelfAttention.q.weight.mul_(1.01)
    rows_built.clear()
    e2urec.unlearn(job, other, args, "fast", store=store)
    assert len(list((store / "boundary").glob("*.safetensors"))) == 2 and set(rows_built) & set(prep.index("retain").tolist())


def test_auto_scope_is_the_cached_boundary_for_a_request_only():
    """`--lora-scope auto` (the default): the cached boundary with a LoRA augmented model for a
    deletion request on the fast path of t5/bart; the authors' layout everywhere else; an
    explicit scope or aug mode is kept as given."""
    from e2urec_fast.models.boundary import aug_is_lora, resolve_scope

    req = dict(forget_users="1,2")
    for fam, want in (("t5", "decoder"), ("bart", "decoder"), ("causal", "all"), ("masked", "all")):
        c = cfg(**req)
        s = resolve_scope(c, fam)
        assert str(s) == want and aug_is_lora(c, s) == (want == "decoder")
    bench = cfg()
    assert str(resolve_scope(bench, "t5")) == "all" and not aug_is_lora(bench, resolve_scope(bench, "t5"))
    assert str(resolve_scope(cfg(**req), "t5", impl="reference")) == "all"
    for off in (dict(no_teacher_cache=True), dict(compile=True)):  # what a cached boundary cannot go with
        assert str(resolve_scope(cfg(**req, **off), "t5")) == "all"
    c = cfg(**req, lora_scope="all")
    assert str(resolve_scope(c, "t5")) == "all" and not aug_is_lora(c, resolve_scope(c, "t5"))
    c = cfg(lora_scope="decoder")  # explicit decoder keeps the full augmented model unless asked
    assert str(resolve_scope(c, "t5")) == "decoder" and not aug_is_lora(c, resolve_scope(c, "t5"))
    assert aug_is_lora(cfg(lora_scope="decoder", aug_mode="lora"), resolve_scope(c, "t5"))
    assert aug_is_lora(cfg(aug_mode="lora"), resolve_scope(bench, "t5"))


def test_frozen_fingerprint_follows_the_encoder_only(tmp_path):
    """A decoder-scope store is keyed by what the states depend on: a model whose decoder
    alone changed (a merged decoder adapter) shares it; an encoder change does not."""
    from e2urec_fast.models.boundary import frozen_fingerprint

    job = tiny_job(tmp_path, n_users=8, per_user=6)
    a, scope = job.fresh(), parse_scope("decoder")
    b = a.clone()
    with torch.no_grad():
        b.model.get_decoder().block[0].layer[0].SelfAttention.v.weight.add_(0.01)
    assert a.fingerprint() != b.fingerprint() and frozen_fingerprint(a, scope) == frozen_fingerprint(b, scope)
    with torch.no_grad():
        b.model.get_encoder().block[0].layer[0].SelfAttention.v.weight.add_(0.01)
    assert frozen_fingerprint(a, scope) != frozen_fingerprint(b, scope)
    assert frozen_fingerprint(a, parse_scope("all")) == a.fingerprint()


def test_the_original_is_evaluated_from_its_states_and_hands_d_f_to_the_student(tmp_path, monkeypatch):
    """A request on the cached boundary evaluates the Original from its frozen states (its full
    forward's logits), building D_f's once into the output's cache, where the student's
    boundary stage reads them back instead of building them again."""
    from e2urec_fast.evaluate import Evaluator
    from e2urec_fast.methods.states import state_source

    job = tiny_job(tmp_path, n_users=16, per_user=10)
    orig, store, local = job.fresh(), tmp_path / "store", job.out / "cache" / "boundary.safetensors"
    args = cfg(student_steps=4, forget_epochs=1, quiet=True, lora_scope="decoder", aug_mode="lora")
    ev = Evaluator(job)
    m_full, f_full = ev(orig, "Original")
    m_st, f_st = ev(orig, "Original", states=state_source(job, orig, parse_scope("decoder"), args, store, local=local))
    assert torch.allclose(f_full, f_st, atol=1e-5) and abs(m_full["auc"] - m_st["auc"]) < 1e-6
    assert local.is_file() and len(list((store / "boundary").glob("*.safetensors"))) == 1  # D_f local, test in the store
    rows_built = []
    real = states_mod.build_table
    monkeypatch.setattr(states_mod, "build_table", lambda bb_, model, seqs, idx, *a, **k: rows_built.extend(idx.tolist())
                        or real(bb_, model, seqs, idx, *a, **k))
    _, info = e2urec.unlearn(job, copy.deepcopy(orig), args, "fast", store=store)
    assert not set(rows_built) & set(job.prepared.index("forget_all").tolist())  # D_f read back, not built
    assert info["teacher_cache"]["boundary"]["rows"] > 0 and not local.exists()  # D_f's states go with the run
