"""torchrun with 2 CPU processes (gloo) runs the same job as one process: the teacher cache
bit for bit, the adapter within float tolerance, one report, rank 0's files only."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_ml1m
from e2urec_fast.files import load_safetensors

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


FAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faults.py")


def cli(*args, n: int = 1, env=None):
    """The CLI under torchrun (n > 1); with E2UREC_TEST_KILL_RANK in `env`, through tests/faults.py."""
    faulty = "E2UREC_TEST_KILL_RANK" in (env or {})
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)] if n > 1 else [sys.executable]
    target = [FAULTS] if faulty else ["-m", "e2urec_fast.unlearn"]
    e = dict(os.environ, OMP_NUM_THREADS="1", E2UREC_DIST_TIMEOUT="60") | (env or {})
    return subprocess.run([*run, *target, *args], capture_output=True, text=True, timeout=600, env=e)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    data = make_ml1m(tmp / "ml1m", n_users=24, per_user=14)
    common = ["--dataset", "ml-1m", "--data-dir", str(data), "--cache-dir", str(tmp / "c"), "--batch-size", "8", "--threads", "1",
              "--quiet"]
    r = cli(*common, "--out", str(tmp / "o"), "--epochs", "1", "--methods", "original", "--forget-ratio", "0.25")
    assert r.returncode == 0, r.stderr
    return tmp, common, tmp / "o" / "original"


def test_two_processes_run_the_one_process_job(original):
    tmp, common, orig = original
    req = [*common, "--original", str(orig), "--forget-users", "1,2,3", "--no-retrain", "--methods", "e2urec",
           "--student-steps", "6", "--forget-epochs", "1", "--lora-dropout", "0", "--keep-artifacts", "--student-lr", "1e-4"]
    one = cli(*req, "--out", str(tmp / "one"))
    assert one.returncode == 0, one.stderr
    two = cli(*req, "--out", str(tmp / "two"), n=2)
    assert two.returncode == 0, two.stderr[-3000:]
    # the teacher cache: rows dealt over the ranks in the one-process batches, gathered: bit for bit
    a, b = (load_safetensors(tmp / d / "cache" / "teacher_retain.safetensors") for d in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_safetensors(tmp / d / "cache" / "teacher_forget.safetensors") for d in ("one", "two"))
    assert torch.equal(a["orig_f"], b["orig_f"]) and torch.equal(a["orig_f.idx"], b["orig_f.idx"])
    # the augmented model trained on 2 ranks: its gradients are sums of two halves, equal to rounding
    assert (a["aug_f"] - b["aug_f"]).abs().max() < 1e-4
    a, b = (load_safetensors(tmp / d / "adapter" / "adapter_model.safetensors") for d in ("one", "two"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"adapter max abs difference 2 processes vs 1: {diff:.3e}")
    # AdamW moves each weight by at most ~lr per step, in the direction of sign(m / sqrt(v)): where a
    # gradient element is at rounding level the two runs may step apart, never by more than 2 lr per step
    assert diff <= 2 * 1e-4 * 6
    rep, one_rep = (json.loads((tmp / d / "report.json").read_text()) for d in ("two", "one"))
    assert [r["method"] for r in rep["rows"]] == [r["method"] for r in one_rep["rows"]]
    assert two.stderr.count("E2URec") == one.stderr.count("E2URec")  # one log (rank 0's), not two
    assert two.stdout.count("| Method |") == 1  # one table
    e2u, e2u_one = rep["rows"][-1], one_rep["rows"][-1]
    assert abs(e2u["auc"] - e2u_one["auc"]) < 1e-3 and abs(e2u["logloss"] - e2u_one["logloss"]) < 1e-3
    assert not list(tmp.glob("two/*rank*"))  # rank 1 wrote nothing of its own


def test_bad_input_is_one_line_under_torchrun(original):
    tmp, common, orig = original
    r = cli(*common, "--original", str(orig), "--forget-users", "99999", "--no-retrain", "--out", str(tmp / "bad"), n=2)
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert r.returncode != 0 and len(ours) == 1 and "99999" in ours[0], r.stderr[-2000:]
    assert not (tmp / "bad").exists()


def test_a_dead_rank_is_one_line_not_a_hang(original):
    tmp, common, orig = original
    # rank 1 exits during its first training step; rank 0 waits in the gradient all-reduce and must give up
    r = cli(*common, "--original", str(orig), "--forget-users", "1,2,3", "--no-retrain", "--methods", "e2urec",
            "--student-steps", "4", "--out", str(tmp / "dead"), n=2, env={"E2UREC_TEST_KILL_RANK": "1", "E2UREC_DIST_TIMEOUT": "20"})
    assert r.returncode != 0
    assert "error: rank 0 of 2:" in r.stderr


def test_sharded_gradients_sum_to_the_global_batch_gradient(tmp_path, monkeypatch):
    """The arithmetic of a torchrun step, in one process: each rank's share of a joint E2URec
    batch, its loss weighted by its share of the rows, the gradients summed = the gradient
    of the one-process step on the whole batch."""
    from e2urec_fast import dist
    from e2urec_fast.methods.common import paired_batches
    from e2urec_fast.methods.e2urec import combine, fast_terms
    from e2urec_fast.models.lora import LoraConfig, inject_lora, lora_modules
    from e2urec_fast.teachers import Teachers, TeacherTable
    from helpers import tiny_job

    job = tiny_job(tmp_path, n_users=16, per_user=10)
    bb = job.fresh()
    inject_lora(bb.model, LoraConfig(4, 8, 0.0, ["q", "v"]))
    for m in lora_modules(bb.model).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    bb.model.eval()
    n = len(job.prepared.labels)
    torch.manual_seed(0)
    tabs = Teachers(*(TeacherTable(torch.randn(n, 2), torch.arange(n), n) for _ in range(3)))
    params = [p for p in bb.model.parameters() if p.requires_grad]
    batch = next(b for b in paired_batches(job, 0, 40, True) if len(b[1]) == 8 and len(b[2]) in (4, 6, 8))

    def grads(b):
        loss = combine(fast_terms(bb, tabs, b[1], b[2], 2.0, "yesno", "torch", False), 0.6)
        return torch.autograd.grad(loss, params), loss

    full, full_loss = grads(batch)
    summed, loss_sum = [torch.zeros_like(p) for p in params], 0.0
    for r in range(2):
        monkeypatch.setattr(dist, "world", lambda: 2)
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        local, share = dist.shard(batch)
        assert len(local[1]) == 4 and len(local[2]) == len(batch[2]) // 2 and share == 0.5
        g, loss = grads(local)
        loss_sum += share * loss.item()
        for s, x in zip(summed, g):
            s += share * x
    assert abs(loss_sum - full_loss.item()) < 1e-6
    for a, b in zip(full, summed):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-5)


def test_resume_under_torchrun_gives_the_uninterrupted_adapter(original):
    """Rank 1 dies at student step 5 (a state was saved at step 4); the same command again
    resumes every rank from rank 0's state and ends on the adapter of a run never stopped."""
    tmp, common, orig = original
    req = [*common, "--original", str(orig), "--forget-users", "1,2,3", "--no-retrain", "--methods", "e2urec",
           "--student-steps", "8", "--forget-epochs", "1", "--checkpoint-every", "2"]
    full = cli(*req, "--out", str(tmp / "full"), n=2)
    assert full.returncode == 0, full.stderr[-2000:]
    died = cli(*req, "--out", str(tmp / "res"), n=2, env={"E2UREC_TEST_KILL_RANK": "1", "E2UREC_TEST_KILL_AT": "student:5",
                                                           "E2UREC_DIST_TIMEOUT": "20"})
    assert died.returncode != 0 and list((tmp / "res" / "work").glob("*student*"))
    again = cli(*req, "--out", str(tmp / "res"), n=2)
    assert again.returncode == 0, again.stderr[-2000:]
    rep = json.loads((tmp / "res" / "report.json").read_text())
    assert rep["details"]["e2urec_fast"]["resumed_at_step"] == 4
    a, b = (load_safetensors(tmp / d / "adapter" / "adapter_model.safetensors") for d in ("full", "res"))
    assert all(torch.equal(a[k], b[k]) for k in a)
