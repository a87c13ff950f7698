"""The CLI end to end on a small ML-1M-format data set, and its handling of bad input."""

import json
import subprocess
import sys

import pytest

from conftest import make_ml1m


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "e2urec_fast.unlearn", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_ml1m(tmp_path_factory.mktemp("cli") / "ml1m")


def test_end_to_end_report(data, tmp_path):
    out = tmp_path / "out"
    r = run_cli("--dataset", "ml-1m", "--data-dir", str(data), "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                "--max-samples", "200", "--epochs", "1", "--student-steps", "6", "--baseline-steps", "4", "--batch-size", "8",
                "--quiet", "--forget-ratio", "0.25", "--methods", "all")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    names = [row["method"] for row in rep["rows"]]
    assert names == ["CTR floor (LogReg)", "Original", "Retrain", "Retrain (2nd)", "E2URec", "NegGrad", "NegKL", "Bad-T", "SISA", "RecEraser",
                     "E2URec w/o L_FGT", "E2URec w/o L_REM"]
    rows = {row["method"]: row for row in rep["rows"]}
    for row in rep["rows"]:
        assert {"method", "kind", "auc", "acc", "logloss", "jsd", "l2", "time_s", "trainable_params"} <= set(row)
        want = "reference" if row["method"] in ("CTR floor (LogReg)", "Original", "Retrain", "Retrain (2nd)") else \
            "ablation" if row["method"].startswith("E2URec w/o") else "unlearn"
        assert row["kind"] == want
        if row["kind"] != "reference":
            assert row["time_s"] > 0 and 0 <= row["auc"] <= 1 and row["jsd"] >= 0
    e2u = rows["E2URec"]
    assert set(e2u["stages"]) == {"augment", "cache", "student"} and 0 < e2u["trainable_params"] < rows["Original"]["trainable_params"]
    assert rows["E2URec w/o L_FGT"]["stages"]["augment"] == 0.0  # no forgetting teacher: no augmented model
    assert rows["NegGrad"]["trainable_params"] == rows["Original"]["trainable_params"]
    assert rows["SISA"]["trainable_params"] == 4 * rows["Original"]["trainable_params"]
    assert rows["Retrain"]["jsd"] == 0.0
    # the second Retrain (same D_r and initial weights, another data order): retraining's own distance, the scale
    r2 = rows["Retrain (2nd)"]
    assert r2["jsd"] > 0 and r2["time_s"] > 0 and r2["trainable_params"] == rows["Retrain"]["trainable_params"]
    assert rep["details"]["retrain2"]["train_seed"] == 42 + 100 and r2["forget_quality"] is not None
    st = rep["details"]["stage_s"]  # each stage's wall clock (#26 item 5)
    assert list(st) == ["prepare", "models", "references", "methods"] and all(v > 0 for v in st.values())
    assert sum(st.values()) <= rep["total_s"]
    fs = rep["stages_s"]  # the same, flat: they add up to the job's wall clock
    assert list(fs) == ["load", "references", "augment", "cache", "student", "other_methods", "evaluation", "audit", "write"]
    assert abs(sum(fs.values()) - rep["total_s"]) < 1e-6 and fs["student"] == e2u["stages"]["student"] and fs["other_methods"] > 0
    c = rep["counts"]
    assert c["samples"] == 200 and (c["train"], c["valid"], c["test"]) == (120, 40, 40)
    assert rep["forgotten_users"] == c["forget_users"] > 0  # a count: who is nowhere in the report (#38)
    md = (out / "report.md").read_text()
    assert "| E2URec |" in md and "| E2URec |" in r.stdout and "**" in md and "![D_f JSD" in md
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,kind,auc") and len(csv_lines) == 1 + len(names)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # privacy: nothing derived from D_f stays behind but the adapters and the report
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "adapter_e2urec_no_fgt", "adapter_e2urec_no_rem", "cache", "original",
                                                    "report.csv", "report.json", "report.md", "report.png"]
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["teacher_retain.safetensors"]
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = (out / "adapter" / "README.md").read_text()  # the model card, with the command that made it
    assert card.startswith("---\nbase_model: ") and "python -m e2urec_fast.unlearn --dataset ml-1m" in card


@pytest.mark.parametrize("args,msg", [
    (["--dataset", "ml-1m"], "needs --data-dir"),
    (["--dataset", "ml-1m", "--data-dir", "/nonexistent/x"], "/nonexistent/x: data folder not found"),
    (["--forget-ratio", "1.5"], "--forget-ratio must be in (0, 1)"),
    (["--methods", "original,bogus"], "unknown method(s) bogus"),
    (["--backbone", "/nonexistent/model"], "/nonexistent/model: backbone not found"),
    (["--lora-scope", "top:2"], "--lora-scope top:2: the tiny preset is a t5 model; use decoder"),
    (["--lora-scope", "encoder"], "--lora-scope 'encoder': give auto, all, decoder or top:K"),
])
def test_bad_arguments_exit_2(args, msg, tmp_path, data):
    if "--data-dir" not in args and "--dataset" not in args:
        args = ["--dataset", "ml-1m", "--data-dir", str(data), *args]
    out = tmp_path / "out"
    r = run_cli(*args, "--cache-dir", str(tmp_path / "c"), "--out", str(out), "--quiet")
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and msg in last
    assert not out.exists()


def test_malformed_file_exit_2(tmp_path):
    d = make_ml1m(tmp_path / "bad")
    lines = (d / "ratings.dat").read_text().splitlines()
    lines[6] = lines[6].replace("::", ",")
    (d / "ratings.dat").write_text("\n".join(lines) + "\n")
    r = run_cli("--dataset", "ml-1m", "--data-dir", str(d), "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert f"{d / 'ratings.dat'}:7: expected 4 '::'-separated fields, found 1" in r.stderr
    assert not (tmp_path / "o").exists() and not list((tmp_path / "c").glob("prepared/*"))


def test_model_folder_without_weights(tmp_path, data):
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text('{"model_type": "t5"}')
    r = run_cli("--dataset", "ml-1m", "--data-dir", str(data), "--backbone", str(m), "--cache-dir", str(tmp_path / "c"),
                "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no model.safetensors weights" in r.stderr


def test_help_documents_flags():
    """--help: the user-facing options (at most ~25); --help-all: every config field."""
    from e2urec_fast.config import all_fields
    from e2urec_fast.unlearn import build_parser

    short = build_parser().format_help()
    for flag in ("--dataset", "--data-dir", "--backbone", "--max-samples", "--forget-ratio", "--seed", "--device", "--out",
                 "--forget-users", "--original", "--no-retrain", "--merge", "--alpha", "--student-steps", "--set", "--scenario", "--holdout-ratio",
                 "--holdout-users"):
        assert flag in short
    shown = [a for a in build_parser()._actions if a.help != "==SUPPRESS=="]
    assert len(shown) <= 26 and "--kernel-backend" not in short and "--no-teacher-cache" not in short
    full = run_cli("--help-all")
    assert full.returncode == 0 and all("--" + n.replace("_", "-") in full.stdout for n in all_fields())


def _other_value(f):
    """A valid value of a config field other than its default."""
    m = f.metadata
    if m["choices"]:
        return next(c for c in m["choices"] if c != f.default)
    if m["type"] is bool:
        return True
    if m["type"] is int:
        return (f.default or 1) + 1
    if m["type"] is float:
        lo, hi = m["lo"], m["hi"]
        return (lo + hi) / 2 if hi is not None and f.default != (lo + hi) / 2 else (f.default or 0.5) * 1.5 + 1e-3
    return {"lora_scope": "decoder", "seeds": "1,2", "methods": "original,e2urec"}.get(f.name, "x")


def test_every_config_field_reachable_from_the_cli_and_python():
    """Each field, set to a value other than its default, reaches the Config through its own
    flag, through --set NAME=VALUE / GROUP.NAME=VALUE, and through replace_fields (Python)."""
    from e2urec_fast.config import all_fields, preset, replace_fields
    from e2urec_fast.unlearn import config_from_argv

    for name, (group, f) in all_fields().items():
        v = _other_value(f)
        text = str(v).lower() if isinstance(v, bool) else str(v)
        flag = ["--" + name.replace("_", "-")] + ([] if f.metadata["type"] is bool else [text])
        for argv in (flag, ["--set", f"{name}={text}"], ["--set", f"{group}.{name}={text}"]):
            cfg, explicit = config_from_argv(argv)
            assert getattr(getattr(cfg, group), name) == v and name in explicit, (name, argv)
        assert getattr(getattr(replace_fields(preset(), **{name: v}), group), name) == v
    with pytest.raises(Exception, match="config field"):
        config_from_argv(["--set", "no_such_field=1"])
    with pytest.raises(Exception, match="conflicts with --student-steps"):
        config_from_argv(["--preset", "authors", "--student-steps", "5"])


def test_goodreads_end_to_end(tmp_path):
    import random

    rng = random.Random(0)
    d = tmp_path / "gb"
    d.mkdir()
    (d / "books.csv").write_text("book_id,title\n" + "".join(f'{i},"Book {i}, Vol. {i % 3}"\n' for i in range(1, 31)))
    rows = [f"{u},{b},{5 if b % 2 else rng.choice([1, 2, 3])}\n" for u in range(1, 25) for b in rng.sample(range(1, 31), 12)]
    (d / "ratings.csv").write_text("user_id,book_id,rating\n" + "".join(rows))
    out = tmp_path / "out"
    r = run_cli("--dataset", "goodreads", "--data-dir", str(d), "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                "--epochs", "1", "--student-steps", "3", "--forget-epochs", "0", "--batch-size", "8", "--quiet", "--forget-ratio", "0.25",
                "--methods", "original,retrain,e2urec")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["dataset"] == "goodreads" and len(rep["rows"]) == 4
    assert rep["counts"]["samples"] == 24 * (12 - 5)


def test_divergence_is_one_clear_line(data, tmp_path):
    out = tmp_path / "out"
    r = run_cli("--dataset", "ml-1m", "--data-dir", str(data), "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                "--epochs", "1", "--lr", "1e30", "--batch-size", "8", "--quiet", "--no-model-cache")
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged: Original: loss became") and "Traceback" not in r.stderr
    assert not (out / "report.json").exists()


def test_original_only_skips_retrain(data, tmp_path):
    out = tmp_path / "out"
    r = run_cli("--dataset", "ml-1m", "--data-dir", str(data), "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                "--max-samples", "200", "--epochs", "1", "--batch-size", "8", "--quiet", "--forget-ratio", "0.25",
                "--methods", "original")
    assert r.returncode == 0, r.stderr
    assert "Retrain" not in r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert [row["method"] for row in rep["rows"]] == ["CTR floor (LogReg)", "Original"]
    assert rep["rows"][1]["jsd"] is None and 0 <= rep["rows"][1]["auc"] <= 1
    assert rep["settings"]["lr"] == 1e-3  # a preset with random weights: the from-scratch learning rate
    # random batches for the full fine-tunes: another Original (its cache key holds the batching), not the cached one
    r = run_cli("--dataset", "ml-1m", "--data-dir", str(data), "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o2"),
                "--max-samples", "200", "--epochs", "1", "--batch-size", "8", "--quiet", "--forget-ratio", "0.25",
                "--methods", "original", "--no-train-bucketing")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "c" / "models").glob("original-*.safetensors"))) == 2


def test_stage_counter_and_bars_with_totals(data, tmp_path):
    """#27 item 8: the job says which stage of how many it is in; the fine-tune bars have a
    total (they were 'Original: 129it [00:30, 4.28it/s]', no ETA)."""
    import re

    r = run_cli("--dataset", "ml-1m", "--data-dir", str(data), "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"),
                "--max-samples", "120", "--epochs", "2", "--student-steps", "4", "--batch-size", "8", "--forget-ratio", "0.25",
                "--methods", "original,retrain,e2urec,neggrad", "--baseline-steps", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    stages = re.findall(r"^\[(\d+)/(\d+)\] (\w+)", r.stderr, flags=re.M)
    assert [(int(k), int(n), w) for k, n, w in stages] == [(1, 6, "data"), (2, 6, "Original"), (3, 6, "Retrain"), (4, 6, "E2URec"),
                                                           (5, 6, "NegGrad"), (6, 6, "audit")]
    assert re.search(r"Original: +\d+%\|[^|]*\| \d+/\d+ \[", r.stderr)  # a bar with its total (2 epochs of steps)
    assert not re.search(r"(Original|Retrain): \d+it \[", r.stderr)
