"""Training steps of layouts too large (or too pipelined) to compile whole, composed from the
program of one pipeline stage on one data replica.

What is compiled: the forward + backward of one stage (n_layers / pp layers; embedding, final norm,
LM head and loss included, so it is the heaviest stage) for one microbatch, on the tensor-parallel
mesh of one data replica (`tp-pp:tp=T,pp=1`), and the optimizer update of that stage's shard. What
is extended by formula:

  schedule     gpipe and 1f1b: (M + p - 1) microbatch times; 1f1b with virtual=V (interleaved):
               (M + (p - 1)/V) microbatch times. The bubble fraction is (p - 1)/M (or (p - 1)/(V M)).
  sends        2 M V activation sends (forward) / gradient sends (backward) per stage, each of
               [b, S, D] / T elements (Megatron's scatter-gather: each tensor rank sends its slice),
               priced as a collective-permute between neighbouring stages.
  weights      the stage program takes 16-bit copies of the parameters (as Megatron keeps them)
               and returns 16-bit gradients whose fp32 accumulation is fused into the weight-
               gradient GEMM there; the fp32 masters meet only the optimizer update, priced once
               per step from its own compiled program.
  tensor comm  exposed, or with the layout option tp_overlap=true hidden behind the stage's
               matmul time (Transformer Engine's user-buffer overlap of TP collectives with GEMMs)
               as far as that time reaches.
  data         the distributed optimizer's reduce-scatter of the gradients and all-gather of the
               parameters over the dp replicas (model dtype), behind the backward of the last and
               the forward of the first microbatch respectively (Megatron's overlap).
  optimizer    the compiled update's time, divided over the dp replicas (distributed optimizer).
  memory       by formula (the compiled stage program's CPU memory_analysis is reported beside it,
               but errs high): 16-bit parameters, fp32 gradients, fp32 masters and Adam moments
               over the dp replicas, the activations of the in-flight microbatches (Korthikanti
               et al. 2022's per-layer formula for the remat policy) and the fp32 logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helix_jax.analysis.costmodel.compiler import DIRECT, Compiler
from helix_jax.analysis.costmodel.formulas import DTYPE_BYTES
from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.costmodel.pricing import collective_seconds, measured_seconds
from helix_jax.analysis.costmodel.projection import Projection, Timing
from helix_jax.analysis.costmodel.roofline import compute_time
from helix_jax.analysis.costmodel.sites import collective_sites
from helix_jax.analysis.costmodel.terms import (
    analysed_config,
    backward_window,
    breakdown,
    build_sharded,
    forward_window,
    mfu_convention,
    model_flops_per_token,
    overlap_exposed,
    price_collectives,
    pricing_terms,
    score_blocks,
)
from helix_jax.analysis.costmodel.topology import data_replica_nodes, stages_cross_nodes
from helix_jax.analysis.hlo.compiled import read_memory
from helix_jax.analysis.hlo.flops import matmul_flops
from helix_jax.config import ModelConfig
from helix_jax.counts import param_counts
from helix_jax.layouts import Layout, parse_layout
from helix_jax.limits import MAX_WHOLE_DEVICES


def is_composed(layout: Layout, mode: str) -> bool:
    """Whether a projection of `mode` on `layout` is composed from one stage's program (a tp-pp
    training step with pipeline stages or data replicas, or a training step of more than
    MAX_WHOLE_DEVICES devices) rather than compiled whole."""
    if mode != "train":
        return False
    pipelined = layout.kind == "tp-pp" and (layout.size("layers") > 1 or layout.size("batch") > 1)
    return pipelined or layout.devices > MAX_WHOLE_DEVICES


def _p2p_seconds(nbytes: float, across_nodes: bool, hw: Hardware) -> float:
    if hw.measured_links:
        return measured_seconds("collective-permute", nbytes, 2, 2 if across_nodes else 1, hw)
    bw, lat = hw.link(across_nodes)
    return collective_seconds("collective-permute", nbytes, 2, bw, lat)


def _group_seconds(op: str, nbytes: float, n: int, nodes: int, hw: Hardware) -> float:
    if n <= 1:
        return 0.0
    if hw.measured_links:
        return measured_seconds(op, nbytes, n, nodes, hw)
    bw, lat = hw.link(nodes > 1)
    return collective_seconds(op, nbytes, n, bw, lat)


def activation_bytes_per_layer(cfg: ModelConfig, micro: int, tp: int, sp: bool,
                               remat: str) -> float:
    """Activations one layer keeps for its backward, per device and microbatch (Korthikanti et
    al. 2022, Table 2, with blockwise attention: no S x S scores are kept)."""
    sbh = cfg.seq * micro * cfg.d_model
    if remat == "full":
        return 2.0 * sbh / (tp if sp else 1)
    return sbh * (34.0 / tp if sp else 10.0 + 24.0 / tp)


def in_flight(schedule: str, pp: int, microbatches: int, virtual: int) -> float:
    """Microbatches whose activations the first stage holds at once."""
    if schedule == "gpipe":
        return microbatches
    base = min(pp, microbatches)
    return base * (1 + (pp - 1) / (pp * virtual)) if virtual > 1 else base


@dataclass
class _Stage:
    """One pipeline stage's compiled programs, read and priced (what the composition extends)."""

    cfg: ModelConfig  # the stage: n_layers / pp layers, batch = one microbatch
    layout: Layout  # one data replica's tensor-parallel mesh
    sharded: Any
    hlo: str
    memory: dict
    compute: dict
    priced: dict
    microbatch_seconds: float  # compute + exposed tensor-parallel collectives
    tp_exposed_seconds: float
    update_seconds: float  # the AdamW update of this stage's shard, before the dp split


def _compile_stage(cfg: ModelConfig, layout: Layout, hw: Hardware, remat: str,
                   progress: Callable[[str], None] | None, compiler: Compiler) -> _Stage:
    """Compile one stage's forward + backward for one microbatch and its update, and price them."""
    o = layout.options
    tp, pp = o["tp"], o["pp"]
    micro = cfg.batch // o["dp"] // o["microbatches"]
    stage_cfg = cfg.replace(n_layers=cfg.n_layers // pp, batch=micro)
    stage_layout = parse_layout(f"tp-pp:tp={tp},pp=1,sp={str(o['sp']).lower()},microbatches=1")
    if progress:
        progress(f"{layout.spec}: compiling one stage ({stage_cfg.n_layers} layers) for one "
                 f"microbatch of {micro} on {tp} devices")
    sharded = build_sharded(analysed_config(stage_cfg), stage_layout, 1, remat)
    grad = compiler.grad(sharded)
    update = compiler.update(sharded)
    hlo, elem = grad.as_text(), DTYPE_BYTES[cfg.dtype]
    compute = compute_time(hlo, hw, elem, score_blocks(cfg, stage_layout))
    priced = price_collectives(hlo, stage_cfg, stage_layout, hw)
    tp_exposed = priced["seconds"]
    if o.get("tp_overlap"):
        tp_exposed = max(priced["seconds"] - compute["matmul_seconds"], 0.0)
    t_update = compute_time(update.as_text(), hw, elem, f32_as_model_dtype=False)["seconds"]
    return _Stage(stage_cfg, stage_layout, sharded, hlo, read_memory(grad), compute, priced,
                  compute["seconds"] + tp_exposed, tp_exposed, t_update)


def project_composed(cfg: ModelConfig, layout: Layout, hw: Hardware, remat: str = "none",
                     progress: Callable[[str], None] | None = None,
                     compiler: Compiler = DIRECT) -> Projection:
    """The training step of `cfg` on a tp-pp layout, composed (see module doc); `compiler`
    compiles the stage and update programs (`analysis.costmodel.compiler`)."""
    if layout.kind != "tp-pp":
        raise ValueError(f"{layout.spec}: a training step of more than the compiled devices is "
                         f"composed only for tp-pp layouts; use dp=K of at most "
                         f"{MAX_WHOLE_DEVICES} devices")
    o = layout.options
    tp, pp, dp = o["tp"], o["pp"], o["dp"]
    M, V, schedule = o["microbatches"], o["virtual"], o["schedule"]
    micro = cfg.batch // dp // M
    stage = _compile_stage(cfg, layout, hw, remat, progress, compiler)
    elem, t_mb, t_update = DTYPE_BYTES[cfg.dtype], stage.microbatch_seconds, stage.update_seconds / dp

    chunks_time = M + (pp - 1) / V if schedule == "1f1b" else M + pp - 1
    t_pipe = chunks_time * t_mb
    send_bytes = micro * cfg.seq * cfg.d_model * elem / tp
    crosses = stages_cross_nodes(layout, hw)
    sends = 2 * M * V if pp > 1 else 0
    t_p2p = sends * _p2p_seconds(send_bytes, crosses, hw)

    params_local = local_parameter_count(stage.sharded)
    grad_bytes = params_local * elem
    dp_nodes = data_replica_nodes(layout, hw)
    t_rs = _group_seconds("reduce-scatter", grad_bytes, dp, dp_nodes, hw)
    t_ag = _group_seconds("all-gather", grad_bytes, dp, dp_nodes, hw)
    floor = 1 / max(stage.cfg.n_layers, 1)
    exposed_dp = (overlap_exposed(t_rs, backward_window(t_mb), floor)
                  + overlap_exposed(t_ag, forward_window(t_mb), floor))
    step = t_pipe + t_p2p + exposed_dp + t_update
    memory = _composed_memory(cfg, layout, hw, stage, params_local, remat)
    tokens = cfg.batch * cfg.seq
    priced, compute = stage.priced, stage.compute
    total, active = param_counts(cfg)
    return Projection(
        params_total=total, params_active=active,
        model=cfg.name, layout=layout.spec, hardware=hw.name, mode="train",
        partitioner=stage.sharded.partitioner, remat=remat, devices=layout.devices,
        mesh=layout.axis_sizes, batch=cfg.batch, seq=cfg.seq, dtype=cfg.dtype, batch_chunks=1,
        accumulation_steps=M, microbatch_size=micro, tokens_per_step=tokens,
        compiled=(f"forward + backward of one stage ({stage.cfg.n_layers} layers, with "
                  f"embedding, LM head and loss) for one microbatch of {micro} sequences on "
                  f"one data replica's {tp} tensor-parallel devices, and its AdamW update"),
        extended_by_formula=[
            f"{schedule} schedule{' interleaved x' + str(V) if V > 1 else ''}: {chunks_time:g} "
            f"microbatch times (bubble {(pp - 1) / (V * M):.1%} of the ideal)",
            f"{sends} pipeline sends of {send_bytes / 1e6:.1f} MB per device",
            f"data-parallel reduce-scatter + all-gather of {grad_bytes / 1e9:.2f} GB over {dp} "
            f"replicas ({dp_nodes} nodes)",
            f"memory: {memory['in_flight']:g} microbatches in flight, Korthikanti et al. "
            f"activation formula",
        ],
        flops_per_device=matmul_flops(stage.hlo)["flops"] * (
            M + (pp - 1 if schedule == "gpipe" else 0)),
        flops_note="per stage: one microbatch's compiled FLOPs x microbatches",
        model_flops_per_token=model_flops_per_token(cfg, "train"),
        mfu_convention=mfu_convention("train"),
        memory_bytes_per_device=memory["total"], memory=memory["parts"],
        fits=memory["total"] <= hw.hbm_capacity_bytes, fits_why=memory["why"],
        collectives=priced["rows"],
        collective_sites=collective_sites(stage.hlo, stage.layout, hw),
        comm_bytes_per_device=priced["comm"], comm_bytes_by_op=priced["by_op"],
        expected_comm_bytes_by_op={},
        projected=Timing(
            step_seconds=step, compute_seconds=chunks_time * compute["seconds"],
            compute_breakdown=breakdown(compute, chunks_time),
            microbatch_seconds=t_mb, microbatch_compute_seconds=compute["seconds"],
            pipeline_seconds=t_pipe, bubble_seconds=(chunks_time - M) * t_mb,
            tensor_comm_seconds=chunks_time * priced["seconds"],
            tensor_comm_exposed_seconds=chunks_time * stage.tp_exposed_seconds,
            pipeline_send_seconds=t_p2p, data_parallel_comm_seconds=t_rs + t_ag,
            data_parallel_exposed_seconds=exposed_dp, optimizer_seconds=t_update,
            comm_seconds=chunks_time * priced["seconds"] + t_p2p + t_rs + t_ag,
            exposed_comm_seconds=chunks_time * stage.tp_exposed_seconds + t_p2p + exposed_dp,
            tokens_per_s=tokens / step,
            mfu=model_flops_per_token(cfg, "train") * tokens / step / (
                layout.devices * hw.peak_flops_per_s),
            tpot_ms=step / cfg.seq * 1e3),
        pricing=pricing_terms(hw), intra_node_axes=priced["intra_node_axes"],
        bytes_per_element=elem)


def model_state_bytes(params_local: float, elem: int, dp: int) -> float:
    """Bytes of model state per device under Megatron's distributed optimizer: 16-bit parameters,
    fp32 gradients, and the fp32 master copy and two Adam moments sharded over `dp` replicas."""
    return params_local * (elem + 4.0 + 12.0 / dp)


def _composed_memory(cfg: ModelConfig, layout: Layout, hw: Hardware, stage: _Stage,
                     params_local: int, remat: str) -> dict:
    """Memory per device by formula (module doc), with its parts and why it fits or not."""
    o = layout.options
    tp, pp, dp, M = o["tp"], o["pp"], o["dp"], o["microbatches"]
    micro = cfg.batch // dp // M
    act = activation_bytes_per_layer(cfg, micro, tp, o["sp"], remat) * stage.cfg.n_layers
    flight = in_flight(o["schedule"], pp, M, o["virtual"])
    states = model_state_bytes(params_local, DTYPE_BYTES[cfg.dtype], dp)
    logits = 3.0 * micro * cfg.seq * (cfg.vocab // tp) * 4 if cfg.vocab else 0.0
    total = states + flight * act + logits
    parts = {"compiled_stage_program": stage.memory, "model_states_bytes": states,
             "activations_in_flight_bytes": flight * act, "logits_bytes": logits,
             "adam_moments_bytes": 8.0 * params_local / dp,
             "how": ("formula: 16-bit parameters + fp32 gradients + fp32 master and Adam "
                     "moments sharded over the data replicas (distributed optimizer), "
                     "activations of the in-flight microbatches (Korthikanti et al. 2022) "
                     "and the last stage's fp32 logits; the compiled stage program's "
                     "memory_analysis is beside it (on CPU it errs high: f32 upcasts)")}
    why = (f"{total / 1e9:.1f} GB per device against "
           f"{hw.hbm_capacity_bytes / 1e9:.0f} GB: model states "
           f"{states / 1e9:.1f} GB + {flight:g} microbatches' activations "
           f"{flight * act / 1e9:.1f} GB + logits {logits / 1e9:.1f} GB")
    return {"total": total, "parts": parts, "why": why, "in_flight": flight}


def local_parameter_count(sharded) -> int:
    """Parameters this device holds (the stage's shards on one tensor-parallel rank)."""
    import math

    import jax

    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape))
               for leaf in jax.tree.leaves(sharded.abstract_params()))
