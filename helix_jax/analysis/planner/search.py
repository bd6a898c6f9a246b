"""`helix plan`: which layout should I use? Every legal layout of a model on N devices, pruned by
cheap lower bounds, compiled and priced by `project`, ranked.

1. `plan_space.enumerate_candidates`: each layout kind x every factorisation of N, with the options
   that matter in the mode; illegal ones (`Layout.validate`) are counted by reason.
2. `plan_bounds.bounds`: a lower bound on each candidate's memory and step time, from arithmetic.
   A candidate whose memory bound exceeds the profile's capacity cannot fit and is pruned; the
   rest are projected in the order of their time bound, and one whose time bound exceeds the
   fastest step found so far (that fits) cannot win and is pruned. Bounds never exceed the
   projection, so pruning never drops the best; every projected candidate is checked against
   its bounds and a violation is reported (`bound_violations`). Before a candidate is compiled
   in full, a least step read off a program compiled anyway can prune it too: a whole-program
   step's program at one batch chunk, the first its chunk search compiles
   (`_unchunked_cannot_win`; for a recomputing step its no-recompute sibling's), or for a
   composed step a larger microbatch of the same stage (`_smaller_microbatch_cannot_win`).
3. `project` prices each survivor, its compiles going through `plan_cache.ProgramCache`, so a
   second run (another hardware profile, another batch with the same microbatch) re-prices
   without recompiling.
4. The result: every candidate with its status, bounds and (when projected) its step time,
   tokens/s, MFU, memory and what its step is made of (`step_terms`); the ranking of those that
   fit; the best's margin over the runner-up; how the best compares with named layouts (the
   paper's, a published configuration) and with any layout the user asks about.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from helix_jax.analysis.costmodel.hardware import Hardware, hardware_to_dict
from helix_jax.analysis.costmodel.topology import data_replica_nodes, stages_cross_nodes
from helix_jax.analysis.planner.bounds import Bounds, bounds, whole_model_floor
from helix_jax.analysis.planner.cache import ProgramCache
from helix_jax.analysis.planner.space import (
    Candidate,
    default_gspmd,
    enumerate_candidates,
    parse_candidate,
)
from helix_jax.checks import gb
from helix_jax.config import ModelConfig
from helix_jax.layouts import parse_layout

TERMS = ("compute", "HBM", "exposed NVLink", "exposed InfiniBand", "pipeline bubble")
# The paper's layouts on 16 devices: what the best is explained against by default.
PAPER_ANCHORS = (("tp-pp", "the paper's baseline (TP=8 x PP=2)"),
                 ("helix", "the paper's method for dense models (m=4 x n=4)"),
                 ("ep", "the paper's method for MoE models (EP=16)"))


def paper_anchors(cfg: ModelConfig) -> tuple[tuple[str, str], ...]:
    """The paper's layouts for this kind of model: tp-pp and helix (dense) or ep (MoE)."""
    skip = "helix" if cfg.is_moe else "ep"
    return tuple(a for a in PAPER_ANCHORS if a[0] != skip)


@dataclass
class Row:
    """One candidate in a plan: its bounds, status and (when projected) its projection."""

    candidate: Candidate
    bounds: Bounds | None = None
    status: str = "pending"
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
        status = Counter(r.status for r in self.rows.values())
        return {"enumerated": len(self.rows) + sum(self.illegal.values()),
                "illegal": sum(self.illegal.values()), "considered": len(self.rows),
                "pruned_memory": status["pruned: memory"], "pruned_time": status["pruned: time"],
                "skipped_recompute": status["skipped: recompute"],
                "projected": status["ranked"] + status["does not fit"] + status["error"],
                "fit": status["ranked"], "do_not_fit": status["does not fit"],
                "errors": status["error"]}


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
    (`plan_space`). Without `all_remat`, a training
    step is not projected when the same layout already fits with less recompute (a policy of the
    search space, not a bound: recompute usually only adds time, see docs/plan.md)."""
    start = time.perf_counter()
    cache = cache or ProgramCache(None)
    gspmd = default_gspmd(mode) if gspmd is None else gspmd
    targets = [checked_target(t, cfg, devices, mode) for t in explain]
    candidates, illegal = enumerate_candidates(cfg, devices, mode, kinds, gspmd, max_micro,
                                              max_tp)
    rows = {c.label: Row(c) for c in candidates}
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
    for row in rows.values():
        try:
            row.bounds = bounds(row.candidate, cfg, hw, mode)
        except (ValueError, RuntimeError) as e:  # e.g. too few host devices for its stage
            row.status, row.error = "error", str(e)
    queue = []
    for label, row in rows.items():
        if row.status != "pending":
            continue
        if prune and row.role is None and row.bounds.memory_bytes > hw.hbm_capacity_bytes:
            row.status = "pruned: memory"
            row.pruned_by = (f"memory bound {row.bounds.memory_bytes / 1e9:.3g} GB > "
                             f"{hw.hbm_capacity_bytes / 1e9:.3g} GB")
        else:
            queue.append(label)
    # The named layouts first (projected whatever their bounds, they give a first best to
    # prune against), then the others in the order of their time bounds; in training, composed
    # steps (whose memory the formula already says fits) a little earlier, so that a fitting step
    # is found soon. The order only decides how much is pruned, never what wins.
    queue.sort(key=lambda label: (rows[label].role is None, rows[label].bounds.seconds
                                  * (1.0 if rows[label].candidate.composed or mode != "train"
                                     else 1.1), label))
    best = math.inf
    from tqdm.auto import tqdm

    # No time-remaining estimate: a layout costs from milliseconds (pruned, or its program
    # cached) to a minute (a whole training step compiled at several batch chunkings), so a rate
    # over layouts swings by hours. The bar shows what the search did instead.
    bar = tqdm(total=len(queue), desc=f"plan {mode}", unit="layout", disable=not progress,
               file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} layouts, {elapsed}{postfix}")
    waiting = iter(queue)
    running: dict = {}
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        def submit() -> None:  # keep `jobs` projections going; prune at the moment of choosing
            while len(running) < max(jobs, 1):
                label = next(waiting, None)
                if label is None:
                    return
                row = rows[label]
                if row.status != "pending":  # projected already, as another's memory probe
                    bar.update()
                    continue
                if prune and row.role is None:
                    why = _cannot_fit(row, rows)
                    if why:
                        row.status, row.pruned_by = "pruned: memory", why
                        bar.update()
                        continue
                    why = _cannot_win(row, best)
                    if why:
                        row.status, row.pruned_by = "pruned: time", why
                        bar.update()
                        continue
                row.status = "projecting"
                running[pool.submit(_project_task, row, rows, cfg, hw, mode, cache,
                                    prune and row.role is None,
                                    not all_remat and row.role is None,
                                    lambda: _best(rows))] = label

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
            best = min(best, _best(rows))  # a task may also have projected its memory probe
            submit()
    bar.close()
    cache.save_readouts()
    ranking = sorted((label for label, r in rows.items() if r.status == "ranked"),
                     key=lambda label: (rows[label].step, label))
    return Plan(cfg, hw, devices, mode, rows, illegal, ranking, prune,
                time.perf_counter() - start, cache, gspmd, named, [c.label for c in targets])


def _best(rows: dict[str, Row]) -> float:
    """The fastest step that fits so far."""
    return min((r.step for r in list(rows.values()) if r.status == "ranked"), default=math.inf)


def _keeps_least(row: Row, rows: dict[str, Row]) -> Row | None:
    """The projected full-recompute sibling of a whole-program training step (remat none or
    selective): the same program but for recompute, at the same (its most) batch chunking."""
    c = row.candidate
    if not c.train or c.composed or c.remat == "full":
        return None
    sibling = rows.get(dataclasses.replace(c, remat="full").label)
    return sibling if sibling is not None and sibling.projection is not None else None


def _cannot_fit(row: Row, rows: dict[str, Row]) -> str | None:
    """Why `row` cannot fit memory: its full-recompute sibling does not fit even at the most
    batch chunks (recompute keeps fewer activations and adds no buffer, so the program that
    recomputes less needs at least as much memory at the same chunking)."""
    sibling = _keeps_least(row, rows)
    if sibling is None or sibling.projection["fits"]:
        return None
    return (f"{sibling.candidate.label} keeps the least and needs "
            f"{sibling.projection['memory_bytes_per_device'] / 1e9:.3g} GB at its most batch "
            f"chunks")


def _cannot_win(row: Row, best: float) -> str | None:
    """Why `row` cannot beat `best` seconds (None if it might)."""
    if row.bounds.seconds >= best:
        return f"time bound {row.bounds.seconds:.4g} s >= best {best:.4g} s"
    return None


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
    (`_unchunked_cannot_win`)."""
    c = row.candidate
    if least_remat and c.train and c.remat != "none":
        for less in {"selective": ("none",), "full": ("none", "selective")}[c.remat]:
            sibling = rows.get(dataclasses.replace(c, remat=less).label)
            while sibling is not None and sibling.status == "projecting":
                time.sleep(0.05)
            if sibling is not None and sibling.projection and sibling.projection["fits"]:
                row.status = "skipped: recompute"
                row.pruned_by = f"{sibling.candidate.label} fits with less recompute"
                return
    if prune and c.train and not c.composed and c.remat != "full":
        probe = rows.get(dataclasses.replace(c, remat="full").label)
        if probe is not None and probe.status in ("pending", "pruned: time"):
            probe.status = "projecting"  # the search does not hand it out again
            if not _unchunked_cannot_win(probe, rows, cfg, hw, mode, cache, best()):
                _project(probe, cfg, hw, mode, cache)
        while probe is not None and probe.status == "projecting":  # another task's probe
            time.sleep(0.05)
        why = _cannot_fit(row, rows)
        if why:
            row.status, row.pruned_by = "pruned: memory", why
            return
    if prune and _unchunked_cannot_win(row, rows, cfg, hw, mode, cache, best()):
        return
    if prune and _smaller_microbatch_cannot_win(row, rows, cfg, hw, mode, cache, best):
        return
    _project(row, cfg, hw, mode, cache)


def _stage_group(c: Candidate) -> tuple:
    """What a composed step's stage program is, but for its microbatch size."""
    o = c.layout.options
    return (o["tp"], o["sp"], o["pp"], c.remat)


def _microbatch(c: Candidate, cfg: ModelConfig) -> int:
    o = c.layout.options
    return cfg.batch // o["dp"] // o["microbatches"]


def _smaller_microbatch_bound(c: Candidate, cfg: ModelConfig, bigger: Row) -> float:
    """A least step of composed `c` from the projection of `bigger`, a composed step of the same
    stage program but for a larger microbatch: every one of c's M microbatches takes at least its
    share (micro / bigger's micro) of bigger's microbatch compute, and the optimizer update is the
    same program over c's replicas."""
    p, o = bigger.projection["projected"], bigger.candidate.layout.options
    per_replica = cfg.batch // c.layout.options["dp"]
    update = p["optimizer_seconds"] * o["dp"] / c.layout.options["dp"]
    return per_replica / _microbatch(bigger.candidate, cfg) * p["microbatch_compute_seconds"] + update


def _smaller_microbatch_cannot_win(row: Row, rows: dict[str, Row], cfg: ModelConfig,
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
    group, micro = _stage_group(c), _microbatch(c, cfg)
    bigger = [r for r in list(rows.values()) if r.candidate.composed and r is not row
              and _stage_group(r.candidate) == group and _microbatch(r.candidate, cfg) > micro]
    if not any(r.projection for r in bigger):
        pending = [r for r in bigger if r.status == "pending" and r.bounds is not None
                   and r.bounds.seconds < best()]
        if pending:
            probe = min(pending, key=lambda r: (-_microbatch(r.candidate, cfg), r.bounds.seconds,
                                                r.candidate.label))
            if probe.status == "pending":
                probe.status = "projecting"  # the search does not hand it out again
                _project(probe, cfg, hw, mode, cache)
        for r in bigger:
            while r.status == "projecting":  # another task's probe
                time.sleep(0.05)
    known = [r for r in bigger if r.projection]
    if not known:
        return False
    least = max(_smaller_microbatch_bound(c, cfg, r) for r in known)
    row.least_compiled_seconds = max(row.least_compiled_seconds or 0.0, least)
    if least < best():
        return False
    row.status = "pruned: time"
    row.pruned_by = (f"its microbatches take at least {least:.4g} s (a larger microbatch of the "
                     f"same stage, compiled) >= best {best():.4g} s")
    return True


def _unchunked(row: Row, cfg: ModelConfig, hw: Hardware, mode: str,
               cache: ProgramCache) -> dict | None:
    """`row`'s whole program projected at one batch chunk (kept on the row), None if it fails."""
    from helix_jax.analysis.costmodel import project as P

    if row.unchunked is None:
        c = row.candidate
        try:
            row.unchunked = P.project(cfg, c.layout, hw, batch_chunks=1, mode=mode,
                                      remat=c.remat, partitioner=c.partitioner,
                                      compiler=cache).to_dict()
        except Exception:  # noqa: BLE001 - one chunk may not build or compile: the fit will say
            row.unchunked = {}
    return row.unchunked or None


def _recompute_floor(unchunked: dict) -> float:
    """What recomputing more cannot take away from a step without recompute: its matmul and
    attention kernels and its exposed non-data-parallel collectives (recompute only adds
    kernels and collectives; it removes memory-bound stores of activations, and a longer
    backward may hide more of the gradient reduction, so those parts are left out)."""
    p = unchunked["projected"]
    cb = p["compute_breakdown"]
    return (cb["matmul_seconds"] + cb["attention_seconds"] + p["exposed_comm_seconds"]
            - p.get("data_parallel_exposed_seconds", 0.0))


def _unchunked_cannot_win(row: Row, rows: dict[str, Row], cfg: ModelConfig, hw: Hardware,
                          mode: str, cache: ProgramCache, best: float) -> bool:
    """Prune a whole-program forward or training step that cannot beat `best`, from the program
    at one batch chunk (the first a fit compiles anyway). More chunks are never faster (each
    re-reads the weights and repeats its collectives, and leaves less backward to hide the
    gradient reduction behind), so the unchunked step is a least step. A training step that
    recomputes (selective, full) is first held against its no-recompute sibling's unchunked
    program (`_recompute_floor`), which saves compiling its own when that already loses.
    `bound_violations` checks both on every candidate projected. True when pruned."""
    c = row.candidate
    if c.composed or mode not in ("forward", "train") or not math.isfinite(best):
        return False
    if mode == "train" and c.remat != "none":
        sibling = rows.get(dataclasses.replace(c, remat="none").label)
        plain = _unchunked(sibling, cfg, hw, mode, cache) if sibling is not None else None
        if plain is not None:
            least = _recompute_floor(plain)
            row.least_compiled_seconds = least
            if least >= best:
                row.status = "pruned: time"
                row.pruned_by = (f"its no-recompute sibling's unchunked matmul, attention and "
                                 f"exposed collectives take {least:.4g} s (compiled) >= best "
                                 f"{best:.4g} s, and recompute only adds to them")
                return True
    one = _unchunked(row, cfg, hw, mode, cache)
    if one is None:
        return False
    row.least_compiled_seconds = max(row.least_compiled_seconds or 0.0,
                                     one["projected"]["step_seconds"])
    if row.least_compiled_seconds < best:
        return False
    row.status = "pruned: time"
    row.pruned_by = (f"its unchunked step {row.least_compiled_seconds:.4g} s (compiled) >= best "
                     f"{best:.4g} s, and more batch chunks are never faster")
    return True


def _project(row: Row, cfg: ModelConfig, hw: Hardware, mode: str, cache: ProgramCache) -> None:
    """Project one candidate (from the priced cache when it was projected before). It always
    ends with a status other tasks can read: a failed compile is an error row, not a stuck one."""
    try:
        _project_or_raise(row, cfg, hw, mode, cache)
    except Exception as e:  # noqa: BLE001 - one layout failing to compile stops no search
        row.status, row.error = "error", f"{type(e).__name__}: {e}"[:2000]


def _project_or_raise(row: Row, cfg: ModelConfig, hw: Hardware, mode: str,
                      cache: ProgramCache) -> None:
    from helix_jax.analysis.costmodel import project as P

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
                               partitioner=c.partitioner, compiler=cache).to_dict()
        except ValueError as e:  # this layout cannot run this model (kept: it will not either)
            result = {"error": str(e)}
        cache.store_priced(key, result)
    row.pruned_by = None
    if "error" in result:
        row.status, row.error = "error", result["error"]
        return
    row.projection = result
    row.status = "ranked" if result["fits"] else "does not fit"


# ----------------------------------------------------------------------------- reading a plan

def step_terms(r: dict, hw: Hardware) -> dict[str, float]:
    """A projected step split into TERMS (seconds; they add up to the step): compute (matmul
    and attention kernels), HBM (memory-bound kernels, the optimizer update, a decode step's HBM
    floor), exposed communication per link and the pipeline bubble."""
    p, rows = r["projected"], r.get("collectives", [])
    cb = p["compute_breakdown"]
    t = dict.fromkeys(TERMS, 0.0)

    def by_link(seconds: float, rows_: list[dict]) -> None:
        total = sum(x["seconds"] for x in rows_)
        for x in rows_:
            if total > 0:
                key = "exposed InfiniBand" if x["link"] == "ib" else "exposed NVLink"
                t[key] += seconds * x["seconds"] / total

    if "pipeline_seconds" in p:  # composed from one stage's program
        keep = 1 - (p["bubble_seconds"] / p["pipeline_seconds"] if p["pipeline_seconds"] else 0)
        t["compute"] = (cb["matmul_seconds"] + cb["attention_seconds"]) * keep
        t["HBM"] = cb["memory_seconds"] * keep + p["optimizer_seconds"]
        by_link(p["tensor_comm_exposed_seconds"] * keep, rows)
        t["pipeline bubble"] = p["bubble_seconds"]
        layout = parse_layout(r["layout"])
        t["exposed InfiniBand" if stages_cross_nodes(layout, hw) else "exposed NVLink"] += \
            p["pipeline_send_seconds"]
        t["exposed InfiniBand" if data_replica_nodes(layout, hw) > 1 else "exposed NVLink"] += \
            p["data_parallel_exposed_seconds"]
        return t
    t["compute"] = cb["matmul_seconds"] + cb["attention_seconds"]
    t["HBM"] = cb["memory_seconds"]
    if "hbm_floor_seconds" in p:  # prefill / decode: never below the HBM floor
        by_link(p["comm_seconds"], rows)
        t["HBM"] += max(p["step_seconds"] - p["compute_seconds"] - p["comm_seconds"], 0.0)
        return t
    overlapped = p.get("data_parallel_comm_seconds", 0.0) > 0  # training: behind the backward
    data = [x for x in rows if x.get("data_parallel") and overlapped]
    other = [x for x in rows if not (x.get("data_parallel") and overlapped)]
    hidden = (p["comm_seconds"] - p.get("data_parallel_comm_seconds", 0.0)
              + p.get("data_parallel_exposed_seconds", 0.0) - p["exposed_comm_seconds"])
    a2a = [x for x in other if x["op"] == "all-to-all"]
    by_link(sum(x["seconds"] for x in other), other)
    by_link(-hidden, a2a)
    by_link(p.get("data_parallel_exposed_seconds", 0.0), data)
    return t


def dominant(terms: dict[str, float]) -> str:
    return max(TERMS, key=lambda k: terms[k])


def top_collectives(r: dict, k: int = 3) -> list[dict]:
    """The `k` collectives that take the most time, with what they are."""
    rows = sorted(r.get("collectives", []), key=lambda x: -x["seconds"])[:k]
    return [{"op": x["op"], "group_size": x["group_size"], "link": x["link"],
             "count": x["count"], "payload_bytes": x["payload_bytes_per_device"],
             "seconds": x["seconds"], "data_parallel": x.get("data_parallel", False)}
            for x in rows]


def summary(row: Row, hw: Hardware) -> dict | None:
    """The numbers a table shows for one projected candidate."""
    r = row.projection
    if r is None:
        return None
    p = r["projected"]
    terms = step_terms(r, hw)
    return {"step_seconds": p["step_seconds"], "tokens_per_s": p["tokens_per_s"],
            "mfu": p["mfu"], "memory_bytes": r["memory_bytes_per_device"], "fits": r["fits"],
            "fits_why": r.get("fits_why"), "terms": terms, "dominant": dominant(terms),
            "batch_chunks": r.get("batch_chunks"), "compiled": r.get("compiled"),
            "tpot_ms": p.get("tpot_ms"), "top_collectives": top_collectives(r)}


def compare(plan_: Plan, label: str, against: str | None = None) -> dict:
    """How candidate `label` stands against `against` (default: the best): the step times and,
    term by term, where the time goes differently; the term that costs it most, with the
    collective behind it when that term is communication."""
    row = plan_.rows[label]
    ref = plan_.rows[against] if against else plan_.best
    out: dict = {"label": label, "status": row.status, "role": row.role,
                 "against": ref.candidate.label if ref else None}
    if row.projection is None or ref is None or ref.projection is None:
        return out
    mine, theirs = step_terms(row.projection, plan_.hw), step_terms(ref.projection, plan_.hw)
    deltas = {k: mine[k] - theirs[k] for k in TERMS}
    worst = max(TERMS, key=lambda k: deltas[k])
    link = {"exposed NVLink": "nvlink", "exposed InfiniBand": "ib"}.get(worst)
    op = None
    if link:
        on_link = [x for x in row.projection.get("collectives", []) if x["link"] == link]
        if on_link:
            op = max(on_link, key=lambda x: x["seconds"])["op"]
    out.update({"step_seconds": row.step, "against_step_seconds": ref.step,
                "slower_by": row.step / ref.step - 1, "deltas": deltas, "main_term": worst,
                "main_delta_seconds": deltas[worst], "main_op": op,
                "fits": row.projection["fits"], "memory_bytes": row.projection[
                    "memory_bytes_per_device"], "terms": mine})
    return out


def option_changes(frm: Candidate, to: Candidate) -> list[str]:
    """What changes from one candidate to another: 'pp 2 -> 4', 'remat none -> selective'."""
    if frm.layout.kind != to.layout.kind:
        return [f"layout {frm.layout.spec} -> {to.layout.spec}"]
    a, b = frm.layout.options, to.layout.options
    # options that the target's projection does not read are no change
    moot = {"schedule", "virtual", "tp_overlap"} if not to.composed else {"place"}
    out = [f"{k} {_text(a.get(k))} -> {_text(b.get(k))}" for k in b
           if a.get(k) != b.get(k) and not (to.train and k in moot)]
    if frm.remat != to.remat:
        out.append(f"remat {frm.remat} -> {to.remat}")
    if frm.partitioner != to.partitioner:
        out.append(f"partitioner {frm.partitioner} -> {to.partitioner}")
    return out


def _text(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def bound_violations(plan_: Plan) -> list[dict]:
    """Projected candidates whose projection came in under a lower bound (should be none)."""
    out = []
    for label, row in plan_.rows.items():
        if row.projection is None or row.bounds is None:
            continue
        step, memory = row.step, row.projection["memory_bytes_per_device"]
        least = _keeps_least(row, plan_.rows)
        least_chunked = least is not None and least.projection.get("batch_chunks") == \
            row.projection.get("batch_chunks")
        memory_floor = max(row.bounds.memory_bytes, least.projection["memory_bytes_per_device"]
                           if least_chunked else 0.0)
        if step < row.least_seconds * (1 - 1e-9) or memory < memory_floor * (1 - 1e-9):
            out.append({"label": label, "step_seconds": step, "bound_seconds": row.least_seconds,
                        "memory_bytes": memory, "bound_memory_bytes": memory_floor,
                        "full_recompute_sibling": least.candidate.label if least_chunked
                        else None})
    return out


def nothing_fits(plan_: Plan) -> str | None:
    """Why no candidate fits and what might, or None when one does: the model's floor across all
    the devices (`plan_bounds.Floor`) when even that exceeds them, else the closest candidate."""
    if plan_.best is not None:
        return None
    cfg, n = plan_.cfg, plan_.devices
    floor = whole_model_floor(cfg, plan_.hw, n, plan_.mode)
    if floor.total_bytes > floor.capacity_bytes:
        held = f"the {floor.state} ({gb(floor.state_bytes)})"
        if floor.cache_bytes_per_sequence:
            held += (f" and the KV cache of batch {cfg.batch} at context {cfg.seq:,} "
                     f"({gb(floor.cache_bytes_per_sequence * cfg.batch)})")
        text = (f"{held} alone need {gb(floor.total_bytes)}, more than the {n} devices hold "
                f"together ({gb(floor.capacity_bytes)}), so no layout can fit")
        if floor.cache_bytes_per_sequence and floor.max_batch > 0:
            return text + (f"; at most batch {floor.max_batch} could (before temporaries): try a "
                           f"smaller --batch, a shorter --context or more --devices")
        return text + f"; use at least {floor.min_devices} devices or a smaller model"
    projected = [r for r in plan_.rows.values() if r.projection is not None]
    pruned = [r.bounds.memory_bytes for r in plan_.rows.values()
              if r.status == "pruned: memory" and r.bounds]
    parts = []
    if projected:
        low = min(projected, key=lambda r: r.projection["memory_bytes_per_device"])
        parts.append(f"the least memory of those projected is {low.candidate.label}'s, "
                     f"{gb(low.projection['memory_bytes_per_device'])} per device against "
                     f"{gb(plan_.hw.hbm_capacity_bytes)}")
    if pruned:
        parts.append(f"the {len(pruned)} pruned by memory need at least {gb(min(pruned))} per "
                     f"device by their lower bound")
    return (("; ".join(parts) or "nothing could be projected")
            + "; try a smaller --batch or more --devices")


def to_json(plan_: Plan) -> dict:
    """The whole plan as plain data (what `--json` writes, less the provenance)."""
    best = plan_.best
    runner = plan_.rows[plan_.ranking[1]] if len(plan_.ranking) > 1 else None
    cfg = plan_.cfg
    return {
        "model": cfg.name, "config": dataclasses.asdict(cfg), "mode": plan_.mode,
        "devices": plan_.devices, "hardware": plan_.hw.name,
        "capacity_bytes": plan_.hw.hbm_capacity_bytes, "batch": cfg.batch, "seq": cfg.seq,
        "prune": plan_.prune, "gspmd_candidates": plan_.gspmd, "counts": plan_.counts(),
        "illegal_by_reason": dict(plan_.illegal.most_common()),
        "best": best.candidate.label if best else None,
        "runner_up": runner.candidate.label if runner else None,
        "margin_over_runner_up": (runner.step / best.step - 1) if runner else None,
        "nothing_fits": nothing_fits(plan_),
        "ranking": plan_.ranking,
        "anchors": [compare(plan_, a) for a in plan_.anchors],
        "explain": [compare(plan_, e) for e in plan_.explain],
        "bound_violations": bound_violations(plan_),
        "seconds": plan_.seconds,
        "cache": {"dir": str(plan_.cache.root) if plan_.cache.root else None,
                  **dataclasses.asdict(plan_.cache.stats)},
        "candidates": [
            {"label": label, "spec": r.candidate.layout.spec, "kind": r.candidate.layout.kind,
             "remat": r.candidate.remat, "partitioner": r.candidate.partitioner,
             "composed": r.candidate.composed, "status": r.status, "role": r.role,
             "bounds": r.bounds.to_json() if r.bounds else None,
             "least_compiled_seconds": r.least_compiled_seconds,
             "projection": summary(r, plan_.hw), "error": r.error, "pruned_by": r.pruned_by}
            for label, r in plan_.rows.items()],
    }
