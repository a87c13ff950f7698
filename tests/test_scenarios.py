"""Issue #25: the same-pool holdout D_h, the shilling scenario, forget quality, the attacks
against hand-computed values, and the gaps a method closes over seeds."""

import json

import numpy as np
import pytest
import torch

from conftest import make_ml1m
from e2urec_fast.audit import audit, forget_quality, mia_auc, weak_setup
from e2urec_fast.config import from_fields
from e2urec_fast.data import prepare
from e2urec_fast.data.loaders import load_ml1m
from e2urec_fast.data.samples import build_samples, split_samples
from e2urec_fast.data.scenarios import filler_stars, inject_shilling, probe_samples
from e2urec_fast.errors import UserError


def _prep(tmp_path, **kw):
    d = make_ml1m(tmp_path / "ml1m", n_users=40, per_user=14)
    return prepare("ml-1m", d, tmp_path / "cache", max_samples=None, forget_ratio=0.25, seed=3, **kw)


def test_holdout_is_in_no_training_rows_nor_the_tokenizer(tmp_path):
    from e2urec_fast.methods.sisa import shards

    p0, p = _prep(tmp_path), _prep(tmp_path, holdout_ratio=0.2)
    assert torch.equal(p0.forget, p.forget)  # the forget set is the same with or without a holdout
    h = p.index("holdout")
    users_h = set(p.users[h].tolist())
    assert len(users_h) == int(0.2 * p.manifest["counts"]["train_users"]) and len(h) == p.manifest["counts"]["holdout"]
    assert not users_h & set(p.users[p.index("forget")].tolist())
    for part in ("train", "retain", "forget", "forget_all"):  # Original, Retrain, the student, the augmented model
        assert not set(p.index(part).tolist()) & set(h.tolist()), part
    for shard in shards(p, 3, 0, "random") + shards(p, 3, 0, "authors"):  # SISA / RecEraser
        assert not set(shard.tolist()) & set(h.tolist())
    held_prompts = {p.prompts[i] for i in h.tolist()}
    assert not held_prompts & set(p.pretrain_prompts())  # nor the preset tokenizer's corpus
    assert len(p.index("train")) == len(p0.index("train")) - len(h)
    assert p.pretrain_key() != p0.pretrain_key() and p.forget_key() != p0.forget_key()
    q = prepare("ml-1m", tmp_path / "ml1m", tmp_path / "cache", max_samples=None, forget_ratio=0.25, seed=3, holdout_ratio=0.2)
    assert torch.equal(q.holdout, p.holdout)  # read back from the cache


def test_evaluator_uses_the_holdout_as_non_members(tmp_path):
    from e2urec_fast.evaluate import Evaluator

    class J:
        prepared = _prep(tmp_path, holdout_ratio=0.2)

    assert Evaluator(J).nonmembers == "holdout"
    J.prepared = _prep(tmp_path)
    assert Evaluator(J).nonmembers == "test"


def test_shilling_is_deterministic_and_stays_in_train(tmp_path):
    d = make_ml1m(tmp_path / "ml1m", n_users=40, n_items=30, per_user=14)
    inter = load_ml1m(d)
    sp = split_samples(build_samples(inter), None, 0.25, 3)
    fake, info = inject_shilling(load_ml1m(d), sp.train, sp.test, seed=5)
    fake2, info2 = inject_shilling(load_ml1m(d), sp.train, sp.test, seed=5)
    assert info == info2 and [(s.user, s.item, s.stars, s.ts) for s in fake] == [(s.user, s.item, s.stars, s.ts) for s in fake2]
    assert min(info["fake_users"]) > max(inter.users)
    assert {s.user for s in fake} == set(info["fake_users"]) and len(fake) == 20 * (20 + 5 - 5)
    t_lo, t_hi = min(s.ts for s in sp.train), max(s.ts for s in sp.train)
    assert all(t_lo <= s.ts <= t_hi for s in fake)
    assert all(s.stars == 5 for s in fake if s.item in info["targets"])
    p = prepare("ml-1m", d, tmp_path / "cache", max_samples=None, forget_ratio=0.25, seed=5, holdout_ratio=0.2,
                scenario="shilling")
    fake_ids = torch.tensor(info["fake_users"])
    is_fake = torch.isin(p.users, fake_ids)
    assert torch.equal(p.forget, is_fake)  # D_f = exactly the fake users' samples, all in train
    assert not is_fake[p.index("valid")].any() and not is_fake[p.index("test")].any()
    assert not is_fake[p.index("holdout")].any() and p.manifest["scenario"]["targets"] == info["targets"]
    assert json.loads((p.folder / "manifest.json").read_text())["scenario"]["fake_users"] == info["fake_users"]
    # the probes: every real test user's latest test prompt, asked about each target; no fake user
    test_users = set(p.users[p.index("test")].tolist())
    assert len(p.probes) == len(test_users) * len(info["targets"]) == p.manifest["scenario"]["probes"]
    assert {q["user"] for q in p.probes} == test_users and not test_users & set(info["fake_users"])
    assert [q["item"] for q in p.probes[:len(info["targets"])]] == info["targets"]
    again = prepare("ml-1m", d, tmp_path / "cache", max_samples=None, forget_ratio=0.25, seed=5, holdout_ratio=0.2,
                    scenario="shilling")  # read back, hash-checked
    assert again.probes == p.probes
    (p.folder / "probes.jsonl").write_text("tampered\n")
    with pytest.raises(ValueError, match="probe hash"):
        from e2urec_fast.data.prepare import _load
        _load(p.folder)


def test_average_attack_fillers_and_probes_by_hand():
    import random

    from e2urec_fast.data.samples import Sample

    rng = random.Random(0)
    draws = [filler_stars([3, 4, 5, 4], rng) for _ in range(4000)]  # N(4, 0.707), rounded, clipped to 1..5
    # by hand, z = (x - 4) / 0.707: P(5) = P(z >= 0.707) = 0.240, P(4) = 0.520, P(3) = 0.223, P(2) = 0.017:
    # mean 3.983, P(<= 3) = 0.240 (not every filler is a 'yes': a model must learn the targets)
    assert set(draws) <= {2, 3, 4, 5} and abs(np.mean(draws) - 3.983) < 0.03
    assert abs(np.mean(np.array(draws) <= 3) - 0.240) < 0.02
    assert filler_stars([2], random.Random(1)) == 2  # one rating: no spread
    s = lambda u, i, ts: Sample(u, i, 4, 1, ts, 5, [(9, 3)] * 5)  # noqa: E731
    test = [s(1, 10, 100), s(2, 11, 50), s(1, 12, 200), s(2, 13, 40)]
    got = probe_samples(test, [7, 8])
    assert [(q.user, q.item, q.ts, q.label) for q in got] == [(1, 7, 200, 0), (1, 8, 200, 0), (2, 7, 50, 0), (2, 8, 50, 0)]


def test_forget_quality_and_attacks_by_hand():
    # KS: a = [1, 2, 3], b = [4, 5, 6]: D = 1, exact two-sided p = 2 / C(6, 3) = 0.1
    assert forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert forget_quality([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    # LOSS attack: members' losses [0.1, 0.5], non-members' [0.3, 0.9]: pairs (m < n) 3 of 4 -> 0.75
    assert mia_auc(-np.array([0.1, 0.5]), -np.array([0.3, 0.9])) == pytest.approx(0.75)
    losses = {"Original": (np.array([0.1, 0.2, 0.3]), np.array([0.25, 0.9, 0.95])),
              "Retrain": (np.array([0.4, 0.5, 0.6]), np.array([0.35, 0.8, 0.45]))}
    a = audit(losses, reference="Retrain")
    # Original's LOSS attack: member below non-member in 3 + 3 + 2 of 9 pairs
    assert a["Original"]["loss_auc"] == pytest.approx(8 / 9)
    # calibrated: members 0.3, 0.3, 0.3; non-members 0.1, -0.1, -0.5 -> every member above: 1.0
    assert a["Original"]["ref_auc"] == pytest.approx(1.0) and a["Retrain"]["ref_auc"] is None
    # Retrain's: 0.4 below 0.8 and 0.45, 0.5 and 0.6 below 0.8 -> 4 of 9
    assert a["Retrain"]["loss_auc"] == pytest.approx(4 / 9)
    assert a["Original"]["privleak"] == pytest.approx(100 * (8 / 9 - 4 / 9) / (4 / 9))
    # forget quality: Original's D_f losses all below Retrain's (D = 1, n = m = 3): p = 0.1
    assert a["Retrain"]["forget_quality"] == pytest.approx(1.0) and a["Original"]["forget_quality"] == pytest.approx(0.1)
    assert weak_setup(a) and not weak_setup({"Original": {"forget_quality": 0.01}})


def test_gap_closed_over_seeds():
    from e2urec_fast.seeds import aggregate

    def rep(o, e, r, t):
        return dict(rows=[dict(method="Original", kind="reference", jsd=o, mia_loss_auc=0.7, target_p_yes=t[0]),
                          dict(method="Retrain", kind="reference", jsd=0.0, mia_loss_auc=0.5, target_p_yes=t[1]),
                          dict(method="E2URec", kind="unlearn", jsd=e, mia_loss_auc=r, target_p_yes=t[2])])

    agg = aggregate([rep(0.04, 0.01, 0.6, (0.8, 0.4, 0.5)), rep(0.02, 0.02, 0.55, (0.7, 0.5, 0.7))], [1, 2])
    g = agg["gap_closed"]["E2URec"]
    assert g["jsd"]["values"] == pytest.approx([0.75, 0.0])
    assert g["mia_loss_auc"]["values"] == pytest.approx([0.5, 0.75])
    assert g["target_p_yes"]["values"] == pytest.approx([0.75, 0.0])
    assert agg["original_vs_retrain"]["mia_loss_auc"]["values"] == pytest.approx([0.2, 0.2])
    assert agg["original_vs_retrain"]["target_p_yes"]["values"] == pytest.approx([0.4, 0.2])


def test_scenario_recipe_fills_only_what_is_not_given():
    c = from_fields(scenario="memorize")
    assert (c.data.max_samples, c.finetune.epochs, c.finetune.patience, c.data.holdout_ratio) == (3000, 15, 15, 0.4)
    c = from_fields(scenario="memorize", epochs=4)
    assert (c.data.max_samples, c.finetune.epochs) == (3000, 4)
    assert from_fields().finetune.epochs == 3


def test_holdout_users_errors(tmp_path):
    from e2urec_fast.checks import check

    with pytest.raises(UserError, match="--holdout-users belongs to a deletion request"):
        check(from_fields(holdout_users="1,2", out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="share user id"):
        check(from_fields(holdout_users="1,2", forget_users="2,3", out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="--holdout-users: duplicate"):
        check(from_fields(holdout_users="1,1", forget_users="2,3", out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="--scenario shilling is a benchmark"):
        check(from_fields(scenario="shilling", forget_users="2,3", out=str(tmp_path / "o")))


def test_malformed_previous_report_and_history_are_one_line(tmp_path):
    """#27 item 3: a truncated or non-object --previous report.json, and e2urec.json entries of
    the wrong type, were tracebacks."""
    from e2urec_fast.models.export import read_manifest
    from e2urec_fast.request import lineage_of

    prev = tmp_path / "prev"
    prev.mkdir()
    for text, msg in (('{"request": {"lin', "unreadable JSON"), ("[1, 2]", "not a JSON object"),
                      ('{"request": "x"}', "no request history")):
        (prev / "report.json").write_text(text)
        with pytest.raises(UserError, match=msg):
            lineage_of(from_fields(previous=str(prev), forget_users="1", out=str(tmp_path / "o")))
    (prev / "e2urec.json").write_text(json.dumps({"requests": ["not an object"]}))
    with pytest.raises(UserError, match="e2urec.json: unreadable request history"):
        read_manifest(prev)
    (prev / "e2urec.json").write_text(json.dumps({"requests": [{"users_sha256": "abc"}]}))
    with pytest.raises(UserError, match="users_sha256"):
        read_manifest(prev)


def test_a_truncated_seed_report_runs_that_seed_again(tmp_path, capsys):
    from e2urec_fast.seeds import run_seeds, seed_configs

    cfg = from_fields(seeds="1,2", out=str(tmp_path / "o"), quiet=True)
    ran = []

    def run_one(sub):
        ran.append(sub.run.seed)
        return dict(rows=[dict(method="Original", kind="reference", auc=0.7, jsd=0.02)], settings=dict(dataset="ml-100k",
                    backbone="tiny", seed=sub.run.seed), env=dict(device="cpu", git="x"), total_s=1.0)

    run_seeds(cfg, run_one)
    assert ran == [1, 2]
    (tmp_path / "o" / "seed-2" / "report.json").write_text('{"rows": [')  # cut while written
    ran.clear()
    run_seeds(cfg, run_one)
    assert ran == [2] and "unreadable; seed 2 runs again" in capsys.readouterr().err
    assert len(seed_configs(cfg)) == 2
