"""What a forgetting target is worth before a student trains on it, and whether the student follows
one (issue #37). Two probes on a scenario's cached models (run the scenario once first):

    python benchmarks/probe_teachers.py targets --out DIR -- --scenario memorize --seed S
    python benchmarks/probe_teachers.py oracle -- --scenario memorize --seed S --methods original,retrain,e2urec \
        --calibrate teacher --out OUT [student flags]

targets: the job runs up to E2URec's teacher cache, then for candidate D_f targets (the Original,
E2URec's `v - alpha relu(v_aug - v)` at alpha 2 and 8, Retrain's own logits, the CTR floor refitted
on D_r and its line mapped on the calibration users, the offset and the pull of calibrate.py with
either reference) it writes, as JSON lines into DIR/targets-S.jsonl: the LOSS attack's AUC of the
target's D_f losses against the Original's on the audit users (raw and floor-calibrated) and on the
calibration users, and the mean absolute distance of its Yes-No margin from Retrain's. It also
writes the utility guard's readings (calibrate.guard_aucs) of the Original and of Retrain: would
exact unlearning pass the guard? Nothing is trained.

oracle: the unlearn command with E2URec's D_f teacher replaced by Retrain's own logits on D_f
(through `--calibrate teacher`'s hook): an upper bound on what a student with this schedule
reaches when its target is exactly right.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from e2urec_fast import api, ops, unlearn  # noqa: E402
from e2urec_fast.audit import answer_losses, mia_auc  # noqa: E402
from e2urec_fast.calibrate import guard_aucs, guard_parts, teacher_offset, teacher_pull  # noqa: E402
from e2urec_fast.floor import proxy_margins, reference_losses  # noqa: E402
from e2urec_fast.methods import e2urec  # noqa: E402
from e2urec_fast.models.scoring import yes_no, yes_no_rows  # noqa: E402
from e2urec_fast.teachers import TeacherTable  # noqa: E402

ST: dict = {}


def _keep_state():
    orig = api.calibrator

    def calibrator(st):
        ST["st"] = st
        return orig(st)

    api.calibrator = calibrator


def _retrain_rows(st, idx):
    fa = st.prep.index("forget_all")
    pos = {int(i): k for k, i in enumerate(fa)}
    return st.retrain_full[torch.tensor([pos[int(i)] for i in idx])].float()


def oracle_tables(job, orig, tables, alpha, p, choose):
    idx = torch.unique(p.f_idx)
    rows = _retrain_rows(ST["st"], idx)
    if tables.forget.logits.shape[1] == 2:
        rows = rows[:, torch.tensor(yes_no_rows(orig))]
    table = TeacherTable(rows, idx, len(job.prepared.labels)).to(job.device)
    return dataclasses.replace(tables, forget=table, augmented=None), dict(oracle="Retrain's logits on D_f", rows=len(idx))


def target_tables(out: Path):
    def probe(job, orig, tables, alpha, p, choose):
        st, prep = ST["st"], job.prepared
        idx = torch.unique(p.f_idx)
        lab = prep.labels[idx].long()
        y = lab.numpy()
        cols = torch.tensor([0, 1] if tables.forget.logits.shape[1] == 2 else yes_no_rows(orig))
        v, va = tables.forget[idx].float().cpu()[:, cols], tables.augmented[idx].float().cpu()[:, cols]
        ret = yes_no(orig, _retrain_rows(st, idx))
        c_idx, a_idx = prep.index("calib"), st.ev.audit_rows[1]
        oc, oa = (st.ev.predict_part(st.orig, i, False).float() for i in (c_idx, a_idx))
        l_c, l_a = answer_losses(oc, prep.labels[c_idx].numpy()), answer_losses(oa, prep.labels[a_idx].numpy())
        ref = reference_losses(prep, dict(f=idx, c=c_idx, a=a_idx))
        proxy, line = proxy_margins(prep, idx, c_idx, (oc[:, 1] - oc[:, 0]).numpy())
        zero = torch.zeros(len(idx))
        cands = {"original": v, "e2urec_alpha2": ops.forgetting_teacher(v, va, 2.0),
                 "e2urec_alpha8": ops.forgetting_teacher(v, va, 8.0), "retrain": ret,
                 "floor_mapped": torch.stack([zero, torch.as_tensor(proxy, dtype=torch.float32)], 1)}
        t = ops.forgetting_teacher(v, va, alpha)
        chosen = {}
        for name, mref in (("raw", None), ("floor", ref)):
            kw = dict(member_reference=None if mref is None else mref["f"])
            non = l_c - (0.0 if mref is None else mref["c"])
            off = teacher_offset(t, lab, non, **kw)
            pull = teacher_pull(t, lab, proxy, non, **kw)
            cands[f"offset_{name}"] = off.apply(t, torch.tensor([0, 1]), lab)
            cands[f"pull_{name}"] = pull.apply(t, torch.tensor([0, 1]), lab, proxy)
            chosen[f"offset_{name}"], chosen[f"pull_{name}"] = dict(gamma=off.gamma), dict(pull=pull.pull)
        m_r = (ret[:, 1] - ret[:, 0]).numpy()
        lines = []
        for k, c in cands.items():
            lf = answer_losses(c, y)
            lines.append(dict(seed=job.seed, target=k, audit_auc=mia_auc(-lf, -l_a),
                              audit_floor_auc=mia_auc(-(lf - ref["f"]), -(l_a - ref["a"])), calib_auc=mia_auc(-lf, -l_c),
                              mean_loss=float(lf.mean()), margin_mae_to_retrain=float(np.abs((c[:, 1] - c[:, 0]).numpy() - m_r).mean()),
                              **chosen.get(k, {})))
        from e2urec_fast.methods.retrain import train_on

        retr, _, _ = train_on(st.job, "retain", st.ft, st.cache, "Retrain")
        g = guard_parts(prep)
        lines.append(dict(seed=job.seed, guard=dict(original=guard_aucs(st.ev, st.orig, g), retrain=guard_aucs(st.ev, retr, g)),
                          proxy_line=list(line)))
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"targets-{job.seed}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        print(path.read_text(), end="", flush=True)
        os._exit(0)  # nothing trained: the probe ends here

    return probe


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("targets", "oracle") or "--" not in argv:
        raise SystemExit(__doc__)
    mode, rest = argv[0], argv[argv.index("--") + 1:]
    _keep_state()
    if mode == "oracle":
        e2urec.calibrated_tables = oracle_tables
        return unlearn.main(rest)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv[:argv.index("--")] else Path(".")
    e2urec.calibrated_tables = target_tables(out)
    return unlearn.main(rest + ["--calibrate", "teacher", "--methods", "original,retrain,e2urec", "--out", str(out / "run")])


if __name__ == "__main__":
    raise SystemExit(main())
