"""Baselines and ablations: each loss is the one specified, each method runs a few steps on a
tiny model, the shards are what the methods promise."""

import pytest
import torch

from e2urec_fast.evaluate import predict_logits
from e2urec_fast.methods import badt, e2urec, neggrad, negkl, receraser, sisa
from e2urec_fast.methods.common import Ensemble, paired_batches, retain_batches
from e2urec_fast.models.scoring import full_logits
from e2urec_fast.train import TrainConfig
from helpers import cfg, tiny_job


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    job = tiny_job(tmp_path_factory.mktemp("base"))
    orig = job.fresh()
    b = job.batcher(batch_size=8, bucket=False)
    rb = b.make(job.prepared.index("retain")[:8].tolist())
    fb = b.make(job.prepared.index("forget")[:8].tolist())
    return job, orig, rb, fb


def args(**kw):
    return cfg(**kw)


@torch.no_grad()
def answer_ce(bb, model, b, labels):
    """The target cross-entropy written out: targets of `labels`, mean over non-pad target tokens."""
    lg, _ = full_logits(bb, model, b.ids, b.mask, labels)
    tot, n = 0.0, 0
    for i, y in enumerate(labels.tolist()):
        tgt = bb.targets[y]
        lp = torch.log_softmax(lg[i, : len(tgt)].double(), -1)
        tot -= float(lp[torch.arange(len(tgt)), tgt].sum())
        n += len(tgt)
    return tot / n


def test_neggrad_forget_term_enters_negatively(setup):
    job, orig, rb, fb = setup
    orig.model.eval()
    t = neggrad.loss(orig, rb, fb, 0.5)
    ce_r, ce_f = answer_ce(orig, orig.model, rb, rb.labels), answer_ce(orig, orig.model, fb, fb.labels)
    assert float(t["loss"].detach()) == pytest.approx(ce_r - 0.5 * ce_f, rel=1e-5)
    # the gradient is the retain gradient minus w times the forget gradient
    p = orig.model.lm_head.weight
    p.requires_grad_(True)
    g = torch.autograd.grad(neggrad.loss(orig, rb, fb, 0.5)["loss"], p)[0]
    g_r = torch.autograd.grad(neggrad.loss(orig, rb, fb, 0.0)["loss"], p)[0]
    g_f = torch.autograd.grad(neggrad.loss(orig, rb, fb, 0.0)["ce_f"], p)[0]
    p.requires_grad_(False)
    assert torch.allclose(g, g_r - 0.5 * g_f, atol=1e-6)


def test_badt_trains_on_flipped_labels(setup):
    job, orig, rb, fb = setup
    orig.model.eval()
    t = badt.loss(orig, rb, fb, 0.5)
    flipped = 1 - fb.labels
    assert float(t["loss"]) == pytest.approx(answer_ce(orig, orig.model, rb, rb.labels) + 0.5 * answer_ce(orig, orig.model, fb, flipped),
                                             rel=1e-5)
    assert float(t["ce_flip"]) != pytest.approx(answer_ce(orig, orig.model, fb, fb.labels), rel=1e-3)


def test_negkl_is_retain_kl_minus_forget_kl(setup):
    job, orig, rb, fb = setup
    orig.model.eval()
    other = job.fresh()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    other.model.eval()
    t = negkl.loss(other, orig.model, rb, fb)

    def kl(b):  # -sum p log(q + 1e-12), mean over every target position (the authors' compute_kl)
        s, _ = full_logits(other, other.model, b.ids, b.mask, b.labels)
        o, _ = full_logits(other, orig.model, b.ids, b.mask, b.labels)
        p, q = torch.softmax(o.double(), -1), torch.softmax(s.double(), -1)
        return float(-(p * torch.log(q + 1e-12)).sum(-1).mean())

    # fp32 against fp64 of a difference of two similar terms: absolute tolerance
    assert float(t["loss"]) == pytest.approx(kl(rb) - kl(fb), abs=1e-5)
    assert float(t["kl_r"]) == pytest.approx(kl(rb), rel=1e-5)
    tw = negkl.loss(other, orig.model, rb, fb, 0.2)  # weighted like NegGrad and Bad-T (--neg-weight)
    assert float(tw["loss"]) == pytest.approx(kl(rb) - 0.2 * kl(fb), abs=1e-5)
    assert float(t["kl_f"]) > 0


@pytest.mark.parametrize("mod", [neggrad, negkl, badt])
def test_full_finetune_baselines_run(setup, mod):
    job, orig, _, _ = setup
    bb, info = mod.run(job, orig, args(baseline_steps=3, baseline_lr=1e-3))
    assert info["steps"] == 3 and info["time_s"] > 0 and "diverged" not in info
    assert info["trainable_params"] == sum(p.numel() for p in orig.model.parameters())
    changed = any(not torch.equal(a, b) for a, b in zip(bb.model.parameters(), orig.model.parameters()))
    assert changed and not any(p.requires_grad for p in bb.model.parameters())


def test_diverging_baseline_is_reported_not_raised(setup):
    job, orig, _, _ = setup
    _, info = neggrad.run(job, orig, args(baseline_steps=50, baseline_lr=1e30, neg_weight=50.0))
    assert "loss became" in info["diverged"]


def test_paired_schedule_zips_retain_and_forget(setup):
    job = setup[0]
    got = list(paired_batches(job, 2, 9, bucket=True))
    assert [k for k, _, _ in got] == ["f", "f"] + ["j"] * 7
    f_set = set(job.prepared.index("forget").tolist())
    for _, rb, fb in got:
        assert set(fb.idx.tolist()) <= f_set and (rb is None or not set(rb.idx.tolist()) & f_set)
    assert [k for k, _, _ in paired_batches(job, 0, 5, True, retain=False)] == ["f"] * 5
    assert [k for k, rb, fb in retain_batches(job, 5, True) if fb is None] == ["r"] * 5


def test_sisa_shards(setup):
    job = setup[0]
    prep = job.prepared
    retain = set(prep.index("retain").tolist())
    for scheme in ("authors", "balanced"):
        parts = sisa.shards(prep, 4, 7, scheme)
        allx = torch.cat(parts)
        assert len(set(allx.tolist())) == len(allx)  # disjoint
        assert set(allx.tolist()) == retain  # train minus D_f
        assert [p.tolist() for p in sisa.shards(prep, 4, 7, scheme)] == [p.tolist() for p in parts]  # seeded
    parts = sisa.shards(prep, 4, 7, "balanced")
    assert max(map(len, parts)) - min(map(len, parts)) < 0.5 * len(allx) / 4 + 8


def test_sisa_shards_as_the_authors_draw_them(setup):
    """split_ml-1m.ipynb: np.random.seed(42); df['shared'] = np.random.choice([0,1,2,3], size=len(df)) over the kept
    frame (train, valid, test in time order); shard j trains on the train rows drawn j, minus the forgotten users."""
    import numpy as np

    prep = setup[0].prepared
    np.random.seed(42)
    shared = np.random.choice([0, 1, 2, 3], size=len(prep.labels))
    retain = set(prep.index("retain").tolist())
    want = [[i for i in prep.index("train").tolist() if shared[i] == j and i in retain] for j in range(4)]
    assert [p.tolist() for p in sisa.shards(prep, 4, 123, "authors")] == want


def test_receraser_groups_as_the_authors_cut_them(setup):
    """split_ml-1m.ipynb: train users in order of first appearance, random.seed(42); random.shuffle; the first 20% are
    forgotten, the rest cut into four equal slices; a group trains on its users' train rows minus D_f."""
    import random

    prep = setup[0].prepared
    tr = prep.index("train").tolist()
    users = list(dict.fromkeys(prep.users[tr].tolist()))
    random.seed(42)
    random.shuffle(users)
    n_f = int(0.25 * len(users))  # tiny_job's forget ratio
    assert set(users[:n_f]) == set(prep.users[prep.index("forget")].tolist())  # the same shuffle made the forget split
    retain_users = users[n_f:]
    n = len(retain_users)
    for j, g in enumerate(receraser.user_groups(prep, 4, "authors")):
        members = set(retain_users[int(n * j / 4) : int(n * (j + 1) / 4)])
        assert g.tolist() == [i for i in tr if int(prep.users[i]) in members]


def test_receraser_groups_by_user(setup):
    job = setup[0]
    prep = job.prepared
    for scheme in ("authors", "balanced"):
        groups = receraser.user_groups(prep, 3, scheme)
        users = [set(prep.users[g].tolist()) for g in groups]
        assert all(not (a & b) for i, a in enumerate(users) for b in users[i + 1 :])  # a user lives in one shard
        assert set(torch.cat(groups).tolist()) == set(prep.index("retain").tolist())
        assert not set(prep.users[prep.index("forget")].tolist()) & set().union(*users)
    per_user = torch.unique(prep.users[prep.index("retain")], return_counts=True)[1]
    loads = [len(g) for g in receraser.user_groups(prep, 3, "balanced")]
    assert max(loads) - min(loads) <= int(per_user.max())  # greedy balance


def test_ensemble_mean_and_zero_attention_agree(setup):
    job, orig, _, _ = setup
    m2 = job.fresh()
    with torch.no_grad():
        for p in m2.model.parameters():
            p.mul_(1.1)
    idx = job.prepared.index("test")[:6]
    l1, l2 = (predict_logits(orig, m.model, job.seqs, idx, full=True) for m in (orig, m2))
    mean = predict_logits(orig, Ensemble([orig.model, m2.model]), job.seqs, idx, full=True)
    assert torch.allclose(mean, (l1 + l2) / 2, atol=1e-5)
    att = receraser.ShardAttention(orig.model.config.d_model)  # q = 0: uniform weights
    same = predict_logits(orig, Ensemble([orig.model, m2.model], att), job.seqs, idx, full=True)
    assert torch.allclose(same, mean, atol=1e-5)
    trained = receraser.train_attention(orig, [orig.model, m2.model], job.seqs, job.prepared.index("retain"),
                                        job.prepared.labels, epochs=20)
    h = torch.randn(2, 5, orig.model.config.d_model)
    w = trained(h)
    assert torch.allclose(w.sum(0), torch.ones(5), atol=1e-6) and float(trained.q.abs().sum()) > 0


def test_sharded_methods_run(setup, tmp_path):
    job = setup[0]
    cfg = TrainConfig(lr=1e-3, batch_size=8, epochs=1)
    bb, info = sisa.run(job, cfg, tmp_path, k=2)
    assert len(info["shards"]) == 2 and info["time_s"] > 0 and isinstance(bb.model, Ensemble)
    bb, info = receraser.run(job, cfg, tmp_path, k=2, agg="attention")
    assert info["aggregation"] == "attention" and info["aggregator_s"] > 0
    lg = predict_logits(bb, bb.model, job.seqs, job.prepared.index("test")[:4])
    assert lg.shape == (4, 2) and torch.isfinite(lg).all()


def test_ablation_losses(setup):
    t = dict(ce_r=torch.tensor(1.0), kl_r=torch.tensor(2.0), kl_f=torch.tensor(4.0))
    assert float(e2urec.combine(t, 0.6)) == pytest.approx(0.6 * 3 + 0.4 * 4)
    assert float(e2urec.combine({k: t[k] for k in ("ce_r", "kl_r")}, 0.6)) == pytest.approx(3.0)  # w/o L_FGT
    assert float(e2urec.combine({"kl_f": t["kl_f"]}, 0.6)) == pytest.approx(4.0)  # w/o L_REM


def test_authors_settings_for_the_baselines(setup, monkeypatch):
    """--authors-settings runs the baselines as train_ga.sh / train_rl.sh: weight 0.2, lr 5e-5, 3000 / 2400 steps,
    AdamW weight decay 0.01 (torch's default, which the scripts keep) and no gradient clipping; without it ours."""
    from e2urec_fast.methods import common

    job, orig = setup[0], setup[1]
    seen = {}

    def fake_fit(model, batches, step, cfg, **kw):
        seen["cfg"] = cfg
        raise common.UserError("stop here")  # the settings are what is checked

    monkeypatch.setattr(common, "fit", fake_fit)
    for name, want in (("authors", dict(lr=5e-5, max_steps=2400, weight_decay=0.01, grad_clip=None, w=0.2)),
                       ("default", dict(lr=1e-4, max_steps=200, weight_decay=0.0, grad_clip=1.0, w=0.5))):
        c = cfg(name)
        with pytest.raises(common.UserError):
            badt.run(job, orig, c)
        tc = seen["cfg"]
        assert (tc.lr, tc.max_steps, tc.weight_decay, tc.grad_clip, c.baselines.neg_weight) == tuple(want.values())
        with pytest.raises(common.UserError):
            neggrad.run(job, orig, c)
        assert seen["cfg"].max_steps == (3000 if name == "authors" else 200)
