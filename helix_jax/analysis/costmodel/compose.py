"""Training steps of layouts too large (or too pipelined) to compile whole, composed from the
program of one pipeline stage on one data replica. A pipeline of one data replica on at most
MAX_WHOLE_DEVICES devices is compiled whole instead (`pipelined.py`) unless the caller asks for
this path (`project(composed=True)`, as the planner does for every pipeline it ranks).

What is compiled: the forward + backward of one stage (n_layers / pp layers with embedding, final
norm, LM head and loss; see `stage_variants` when the layers do not fall evenly) for one
microbatch, on the tensor-parallel mesh of one data replica (`tp-pp:tp=T,pp=1`), with its context-
parallel ranks (`cp=C`) and, with `ep=K`, the data ranks of one expert-parallel group, so the ring,
the K/V gathers and the expert all-to-alls are read off the program; and the optimizer update of
that stage's shard. What is extended by formula:

  uneven       layers that do not divide into pp x V model chunks are split as Megatron-Core
               splits them with account_for_embedding_in_pipeline_split and
               account_for_loss_in_pipeline_split (what NeMo's Llama 3.1 405B recipe sets: 126
               layers + 2 = 128 slots, 2 per chunk over 8 x 8): the embedding and the loss each
               take one layer's slot, so a middle stage holds V ceil((L + 2) / (pp V)) layers and
               the last stage one layer fewer with the LM head and loss. Both are compiled (the
               middle one without embedding and head) and the slower sets the pace; without a
               vocabulary, V ceil(L / (pp V)) layers.
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
               parameters over the dp x cp ranks that hold the same parameters (model dtype),
               behind the backward of the last and the forward of the first microbatch
               respectively (Megatron's overlap).
  optimizer    the compiled update's time, divided over those ranks (distributed optimizer).
  context      when tp x cp passes the fake-device budget, the stage is compiled at a smaller cp'
               on seq x cp'/cp positions (the same tokens per device, the same K/V chunk per ring
               step): attention time x cp/cp' (then cut to the causal blocks that run at cp),
               context traffic x (cp - 1)/(cp' - 1). Gradients of
               parameters replicated over context ranks are summed with the data replicas' (the
               stage program's all-reduces over context ranks are taken out of its microbatch).
  experts      expert gradients and optimizer states are reduced and sharded over dp x cp / ep
               ranks, the rest over dp x cp.
  memory       by formula (the compiled stage program's CPU memory_analysis is reported beside it,
               but errs high): 16-bit parameters, fp32 gradients, fp32 masters and Adam moments
               sharded over the dp x cp ranks (experts over dp x cp / ep), the activations of the
               in-flight microbatches for the seq / cp tokens a rank holds (Korthikanti et al.
               2022's per-layer formula for the remat policy) and the fp32 logits. Like
               Megatron's ring attention (which passes K/V around again in the backward), the
               other context ranks' K/V are not counted as kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helix_jax.analysis.costmodel.compiler import DIRECT, Compiler
from helix_jax.analysis.costmodel.formulas import DTYPE_BYTES
from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.costmodel.memory import composed_memory, local_parameter_count
from helix_jax.analysis.costmodel.pricing import collective_seconds, measured_seconds
from helix_jax.analysis.costmodel.projection import Projection, Timing, attention_kernel_note
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
    ring_hidden,
    run_blocks_only,
    score_blocks,
)
from helix_jax.analysis.costmodel.topology import data_replica_nodes, stages_cross_nodes
from helix_jax.analysis.hlo.compiled import read_memory
from helix_jax.analysis.hlo.flops import matmul_flops
from helix_jax.config import ModelConfig
from helix_jax.counts import param_counts
from helix_jax.layouts import Layout, expert_ranks, parse_layout
from helix_jax.limits import MAX_WHOLE_DEVICES


def is_composed(layout: Layout, mode: str) -> bool:
    """Whether a training step of `layout` is one this module composes from one stage's program
    (a tp-pp step with pipeline stages or data replicas, or one of more than MAX_WHOLE_DEVICES
    devices): the planner ranks these composed; `project.composes` compiles the dp = 1 pipelines
    among them whole by default."""
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


@dataclass
class _Stage:
    """One pipeline stage's compiled programs, read and priced (what the composition extends)."""

    cfg: ModelConfig  # the stage: its layers, batch = one microbatch per data rank compiled
    layout: Layout  # one data replica's tensor (x context, x expert-group) mesh
    sharded: Any
    hlo: str
    memory: dict
    compute: dict
    priced: dict
    compute_seconds: float  # the microbatch's compute, extended to the true cp
    microbatch_seconds: float  # compute + exposed collectives, extended to the true cp
    tp_exposed_seconds: float
    tensor_seconds: float  # the microbatch's collectives but the once-per-step gradient sums
    update_seconds: float  # the AdamW update of this stage's shard, before the dp split
    cp_compiled: int  # the context-parallel ranks compiled (cp unless the budget is passed)
    ends: bool = True  # with the embedding, LM head and loss (a middle stage has none)

    def what(self) -> str:
        """The stage in words: its layers and whether it holds the model's ends."""
        ends = ("with embedding, LM head and loss" if self.ends
                else "a middle stage: no embedding or head")
        return f"{self.cfg.n_layers} layers, {ends}"

    def describe(self, micro: int) -> str:
        """What was compiled, in words (the projection's `compiled`)."""
        return (f"forward + backward of one stage ({self.what()}) for one microbatch of {micro} "
                f"sequences of {self.cfg.seq} "
                f"positions on {self.layout.devices} devices of one data replica (with its "
                f"context ranks and one expert-parallel group) "
                f"({self.layout.spec}), and its AdamW update")


def stage_variants(cfg: ModelConfig, layout: Layout) -> list[tuple[int, bool]]:
    """The stages a composed step compiles, as (layers, with embedding + LM head + loss): the last
    stage of an even split (n_layers / pp). With layers that do not divide into pp x V chunks,
    Megatron-Core's split that counts the embedding and the loss as a layer each (module doc):
    chunks of c = ceil((L + 2) / (pp V)) slots, chunk 0 starting with the embedding and the last
    ending with the loss; stage s holds chunks s, s + pp, ...: with pp >= 3 a middle stage (V c
    layers, neither end) and the last (V c - 1 layers and the head); with pp = 2 both stages
    hold an end (V c - 1 layers). Without a vocabulary, V ceil(L / (pp V)) layers."""
    o = layout.options
    pp, v = o["pp"], o["virtual"]
    if cfg.n_layers % (pp * v) == 0:
        return [(cfg.n_layers // pp, True)]
    if not cfg.vocab:
        return [(-(-cfg.n_layers // (pp * v)) * v, True)]
    full = -(-(cfg.n_layers + 2) // (pp * v)) * v
    if pp >= 3:
        return [(full, False), (full - 1, True)]
    return [(full - (3 - pp), True)]


def compiled_cp(layout: Layout, budget: int = MAX_WHOLE_DEVICES) -> int:
    """The context-parallel ranks the stage is compiled with: cp, or (tp x cp past the `budget`
    of fake devices, no ep) the largest divisor of cp (at least 2) that fits. A stage holding one
    expert-parallel group whole (tp x cp x ep/cp devices) past the budget is refused."""
    o = layout.options
    tp, cp, ep = o["tp"], o.get("cp", 1), o.get("ep", 1)
    if tp * cp * expert_ranks(o["dp"], cp, ep) <= budget:
        return cp
    fits = [d for d in range(2, cp) if cp % d == 0 and tp * d <= budget]
    if ep > 1 or not fits:
        raise ValueError(f"{layout.spec}: one stage's tp x cp{' x ep/cp' * (ep > 1)} ranks pass "
                         f"the {budget} devices a projection compiles; choose a smaller tp"
                         f"{', cp or ep' if ep > 1 else ' or cp'}")
    return max(fits)


def _scaled_attention(compute: dict, factor: float) -> dict:
    """A roofline result with its attention seconds multiplied by `factor`."""
    extra = compute["attention_seconds"] * (factor - 1)
    return {**compute, "attention_seconds": compute["attention_seconds"] + extra,
            "seconds": compute["seconds"] + extra}


def _compile_stage(cfg: ModelConfig, layout: Layout, hw: Hardware, remat: str,
                   progress: Callable[[str], None] | None, compiler: Compiler,
                   budget: int, variant: tuple[int, bool] | None = None,
                   fused_attention: bool = True) -> _Stage:
    """Compile one stage's forward + backward for one microbatch and its update, and price them;
    `variant` (layers, with the model's ends) is one of `stage_variants` (default: the first)."""
    o = layout.options
    tp, cp, ep = o["tp"], o.get("cp", 1), o.get("ep", 1)
    micro = cfg.batch // o["dp"] // o["microbatches"]
    cp_c = compiled_cp(layout, budget)
    data = expert_ranks(o["dp"], cp, ep)  # the data ranks of one expert-parallel group
    layers, ends = variant or stage_variants(cfg, layout)[0]
    stage_cfg = cfg.replace(n_layers=layers, batch=micro * data, seq=cfg.seq * cp_c // cp,
                            **({} if ends else {"vocab": 0}))
    spec = f"tp-pp:tp={tp},pp=1,sp={str(o['sp']).lower()},microbatches=1"
    if cp_c > 1:
        spec += f",cp={cp_c},attention={o.get('attention', 'ring')}"
    if ep > 1:
        spec += f",dp={data},ep={ep}"
    stage_layout = parse_layout(spec)
    if progress:
        progress(f"{layout.spec}: compiling one stage ({stage_cfg.n_layers} layers) for one "
                 f"microbatch of {micro} on {stage_layout.devices} devices")
    sharded = build_sharded(analysed_config(stage_cfg), stage_layout, 1, remat)
    grad = compiler.grad(sharded)
    update = compiler.update(sharded)
    hlo, elem = grad.as_text(), DTYPE_BYTES[cfg.dtype]
    raw = compute_time(hlo, hw, elem, score_blocks(stage_cfg, stage_layout),
                       fused_attention=fused_attention)
    compiled = run_blocks_only(raw, stage_cfg, stage_layout)  # what the stage program runs
    # extended to the true cp: cp/cp' times the blocks, of which visible_share(cp) run
    compute = (run_blocks_only(_scaled_attention(raw, cp / cp_c), cfg, layout) if cp_c < cp
               else compiled)
    priced = price_collectives(hlo, stage_cfg, stage_layout, hw)
    # the per-microbatch collectives: all but the gradient sums over the compiled context (and
    # expert-group data) ranks, which the step does once with the data replicas' (see module doc)
    scale = (cp - 1) / (cp_c - 1) if cp_c > 1 else 1.0
    context = priced["context_seconds"] - ring_hidden(priced, compiled["attention_seconds"], cp_c)
    tensor = priced["seconds"] - priced["data_seconds"] - priced["context_seconds"]
    tp_exposed = max(tensor - compute["matmul_seconds"], 0.0) if o.get("tp_overlap") else tensor
    busy, exposed = compute["seconds"], tp_exposed + scale * context
    t_update = compute_time(update.as_text(), hw, elem, f32_as_model_dtype=False)["seconds"]
    return _Stage(stage_cfg, stage_layout, sharded, hlo, read_memory(grad), compute, priced,
                  busy, busy + exposed, exposed,
                  tensor + scale * priced["context_seconds"], t_update, cp_c, ends)


def project_composed(cfg: ModelConfig, layout: Layout, hw: Hardware, remat: str = "none",
                     progress: Callable[[str], None] | None = None,
                     compiler: Compiler = DIRECT, budget: int = MAX_WHOLE_DEVICES,
                     attention_pricing: str = "flash") -> Projection:
    """The training step of `cfg` on a tp-pp (or cp) layout, composed (see module doc);
    `compiler` compiles the stage and update programs (`analysis.costmodel.compiler`) on at most
    `budget` fake devices; `attention_pricing` as `project`'s."""
    spec = layout.spec
    layout = as_tp_pp(layout)
    o = layout.options
    tp, pp, dp, cp, ep = o["tp"], o["pp"], o["dp"], o.get("cp", 1), o.get("ep", 1)
    M, V, schedule = o["microbatches"], o["virtual"], o["schedule"]
    micro = cfg.batch // dp // M
    stages = [_compile_stage(cfg, layout, hw, remat, progress, compiler, budget, v,
                             attention_pricing == "flash") for v in stage_variants(cfg, layout)]
    stage = max(stages, key=lambda st: st.microbatch_seconds)  # the slowest sets the pace
    replicas = dp * cp  # ranks holding the same dense parameters; experts: replicas / ep
    elem, t_mb = DTYPE_BYTES[cfg.dtype], stage.microbatch_seconds

    chunks_time = M + (pp - 1) / V if schedule == "1f1b" else M + pp - 1
    t_pipe = chunks_time * t_mb
    send_bytes = micro * cfg.seq // cp * cfg.d_model * elem / tp
    crosses = stages_cross_nodes(layout, hw)
    sends = 2 * M * V if pp > 1 else 0
    t_p2p = sends * _p2p_seconds(send_bytes, crosses, hw)

    experts_local = local_parameter_count(stage.sharded, experts_only=True)
    dense_local = local_parameter_count(stage.sharded) - experts_local
    t_update = _update_share(stage.update_seconds, dense_local, experts_local, replicas, ep)
    grad_bytes = dense_local * elem
    dp_nodes = data_replica_nodes(layout, hw)
    t_rs, t_ag = _gradient_sync(((grad_bytes, replicas), (experts_local * elem, replicas // ep)),
                                dp_nodes, hw)
    floor = 1 / max(stage.cfg.n_layers, 1)
    exposed_dp = (overlap_exposed(t_rs, backward_window(t_mb), floor)
                  + overlap_exposed(t_ag, forward_window(t_mb), floor))
    step = t_pipe + t_p2p + exposed_dp + t_update
    memory = composed_memory(cfg, layout, hw.hbm_capacity_bytes, stage.memory,
                             (dense_local, experts_local), remat,
                             max(st.cfg.n_layers for st in stages))
    tokens = cfg.batch * cfg.seq
    priced, (total, active) = stage.priced, param_counts(cfg)
    return Projection(
        params_total=total, params_active=active,
        model=cfg.name, layout=spec, hardware=hw.name, mode="train",
        partitioner=stage.sharded.partitioner, remat=remat, devices=layout.devices,
        mesh=layout.axis_sizes, batch=cfg.batch, seq=cfg.seq, dtype=cfg.dtype, batch_chunks=1,
        accumulation_steps=M, microbatch_size=micro, tokens_per_step=tokens,
        compiled=stage.describe(micro),
        extended_by_formula=_extensions(cfg, layout, stages, stage) + _schedule_lines(
            o, chunks_time, sends, send_bytes, memory["in_flight"],
            _data_line(layout, grad_bytes, experts_local * elem, dp_nodes)),
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
            step_seconds=step, compute_seconds=chunks_time * stage.compute_seconds,
            compute_breakdown=breakdown(stage.compute, chunks_time),
            microbatch_seconds=t_mb, microbatch_compute_seconds=stage.compute_seconds,
            pipeline_seconds=t_pipe, bubble_seconds=(chunks_time - M) * t_mb,
            tensor_comm_seconds=chunks_time * stage.tensor_seconds,
            tensor_comm_exposed_seconds=chunks_time * stage.tp_exposed_seconds,
            pipeline_send_seconds=t_p2p, data_parallel_comm_seconds=t_rs + t_ag,
            data_parallel_exposed_seconds=exposed_dp, optimizer_seconds=t_update,
            comm_seconds=chunks_time * stage.tensor_seconds + t_p2p + t_rs + t_ag,
            exposed_comm_seconds=chunks_time * stage.tp_exposed_seconds + t_p2p + exposed_dp,
            tokens_per_s=tokens / step,
            mfu=model_flops_per_token(cfg, "train") * tokens / step / (
                layout.devices * hw.peak_flops_per_s),
            tpot_ms=step / cfg.seq * 1e3),
        pricing=pricing_terms(hw), intra_node_axes=priced["intra_node_axes"],
        bytes_per_element=elem,
        attention_kernel=attention_kernel_note(spec, "train", "shard_map", attention_pricing))


def _schedule_lines(o: dict, chunks_time: float, sends: int, send_bytes: float,
                    in_flight: float, data_line: str) -> list[str]:
    """What the composed projection extends by formula: the schedule, its sends, the data-
    parallel line, the memory."""
    pp, V, M = o["pp"], o["virtual"], o["microbatches"]
    return [f"{o['schedule']} schedule{' interleaved x' + str(V) if V > 1 else ''}: "
            f"{chunks_time:g} microbatch times (bubble {(pp - 1) / (V * M):.1%} of the ideal)",
            f"{sends} pipeline sends of {send_bytes / 1e6:.1f} MB per device", data_line,
            f"memory: {in_flight:g} microbatches in flight, Korthikanti et al. activation "
            f"formula"]


def _data_line(layout: Layout, dense_bytes: float, expert_bytes: float, nodes: int) -> str:
    """The data-parallel term in words: what is reduced over how many replicas."""
    o = layout.options
    dp, cp, ep = o["dp"], o.get("cp", 1), o.get("ep", 1)
    return (f"data-parallel reduce-scatter + all-gather of {dense_bytes / 1e9:.2f} GB over "
            f"{dp * cp} replicas" + (f" (dp x cp = {dp} x {cp})" if cp > 1 else "")
            + (f" and of {expert_bytes / 1e9:.2f} GB of expert gradients over {dp * cp // ep}"
               if ep > 1 else "") + f" ({nodes} nodes)")


def _update_share(seconds: float, dense: int, experts: int, replicas: int, ep: int) -> float:
    """The stage's compiled update time for this rank's share of the state: the dense part over
    `replicas` ranks, the experts' over replicas / ep (distributed optimizer)."""
    return seconds * (dense / replicas + experts * ep / replicas) / max(dense + experts, 1)


def _gradient_sync(parts: tuple[tuple[float, int], ...], nodes: int,
                   hw: Hardware) -> tuple[float, float]:
    """Seconds of the distributed optimizer's gradient reduce-scatter and parameter all-gather
    for `parts` ((bytes per device, ranks sharing them), ...) over `nodes` nodes."""
    t_rs = sum(_group_seconds("reduce-scatter", b, n, nodes, hw) for b, n in parts)
    t_ag = sum(_group_seconds("all-gather", b, n, nodes, hw) for b, n in parts)
    return t_rs, t_ag


def as_tp_pp(layout: Layout) -> Layout:
    """A `cp:cp=K[,dp=D]` layout as the tp-pp layout it equals (tp = pp = 1), which the
    composition knows how to extend; a tp-pp layout as it is."""
    if layout.kind == "tp-pp":
        return layout
    if layout.kind == "cp":
        o = layout.options
        return parse_layout(f"tp-pp:tp=1,pp=1,microbatches=1,cp={o.get('cp', 1)},dp={o['dp']},"
                            f"attention={o.get('attention', 'ring')}")
    raise ValueError(f"{layout.spec}: a training step of more than the compiled devices is "
                     f"composed only for tp-pp and cp layouts; use dp=K of at most "
                     f"{MAX_WHOLE_DEVICES} devices")


def _extensions(cfg: ModelConfig, layout: Layout, stages: list[_Stage],
                pace: _Stage) -> list[str]:
    """What the composition extends by formula beyond the compiled stage: uneven stages, a
    context-parallel group larger than compiled."""
    o, out = layout.options, []
    chunks = o["pp"] * o["virtual"]
    if cfg.n_layers % chunks:
        if cfg.vocab:
            times = "; ".join(f"{st.what()}: {st.microbatch_seconds * 1e3:.4g} ms"
                              for st in stages)
            out.append(f"uneven stages: {cfg.n_layers} layers and the embedding and loss "
                       f"counted as a layer each (Megatron-Core's account_for_embedding/"
                       f"loss_in_pipeline_split) over pp x virtual = {chunks} model chunks; "
                       f"per microbatch {times}; the slowest ({pace.what()}) sets the pace")
        else:
            out.append(f"uneven stages: {cfg.n_layers} layers over pp x virtual = {chunks} "
                       f"model chunks; the heaviest stage ({pace.cfg.n_layers} layers) is "
                       f"compiled and sets the pace")
    if pace.cp_compiled < o.get("cp", 1):
        out.append(f"context parallelism compiled at cp={pace.cp_compiled} on "
                   f"{pace.cfg.seq} positions, extended to cp={o.get('cp', 1)}: attention x "
                   f"{o.get('cp', 1) / pace.cp_compiled:g}, context traffic x "
                   f"{(o.get('cp', 1) - 1) / (pace.cp_compiled - 1):g}")
    return out
