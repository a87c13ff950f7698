"""Deletion requests through the API: named users, the user's own Original, sequential
requests, outputs that load in PEFT and transformers, the audit, and fail-fast checks."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import make_ml1m
from e2urec_fast import UserError, forget
from e2urec_fast.audit import audit, mia_auc
from e2urec_fast.data import prepare
from e2urec_fast.data.prepare import SPLIT_TRAIN
from e2urec_fast.evaluate import ctr_metrics, p_yes, predict_logits
from e2urec_fast.models import load_backbone
from e2urec_fast.unlearn import main

SMALL = dict(dataset="ml-1m", max_samples=None, epochs=1, batch_size=8, student_steps=8, forget_epochs=0, quiet=True, seed=42)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic ML-1M, our Original handed out as original/, and two requests in a row."""
    tmp = tmp_path_factory.mktemp("req")
    data = make_ml1m(tmp / "ml1m", n_users=16, per_user=14)
    common = dict(SMALL, data_dir=str(data), cache_dir=str(tmp / "cache"))
    base = forget(tmp / "base", methods="original", **common)
    prep = prepare("ml-1m", data, tmp / "cache", max_samples=None, forget_ratio=0.2, seed=42)
    train_users = sorted(set(prep.users[prep.split == SPLIT_TRAIN].tolist()))
    r1 = forget(tmp / "r1", original=str(base.original), backbone="tiny", forget_users=train_users[:2], merge=True, **common)
    r2 = forget(tmp / "r2", previous=str(tmp / "r1"), forget_users=[train_users[2]], no_retrain=True, merge=True, **common)
    return dict(tmp=tmp, data=data, common=common, base=base, r1=r1, r2=r2, prep=prep, train_users=train_users)


def _auc_of(model, bb, prep, seqs):
    idx = prep.index("test")
    return ctr_metrics(prep.labels[idx].numpy(), p_yes(predict_logits(bb, model, seqs, idx, 8)))["auc"]


def test_request_forgets_exactly_the_named_users(world):
    r1, prep, users = world["r1"], world["prep"], world["train_users"]
    c = r1.report["counts"]
    tr = prep.split == SPLIT_TRAIN
    want = int((tr & torch.isin(prep.users, torch.tensor(users[:2]))).sum())
    assert c["forget_users"] == 2 and c["forget"] == want and c["retain"] == int(tr.sum()) - want
    assert [r["method"] for r in r1.rows] == ["CTR floor (LogReg)", "Original", "Retrain", "E2URec"]
    assert r1.metrics("Original")["time_s"] is None  # the user's Original is evaluated, not trained
    assert r1.report["request"]["original"] == str(world["base"].original)
    assert len(r1.report["request"]["requests"]) == 1 and r1.report["request"]["requests"][0]["n_users"] == 2


def test_adapter_loads_in_peft_from_its_base_name(world):
    """PEFT's documented way: the base from adapter_config's base_model_name_or_path; no manual weights."""
    pytest.importorskip("peft")
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSeq2SeqLM

    r1 = world["r1"]
    cfg = PeftConfig.from_pretrained(str(r1.adapter))
    assert cfg.base_model_name_or_path == str(world["base"].original)
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(cfg.base_model_name_or_path), str(r1.adapter))
    bb = load_backbone(cfg.base_model_name_or_path)
    seqs = world["prep"].tokens(bb.tokenizer, bb.tokenizer_key(), suffix=bb.suffix)
    assert abs(_auc_of(model, bb, world["prep"], seqs) - r1.metrics("E2URec")["auc"]) < 1e-6
    # ... and the merged folder, standalone, with transformers alone
    merged = AutoModelForSeq2SeqLM.from_pretrained(str(r1.merged))
    assert abs(_auc_of(merged, bb, world["prep"], seqs) - r1.metrics("E2URec")["auc"]) < 1e-6
    # the adapter changed the model (a test that passes with an all-zero adapter proves nothing)
    assert abs(_auc_of(bb.model, bb, world["prep"], seqs) - r1.metrics("Original")["auc"]) < 1e-6
    with torch.no_grad():
        ids = torch.stack([seqs[i][:8] for i in world["prep"].index("test")[:4].tolist()])
        a = bb.model(input_ids=ids, decoder_input_ids=bb.prefix.expand(4, -1)).logits
        b = merged(input_ids=ids, decoder_input_ids=bb.prefix.expand(4, -1)).logits
    assert not torch.allclose(a, b, atol=1e-6)


def test_audit_with_and_without_retrain(world):
    r1, r2 = world["r1"], world["r2"]
    a1 = r1.audit
    assert set(a1) == {"Original", "Retrain", "E2URec"} and r1.report["audit"]["reference"] == "Retrain"
    assert a1["Retrain"]["privleak"] == 0.0 and a1["Retrain"]["ref_auc"] is None
    assert a1["E2URec"]["ref_auc"] is not None and 0 <= a1["E2URec"]["loss_auc"] <= 1
    assert r1.metrics("E2URec")["mia_loss_auc"] == a1["E2URec"]["loss_auc"]
    # --no-retrain: no JSD/L2, no calibrated score, and the report says so
    assert set(r2.audit) == {"Original", "E2URec"} and r2.report["audit"]["reference"] is None
    assert r2.metrics("E2URec")["jsd"] is None and r2.audit["E2URec"]["ref_auc"] is None
    assert "--no-retrain" in (r2.out / "report.md").read_text()


def test_audit_scores():
    # members with lower loss than non-members: the LOSS attack sees them (AUC 1), a
    # reference with the same losses calibrates it away (every score 0: AUC 0.5)
    lf, ln = np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0])
    assert mia_auc(-lf, -ln) == 1.0
    out = audit({"M": (lf, ln), "R": (lf.copy(), ln.copy())}, reference="R")
    assert out["M"]["loss_auc"] == 1.0 and out["M"]["ref_auc"] == 0.5 and out["M"]["privleak"] == 0.0
    out = audit({"M": (lf, ln), "R": (ln.mean() + lf * 0, ln)}, reference="R")
    assert out["R"]["loss_auc"] == 0.5 and out["M"]["privleak"] == pytest.approx(100.0)


def test_sequential_request(world):
    r1, r2, prep, users = world["r1"], world["r2"], world["prep"], world["train_users"]
    reqs = r2.report["request"]["requests"]
    assert [q["n_users"] for q in reqs] == [2, 1]
    c = r2.report["counts"]
    tr = prep.split == SPLIT_TRAIN
    gone = tr & torch.isin(prep.users, torch.tensor(users[:3]))
    assert c["earlier_forgotten_users"] == 2 and c["retain"] == int((tr & ~gone).sum()) and c["forget_all"] == int(gone.sum())
    assert r2.report["forgotten_users"] == 3
    rec = json.loads((r2.out / "private" / "forgotten_users.json").read_text())  # the operator's record, cumulative
    assert rec["users"] == [str(u) for u in users[:3]] and rec["this_request"] == [str(users[2])]
    # the D_r teacher rows of request 1 were reused (minus the newly forgotten user's), not recomputed
    imp = r2.report["details"]["retain_cache_imported"]
    assert imp["rows"] > 0 and imp["source"].startswith(str(r1.out))
    assert r2.report["details"]["e2urec_fast"]["teacher_cache"]["retain"] in ("reused", "extended")
    for r in (world["r1"], r2):  # a request on a t5 Original: the cached boundary by default (--lora-scope auto)
        d = r.report["details"]["e2urec_fast"]
        assert d["lora_scope"] == "decoder" and d["aug_mode"] == "lora" and d["teacher_cache"]["boundary"]["rows"] > 0
    # the chain shares one store of encoder states: r2's base (r1's merged model) differs from r1's in the decoder only
    stores = list((world["tmp"] / "cache" / "boundary").glob("*.safetensors"))
    assert len(stores) == 1, stores
    # request 2's model descends from request 1's merged model; its remembering teacher is the first Original
    assert r2.report["request"]["original"] == str(r1.merged.resolve())
    assert json.loads((r2.merged / "e2urec.json").read_text())["root_original"] == str(world["base"].original)
    # a user forgotten before cannot be asked for again
    with pytest.raises(UserError, match=f"user id\\(s\\) {users[0]} were already forgotten"):
        forget(world["tmp"] / "r3", previous=str(r2.out), forget_users=[users[0]], no_retrain=True, **world["common"])
    assert not (world["tmp"] / "r3").exists()


def test_model_cards(world):
    """#27 item 8: adapter/ and merged/ carry a README.md in Hugging Face's model-card format."""
    from huggingface_hub import metadata_load

    r1, r2 = world["r1"], world["r2"]
    for folder, lib in ((r2.adapter, "peft"), (r2.merged, "transformers")):
        meta = metadata_load(folder / "README.md")
        assert meta["library_name"] == lib and "machine-unlearning" in meta["tags"]
        assert meta["base_model"] == str(r1.merged.resolve())  # request 2 descends from request 1's merged model
        text = (folder / "README.md").read_text()
        assert "| 1 |" in text and "| 2 |" in text  # both requests of the line
        assert "1 user** (" in text and "3 users in all" in text
        assert f"| E2URec | {r2.metrics('E2URec')['auc'] * 100:.2f} |" in text
        assert "LOSS" in text and "e2urec_fast.forget" in text  # the audit, and how it was made (the Python API here)
        assert "--forget-users" not in text or "<1 user>" in text  # counts in the card, never the ids (#38)


def _cli(world, tmp_path, capsys, *args, out=None):
    out = out or tmp_path / "o"
    rc = main(["--dataset", "ml-1m", "--data-dir", str(world["data"]), "--cache-dir", str(world["tmp"] / "cache"), "--out", str(out),
               "--max-samples", "1000", "--quiet", *args])
    return rc, capsys.readouterr().err.strip().splitlines()[-1], out


@pytest.mark.parametrize("args,msg", [
    (["--threads", "-1"], "--threads must be at least 1, got -1"),
    (["--device", "foo"], "--device 'foo': not a device"),
    (["--device", "meta"], "--device 'meta': only cpu, cuda"),
    (["--lora-r", "0"], "--lora-r must be at least 1"),
    (["--lora-dropout", "1.5"], "--lora-dropout must be in [0, 1)"),
    (["--patience", "-1"], "--patience must be at least 0"),
    (["--retain-weight", "1.2"], "--retain-weight must be in [0, 1]"),
    (["--alpha", "-1"], "--alpha must be >= 0"),
    (["--alpha", "inf"], "--alpha must be finite"),
    (["--lora-alpha", "nan"], "--lora-alpha must be finite"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--authors-settings", "--student-lr", "3e-4"], "--authors-settings conflicts with --student-lr"),
    (["--authors-settings", "--baseline-steps", "50"], "--authors-settings conflicts with --baseline-steps"),
    (["--no-retrain", "--methods", "retrain,e2urec"], "--no-retrain conflicts with --methods"),
    (["--no-retrain", "--methods", "e2urec,retrain2"], "--no-retrain conflicts with --methods naming retrain2"),
    (["--original", "/nonexistent/m", "--forget-users", "1"], "/nonexistent/m: --original: model folder not found"),
    (["--original", "{tmp}", "--forget-users", "1", "--no-retrain"], "--original: no config.json"),
    (["--original", "{orig}", "--forget-users", "1"], "needs the pretrained model your Original was fine-tuned from"),
    (["--original", "{orig}", "--no-retrain"], "name the users with --forget-users"),
    (["--forget-users", "1,x"], "user id 'x' is not an integer"),
    (["--forget-users", ""], "no user ids (the forget set is empty)"),
    (["--forget-users", "3,5,3"], "duplicate user id(s) 3"),
    (["--forget-users", "@/nonexistent/ids.txt"], "/nonexistent/ids.txt: --forget-users file not found"),
    (["--forget-users", "99999,88888"], "unknown user id(s) 99999, 88888"),
    (["--cache-dir", "/proc/e2urec_cache"], "--cache-dir is not writable"),
])
def test_fail_fast(args, msg, world, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{orig}", str(world["base"].original)) for a in args]
    rc, last, out = _cli(world, tmp_path, capsys, *args)
    assert rc == 2 and last.startswith("error: ") and msg in last, last
    assert not out.exists()


def test_cache_dir_or_out_that_is_a_file(world, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, last, _ = _cli(world, tmp_path, capsys, "--cache-dir", str(f))
    assert rc == 2 and last == f"error: {f}: --cache-dir exists and is not a folder"
    rc, last, _ = _cli(world, tmp_path, capsys, out=f / "sub")
    assert rc == 2 and "--out cannot be created" in last and f.read_text() == "x"


def test_forget_users_file_and_bad_ids(world, tmp_path, capsys):
    users, prep = world["train_users"], world["prep"]
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# erase requests of the week\n{users[0]}\n\n{users[1]}  # via support\nabc\n")
    rc, last, _ = _cli(world, tmp_path, capsys, "--forget-users", f"@{ids}")
    assert rc == 2 and last == f"error: {ids}:5: user id 'abc' is not an integer id"
    # a user with valid/test samples only, and a request that would leave D_r empty
    tr = prep.split == SPLIT_TRAIN
    only_eval = sorted(set(prep.users[~tr].tolist()) - set(prep.users[tr].tolist()))
    assert only_eval  # (the synthetic users rate in separate time windows: the last ones are in test only)
    rc, last, _ = _cli(world, tmp_path, capsys, "--forget-users", str(only_eval[0]))
    assert rc == 2 and f"user id(s) {only_eval[0]} have no train samples" in last
    all_ids = ",".join(map(str, users))
    rc, last, _ = _cli(world, tmp_path, capsys, "--forget-users", all_ids, "--methods", "original,e2urec", "--no-retrain",
                       "--epochs", "1")
    assert rc == 2 and "would leave D_r empty" in last


def test_failed_run_keeps_what_the_user_had(world, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "work").mkdir(parents=True)
    (out / "work" / "notes.txt").write_text("mine")
    (out / "keep.txt").write_text("mine too")
    rc, last, _ = _cli(world, tmp_path, capsys, "--forget-users", "99999", out=out)
    assert rc == 2
    assert (out / "work" / "notes.txt").read_text() == "mine" and (out / "keep.txt").read_text() == "mine too"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "work"]


def test_unwritable_out_found_before_training(world, tmp_path, capsys):
    if os.path.exists("/proc/self"):
        rc, last, _ = _cli(world, tmp_path, capsys, out=__import__("pathlib").Path("/proc/e2urec_out"))
        assert rc == 2 and "--out is not writable" in last


def test_bench_requests_dry_run(tmp_path):

    from conftest import bench_module

    mod = bench_module("bench_requests")
    assert mod.main(["--dry-run", "--work", str(tmp_path / "w"), "--cache-dir", str(tmp_path / "c")]) == 0
    res = json.loads((tmp_path / "w" / "requests.json").read_text())
    seq = res["sequential"]
    assert [q["request"] for q in seq] == [1, 2, 3, 4, 5] and all(q["wall_s"] > 0 for q in seq)
    assert all(q["imported_rows"] for q in seq[1:])  # every later request reused the D_r teacher rows
    assert res["sequential_final"]["jsd"] >= 0 and "loss_auc" in res["sequential_final"]["audit"]
    assert {"augment", "cache", "student", "evaluation", "audit"} <= set(res["five_users"]["stages"])
    assert [r["method"] for r in res["single"]["rows"]][1:] == ["Original", "Retrain", "E2URec"]


def test_bench_requests_floor_counts_the_rows_the_request_touched(world, tmp_path):
    """The floor is one forward over D_r's cached teacher rows, D_f, test and D_h: no row twice, none missing."""
    from safetensors import safe_open

    from conftest import bench_module
    from e2urec_fast.request import apply_holdout, apply_request

    mod = bench_module("bench_requests")
    users, t = world["train_users"][:2], world["tmp"]
    fl = mod._floor(world["base"].original, users, t / "r1", t / "cache", "ml-1m", world["data"], None, tmp_path / "s")
    prep = prepare("ml-1m", world["data"], t / "cache", max_samples=None, forget_ratio=0.2, seed=42)
    apply_request(prep, "ml-1m", users, set())
    apply_holdout(prep, "ml-1m", [])
    with safe_open(str(t / "r1" / "cache" / "teacher_retain.safetensors"), "pt") as f:
        r_idx = f.get_tensor("orig_r.idx")
    want = set(r_idx.tolist()) | set(prep.index("forget_all").tolist()) | set(prep.index("test").tolist())
    assert fl["retain_rows"] == len(r_idx) > 0 and fl["rows"] == len(want) and fl["seconds"] > 0
