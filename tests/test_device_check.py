"""The GPU device script's CPU dry run: builds, tests and benchmarks at tiny size."""

import os
import subprocess
from pathlib import Path

from conftest import make_ml1m

ROOT = Path(__file__).resolve().parent.parent


def test_device_check_dry_run(tmp_path):
    data = make_ml1m(tmp_path / "ml1m", n_users=30)
    env = dict(os.environ, OUT=str(tmp_path / "out"), E2UREC_DATA_ARGS=f"--dataset ml-1m --data-dir {data}")
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = (tmp_path / "out" / "device_check.log").read_text()
    assert "native: True" in log and "passed" in log and "| E2URec (fast) |" in log and "done; results" in log
    assert log.count("time-to-quality speedup:") == 2  # the T5 and the causal-LM end-to-end runs
    assert (tmp_path / "out" / "teacher_kl.csv").exists() and (tmp_path / "out" / "e2urec" / "report.json").exists()
