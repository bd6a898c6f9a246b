"""A plan as data: one row per candidate (its bounds, status and projection), and the finished
plan (every row, the ranking, what the search cost)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.planner.bounds import Bounds
from helix_jax.analysis.planner.cache import ProgramCache
from helix_jax.analysis.planner.space import Candidate
from helix_jax.config import ModelConfig
from helix_jax.enums import RowStatus


@dataclass
class Row:
    """One candidate in a plan: its bounds, status and (when projected) its projection."""

    candidate: Candidate
    bounds: Bounds | None = None
    status: RowStatus = RowStatus.PENDING
    projection: dict | None = None
    error: str | None = None
    role: str | None = None  # why it is always projected: an anchor or an --explain target
    pruned_by: str | None = None
    # a least step read off a compiled program: a whole program's step at one batch chunk, or a
    # composed step's share of a larger microbatch of the same stage
    least_compiled_seconds: float | None = None
    unchunked: dict | None = None  # its projection at one batch chunk ({} when that failed)

    @property
    def least_seconds(self) -> float:
        """The least step it can have: its arithmetic bound, or one read off a compiled program."""
        bound = self.bounds.seconds if self.bounds else 0.0
        return max(bound, self.least_compiled_seconds or 0.0)

    @property
    def step(self) -> float:
        return self.projection["projected"]["step_seconds"] if self.projection else math.inf


@dataclass
class Plan:
    """A finished plan: every row by label, the ranking, and what the run cost."""

    cfg: ModelConfig
    hw: Hardware
    devices: int
    mode: str
    rows: dict[str, Row]
    illegal: Counter
    ranking: list[str]
    prune: bool
    seconds: float
    cache: ProgramCache
    gspmd: bool
    anchors: list[str] = field(default_factory=list)
    explain: list[str] = field(default_factory=list)

    @property
    def best(self) -> Row | None:
        return self.rows[self.ranking[0]] if self.ranking else None

    def counts(self) -> dict[str, int]:
        """How many rows ended in each state (the plan's JSON `counts`)."""
        n = Counter(r.status for r in self.rows.values())
        S = RowStatus
        return {"enumerated": len(self.rows) + sum(self.illegal.values()),
                "illegal": sum(self.illegal.values()), "considered": len(self.rows),
                "pruned_memory": n[S.PRUNED_MEMORY], "pruned_time": n[S.PRUNED_TIME],
                "skipped_recompute": n[S.SKIPPED_RECOMPUTE],
                "projected": n[S.RANKED] + n[S.DOES_NOT_FIT] + n[S.ERROR],
                "fit": n[S.RANKED], "do_not_fit": n[S.DOES_NOT_FIT], "errors": n[S.ERROR]}

