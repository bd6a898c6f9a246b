"""`helix plan`: which layout should I use? Every legal layout of a model on N devices, pruned by
cheap lower bounds, compiled and priced by `project`, ranked.

1. `space.enumerate_candidates`: each layout kind x every factorisation of N, with the options
   that matter in the mode; illegal ones (`Layout.validate`) are counted by reason.
2. `bounds.bounds`: a lower bound on each candidate's memory and step time, from arithmetic.
   A candidate whose memory bound exceeds the profile's capacity cannot fit and is pruned; the
   rest are projected in the order of their time bound, and one whose time bound exceeds the
   fastest step found so far (that fits) cannot win and is pruned. Bounds never exceed the
   projection, so pruning never drops the best; every projected candidate is checked against
   its bounds and a violation is reported (`explain.bound_violations`). Before a candidate is compiled
   in full, a least step read off a program compiled anyway can prune it too: a whole-program
   step's program at one batch chunk, the first its chunk search compiles
   (`prune.unchunked_cannot_win`; for a recomputing step its no-recompute sibling's), or for a
   composed step a larger microbatch of the same stage (`prune.smaller_microbatch_cannot_win`).
3. `project` prices each survivor, its compiles going through `cache.ProgramCache`, so a
   second run (another hardware profile, another batch with the same microbatch) re-prices
   without recompiling.
4. The result: every candidate with its status, bounds and (when projected) its step time,
   tokens/s, MFU, memory and what its step is made of (`explain.step_terms`); the ranking of those that
   fit; the best's margin over the runner-up; how the best compares with named layouts (the
   paper's, a published configuration) and with any layout the user asks about.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.planner.bounds import bounds
from helix_jax.analysis.planner.cache import ProgramCache
from helix_jax.analysis.planner.projecting import project_row
from helix_jax.analysis.planner.prune import (
    best_step,
    cannot_fit,
    cannot_win,
    smaller_microbatch_cannot_win,
    unchunked_cannot_win,
)
from helix_jax.analysis.planner.rows import Plan, Row
from helix_jax.analysis.planner.space import (
    Candidate,
    default_gspmd,
    enumerate_candidates,
    parse_candidate,
)
from helix_jax.config import ModelConfig
from helix_jax.enums import RowStatus

# The paper's layouts on 16 devices: what the best is explained against by default.
PAPER_ANCHORS = (("tp-pp", "the paper's baseline (TP=8 x PP=2)"),
                 ("helix", "the paper's method for dense models (m=4 x n=4)"),
                 ("ep", "the paper's method for MoE models (EP=16)"))


def paper_anchors(cfg: ModelConfig) -> tuple[tuple[str, str], ...]:
    """The paper's layouts for this kind of model: tp-pp and helix (dense) or ep (MoE)."""
    skip = "helix" if cfg.is_moe else "ep"
    return tuple(a for a in PAPER_ANCHORS if a[0] != skip)


# ----------------------------------------------------------------------------- the search

def plan(cfg: ModelConfig, hw: Hardware, devices: int, mode: str, *,
         kinds: tuple[str, ...] | None = None, prune: bool = True,
         cache: ProgramCache | None = None, anchors: tuple[tuple[str, str], ...] = (),
         explain: tuple[str, ...] = (), progress: bool = False,
         gspmd: bool | None = None, jobs: int = 1, max_micro: int = 0, max_tp: int = 0,
         all_remat: bool = True) -> Plan:
    """Search the layouts of `cfg` on `devices` devices of `hw` in `mode` (see the module doc).

    `anchors`: (candidate text, role) pairs projected whatever their bounds (those that are not
    legal here are skipped); `explain`: candidates the user asked about, also always projected
    (a ValueError if one is not a legal layout of `devices` devices). `jobs` projections run at
    once (threads: XLA compiles without holding the GIL); `max_micro` > 0 limits the sequences
    per microbatch of composed training steps and `max_tp` > 0 tp-pp's tensor parallelism
    (`space`). Without `all_remat`, a training step is not projected when the same layout
    already fits with less recompute (a policy of the search space, not a bound: recompute
    usually only adds time, see docs/plan.md)."""
    start = time.perf_counter()
    cache = cache or ProgramCache(None)
    gspmd = default_gspmd(mode) if gspmd is None else gspmd
    targets = [checked_target(t, cfg, devices, mode) for t in explain]
    candidates, illegal = enumerate_candidates(cfg, devices, mode, kinds, gspmd, max_micro,
                                              max_tp)
    rows = {c.label: Row(c) for c in candidates}
    named = _name_rows(rows, anchors, targets, cfg, devices, mode)
    for row in rows.values():
        try:
            row.bounds = bounds(row.candidate, cfg, hw, mode)
        except (ValueError, RuntimeError) as e:  # e.g. too few host devices for its stage
            row.status, row.error = RowStatus.ERROR, str(e)
    queue = _queue(rows, hw, mode, prune)
    _search(queue, rows, cfg, hw, mode, cache, prune=prune, all_remat=all_remat, jobs=jobs,
            progress=progress)
    cache.save_readouts()
    ranking = sorted((label for label, r in rows.items() if r.status == RowStatus.RANKED),
                     key=lambda label: (rows[label].step, label))
    return Plan(cfg, hw, devices, mode, rows, illegal, ranking, prune,
                time.perf_counter() - start, cache, gspmd, named, [c.label for c in targets])


def _name_rows(rows: dict[str, Row], anchors: tuple[tuple[str, str], ...],
               targets: list[Candidate], cfg: ModelConfig, devices: int, mode: str) -> list[str]:
    """Give the anchors and the asked-about candidates their role (adding rows the enumeration
    left out); the anchors' labels, in order."""
    named: list[str] = []
    for text, role in anchors:
        try:
            c = checked_target(text, cfg, devices, mode)
        except ValueError:
            continue  # the paper's 16-device layouts do not apply to other device counts
        rows.setdefault(c.label, Row(c)).role = role
        named.append(c.label)
    for c in targets:
        row = rows.setdefault(c.label, Row(c))
        row.role = row.role or "asked about"
    return named


def _queue(rows: dict[str, Row], hw: Hardware, mode: str, prune: bool) -> list[str]:
    """The rows to project, in order, after pruning those whose memory bound cannot fit.

    The named layouts first (projected whatever their bounds, they give a first best to prune
    against), then the others in the order of their time bounds; in training, composed steps
    (whose memory the formula already says fits) a little earlier, so that a fitting step is
    found soon. The order only decides how much is pruned, never what wins."""
    queue = []
    for label, row in rows.items():
        if row.status != RowStatus.PENDING:
            continue
        if prune and row.role is None and row.bounds.memory_bytes > hw.hbm_capacity_bytes:
            row.status = RowStatus.PRUNED_MEMORY
            row.pruned_by = (f"memory bound {row.bounds.memory_bytes / 1e9:.3g} GB > "
                             f"{hw.hbm_capacity_bytes / 1e9:.3g} GB")
        else:
            queue.append(label)
    queue.sort(key=lambda label: (rows[label].role is None, rows[label].bounds.seconds
                                  * (1.0 if rows[label].candidate.composed or mode != "train"
                                     else 1.1), label))
    return queue


def _search(queue: list[str], rows: dict[str, Row], cfg: ModelConfig, hw: Hardware, mode: str,
            cache: ProgramCache, *, prune: bool, all_remat: bool, jobs: int,
            progress: bool) -> None:
    """Project the queue, `jobs` at a time, pruning each row at the moment it is handed out."""
    from tqdm.auto import tqdm

    # No time-remaining estimate: a layout costs from milliseconds (pruned, or its program
    # cached) to a minute (a whole training step compiled at several batch chunkings), so a rate
    # over layouts swings by hours. The bar shows what the search did instead.
    bar = tqdm(total=len(queue), desc=f"plan {mode}", unit="layout", disable=not progress,
               file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} layouts, {elapsed}{postfix}")
    waiting = iter(queue)
    running: dict = {}
    best = math.inf
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        def submit() -> None:  # keep `jobs` projections going; prune at the moment of choosing
            while len(running) < max(jobs, 1):
                label = next(waiting, None)
                if label is None:
                    return
                row = rows[label]
                if row.status != RowStatus.PENDING or (
                        prune and row.role is None and _pruned_now(row, rows, best)):
                    bar.update()  # projected already (another's memory probe), or pruned
                    continue
                row.status = RowStatus.PROJECTING
                running[pool.submit(_project_task, row, rows, cfg, hw, mode, cache,
                                    prune and row.role is None,
                                    not all_remat and row.role is None,
                                    lambda: best_step(rows))] = label

        submit()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                row = rows[running.pop(future)]
                future.result()
                s = cache.stats
                bar.set_postfix_str(f"{s.compiles} programs compiled, {s.program_hits} reused; "
                                    f"{row.candidate.label[:40]}", refresh=False)
                bar.update()
            best = min(best, best_step(rows))  # a task may also have projected its memory probe
            submit()
    bar.close()


def _pruned_now(row: Row, rows: dict[str, Row], best: float) -> bool:
    """Prune `row` by memory (its full-recompute sibling does not fit) or by its time bound
    against the best so far; True when pruned."""
    why = cannot_fit(row, rows)
    if why:
        row.status, row.pruned_by = RowStatus.PRUNED_MEMORY, why
        return True
    why = cannot_win(row, best)
    if why:
        row.status, row.pruned_by = RowStatus.PRUNED_TIME, why
        return True
    return False


def checked_target(text: str, cfg: ModelConfig, devices: int, mode: str) -> Candidate:
    """`text` (spec[@remat][@partitioner]) as a legal candidate of the plan, else a ValueError."""
    c = parse_candidate(text, mode)
    if c.layout.devices != devices:
        raise ValueError(f"{text!r} is a {c.layout.devices}-device layout, but --devices is "
                         f"{devices}")
    c.layout.validate(cfg)
    return c


def _project_task(row: Row, rows: dict[str, Row], cfg: ModelConfig, hw: Hardware, mode: str,
                  cache: ProgramCache, prune: bool, least_remat: bool,
                  best: Callable[[], float] = lambda: math.inf) -> None:
    """Project `row`, unless (`least_remat`) the same layout already fits with less recompute,
    or (`prune`) it is a whole-program training step recomputing less than full whose
    full-recompute sibling, projected first as a memory probe whatever its time bound, does not
    fit at its most batch chunks, or its unchunked step is no faster than `best()`
    (`unchunked_cannot_win`)."""
    c = row.candidate
    if least_remat and c.train and c.remat != "none":
        for less in {"selective": ("none",), "full": ("none", "selective")}[c.remat]:
            sibling = rows.get(dataclasses.replace(c, remat=less).label)
            while sibling is not None and sibling.status == RowStatus.PROJECTING:
                time.sleep(0.05)
            if sibling is not None and sibling.projection and sibling.projection["fits"]:
                row.status = RowStatus.SKIPPED_RECOMPUTE
                row.pruned_by = f"{sibling.candidate.label} fits with less recompute"
                return
    if prune and c.train and not c.composed and c.remat != "full":
        probe = rows.get(dataclasses.replace(c, remat="full").label)
        if probe is not None and probe.status in (RowStatus.PENDING, RowStatus.PRUNED_TIME):
            probe.status = RowStatus.PROJECTING  # the search does not hand it out again
            if not unchunked_cannot_win(probe, rows, cfg, hw, mode, cache, best()):
                project_row(probe, cfg, hw, mode, cache)
        while probe is not None and probe.status == RowStatus.PROJECTING:  # another task's probe
            time.sleep(0.05)
        why = cannot_fit(row, rows)
        if why:
            row.status, row.pruned_by = RowStatus.PRUNED_MEMORY, why
            return
    if prune and unchunked_cannot_win(row, rows, cfg, hw, mode, cache, best()):
        return
    if prune and smaller_microbatch_cannot_win(row, rows, cfg, hw, mode, cache, best):
        return
    project_row(row, cfg, hw, mode, cache)
