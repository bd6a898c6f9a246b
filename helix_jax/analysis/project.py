"""Project one layout at full scale: compile it on fake devices, read its cost off the program, and
price that cost on a hardware profile.

Nothing is allocated: parameters and input are ShapeDtypeStructs. Per device, the program gives
matmul FLOPs (loop trip counts applied), memory (arguments + outputs + temp − aliased) and every
collective with its group, payload and executions. Each collective's link (NVLink or InfiniBand)
follows from its replica groups and the layout's placement of mesh positions on nodes.

Timing model (stated in the README): compute = matmul FLOPs / the profile's achieved rate;
collectives cost the ring formulas of `pricing`; they are exposed (not overlapped with compute)
except the all-to-alls of `ep:chunks=K`, of which (K−1)/K can hide behind expert compute.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable

from helix_jax.analysis.cost import read_memory
from helix_jax.analysis.flops import matmul_flops
from helix_jax.analysis.formulas import DTYPE_BYTES, expected_comm_bytes, forward_flops_per_token
from helix_jax.analysis.hardware import Hardware
from helix_jax.analysis.hlo import collectives
from helix_jax.analysis.pricing import collective_time, crosses_nodes
from helix_jax.config import ModelConfig
from helix_jax.layouts import Layout

_FOUR_BYTE = {"f32", "s32", "u32"}


def _build(cfg: ModelConfig, layout: Layout, batch_chunks: int):
    """The sharded model (ValueError when this chunking does not fit the batch)."""
    from helix_jax.devices import devices_for
    from helix_jax.model import Sharded

    devices = devices_for(layout.devices)
    if len(devices) < layout.devices:
        raise RuntimeError(f"{layout.spec} needs {layout.devices} devices; jax has "
                           f"{len(devices)}. Run through `helix project` (it sets up host devices).")
    return Sharded.build(cfg, layout, devices=devices, batch_chunks=batch_chunks)


def _compile(cfg: ModelConfig, layout: Layout, batch_chunks: int):
    sharded = _build(cfg, layout, batch_chunks)
    return sharded, sharded.forward_fn().lower(*sharded.abstract_inputs()).compile()


def chunk_candidates(cfg: ModelConfig, layout: Layout) -> list[int]:
    """Batch chunk counts worth trying, smallest first: powers of two that keep the input spread
    over every device (more chunks than rows per device would stop the spread and so cost memory,
    which keeps memory falling with the chunk count: `fit` relies on that)."""
    spreadable = [a for a in layout.axis_names if a not in layout.mesh_axes("act_seq")]
    shards = layout.size_of(spreadable)
    rows = cfg.batch // shards if cfg.batch % shards == 0 else cfg.batch // layout.size("batch")
    return [k for k in (2**i for i in range(rows.bit_length())) if rows % k == 0]


def fit(cfg: ModelConfig, layout: Layout, capacity_bytes: float,
        progress: Callable[[str], None] | None = None):
    """The fewest batch chunks whose program fits `capacity_bytes` per device; when none fits,
    the most chunked one (its memory is reported, and `fits` is false).

    Memory falls as the chunk count grows, so this bisects: about log2(candidates) + 1 compiles.
    """
    valid = []
    for k in chunk_candidates(cfg, layout):
        try:
            valid.append(_build(cfg, layout, k))
        except ValueError:  # this chunking does not divide the batch or its microbatches
            continue
    if not valid:
        raise ValueError(f"{cfg.name} does not compile on {layout.spec} with any batch chunking")
    compiled: dict[int, tuple] = {}

    def memory(i: int) -> float:
        if i not in compiled:
            program = valid[i].forward_fn().lower(*valid[i].abstract_inputs()).compile()
            compiled[i] = (program, read_memory(program)["total_bytes"])
            if progress:
                progress(f"{layout.spec}: batch_chunks={valid[i].batch_chunks} -> "
                         f"{compiled[i][1] / 1e9:.1f} GB per device")
        return compiled[i][1]

    lo, hi = 0, len(valid) - 1
    if memory(hi) <= capacity_bytes:
        while lo < hi:
            mid = (lo + hi) // 2
            if memory(mid) <= capacity_bytes:
                hi = mid
            else:
                lo = mid + 1
    memory(hi)
    return valid[hi], compiled[hi][0]


def price_collectives(hlo: str, cfg: ModelConfig, layout: Layout, hw: Hardware) -> dict:
    """Every collective of the compiled program `hlo`, grouped and priced on `hw`.

    Returns {"rows": [...], "comm": {"nvlink", "ib"} bytes, "seconds": all collectives,
    "hidden": seconds that `ep:chunks=K` may overlap (before the cap by expert compute)}.
    """
    placed = dataclasses.replace(layout, gpus_per_node=hw.gpus_per_node)
    rows: dict[tuple, dict] = {}
    comm = {"nvlink": 0.0, "ib": 0.0}
    total = hidden = 0.0
    for c in collectives(hlo):
        if c.group_size <= 1:
            continue
        link = "ib" if crosses_nodes(c, placed.node_of) else "nvlink"
        dtype = cfg.dtype if c.dtype not in _FOUR_BYTE or cfg.dtype == "float32" else c.dtype
        dtype = {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}.get(dtype, dtype)
        seconds = collective_time(c, hw, placed.node_of)
        comm[link] += c.payload_bytes * c.trip_count
        total += seconds
        if c.op == "all-to-all" and layout.options.get("chunks", 1) > 1:
            k = layout.options["chunks"]
            hidden += seconds * (k - 1) / k
        key = (c.op, dtype, c.group_size, link, c.payload_bytes)
        row = rows.setdefault(key, {"op": c.op, "dtype": dtype, "group_size": c.group_size,
                                    "count": 0, "payload_bytes_per_device": c.payload_bytes,
                                    "link": link, "seconds": 0.0})
        row["count"] += c.trip_count
        row["seconds"] += seconds
    return {"rows": sorted(rows.values(), key=lambda r: -r["seconds"]), "comm": comm,
            "seconds": total, "hidden": hidden, "intra_node_axes": placed.intra_node_axes()}


def _timing(cfg: ModelConfig, layout: Layout, hw: Hardware, flops: float, priced: dict) -> dict:
    """Step time = compute + exposed communication, and what follows from it."""
    tokens = cfg.batch * cfg.seq
    compute_seconds = flops / hw.flops_per_s
    hidden = priced["hidden"]
    if hidden:  # overlap can hide at most the expert compute (its matmul share of the FLOPs)
        expert = 4 * cfg.d_model * cfg.d_ff * cfg.top_k * cfg.n_layers * tokens / layout.devices
        hidden = min(hidden, expert * cfg.capacity_factor / hw.flops_per_s)
    exposed = priced["seconds"] - hidden
    step = compute_seconds + exposed
    return {
        "step_seconds": step,
        "compute_seconds": compute_seconds,
        "comm_seconds": priced["seconds"],
        "exposed_comm_seconds": exposed,
        "tokens_per_s": tokens / step,
        "mfu": forward_flops_per_token(cfg) * tokens / step / (layout.devices * hw.peak_flops_per_s),
        "tpot_ms": step / cfg.seq * 1e3,
    }


def project(cfg: ModelConfig, layout: Layout, hw: Hardware, batch_chunks: int | None = None,
            progress: Callable[[str], None] | None = None) -> dict:
    """The full read-out and projection of `cfg` on `layout` priced on `hw` (see module doc)."""
    layout.validate(cfg)
    # XLA:CPU widens bf16 collectives to f32; fp16 has the same bytes and FLOPs and is kept as is.
    analysed = cfg.replace(dtype="float16") if cfg.dtype == "bfloat16" else cfg
    if batch_chunks is None:
        sharded, compiled = fit(analysed, layout, hw.hbm_capacity_bytes, progress)
    else:
        sharded, compiled = _compile(analysed, layout, batch_chunks)
    hlo = compiled.as_text()
    flops = matmul_flops(hlo)
    memory = read_memory(compiled)
    priced = price_collectives(hlo, cfg, layout, hw)
    by_op: dict[str, float] = defaultdict(float)
    for r in priced["rows"]:
        by_op[r["op"]] += r["payload_bytes_per_device"] * r["count"]
    return {
        "model": cfg.name,
        "layout": layout.spec,
        "hardware": hw.name,
        "devices": layout.devices,
        "mesh": layout.axis_sizes,
        "batch": cfg.batch,
        "seq": cfg.seq,
        "dtype": cfg.dtype,
        "batch_chunks": sharded.batch_chunks,
        "tokens_per_step": cfg.batch * cfg.seq,
        "flops_per_device": flops["flops"],
        "flops_note": ("upper bound: runtime-skipped causal blocks counted"
                       if flops.get("conditionals") else "exact"),
        "model_flops_per_token": forward_flops_per_token(cfg),
        "memory_bytes_per_device": memory["total_bytes"],
        "memory": memory,
        "fits": memory["total_bytes"] <= hw.hbm_capacity_bytes,
        "collectives": priced["rows"],
        "comm_bytes_per_device": priced["comm"],
        "comm_bytes_by_op": dict(by_op),
        "expected_comm_bytes_by_op": expected_comm_bytes(
            analysed, layout, sharded.batch_chunks, sharded.spread_axes),
        "projected": _timing(cfg, layout, hw, flops["flops"], priced),
        "intra_node_axes": priced["intra_node_axes"],
        "bytes_per_element": DTYPE_BYTES[cfg.dtype],
    }
