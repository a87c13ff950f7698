"""How much to forget, decided per request from same-pool non-members (issue #37).

An unlearning update (E2URec's LoRA adapter, a baseline's weight change) is applied with a
strength lambda: the adapter's B scaled by lambda (`W0 + lambda * B A`, written so into the
adapter: PEFT loads it as it is), a full fine-tune interpolated, `theta0 + lambda * (theta1 -
theta0)` (model mixing, arXiv 2406.09179; task-arithmetic negation, arXiv 2212.04089).
lambda = 0 is the Original, 1 the update as trained.

The strength is chosen with forward passes only: the LOSS attack's AUC of this request's D_f
against the calibration part of the non-members (`Prepared.index("calib")`; the audit part is
never read here) is brought to `target` (0.5: the attack cannot tell D_f from data the model
never saw), the smallest lambda that reaches it (no more forgetting than the non-members
show), found on a grid and refined by bisection. A utility guard bounds the cost: the AUC on
fixed samples of the validation set and of D_r (up to `GUARD_ROWS` rows each) may each drop
at most `max_drop` below the Original's (D_r because validation alone missed a 6.9-point test
loss on memorize seed 1: its Original is weak there); where reaching the target would cost
more, lambda is the largest the guard allows and the request is "not forgotten to the
non-member level" (said in the report, never passed silently). Where the Original's D_f
already reads as non-members (AUC <= target), lambda = 0: there is nothing to forget.

The forgetting teacher can be calibrated the same way, before the student trains (`--calibrate
teacher`, or `both` with the strength after): E2URec's target `v - alpha * relu(v_aug - v)` on
D_f, its logit of the true answer lowered by gamma (raised where gamma < 0: the augmented
model overshot), gamma chosen on the cached logits so that the target's per-sample losses on
D_f read, to the LOSS attack, like the Original's on the calibration users (`teacher_offset`;
`ops.lowered_teacher` is the one definition; the fused op reads the result as a plain teacher
table). UNDIAL's adjusted target (arXiv 2402.10052) with its amount set on non-members. The
default (`--calib-teacher pull`, `teacher_pull`) moves each D_f row's answer instead a share of
the way toward what a model that never saw it answers (the CTR floor refitted on D_r, mapped to
the model's scale on the calibration users; `ops.pulled_teacher`): a target that does not depend
on the row's label, which the student follows where it does not follow a lowered true answer
(memorize, #37: docs/results.md). The student trained on it is kept as trained where the
utility guard passes, else scaled to the largest strength in [0, 1] the guard allows
(`choose_guarded`: the guard bounds the cost, the pull already set the amount).

Caveat (U-LiRA, arXiv 2403.01218): a population attack matched is not every example
forgotten; the audit scores the result on users calibration never saw, with a second attack.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

GUARD_ROWS = 512  # validation and D_r rows the utility guard reads, each (evenly spaced; all where fewer)
# the guard's log loss on the validation rows may rise at most this much (nats) above the Original's:
# AUC is blind to a model whose probabilities all drift (memorize seed 3, holdout 0.4: E2URec at strength
# 7.4 kept its validation and D_r AUC inside 0.02 while its test log loss rose 0.55 -> 0.82, ACC 73 -> 59)
MAX_LOSS_RISE = 0.05
GRID = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
PULL_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)  # the pull's shares read where the target is out of reach


@dataclass
class Calibration:
    strength: float
    target: float
    calib_auc: float  # the attack's AUC on D_f vs the calibration users at the chosen strength
    original_auc: float  # at strength 0 (the Original)
    trained_auc: float | None  # at strength 1 (the update as trained)
    reached: bool  # the target reached inside the guard
    valid_auc: float | None = None  # the guard's validation AUC at the chosen strength
    original_valid_auc: float | None = None
    guard: dict = field(default_factory=dict)  # {guard name: [the Original's AUC, the AUC at the chosen strength]}
    max_drop: float = 0.0
    curve: list = field(default_factory=list)  # [(strength, calib AUC)] in the order evaluated ([(step, AUC)]: rewind)
    step: int | None = None  # the rule `rewind`: the student's step kept (None: the strength rule)
    seconds: float = 0.0
    passes: int = 0
    verdict: str = ""
    rows: dict = field(default_factory=dict)
    reference: str = "none"  # the attack's reference: "floor" (losses less the CTR floor's on D_r) or "none"

    def to_dict(self) -> dict:
        return asdict(self)


class _Guard:
    """The utility guard's readings, each taken once: `read(k)` gives an AUC or {name: AUC} at
    strength or step k (None: no guard); `ok(k)` where none of the AUCs is more than `max_drop`
    below the Original's, and none of the log losses (names ending in "logloss") more than
    `MAX_LOSS_RISE` above it (k == 0, never itself refused)."""

    def __init__(self, read, max_drop: float):
        self.read, self.max_drop, self.util = read, max_drop, {}

    def _fine(self, n: str, v: float) -> bool:
        u0 = self.utility(0)[n]
        return v <= u0 + MAX_LOSS_RISE if n.endswith("logloss") else v >= u0 - self.max_drop

    def utility(self, k) -> dict:
        if k not in self.util:
            u = self.read(k)
            self.util[k] = {n: float(v) for n, v in (u.items() if isinstance(u, dict) else [("valid", u)])}
        return self.util[k]

    def ok(self, k) -> bool:  # read only when needed
        return self.read is None or k == 0 or all(self._fine(n, v) for n, v in self.utility(k).items())

    def names(self) -> str:
        """What the guard refuses, in words: 'drop the valid or D_r AUC by over 0.02[ or raise the
        valid log loss by over 0.05]'."""
        aucs = [n for n in self.util[0] if not n.endswith("logloss")]
        losses = [n for n in self.util[0] if n.endswith("logloss")]
        return " or ".join(([f"drop the {' or '.join(aucs)} AUC by over {self.max_drop}"] if aucs else [])
                           + [f"raise the {n[:-len('logloss')].strip()} log loss by over {MAX_LOSS_RISE}" for n in losses])

    def record(self, c: Calibration, at) -> None:
        """The guard's AUCs into the record: the Original's and at the choice, where the guard was
        read (it is not for a choice of 0, the Original itself)."""
        if 0 in self.util and at in self.util:
            c.guard = {k: [self.util[0][k], self.util[at][k]] for k in self.util[0]}
            c.original_valid_auc, c.valid_auc = self.util[0].get("valid"), self.util[at].get("valid")


def _guard_limit(guard: _Guard, hi: float, steps: int) -> float:
    """The largest strength in [0, hi] the guard passes, by bisection (`steps` halvings; 0, the
    Original, always passes)."""
    good, bad = 0.0, hi
    for _ in range(steps):
        mid = (good + bad) / 2
        good, bad = (mid, bad) if guard.ok(mid) else (good, mid)
    return good


def _nothing(a0: float, target: float) -> str:
    return f"nothing to forget: the Original's D_f already reads as non-members (attack AUC {a0:.3f} <= {target})"


def _done(c: Calibration, curve: dict, guard: _Guard, t0: float) -> Calibration:
    c.curve = [[k, a] for k, a in curve.items()]
    c.passes = len(curve) + len(guard.util)
    c.seconds = time.perf_counter() - t0
    return c


def choose_strength(auc_at, valid_at, target: float = 0.5, max_strength: float = 8.0, max_drop: float = 0.02,
                    bisect: int = 5) -> Calibration:
    """`auc_at(s)`: the attack AUC on D_f vs calibration users at strength s; `valid_at(s)`:
    the guard's utility at strength s, an AUC or {name: AUC} (each may drop at most `max_drop`;
    'valid' is the one reported as valid_auc), None: no guard. Returns the chosen strength and
    how it was found."""
    t0 = time.perf_counter()
    curve: dict[float, float] = {}
    guard = _Guard(valid_at, max_drop)

    def auc(s):
        if s not in curve:
            curve[s] = float(auc_at(s))
        return curve[s]

    a0 = auc(0.0)
    if not a0 > target:
        c = Calibration(0.0, target, a0, a0, None, True, max_drop=max_drop)
        c.verdict = _nothing(a0, target)
        return _done(c, curve, guard, t0)
    lo, hi = 0.0, None
    for s in (g for g in GRID if g <= max_strength):
        if auc(s) <= target:
            hi = s
            break
        lo = s
    reached = hi is not None
    if reached:
        for _ in range(bisect):  # the smallest strength that reaches the target: no more forgetting than needed
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if auc(mid) <= target else (mid, hi)
        s = hi
    else:  # not reached: the strength that brought the attack lowest (an update may raise it: then 0, the Original)
        s = min(curve, key=lambda k: (curve[k], k))
    guarded = not guard.ok(s)
    if guarded:  # the largest strength the guard allows, unless a smaller one seen lowers the attack more (0: the Original)
        good = _guard_limit(guard, s, bisect + 1)
        auc(good)
        # the lowest attack AUC seen at or below that limit whose own utility the guard passes (the guard need
        # not fall monotonically with the strength: each candidate is read; 0, the Original, always passes)
        s = next(k for k in sorted((k for k in curve if k <= good), key=lambda k: (curve[k], k)) if guard.ok(k))
        reached = False
    c = Calibration(s, target, auc(s), a0, curve.get(1.0), reached, max_drop=max_drop)
    guard.record(c, s)
    if reached:
        c.verdict = f"forgotten to the non-member level: strength {s:.3g}, calibration attack AUC {a0:.3f} -> {c.calib_auc:.3f}"
    else:
        why = (f"more forgetting would {guard.names()}" if guarded
               else f"the update does not lower the attack AUC at any strength up to {max_strength:.3g}" if s == 0.0
               else f"even strength {s:.3g} leaves the attack AUC above {target}")
        c.verdict = (f"not forgotten to the non-member level: {why}; kept strength {s:.3g} (calibration attack AUC "
                     f"{a0:.3f} -> {c.calib_auc:.3f})")
    return _done(c, curve, guard, t0)


def choose_guarded(auc_at, valid_at, target: float = 0.5, max_drop: float = 0.02, bisect: int = 6) -> Calibration:
    """The utility guard alone, on an update whose amount was decided before it trained (the pulled
    teacher): strength 1 (as trained) where the guard passes, else the largest strength in [0, 1]
    it allows (bisection; the guard is read at each step), never more than as trained. The attack
    is read at 0 and at the choice, for the record; it does not choose (the teacher's calibration
    did). `auc_at`, `valid_at` as in `choose_strength`."""
    t0 = time.perf_counter()
    curve: dict[float, float] = {}
    guard = _Guard(valid_at, max_drop)
    a0 = curve[0.0] = float(auc_at(0.0))
    s = 1.0 if guard.ok(1.0) else _guard_limit(guard, 1.0, bisect)
    if s not in curve:
        curve[s] = float(auc_at(s))
    a = curve[s]
    c = Calibration(s, target, a, a0, a if s == 1.0 else None, s == 1.0, max_drop=max_drop)
    guard.record(c, s)
    if s == 1.0:
        c.verdict = (f"kept as trained: the utility guard passes (calibration attack AUC {a0:.3f} -> {a:.3f})"
                     if guard.read is not None else f"kept as trained, no guard rows (calibration attack AUC {a0:.3f} -> {a:.3f})")
    else:
        c.verdict = (f"not forgotten to the non-member level: the update as trained would {guard.names()}; kept strength "
                     f"{s:.3g} (calibration attack AUC {a0:.3f} -> {a:.3f})")
    return _done(c, curve, guard, t0)


def choose_step(auc_at, valid_at, steps, target: float = 0.5, max_drop: float = 0.02) -> Calibration:
    """The rewind rule (SCRUB+R, arXiv 2302.09880, with the target set by non-members): of the
    student's snapshots at `steps` (0: before training, the Original), the first whose attack
    AUC on D_f vs the calibration users reaches `target` inside the utility guard; where none
    does, the one of the lowest AUC inside the guard (0 where training only raised it).
    `auc_at(step)`, `valid_at(step)` as in `choose_strength`, at a snapshot."""
    t0 = time.perf_counter()
    steps = sorted(set(int(k) for k in steps) | {0})
    curve: dict[int, float] = {}
    guard = _Guard(valid_at, max_drop)
    a0 = curve[0] = float(auc_at(0))
    chosen, reached, guarded = 0, a0 <= target, ""
    if not reached:
        for k in steps[1:]:
            curve[k] = float(auc_at(k))
            if curve[k] <= target:
                if guard.ok(k):
                    chosen, reached = k, True
                    break
                guarded = guarded or "the steps that reach it"
        if not reached:  # the lowest AUC inside the guard
            for k in sorted(curve, key=lambda k: (curve[k], k)):
                if guard.ok(k):
                    chosen = k
                    break
                guarded = guarded or "the steps of lower attack AUC"
    c = Calibration(1.0, target, curve[chosen], a0, None, reached, max_drop=max_drop, step=chosen)
    guard.record(c, chosen)
    last = steps[-1]
    if a0 <= target:
        c.verdict = _nothing(a0, target)
    elif reached:
        c.verdict = (f"forgotten to the non-member level: rewound to step {chosen} of {last}, calibration attack AUC "
                     f"{a0:.3f} -> {c.calib_auc:.3f}")
    else:
        why = (f"{guarded} {guard.names()}" if guarded
               else f"no step up to {last} reaches it")
        c.verdict = (f"not forgotten to the non-member level: {why}; kept step {chosen} of {last} (calibration attack AUC "
                     f"{a0:.3f} -> {c.calib_auc:.3f})")
    return _done(c, curve, guard, t0)


@dataclass
class TeacherCalibration:
    gamma: float  # how far the true answer's logit is lowered (< 0: raised)
    target: float
    teacher_auc: float  # the attack AUC of E2URec's target's losses on D_f vs the Original's on the calibration users
    calibrated_auc: float  # the same with gamma applied
    original_auc: float  # the Original's own losses on D_f
    reached: bool
    seconds: float = 0.0
    verdict: str = ""
    rows: dict = field(default_factory=dict)
    reference: str = "none"  # as Calibration.reference
    kind: str = "offset"  # "offset": the true answer's logit moved by gamma; "pull": the margin pulled toward a proxy
    pull: float | None = None  # kind "pull": the share of the way to the non-member proxy
    proxy_line: list | None = None  # kind "pull": [intercept, slope] of the proxy's map (floor.proxy_margins)
    proxy: object = field(default=None, repr=False)  # kind "pull": (N,) the proxy margins of D_f's rows (not reported)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "proxy"}

    def apply(self, teacher: torch.Tensor, cols: torch.Tensor, labels: torch.Tensor, proxy=None) -> torch.Tensor:
        """The calibrated target from the uncalibrated one (`teacher`: (N, W) logits; `cols`: the
        [No, Yes] columns; `labels`: 0/1; `proxy`: (N,) the proxy margins, kind "pull" only; None:
        the record's own), through the one definition in ops."""
        from .ops import lowered_teacher, pulled_teacher

        if self.kind == "pull":
            prox = self.proxy if proxy is None else proxy
            return pulled_teacher(teacher, cols, torch.as_tensor(prox, dtype=torch.float32), self.pull)
        return lowered_teacher(teacher, cols[labels], self.gamma)


def teacher_pull(teacher_yn: torch.Tensor, labels, proxy_margin, nonmember_losses, target: float = 0.5, original_yn=None,
                 iters: int = 40, member_reference=None, unreached: str = "none") -> TeacherCalibration:
    """The share lam in [0, 1] of `ops.pulled_teacher` closest to 0 at which the LOSS attack's AUC of
    the target's losses on D_f against the non-members' reaches `target`: each D_f row's margin moved
    toward `proxy_margin`, what a model that never saw it would answer (floor.proxy_margins). Unlike
    the offset, the pulled target does not depend on the row's label: the student is asked to answer
    D_f as a non-member would, not to unlearn each label (measured: the student follows it, #37).
    Where even the proxy reads as a member (not reached), no pull (`unreached="none"`): the
    non-members do not read like D_f even for a non-member's answers, so they cannot set the
    amount; with `unreached="lowest"` the share of PULL_GRID that brings the attack lowest (0
    where the pull only raises it). Arguments as `teacher_offset`."""
    from .audit import answer_losses, mia_auc
    from .ops import pulled_teacher

    t0 = time.perf_counter()
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    prox = torch.as_tensor(np.asarray(proxy_margin), dtype=torch.float32)
    non = -np.asarray(nonmember_losses, dtype=np.float64)
    ref = 0.0 if member_reference is None else np.asarray(member_reference, dtype=np.float64)
    cols = torch.tensor([0, 1])

    def auc(lam):
        return mia_auc(ref - answer_losses(pulled_teacher(teacher_yn, cols, prox, lam), lab), non)

    a0 = auc(0.0)
    orig = mia_auc(ref - answer_losses(original_yn, lab), non) if original_yn is not None else float("nan")
    lam, ok = 0.0, True
    if a0 > target:
        ok = auc(1.0) <= target
        lo, lam = 0.0, 1.0
        for _ in range(iters if ok else 0):
            mid = (lo + lam) / 2
            lo, lam = (lo, mid) if auc(mid) <= target else (mid, lam)
        if not ok:  # out of reach: the share on a grid that brings the attack lowest (the proxy may raise it: then 0),
            # or none where the caller does not let unreadable non-members set the amount
            lam = min(PULL_GRID, key=lambda g: (auc(g), g)) if unreached == "lowest" else 0.0
    c = TeacherCalibration(0.0, target, a0, auc(lam), orig, ok, reference="none" if member_reference is None else "given",
                           kind="pull", pull=float(lam), proxy=np.asarray(proxy_margin))
    c.seconds = time.perf_counter() - t0
    c.rows = dict(forget=len(lab), nonmembers=len(non))
    c.verdict = (f"forgetting teacher calibrated: D_f's answers pulled {lam:.3g} of the way to a non-member's (the CTR floor "
                 f"refitted on D_r, mapped on the calibration users), its attack AUC {a0:.3f} -> {c.calibrated_auc:.3f} (the "
                 f"Original's {orig:.3f})" + ("" if ok else "; even the non-member's answers read as members: not reached, "
                                              + ("the share of the lowest attack AUC kept" if unreached == "lowest" else
                                                 "so these users cannot set the amount: no pull")))
    return c


def teacher_offset(teacher_yn: torch.Tensor, labels, nonmember_losses, target: float = 0.5, original_yn=None,
                   bound: float = 30.0, iters: int = 40, member_reference=None) -> TeacherCalibration:
    """The gamma of `ops.lowered_teacher` closest to 0 at which the LOSS attack's AUC of the
    target's losses on D_f (`teacher_yn`: (N, 2) [No, Yes] logits, `labels` 0/1) against the
    non-members' losses reaches `target` (the AUC falls as gamma grows: bisection).
    `member_reference`: per-row reference losses subtracted from the target's (and the
    Original's) D_f losses, the difficulty-calibrated attack (`_attack`); the caller passes
    `nonmember_losses` with theirs already subtracted."""
    from .audit import answer_losses, mia_auc
    from .ops import lowered_teacher

    t0 = time.perf_counter()
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    non = -np.asarray(nonmember_losses, dtype=np.float64)
    ref = 0.0 if member_reference is None else np.asarray(member_reference, dtype=np.float64)

    def auc(g):
        return mia_auc(ref - answer_losses(lowered_teacher(teacher_yn, lab, g), lab), non)

    a0 = auc(0.0)
    orig = mia_auc(ref - answer_losses(original_yn, lab), non) if original_yn is not None else float("nan")
    g, ok = 0.0, True
    if a0 != target:  # a0 > target: lower (g > 0) until the AUC falls to the target; else raise (g < 0) until it climbs
        sign = 1.0 if a0 > target else -1.0

        def there(g):
            return auc(g) <= target if sign > 0 else auc(g) >= target

        inside, outside = 0.0, sign * bound  # inside: the target not yet reached
        ok = there(outside)
        for _ in range(iters if ok else 0):
            mid = (inside + outside) / 2
            inside, outside = (inside, mid) if there(mid) else (mid, outside)
        g = outside
    c = TeacherCalibration(float(g), target, a0, auc(g), orig, ok, reference="none" if member_reference is None else "given")
    c.seconds = time.perf_counter() - t0
    c.rows = dict(forget=len(lab), nonmembers=len(non))
    c.verdict = (f"forgetting teacher calibrated: the true answer's logit {'lowered' if g >= 0 else 'raised'} by {abs(g):.3g}, "
                 f"its attack AUC {a0:.3f} -> {c.calibrated_auc:.3f} (the Original's {orig:.3f})")
    return c


def guard_rows(idx: torch.Tensor, n: int = GUARD_ROWS) -> torch.Tensor:
    """Up to `n` of `idx`, evenly spaced (deterministic: the same rows for every strength and
    every method of a job)."""
    if len(idx) <= n:
        return idx
    return idx[torch.linspace(0, len(idx) - 1, n).round().long()]


def guard_parts(prep) -> dict:
    """The utility guard's rows: {'valid': ..., 'D_r': ...}, up to GUARD_ROWS of each (empty parts left out)."""
    return {k: i for k, i in (("valid", guard_rows(prep.index("valid"))), ("D_r", guard_rows(prep.index("retain")))) if len(i)}


def guard_aucs(ev, bb, guards: dict, states=None) -> dict:
    """The model's AUC on each guard part, as it is now, and its log loss on the validation part
    ('valid logloss')."""
    from .evaluate import ctr_metrics, p_yes

    labels = ev.job.prepared.labels
    out = {}
    for k, i in guards.items():
        m = ctr_metrics(labels[i].numpy(), p_yes(ev.predict_part(bb, i, False, states)))
        out[k] = m["auc"]
        if k == "valid":
            out["valid logloss"] = m["logloss"]
    return out


class Strength:
    """Sets an update's strength on a model in place: the LoRA modules' scaling, or for a full
    fine-tune the weights interpolated from the Original's (`base`: its state dict)."""

    def __init__(self, model: torch.nn.Module, base: dict | None = None):
        from .models.lora import LoRALinear

        self.model = model
        self.lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
        self.scaling = [m.scaling for m in self.lora]
        self.full = {}
        if not self.lora:
            if base is None:
                raise ValueError("a model without LoRA modules needs the Original's weights to set a strength")
            for n, p in model.named_parameters():
                if n in base and base[n].shape == p.shape and not torch.equal(base[n].to(p.device, p.dtype), p.detach()):
                    self.full[n] = (base[n].to(p.device, p.dtype).clone(), p.detach().clone())
        self.current = 1.0

    @torch.no_grad()
    def set(self, s: float) -> None:
        if self.lora:
            for m, sc in zip(self.lora, self.scaling):
                m.scaling = sc * s
        else:
            params = dict(self.model.named_parameters())
            for n, (w0, w1) in self.full.items():
                params[n].copy_(w0 + s * (w1 - w0))
        self.current = s

    @torch.no_grad()
    def bake(self) -> None:
        """Keep the current strength for good: the LoRA B matrices scaled by it and the
        scaling restored (so a saved adapter carries it under its own lora_alpha / r)."""
        if self.lora:
            for m, sc in zip(self.lora, self.scaling):
                m.lora_B.weight.mul_(self.current)
                m.scaling = sc
        self.current = 1.0


def _attack(ev, bb, states, reference: str = "floor"):
    """The LOSS attack's AUC on this request's D_f vs the calibration users, read off `bb`'s current
    weights each call; None where either part is empty. `reference`: "floor", each sample's loss
    less its loss under the CTR floor refitted on D_r (floor.reference_losses); "none": the raw
    loss. `attack.rows`: the rows it reads."""
    from .audit import answer_losses, mia_auc
    from .floor import reference_losses

    prep = ev.job.prepared
    f_idx, c_idx = prep.index("forget"), prep.index("calib")
    if not len(c_idx) or not len(f_idx):
        return None
    lab = np.r_[prep.labels[f_idx].numpy(), prep.labels[c_idx].numpy()]
    both, n = torch.cat([f_idx, c_idx]), len(f_idx)
    ref = 0.0
    if reference == "floor":
        r = reference_losses(prep, dict(forget=f_idx, calib=c_idx))
        ref = np.r_[r["forget"], r["calib"]]

    def attack():
        loss = answer_losses(ev.predict_part(bb, both, False, states), lab) - ref
        return mia_auc(-loss[:n], -loss[n:])

    attack.rows = dict(forget=n, calib=len(c_idx))
    return attack


class AtZero:
    """The readings at strength (or step) 0, the model every calibration of a job starts from (the
    Original, or a sequential request's base), taken once a job and shared by its methods: the
    attack's AUC per reference and the guard's utility. `wrap(read, key)`: `read` with its value
    at 0 remembered; `passes`: the readings actually taken through it."""

    def __init__(self):
        self.values, self.passes = {}, 0

    def know(self, key, value) -> None:
        """A reading at 0 taken elsewhere (the teacher calibration's attack on the same rows)."""
        self.values.setdefault(key, value)

    def wrap(self, read, key):
        def at(k):
            if k == 0 and key in self.values:
                return self.values[key]
            self.passes += 1
            v = read(k)
            if k == 0:
                self.values[key] = v
            return v

        return at


def calibrate(bb, ev, base: dict | None = None, target: float = 0.5, max_strength: float = 8.0,
              max_drop: float = 0.02, log=None, states=None, reference: str = "floor",
              guard_only: bool = False, zero: AtZero | None = None) -> Calibration | None:
    """Choose and keep the strength of the update `bb` carries (E2URec's student or a baseline's
    model) on this request's D_f and the calibration users, with the validation guard; None
    where the data has no calibration users (the caller says so). `ev`: the job's Evaluator;
    `states`: the cached boundary's states the model runs from (None: full forwards);
    `reference`: the attack's reference (`_attack`). `guard_only`: the amount was decided
    before training (the pulled teacher): the guard alone may lower the strength below 1
    (`choose_guarded`). `zero`: the job's readings at strength 0 (`AtZero`), shared."""
    attack = _attack(ev, bb, states, reference)
    if attack is None:
        return None
    guards = guard_parts(ev.job.prepared)
    st = Strength(bb.model, base)
    zero = AtZero() if zero is None else zero
    taken = zero.passes

    def _auc(s):
        st.set(s)
        return attack()

    def _guard(s):
        st.set(s)
        return guard_aucs(ev, bb, guards, states)

    auc_at, guard_at = zero.wrap(_auc, ("attack", reference)), zero.wrap(_guard, "guard")

    try:
        c = (choose_guarded(auc_at, guard_at if guards else None, target, max_drop) if guard_only
             else choose_strength(auc_at, guard_at if guards else None, target, max_strength, max_drop))
    finally:
        st.set(1.0)
    st.set(c.strength)
    st.bake()
    c.passes = zero.passes - taken  # (the readings at 0 another method of the job took are not this one's)
    c.rows = dict(attack.rows, **{k: len(i) for k, i in guards.items()})
    c.reference = reference
    if log:
        log(f"calibration: {c.verdict} ({c.passes} forward passes, {c.seconds:.1f} s)")
    return c


def rewind(bb, ev, snaps: dict, target: float = 0.5, max_drop: float = 0.02, log=None, states=None,
           reference: str = "floor", zero: AtZero | None = None) -> Calibration | None:
    """Keep the student's snapshot the rewind rule chooses (`choose_step`); `snaps`: {step:
    {trainable parameter name: tensor}} taken during its training (0: before it). None where
    the data has no calibration users."""
    from .train import named_trainable

    attack = _attack(ev, bb, states, reference)
    if attack is None or 0 not in snaps:
        return None
    guards = guard_parts(ev.job.prepared)
    params = named_trainable(bb.model)

    @torch.no_grad()
    def load(k):
        for n, p in params.items():
            p.copy_(snaps[k][n])

    zero = AtZero() if zero is None else zero
    taken = zero.passes

    def _auc(k):
        load(k)
        return attack()

    def _guard(k):
        load(k)
        return guard_aucs(ev, bb, guards, states)

    auc_at, guard_at = zero.wrap(_auc, ("attack", reference)), zero.wrap(_guard, "guard")
    c = choose_step(auc_at, guard_at if guards else None, snaps, target, max_drop)
    c.passes = zero.passes - taken
    load(c.step)
    c.rows = dict(attack.rows, snapshots=len(snaps), **{k: len(i) for k, i in guards.items()})
    c.reference = reference
    if log:
        log(f"calibration: {c.verdict} ({c.passes} forward passes, {c.seconds:.1f} s)")
    return c
