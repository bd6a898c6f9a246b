"""Projecting one planner row through the cost model, with the planner's program cache as the
compiler, and the priced result cached per candidate and hardware profile."""

from __future__ import annotations

import dataclasses

from helix_jax.analysis.costmodel import project as P
from helix_jax.analysis.costmodel.hardware import Hardware, hardware_to_dict
from helix_jax.analysis.planner.cache import ProgramCache
from helix_jax.analysis.planner.rows import Row
from helix_jax.config import ModelConfig
from helix_jax.enums import RowStatus


def unchunked(row: Row, cfg: ModelConfig, hw: Hardware, mode: str,
               cache: ProgramCache) -> dict | None:
    """`row`'s whole program projected at one batch chunk (kept on the row), None if it fails."""

    if row.unchunked is None:
        c = row.candidate
        try:
            row.unchunked = P.project(cfg, c.layout, hw, batch_chunks=1, mode=mode,
                                      remat=c.remat, partitioner=c.partitioner,
                                      compiler=cache, composed=c.composed).to_dict()
        except Exception:  # noqa: BLE001 - one chunk may not build or compile: the fit will say
            row.unchunked = {}
    return row.unchunked or None


def project_row(row: Row, cfg: ModelConfig, hw: Hardware, mode: str, cache: ProgramCache) -> None:
    """Project one candidate (from the priced cache when it was projected before). It always
    ends with a status other tasks can read: a failed compile is an error row, not a stuck one."""
    try:
        _project_or_raise(row, cfg, hw, mode, cache)
    except Exception as e:  # noqa: BLE001 - one layout failing to compile stops no search
        row.status, row.error = RowStatus.ERROR, f"{type(e).__name__}: {e}"[:2000]


def _project_or_raise(row: Row, cfg: ModelConfig, hw: Hardware, mode: str,
                      cache: ProgramCache) -> None:

    c = row.candidate
    description = {"label": c.label, "cfg": dataclasses.asdict(cfg), "mode": mode}
    key = cache.priced_key(description, hardware_to_dict(hw))
    result = cache.priced(key)
    if result is None and row.unchunked and row.unchunked["fits"]:
        result = row.unchunked  # one chunk fits: what the chunk search would return
        cache.store_priced(key, result)
    if result is None:
        try:
            result = P.project(cfg, c.layout, hw, mode=mode, remat=c.remat,
                               partitioner=c.partitioner, compiler=cache,
                               composed=c.composed).to_dict()
        except ValueError as e:  # this layout cannot run this model (kept: it will not either)
            result = {"error": str(e)}
        cache.store_priced(key, result)
    row.pruned_by = None
    if "error" in result:
        row.status, row.error = RowStatus.ERROR, result["error"]
        return
    row.projection = result
    row.status = RowStatus.RANKED if result["fits"] else RowStatus.DOES_NOT_FIT

