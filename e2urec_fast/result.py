"""The typed result of a job (`e2urec_fast.forget`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ForgetResult:
    """What a request or benchmark run produced (every path absolute)."""

    out: Path
    report: dict
    adapter: Path | None = None
    original: Path | None = None
    merged: Path | None = None
    audit: dict = field(default_factory=dict)

    @property
    def rows(self) -> list[dict]:
        return self.report["rows"]

    def metrics(self, method: str) -> dict:
        """The report row of `method` ('Original', 'Retrain', 'E2URec', ...)."""
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(f"no row {method!r}; rows: {[r['method'] for r in self.rows]}")
