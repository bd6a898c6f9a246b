"""The terms every projection shares: building the sharded model on fake devices, pricing a
program's collectives, the overlap rule, MFU's model FLOPs, the attention's score blocks, and the
hardware constants each term uses (with their sources). `project` (whole programs) and `compose`
(pipelines and data replicas extended by formula) both build on it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from helix_jax.analysis.costmodel.formulas import forward_flops_per_token
from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.costmodel.pricing import collective_time, crosses_nodes
from helix_jax.analysis.costmodel.topology import axis_groups, intra_node_axes, node_of
from helix_jax.analysis.hlo.collectives import collectives
from helix_jax.config import ModelConfig
from helix_jax.enums import AttentionKernel
from helix_jax.layouts import Layout

_FOUR_BYTE = {"f32", "s32", "u32"}


def analysed_config(cfg: ModelConfig) -> ModelConfig:
    """The config a projection compiles: bfloat16 as float16 (XLA:CPU widens bf16 collectives to
    f32; fp16 has the same bytes and FLOPs and is kept as is)."""
    return cfg.replace(dtype="float16") if cfg.dtype == "bfloat16" else cfg


def build_sharded(cfg: ModelConfig, layout: Layout, batch_chunks: int, remat: str = "none",
                  partitioner: str = "shard_map", weights: str = "model"):
    """The sharded model (ValueError when this chunking does not fit the batch), with its
    ordinary attention as the blockwise scan: the roofline prices the attention core as one
    fused GPU kernel, and the scan's program holds no whole score matrix that such a kernel
    never writes (XLA:CPU's library call would; `projection.attention_kernel_note`). Without
    `tp_overlap`: the program keeps sequence parallelism's all-gathers and reduce-scatters, which
    the overlap rule then prices as hidden behind the stage's matmuls (the runtime's collective
    matmuls move the same bytes as t - 1 permutes of a chunk). `weights`: what a prefill or
    decode step reads (`Sharded.weights`)."""
    from helix_jax.devices import devices_for
    from helix_jax.model import Sharded

    devices = devices_for(layout.devices)
    if len(devices) < layout.devices:
        raise RuntimeError(f"{layout.spec} needs {layout.devices} devices; jax has "
                           f"{len(devices)}. Run through `helix project` (it sets up host devices).")
    if layout.options.get("tp_overlap"):
        layout = dataclasses.replace(layout, options={**layout.options, "tp_overlap": False})
    return Sharded.build(cfg, layout, devices=devices, batch_chunks=batch_chunks, remat=remat,
                         partitioner=partitioner, attention_kernel=AttentionKernel.BLOCKWISE,
                         weights=weights)


def _is_ring_step(c, ring: set[frozenset[int]]) -> bool:
    """A collective-permute of a stacked K/V array [2, B, n, g, d] within context groups."""
    shape = c.operand_shapes[0] if c.operand_shapes else ()
    return (c.op == "collective-permute" and len(shape) == 5 and shape[0] == 2
            and bool(c.source_target_pairs)
            and all(any({s, t} <= g for g in ring) for s, t in c.source_target_pairs))


def _subsets(axes: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every subset of `axes` (the empty one first), in their order."""
    return [tuple(a for i, a in enumerate(axes) if mask >> i & 1) for mask in range(2 ** len(axes))]


def ring_hidden(priced: dict, attention_seconds: float, shards: int) -> float:
    """Seconds of the context-parallel ring that hide behind attention: each K/V pass travels while the
    shard attends to the chunks it already holds, so it hides behind that step's attention when
    the step takes longer (Megatron-Core and torchtitan overlap them so). A layer's attention is
    K steps, K − 1 of them with a pass in flight; the roofline's attention seconds are spread
    evenly over the steps."""
    ring, count = priced.get("ring_seconds", 0.0), priced.get("ring_count", 0)
    if not ring or shards < 2:
        return 0.0
    step = attention_seconds / (count * shards / (shards - 1))
    return count * min(ring / count, step)


def price_collectives(hlo: str, cfg: ModelConfig, layout: Layout, hw: Hardware,
                      cols: list | None = None) -> dict:
    """Every collective of the compiled program `hlo` (or `cols`, its collectives with their
    executions reweighted: `pipelined`), grouped and priced on `hw`.

    Returns {"rows": [...], "comm": {"nvlink", "ib"} bytes, "by_op": bytes per op,
    "seconds": all collectives,
    "hidden": seconds that `ep:chunks=K` may overlap (before the cap by expert compute),
    "ring_seconds", "ring_count": context parallelism's K/V ring steps (priced and counted
    executions; `ring_hidden` says how much of them the attention hides),
    "data_seconds": the collectives over data replicas only (gradient reduction, FSDP gathers;
    with context parallelism also the all-reduces over context ranks and data ranks together,
    which sum the gradients of parameters replicated over both),
    "context_seconds": the other collectives within context groups (ring passes, K/V gathers)}.
    """
    node = node_of(layout, hw)
    data_axes = layout.mesh_axes("batch", "fsdp")
    data = axis_groups(layout, data_axes) if data_axes else set()
    ctx_axes = layout.mesh_axes("cp_seq")
    ctx = axis_groups(layout, ctx_axes) if ctx_axes else set()
    sums = set().union(*(axis_groups(layout, ctx_axes + sub) for sub in _subsets(data_axes))
                       ) if ctx_axes else set()
    context_seconds = 0.0
    rows: dict[tuple, dict] = {}
    comm = {"nvlink": 0.0, "ib": 0.0}
    by_op: dict[str, float] = defaultdict(float)
    total = hidden = data_seconds = ring_seconds = 0.0
    ring_count = 0
    ring = (axis_groups(layout, layout.mesh_axes("cp_seq")) if layout.size("cp_seq") > 1
            and layout.options.get("attention", "ring") == "ring" else set())
    for c in (collectives(hlo) if cols is None else cols):
        if c.group_size <= 1:
            continue
        link = "ib" if crosses_nodes(c, node) else "nvlink"
        dtype = cfg.dtype if c.dtype not in _FOUR_BYTE or cfg.dtype == "float32" else c.dtype
        dtype = {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}.get(dtype, dtype)
        seconds = collective_time(c, hw, node)
        comm[link] += c.payload_bytes * c.trip_count
        by_op[c.op] += c.payload_bytes * c.trip_count
        total += seconds
        if c.op == "all-to-all" and layout.options.get("chunks", 1) > 1:
            k = layout.options["chunks"]
            hidden += seconds * (k - 1) / k
        if ring and _is_ring_step(c, ring):
            ring_seconds += seconds
            ring_count += c.trip_count
        within = lambda groups: bool(groups) and bool(c.replica_groups) and all(  # noqa: E731
            frozenset(g) in groups for g in c.replica_groups)
        over_data = c.op != "all-to-all" and (within(data) or (c.op == "all-reduce"
                                                               and within(sums)))
        data_seconds += seconds if over_data else 0.0
        if not over_data and (_is_ring_step(c, ctx) or (
                c.op not in ("all-reduce", "all-to-all") and within(ctx))):
            context_seconds += seconds
        key = (c.op, dtype, c.group_size, link, c.payload_bytes, over_data)
        row = rows.setdefault(key, {"op": c.op, "dtype": dtype, "group_size": c.group_size,
                                    "count": 0, "payload_bytes_per_device": c.payload_bytes,
                                    "link": link, "seconds": 0.0, "data_parallel": over_data})
        row["count"] += c.trip_count
        row["seconds"] += seconds
    return {"rows": sorted(rows.values(), key=lambda r: -r["seconds"]), "comm": comm,
            "by_op": dict(by_op),
            "seconds": total, "hidden": hidden, "data_seconds": data_seconds,
            "context_seconds": context_seconds,
            "ring_seconds": ring_seconds, "ring_count": ring_count,
            "intra_node_axes": intra_node_axes(layout, hw)}


def model_flops_per_token(cfg: ModelConfig, mode: str) -> float:
    """Model FLOPs per token for MFU: the forward pass (causal attention counted at S/2 keys), or
    in training 3x the forward with non-causal attention and no recompute (Megatron's convention)."""
    if mode == "train":
        return 3 * forward_flops_per_token(cfg.replace(causal=False))
    return forward_flops_per_token(cfg)


def mfu_convention(mode: str) -> str:
    """Which model FLOPs MFU counts (`model_flops_per_token`), in words."""
    if mode == "train":
        return "3 x forward, attention non-causal, recompute excluded (Megatron)"
    return "forward, causal attention at S/2 keys"


def flops_note(flops: dict) -> str:
    """Whether the program's FLOPs are exact or count causal blocks skipped at run time."""
    if flops.get("conditionals"):
        return "upper bound: runtime-skipped causal blocks counted"
    return "exact"


def breakdown(compute: dict, scale: float = 1.0) -> dict[str, float]:
    """The roofline's compute seconds by kernel kind (`roofline.compute_time`), times `scale`."""
    return {k: scale * compute[k] for k in ("matmul_seconds", "attention_seconds",
                                            "memory_seconds")}


def backward_window(step_compute_seconds: float) -> float:
    """Compute a gradient reduction can hide behind: the backward of one forward + backward
    (2 of its 3 matmul passes)."""
    return step_compute_seconds * 2 / 3


def forward_window(step_compute_seconds: float) -> float:
    """Compute a parameter all-gather can hide behind: the forward of one forward + backward
    (1 of its 3 matmul passes)."""
    return step_compute_seconds / 3


def overlap_exposed(seconds: float, window: float, floor_fraction: float) -> float:
    """Exposed part of communication that can run behind `window` seconds of compute; at least
    `floor_fraction` of it (the last bucket, which has nothing left to hide behind)."""
    return max(seconds - window, seconds * floor_fraction, 0.0)


def run_blocks_only(compute: dict, cfg: ModelConfig, layout: Layout) -> dict:
    """`compute` (a `roofline.compute_time` result) with context-parallel causal attention cut to
    the blocks that run: the roofline counts every block of the attention's scan, but under the
    causal mask a key block wholly in a query block's future is skipped at run time by a cond
    (`nn.attention.visible_share` counts the rest from the chunk positions)."""
    from helix_jax.nn.attention import visible_share

    K = layout.size("cp_seq")
    if K < 2 or not cfg.causal:
        return compute
    cut = compute["attention_seconds"] * (1 - visible_share(cfg.seq, K, cfg.q_block,
                                                           cfg.kv_block))
    return {**compute, "attention_seconds": compute["attention_seconds"] - cut,
            "seconds": compute["seconds"] - cut}


def score_blocks(cfg: ModelConfig, layout: Layout) -> set[tuple[int, ...]]:
    """(q_block, kv_block) of the attention's score blocks on this layout (for `roofline`).
    When a device holds one sequence and one K/V head, XLA drops the unit batch and head
    dimensions and a block is a plain matrix: it is then also listed as (0, q_block, kv_block),
    which `roofline` matches on two-dimensional arrays too."""
    from helix_jax.nn.attention import block_size

    m = layout.size("head_dim") if layout.options.get("core") == "seq_a2a" else 1
    k = layout.size("kv_seq")  # kvp: every query against this shard's S/K keys
    cp = layout.size("cp_seq")
    chunks = 2 * cp if cp > 1 else 1  # cp: a shard's queries and keys in chunks of S/2K
    q, kv = (block_size(cfg.seq // max(m, chunks), cfg.q_block),
             block_size(cfg.seq // max(k, chunks), cfg.kv_block))
    blocks = {(q, kv)}
    shards = layout.size("heads")  # grouped-query: XLA may fold the r query heads a device
    r = (cfg.n_heads // shards) // max(1, cfg.kv_heads // shards)  # runs per K/V head into the
    if r > 1:  # query rows ([g, r·q, kv] or [g, kv, r·q])
        blocks |= {(r * q, kv), (kv, r * q)}
    kv_local = cfg.kv_heads // shards if cfg.kv_heads % shards == 0 else 1
    if cfg.batch // max(layout.size("batch"), 1) <= 1 and kv_local <= 1:
        blocks |= {(0, *b) for b in blocks}
    return blocks


def pricing_terms(hw: Hardware) -> dict:
    """Which hardware constant each term of the projection uses, with its published source."""
    src = hw.sources
    def term(field: str, value) -> dict:
        return {"field": field, "value": value, "source": src.get(field, hw.notes or "profile")}
    terms = {
        "matmul kernels": term("flops_per_s", hw.flops_per_s),
        "FP8 matmul kernels (W8A8, --weights float8)": term(
            "fp8_flops_per_s", hw.fp8_flops_per_s or hw.flops_per_s),
        "attention kernels": term("attention_flops_per_s",
                                  hw.attention_flops_per_s or hw.flops_per_s),
        "memory-bound kernels": term("hbm_bytes_per_s", hw.hbm_bytes_per_s),
        "GEMM quantization": term("sm_count", hw.sm_count),
        "MFU peak": term("peak_flops_per_s", hw.peak_flops_per_s),
    }
    if hw.measured_links:
        terms["collectives in a node"] = term("allreduce_busbw", [list(p) for p in hw.allreduce_busbw])
        terms["collectives across nodes"] = term("nic_bytes_per_s", hw.nic_bytes_per_s)
        terms["small collectives"] = term("latency_small_s", hw.latency_small_s)
    else:
        terms["collectives in a node"] = term("nvlink_bytes_per_s", hw.nvlink_bytes_per_s)
        terms["collectives across nodes"] = term("ib_bytes_per_s", hw.ib_bytes_per_s)
    return terms
