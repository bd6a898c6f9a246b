"""Reading a finished plan: what each step is made of (`step_terms`), how two candidates differ
(`compare`), the bounds every projection must respect (`bound_violations`), why nothing fits,
and the plan as JSON."""

from __future__ import annotations

import dataclasses

from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.costmodel.topology import data_replica_nodes, stages_cross_nodes
from helix_jax.analysis.planner.bounds import whole_model_floor
from helix_jax.analysis.planner.prune import keeps_least
from helix_jax.analysis.planner.rows import Plan, Row
from helix_jax.analysis.planner.space import Candidate
from helix_jax.enums import RowStatus
from helix_jax.layouts import parse_layout
from helix_jax.units import gb

TERMS = ("compute", "HBM", "exposed NVLink", "exposed InfiniBand", "pipeline bubble")


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
        least = keeps_least(row, plan_.rows)
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
              if r.status == RowStatus.PRUNED_MEMORY and r.bounds]
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

