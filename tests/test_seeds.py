"""Seeds as an axis: the statistics, and a two-seed benchmark run end to end."""

import json
import math

import pytest

from conftest import make_ml1m
from e2urec_fast import UserError, forget
from e2urec_fast.seeds import aggregate, markdown, summarize


def test_summarize_uses_student_t():
    s = summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3
    assert s["ci95"] == pytest.approx(4.302652729911275 / math.sqrt(3))  # t(0.975, df=2) * s / sqrt(n)
    assert summarize([5.0])["ci95"] is None and summarize([None, float("nan")]) is None


def _rep(o, r, e, n):
    row = lambda m, jsd, auc, kind="unlearn": dict(method=m, kind=kind, auc=auc, acc=0.5, logloss=0.6, jsd=jsd, l2=0.1, time_s=1.0)
    return dict(rows=[row("Original", o, 0.7, "reference"), row("Retrain", 0.0, 0.7, "reference"), row("E2URec", e, 0.7),
                      row("NegGrad", n, 0.6)])


def test_paired_differences_and_gap_closed():
    reps = [_rep(0.10, 0, 0.05, 0.08), _rep(0.20, 0, 0.10, 0.15), _rep(0.10, 0, 0.02, 0.06)]
    agg = aggregate(reps, [1, 2, 3])
    d = agg["paired_vs_e2urec"]["NegGrad"]["jsd"]
    assert d["values"] == pytest.approx([0.03, 0.05, 0.04]) and d["mean"] == pytest.approx(0.04)
    assert d["mean"] - d["ci95"] > 0  # resolved: NegGrad is farther from Retrain on every seed
    assert agg["jsd_gap_closed"]["values"] == pytest.approx([0.5, 0.5, 0.8])
    md = markdown(agg)
    assert "| NegGrad |" in md and "*" in md.split("Paired differences")[1].split("| NegGrad |")[1].splitlines()[0] \
        and "closes" in md


def test_two_seeds_end_to_end(tmp_path):
    data = make_ml1m(tmp_path / "ml1m", n_users=16, per_user=14)
    common = dict(dataset="ml-1m", data_dir=str(data), cache_dir=str(tmp_path / "c"), max_samples=None, epochs=1, batch_size=8,
                  student_steps=6, forget_epochs=0, quiet=True, methods="original,retrain,e2urec", forget_ratio=0.25)
    res = forget(tmp_path / "o", seeds="1,2", **common)
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["kind"] == "multi-seed" and rep["settings"]["seeds"] == [1, 2]
    rows = {r["method"]: r for r in rep["summary"]["rows"]}
    assert rows["E2URec"]["jsd"]["n"] == 2 and rows["E2URec"]["jsd"]["ci95"] is not None
    per = [json.loads((tmp_path / "o" / f"seed-{s}" / "report.json").read_text()) for s in (1, 2)]
    assert [p["settings"]["seed"] for p in per] == [1, 2] and [p["settings"]["split_seed"] for p in per] == [1, 2]
    assert rows["E2URec"]["jsd"]["values"] == [p["rows"][3]["jsd"] for p in per]
    assert (tmp_path / "o" / "report.png").exists() and "± " in (tmp_path / "o" / "report.md").read_text()
    csv = (tmp_path / "o" / "report.csv").read_text().splitlines()
    jsd = next(line for line in csv if line.startswith("E2URec,jsd,")).split(",")
    assert csv[0].startswith("method,metric,n,mean") and jsd[2] == "2" and float(jsd[3]) == pytest.approx(rows["E2URec"]["jsd"]["mean"])
    assert res.out == (tmp_path / "o").resolve()
    # a finished seed is reused (same settings): the second run trains nothing
    mtime = (tmp_path / "o" / "seed-1" / "report.json").stat().st_mtime
    forget(tmp_path / "o", seeds="1,2", **common)
    assert (tmp_path / "o" / "seed-1" / "report.json").stat().st_mtime == mtime
    # a single run with the same settings written to OUT/seed-N is that seed, finished (seeds run side by side)
    forget(tmp_path / "s" / "seed-2", seed=2, **common)
    single = json.loads((tmp_path / "s" / "seed-2" / "report.json").read_text())
    assert single["settings_key"] == per[1]["settings_key"] != per[0]["settings_key"]
    # --seed-axis train: the split stays put while the training seed moves
    forget(tmp_path / "t", seeds="1,2", seed_axis="train", split_seed=7, **common | dict(methods="original,e2urec", no_retrain=True))
    per = [json.loads((tmp_path / "t" / f"seed-{s}" / "report.json").read_text()) for s in (1, 2)]
    assert [p["settings"]["split_seed"] for p in per] == [7, 7]
    assert per[0]["counts"] == per[1]["counts"]  # the same split (the users themselves are in no report)


@pytest.mark.parametrize("kw,msg", [(dict(seeds="1,x"), "integer seeds"), (dict(seeds="1,1"), "repeated"),
                                    (dict(seeds="1,2", seed=3), "--seed and --seeds conflict"),
                                    (dict(seeds="1,2", forget_users="1"), "--seeds is the benchmark's axis")])
def test_seed_flags(kw, msg, tmp_path):
    with pytest.raises(UserError, match=msg):
        forget(tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


def test_a_recommender_below_the_ctr_floor_is_flagged_first(tmp_path):
    """A report whose Original does not beat the CTR floor says so at the top (and the seeds
    report names the seeds); a plot is still written, marked."""
    from e2urec_fast.report import below_floor, plot_jsd_time, render_markdown

    floor = lambda auc: dict(method="CTR floor (LogReg)", kind="reference", auc=auc, acc=0.6, logloss=0.6, jsd=None, l2=None)
    good, bad = _rep(0.1, 0, 0.05, 0.08), _rep(0.1, 0, 0.05, 0.08)
    good["rows"].insert(0, floor(0.65))  # Original 0.70 beats it
    bad["rows"].insert(0, floor(0.75))
    assert below_floor(good["rows"]) is None
    warn = below_floor(bad["rows"])
    assert warn.startswith("WARNING: Original's test AUC 70.00 does not beat the CTR floor's 75.00")
    rep = dict(bad, counts=dict(samples_after_filter=1, samples=1, train=1, valid=1, test=1, forget_users=1, train_users=2,
                                forget=1, retain=1),
               settings=dict(dataset="ml-1m", backbone="tiny", seed=1), env=dict(device="cpu", torch="x", git="x"), total_s=1.0)
    md = render_markdown(rep)
    assert md.splitlines()[2].startswith("**WARNING: Original's test AUC")
    assert "WARNING" not in render_markdown(dict(rep, rows=good["rows"]))
    agg = aggregate([good, bad, good], [1, 2, 3])
    assert agg["below_floor_seeds"] == [2] and markdown(agg).startswith("**WARNING: on seed(s) 2 ")
    assert plot_jsd_time(bad["rows"], tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 0


def test_bench_unlearn_summary_over_seeds(tmp_path):
    """benchmarks/bench_unlearn.py --summarize: per-seed ratios, their median and range; a seed
    whose fast path never reached the target counts as not reached, not as a number."""

    from conftest import bench_module

    mod = bench_module("bench_unlearn")

    def run(seed, ref_s, fast_s, ttq):
        final = dict(auc=0.77, jsd=0.02)
        return dict(seed=seed, reference=dict(time_s=ref_s, final=final), fast=dict(time_s=fast_s, final=final),
                    time_to_quality=dict(speedup=ttq), whole_unlearning_speedup=ref_s / fast_s, student_speedup=2.0 * seed)

    out, md = mod.summarize([run(1, 200.0, 100.0, 3.0), run(2, 300.0, 100.0, None), run(3, 120.0, 100.0, 1.0)])
    assert out["whole_unlearning"] == dict(median=2.0, min=1.2, max=3.0, reached=3)
    assert out["time_to_quality"] == dict(median=2.0, min=1.0, max=3.0, reached=2)
    assert out["student"]["median"] == 4.0
    assert "not reached" in md and "(2 of 3 reached)" in md and "**2.00x** [1.20x, 3.00x]" in md
    files = []
    for r in (run(1, 200.0, 100.0, 3.0), run(2, 300.0, 150.0, 2.5)):
        files.append(tmp_path / f"s{r['seed']}.json")
        files[-1].write_text(json.dumps(r))
    mod.main(["--summarize", *map(str, files), "--out", str(tmp_path / "sum.json")])
    assert json.loads((tmp_path / "sum.json").read_text())["time_to_quality"]["median"] == 2.75
    assert (tmp_path / "sum.md").read_text().count("\n") == 5


def test_plot_labels_of_coinciding_points_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from e2urec_fast.report import spread_labels

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, x in (("SISA", 290.0), ("RecEraser", 292.0), ("E2URec", 80.0)):
        ax.scatter([x], [58.0])
        ax.annotate(name, (x, 58.0), textcoords="offset points", xytext=(5, 4), fontsize=8)
    fig.canvas.draw()
    assert spread_labels(fig, ax) == 1  # RecEraser moves, E2URec (far away) stays
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in ax.texts]
    assert not boxes[0].overlaps(boxes[1]) and ax.texts[2].xyann == (5, 4)
    plt.close(fig)
