"""The methods a job can run, by name: label, kind and how to run it.

    METHODS["neggrad"].label == "NegGrad"; METHODS["neggrad"].run(ctx) -> [Outcome, ...]

`kind`: "reference" (Original and Retrain: trained or loaded by the job itself, run None),
"unlearn" (ranked in the report), "ablation" (E2URec without one loss: a separate table in
the paper, not ranked). A run returns one Outcome per report row (E2URec with impl both
gives two).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Config
from ..models.backbone import Backbone
from ..train import Resume, TrainConfig
from . import badt, e2urec, neggrad, negkl, receraser, sisa
from .common import Job, n_params


@dataclass
class Context:
    """What every method's run gets from the job."""

    job: Job
    orig: Backbone
    cfg: Config
    finetune: TrainConfig  # the full fine-tunes' settings (the shards train as Retrain does)
    model_cache: object  # folder of the trained-model cache, or None
    rem: Backbone | None = None  # the remembering teacher when it is not the Original (sequential requests)
    log: Callable[[str], None] = print
    # calibrate(model, base weights or None, states=None) -> the calibration's record (calibrate.py) or
    # None: sets how much of an update the model keeps, from the calibration users (None: off; under
    # --calibrate teacher E2URec reads it with guard_only=True: its target is what is calibrated, the
    # strength may only lower the update where the utility guard refuses it as trained)
    calibrate: Callable[..., dict | None] | None = None
    # calibrate_teacher(target (N, 2), labels, Original (N, 2), rows) -> calibrate.TeacherCalibration:
    # the forgetting target on D_f calibrated, pulled or offset (E2URec's cached path; None: off)
    calibrate_teacher: Callable | None = None
    # calibrate_rewind(model, snapshots, states) -> the calibration's record: E2URec's rewind rule
    # (--calibrate rewind; the baselines keep `calibrate`, the strength)
    calibrate_rewind: Callable | None = None


@dataclass
class Outcome:
    label: str
    model: Backbone
    info: dict
    kind: str = "unlearn"
    row: dict = field(default_factory=dict)  # more columns of its report row
    detail: str = ""  # its key under the report's details
    adapter: bool = False  # the adapter handed out (E2URec's)
    states: object = None  # a cached boundary's BoundarySource the model is evaluated from (None: full forwards)


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    kind: str
    run: Callable[[Context], list[Outcome]] | None = None


def _e2urec(ctx: Context) -> list[Outcome]:
    impl = ctx.cfg.student.impl
    out = []
    for i in (["reference", "fast"] if impl == "both" else [impl]):
        ctx.log(f"E2URec ({i} path) ...")
        # --calibrate teacher: E2URec's target is what is calibrated, the strength only guards the utility (at most 1: as
        # trained); where the target cannot be calibrated (the reference path, no teacher cache: e2urec.calibrated_tables),
        # the strength is
        teacher_only = ctx.cfg.calibration.calibrate == "teacher" and e2urec.uses_teacher_cache(ctx.cfg, i)
        strength = ctx.calibrate
        bb, info = e2urec.unlearn(ctx.job, ctx.orig, ctx.cfg, i, rem=ctx.rem, store=ctx.model_cache,
                                  calibrate=None if strength is None
                                  else lambda m, states: strength(m, None, states, guard_only=teacher_only),
                                  calibrate_teacher=ctx.calibrate_teacher, rewind=ctx.calibrate_rewind)
        states = info.pop("states")
        out.append(Outcome("E2URec" if impl != "both" else f"E2URec ({i})", bb, info, row=dict(stages=info["stages"], impl=i),
                           detail=f"e2urec_{i}", adapter=i == "fast" or impl == "reference", states=states))
    return out


def _ablation(name: str, parts: tuple):
    def run(ctx: Context) -> list[Outcome]:
        ctx.log(f"{METHODS[name].label} (fast path) ...")
        bb, info = e2urec.unlearn(ctx.job, ctx.orig, ctx.cfg, "fast", parts=parts, name=name.replace("-", "_"), rem=ctx.rem,
                                  store=ctx.model_cache)
        states = info.pop("states")
        return [Outcome(METHODS[name].label, bb, info, kind="ablation", row=dict(stages=info["stages"]), detail=name,
                        states=states)]

    return run


def _baseline(name: str, module):
    def run(ctx: Context) -> list[Outcome]:
        ctx.log(f"{METHODS[name].label} ...")
        key = e2urec.run_key(ctx.job, ctx.orig, ctx.cfg, name, ("baseline",))
        resume = Resume(ctx.job.out / "work" / f"{name}-{key}.safetensors", key, ctx.cfg.speed.checkpoint_every)
        bb, info = module.run(ctx.job, ctx.orig, ctx.cfg, resume=resume)
        if ctx.calibrate is not None and not info.get("diverged"):  # the same calibration as E2URec's: a strength on the update
            import time

            t0 = time.perf_counter()
            info["calibration"] = ctx.calibrate(bb, ctx.orig.model.state_dict())
            info["time_s"] += time.perf_counter() - t0
        return [Outcome(METHODS[name].label, bb, info, detail=name)]

    return run


RETRAIN_AGAIN_OFFSET = 100  # the second Retrain's training seed: the job's + this


def _retrain_again(ctx: Context) -> list[Outcome]:
    """A second Retrain: the same D_r and initial weights, another data order and dropout
    (training seed + 100). Its JSD, attack AUC and forget quality against the first are what
    retraining itself scores: the scale every figure against Retrain is read on."""
    import dataclasses

    from .retrain import train_on

    job = dataclasses.replace(ctx.job, seed=ctx.job.seed + RETRAIN_AGAIN_OFFSET)
    bb, sec, info = train_on(job, "retain", ctx.finetune, ctx.model_cache, "Retrain")
    return [Outcome(METHODS["retrain2"].label, bb, dict(info, time_s=sec, trainable_params=n_params(bb.model, False),
                                                          train_seed=job.seed), kind="reference", detail="retrain2")]


def _sisa(ctx: Context) -> list[Outcome]:
    b = ctx.cfg.baselines
    ctx.log(f"SISA: {b.shards} shards ...")
    bb, info = sisa.run(ctx.job, ctx.finetune, ctx.model_cache, b.shards, b.shard_scheme)
    return [Outcome("SISA", bb, info, detail="sisa")]


def _receraser(ctx: Context) -> list[Outcome]:
    b = ctx.cfg.baselines
    ctx.log(f"RecEraser: {b.shards} shards ...")
    bb, info = receraser.run(ctx.job, ctx.finetune, ctx.model_cache, b.shards, b.receraser_agg, b.shard_scheme)
    return [Outcome("RecEraser" + (" (attention)" if b.receraser_agg == "attention" else ""), bb, info, detail="receraser")]


METHODS = {m.name: m for m in [
    Method("original", "Original", "reference"),
    Method("retrain", "Retrain", "reference"),
    Method("retrain2", "Retrain (2nd)", "reference", _retrain_again),
    Method("e2urec", "E2URec", "unlearn", _e2urec),
    Method("neggrad", "NegGrad", "unlearn", _baseline("neggrad", neggrad)),
    Method("negkl", "NegKL", "unlearn", _baseline("negkl", negkl)),
    Method("badt", "Bad-T", "unlearn", _baseline("badt", badt)),
    Method("sisa", "SISA", "unlearn", _sisa),
    Method("receraser", "RecEraser", "unlearn", _receraser),
    Method("e2urec-no-fgt", "E2URec w/o L_FGT", "ablation", _ablation("e2urec-no-fgt", ("rem",))),
    Method("e2urec-no-rem", "E2URec w/o L_REM", "ablation", _ablation("e2urec-no-rem", ("fgt",))),
]}
ALL_METHODS = list(METHODS)
DEFAULT_METHODS = ["original", "retrain", "e2urec", "neggrad", "negkl", "badt"]  # the benchmark's
REQUEST_METHODS = ["original", "retrain", "e2urec"]  # a deletion request's
