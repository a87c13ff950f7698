"""A tiny end-to-end setup shared by the model tests: synthetic ML-1M, tiny T5."""

from pathlib import Path

from conftest import make_ml1m
from e2urec_fast.data import prepare
from e2urec_fast.methods.common import Job
from e2urec_fast.models import resolve_backbone


def tiny_job(tmp: Path, preset: str = "tiny", seed: int = 42, **kw) -> Job:
    d = make_ml1m(tmp / "ml1m", n_users=kw.pop("n_users", 24), per_user=kw.pop("per_user", 14), taste=kw.pop("taste", True))
    prep = prepare("ml-1m", d, tmp / "cache", max_samples=None, forget_ratio=0.25, seed=seed)
    folder = resolve_backbone(preset, prep, tmp / "cache", seed=seed)
    return Job(prep, folder, tmp / "out", seed=seed, batch_size=8, progress=False, **kw)


def cfg(name: str = "default", **fields):
    """A typed job config: the preset `name` with `fields` (config field names) on top."""
    from e2urec_fast.config import preset

    return preset(name, **fields)
