"""The GPU device script's CPU dry run: every part at tiny size, a summary.json with each
part's status, all within the CI budget."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_device_check_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    env.pop("TRITON_INTERPRET", None)
    env.pop("E2UREC_DATA_ARGS", None)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "out"
    s = json.loads((out / "summary.json").read_text())
    status = {p["part"]: p["status"] for p in s["parts"]}
    assert list(status) == ["env", "build", "parity", "kernels_fp32", "kernels_bf16", "step", "e2e", "boundary", "request", "causal8"], status
    bad = {p["part"]: p["reason"] for p in s["parts"] if p["status"] != "ok" and not (p["part"] == "causal8" and p["status"] == "skipped")}
    assert not bad, bad
    assert s["dry_run"] and s["elapsed_s"] <= s["budget_s"]
    assert "passed" in (out / "parity.log").read_text()
    assert "time-to-quality speedup:" in (out / "e2e.log").read_text()
    assert json.loads((out / "bench_unlearn_bf16.json").read_text())["fast"]["final"]["auc"] > 0
    assert (out / "teacher_kl.csv").read_text().count("bfloat16") >= 2
    assert json.loads((out / "student_step.json").read_text())["results"]
    req = json.loads((out / "request" / "device_request.json").read_text())
    assert req["dry_run"] and {r["path"] for r in req["rows"]} == {"all", "boundary"} and all(r["wall_s"] > 0 for r in req["rows"])


def test_device_check_records_a_failing_part_and_goes_on(tmp_path):
    """A part that fails is recorded with its reason, and the parts after it still run."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), E2UREC_BUDGET="60", E2UREC_DATA_ARGS="--data-dir /nonexistent/recbole.whl")
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    by = {p["part"]: p for p in s["parts"]}
    assert by["step"]["status"] == "failed" and "recbole.whl" in by["step"]["reason"]  # the bad data path, named
    assert by["env"]["status"] == "ok" and len(by) == 10  # every part has a status: ok, failed, or skipped (budget)
    assert any(p["status"] == "skipped" and "budget" in p["reason"] for p in s["parts"])
