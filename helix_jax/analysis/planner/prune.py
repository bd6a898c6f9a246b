"""The rules that prune a candidate before it is compiled in full: its memory cannot fit (its
full-recompute sibling does not), its time bound cannot win, or a least step read off a program
compiled anyway cannot win (the program at one batch chunk; for a composed step a larger
microbatch of the same stage). Each rule says why in `Row.pruned_by`; `explain.bound_violations`
checks every rule against the candidates projected."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.planner.cache import ProgramCache
from helix_jax.analysis.planner.projecting import project_row, unchunked
from helix_jax.analysis.planner.rows import Row
from helix_jax.analysis.planner.space import Candidate
from helix_jax.config import ModelConfig
from helix_jax.enums import RowStatus


def best_step(rows: dict[str, Row]) -> float:
    """The fastest step that fits so far."""
    return min((r.step for r in list(rows.values()) if r.status == RowStatus.RANKED), default=math.inf)


def keeps_least(row: Row, rows: dict[str, Row]) -> Row | None:
    """The projected full-recompute sibling of a whole-program training step (remat none or
    selective): the same program but for recompute, at the same (its most) batch chunking."""
    c = row.candidate
    if not c.train or c.composed or c.remat == "full":
        return None
    sibling = rows.get(dataclasses.replace(c, remat="full").label)
    return sibling if sibling is not None and sibling.projection is not None else None


def cannot_fit(row: Row, rows: dict[str, Row]) -> str | None:
    """Why `row` cannot fit memory: its full-recompute sibling does not fit even at the most
    batch chunks (recompute keeps fewer activations and adds no buffer, so the program that
    recomputes less needs at least as much memory at the same chunking)."""
    sibling = keeps_least(row, rows)
    if sibling is None or sibling.projection["fits"]:
        return None
    return (f"{sibling.candidate.label} keeps the least and needs "
            f"{sibling.projection['memory_bytes_per_device'] / 1e9:.3g} GB at its most batch "
            f"chunks")


def cannot_win(row: Row, best: float) -> str | None:
    """Why `row` cannot beat `best` seconds (None if it might)."""
    if row.bounds.seconds >= best:
        return f"time bound {row.bounds.seconds:.4g} s >= best {best:.4g} s"
    return None


def stage_group(c: Candidate) -> tuple:
    """What a composed step's stage program is, but for its microbatch size."""
    o = c.layout.options
    return (o["tp"], o["sp"], o["pp"], c.remat)


def microbatch(c: Candidate, cfg: ModelConfig) -> int:
    o = c.layout.options
    return cfg.batch // o["dp"] // o["microbatches"]


def smaller_microbatch_bound(c: Candidate, cfg: ModelConfig, bigger: Row) -> float:
    """A least step of composed `c` from the projection of `bigger`, a composed step of the same
    stage program but for a larger microbatch: every one of c's M microbatches takes at least its
    share (micro / bigger's micro) of bigger's microbatch compute, and the optimizer update is the
    same program over c's replicas."""
    p, o = bigger.projection["projected"], bigger.candidate.layout.options
    per_replica = cfg.batch // c.layout.options["dp"]
    update = p["optimizer_seconds"] * o["dp"] / c.layout.options["dp"]
    return per_replica / microbatch(bigger.candidate, cfg) * p["microbatch_compute_seconds"] + update


def smaller_microbatch_cannot_win(row: Row, rows: dict[str, Row], cfg: ModelConfig,
                                   hw: Hardware, mode: str, cache: ProgramCache,
                                   best: Callable[[], float]) -> bool:
    """Prune a composed training step whose stage program, run at a larger microbatch by another
    candidate, shows it cannot beat `best()`: a larger microbatch is never slower per sequence
    (powers of two: its GEMMs fill at least as many waves, and it reads the weights fewer times
    per sequence), so c's microbatches take at least their share of the larger one's compute.
    The largest-microbatch sibling still to be projected is projected first (its program is one
    compile, shared by every schedule, interleaving, overlap and data-parallel degree), whatever
    its own arithmetic bound, when that bound is under `best()`. `bound_violations` checks the
    rule on every candidate projected. True when pruned."""
    c = row.candidate
    if not c.composed or mode != "train" or not math.isfinite(best()):
        return False
    group, micro = stage_group(c), microbatch(c, cfg)
    bigger = [r for r in list(rows.values()) if r.candidate.composed and r is not row
              and stage_group(r.candidate) == group and microbatch(r.candidate, cfg) > micro]
    if not any(r.projection for r in bigger):
        pending = [r for r in bigger if r.status == RowStatus.PENDING and r.bounds is not None
                   and r.bounds.seconds < best()]
        if pending:
            probe = min(pending, key=lambda r: (-microbatch(r.candidate, cfg), r.bounds.seconds,
                                                r.candidate.label))
            if probe.status == RowStatus.PENDING:
                probe.status = RowStatus.PROJECTING  # the search does not hand it out again
                project_row(probe, cfg, hw, mode, cache)
        for r in bigger:
            while r.status == RowStatus.PROJECTING:  # another task's probe
                time.sleep(0.05)
    known = [r for r in bigger if r.projection]
    if not known:
        return False
    least = max(smaller_microbatch_bound(c, cfg, r) for r in known)
    row.least_compiled_seconds = max(row.least_compiled_seconds or 0.0, least)
    if least < best():
        return False
    row.status = RowStatus.PRUNED_TIME
    row.pruned_by = (f"its microbatches take at least {least:.4g} s (a larger microbatch of the "
                     f"same stage, compiled) >= best {best():.4g} s")
    return True


def recompute_floor(unchunked: dict) -> float:
    """What recomputing more cannot take away from a step without recompute: its matmul and
    attention kernels and its exposed non-data-parallel collectives (recompute only adds
    kernels and collectives; it removes memory-bound stores of activations, and a longer
    backward may hide more of the gradient reduction, so those parts are left out)."""
    p = unchunked["projected"]
    cb = p["compute_breakdown"]
    return (cb["matmul_seconds"] + cb["attention_seconds"] + p["exposed_comm_seconds"]
            - p.get("data_parallel_exposed_seconds", 0.0))


def unchunked_cannot_win(row: Row, rows: dict[str, Row], cfg: ModelConfig, hw: Hardware,
                          mode: str, cache: ProgramCache, best: float) -> bool:
    """Prune a whole-program forward or training step that cannot beat `best`, from the program
    at one batch chunk (the first a fit compiles anyway). More chunks are never faster (each
    re-reads the weights and repeats its collectives, and leaves less backward to hide the
    gradient reduction behind), so the unchunked step is a least step. A training step that
    recomputes (selective, full) is first held against its no-recompute sibling's unchunked
    program (`recompute_floor`), which saves compiling its own when that already loses.
    `bound_violations` checks both on every candidate projected. True when pruned."""
    c = row.candidate
    if c.composed or mode not in ("forward", "train") or not math.isfinite(best):
        return False
    if mode == "train" and c.remat != "none":
        sibling = rows.get(dataclasses.replace(c, remat="none").label)
        plain = unchunked(sibling, cfg, hw, mode, cache) if sibling is not None else None
        if plain is not None:
            least = recompute_floor(plain)
            row.least_compiled_seconds = least
            if least >= best:
                row.status = RowStatus.PRUNED_TIME
                row.pruned_by = (f"its no-recompute sibling's unchunked matmul, attention and "
                                 f"exposed collectives take {least:.4g} s (compiled) >= best "
                                 f"{best:.4g} s, and recompute only adds to them")
                return True
    one = unchunked(row, cfg, hw, mode, cache)
    if one is None:
        return False
    row.least_compiled_seconds = max(row.least_compiled_seconds or 0.0,
                                     one["projected"]["step_seconds"])
    if row.least_compiled_seconds < best:
        return False
    row.status = RowStatus.PRUNED_TIME
    row.pruned_by = (f"its unchunked step {row.least_compiled_seconds:.4g} s (compiled) >= best "
                     f"{best:.4g} s, and more batch chunks are never faster")
    return True

