"""Project one layout at full scale: compile it on fake devices, read its cost off the program, and
price that cost on a hardware profile.

Nothing is allocated: parameters and input are ShapeDtypeStructs. Per device, the program gives
matmul FLOPs (loop trip counts applied), its kernels (a roofline each: `roofline`), memory
(arguments + outputs + temp − aliased; for a training step the GPU estimate of `memory.py`
decides, with XLA:CPU's read-out beside it, since that errs high) and every collective with its
group, payload and executions. Each collective's link (NVLink or InfiniBand) follows from its
replica groups and the layout's placement of mesh positions on nodes.

Modes: `forward` compiles the forward pass; `train` the whole training step (forward, backward,
gradient reduction over data replicas, gradient accumulation, AdamW). A tp-pp pipeline (pp > 1)
of one data replica on at most MAX_WHOLE_DEVICES devices is compiled whole too, and read as the
runtime runs its schedule (`pipelined.py`: GPipe as compiled; 1F1B's conditionals weighted by the
tick table, the step its critical path). A training step of tp-pp with dp > 1 (Megatron's
distributed optimizer), of any other pipeline, or of a layout larger than MAX_WHOLE_DEVICES, is
composed instead (`compose.py`): one stage's forward+backward for one microbatch on one data
replica is compiled, and the schedule, the pipeline sends and the data-parallel reduction are
extended by formula. `project(composed=True|False)` asks for one path (`composes`).

Timing model (docs/cost-model.md): compute = the sum of the kernels' roofline times; collectives
cost `pricing`; they are exposed except the all-to-alls of `ep:chunks=K` ((K−1)/K can hide behind
expert compute) and, in training, the data-parallel gradient/parameter collectives, which hide
behind the backward (forward) compute of the last (first) accumulation step.
"""

from __future__ import annotations

from collections.abc import Callable

from helix_jax.analysis.costmodel.compiler import DIRECT, Compiler
from helix_jax.analysis.costmodel.compose import (
    as_tp_pp,
    compiled_cp,
    is_composed,
    project_composed,
)
from helix_jax.analysis.costmodel.formulas import DTYPE_BYTES, expected_comm_bytes
from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.costmodel.memory import whole_memory
from helix_jax.analysis.costmodel.pipelined import read_pipelined, whole_pipelined
from helix_jax.analysis.costmodel.projection import Projection, Timing, attention_kernel_note
from helix_jax.analysis.costmodel.roofline import compute_time, float8_upcast_bytes
from helix_jax.analysis.costmodel.sites import collective_sites
from helix_jax.analysis.costmodel.terms import (
    analysed_config,
    backward_window,
    breakdown,
    build_sharded,
    flops_note,
    mfu_convention,
    model_flops_per_token,
    overlap_exposed,
    price_collectives,
    pricing_terms,
    ring_hidden,
    run_blocks_only,
    score_blocks,
)
from helix_jax.analysis.hlo.compiled import read_memory
from helix_jax.analysis.hlo.flops import matmul_flops
from helix_jax.config import ModelConfig
from helix_jax.counts import param_counts
from helix_jax.enums import AttentionPricing, Mode, Weights, choices
from helix_jax.gspmd import check_partitioner as check_layout
from helix_jax.layouts import Layout
from helix_jax.limits import MAX_WHOLE_DEVICES

MODES = choices(Mode)


def chunk_candidates(cfg: ModelConfig, layout: Layout) -> list[int]:
    """Batch chunk counts worth trying, smallest first: powers of two that keep the input spread
    over every device (more chunks than rows per device would stop the spread and so cost memory,
    which keeps memory falling with the chunk count: `fit` relies on that)."""
    spreadable = [a for a in layout.axis_names if a not in layout.mesh_axes("act_seq")]
    shards = layout.size_of(spreadable)
    rows = cfg.batch // shards if cfg.batch % shards == 0 else cfg.batch // layout.size("batch")
    return [k for k in (2**i for i in range(rows.bit_length())) if rows % k == 0]


def fit(cfg: ModelConfig, layout: Layout, capacity_bytes: float,
        progress: Callable[[str], None] | None = None, mode: str = "forward",
        remat: str = "none", partitioner: str = "shard_map", compiler: Compiler = DIRECT):
    """The fewest batch chunks whose program fits `capacity_bytes` per device; when none fits,
    the most chunked one (its memory is reported, and `fits` is false). A training step's
    memory is the GPU estimate (`memory.whole_memory`): the chunking is chosen by formula and
    only the chosen program is compiled. A forward pass's is read off its compiled programs,
as follows.

    Memory falls as the chunk count K grows (`chunk_candidates` keeps it so), so the answer is
    found by bisection over the chunkings, which is what makes it the same as trying every one.
    The unchunked program is compiled first (does the whole batch fit at once, as a recomputing
    step often does?). Each next chunking to compile is guessed, never assumed: with one compiled
    point, memory is modelled as fixed + temp(1) / K (fixed: arguments + outputs - aliased, which
    do not depend on K); with two, as a + b / K through the closest compiled points; the guess is
    the first chunking the model says fits, kept strictly between the most chunked known not to
    fit and the least chunked known to fit. XLA's temporaries often fall faster than 1/K (the
    unchunked program of a large batch holds several full-batch buffers), so the model is only a
    guess: it saves compiles, and bisection decides.
    """
    valid = []
    for k in chunk_candidates(cfg, layout):
        try:
            valid.append(build_sharded(cfg, layout, k, remat, partitioner))
        except ValueError:  # this chunking does not divide the batch or its microbatches
            continue
    if not valid:
        raise ValueError(f"{cfg.name} does not compile on {layout.spec} with any batch chunking")
    if mode == "train":
        return _fit_by_estimate(valid, capacity_bytes, progress, compiler)
    compiled: dict[int, tuple] = {}
    chunks = [s.batch_chunks for s in valid]

    def memory(i: int) -> float:
        if i not in compiled:
            program = compiler.program(valid[i], mode)
            m = read_memory(program)
            compiled[i] = (program, m["total_bytes"], m["total_bytes"] - m["temp_bytes"],
                           m["temp_bytes"])
            if progress:
                progress(f"{layout.spec}{_under(partitioner)}: "
                         f"batch_chunks={chunks[i]} -> "
                         f"{compiled[i][1] / 1e9:.1f} GB per device")
        return compiled[i][1]

    if memory(0) <= capacity_bytes or len(valid) == 1:
        return valid[0], compiled[0][0]
    fixed, temp_one = compiled[0][2], compiled[0][3] * chunks[0]

    def guess(lo: int, hi: int) -> int:
        """The first chunking strictly between lo and hi that the memory model says fits (the
        last one when none does): a + b / K through the closest compiled points, or with one
        point fixed + temp(1) / K."""
        known = sorted(compiled)
        if len(known) >= 2:
            x0, x1 = lo, (hi if hi < len(valid) else max(known))
            if x0 == x1:
                x0 = min(known)
            slope = (compiled[x0][1] - compiled[x1][1]) / (1 / chunks[x0] - 1 / chunks[x1])
            model = lambda i: compiled[x1][1] + slope * (1 / chunks[i] - 1 / chunks[x1])  # noqa: E731
        else:
            model = lambda i: fixed + temp_one / chunks[i]  # noqa: E731
        inside = range(lo + 1, hi)
        return next((i for i in inside if model(i) <= capacity_bytes), inside[-1])

    lo, hi = 0, len(valid)  # the most chunked known not to fit; the least known to fit (or past)
    while hi - lo > 1:
        i = guess(lo, hi)
        if memory(i) <= capacity_bytes:
            hi = i
        else:
            lo = i
    if hi == len(valid):  # nothing fits: report the most chunked program
        return valid[-1], compiled[len(valid) - 1][0]
    return valid[hi], compiled[hi][0]


def _fit_by_estimate(valid: list, capacity_bytes: float,
                     progress: Callable[[str], None] | None, compiler: Compiler):
    """The fewest chunks of `valid` (sharded training steps, fewest chunks first) whose GPU
    memory estimate fits (the most chunked when none does), compiled."""
    from helix_jax.train import accumulation_steps

    chosen = valid[-1]
    for sharded in valid:
        total = whole_memory(sharded, accumulation_steps(sharded))["total"]
        if progress:
            progress(f"{sharded.layout.spec}{_under(sharded.partitioner)}: batch_chunks="
                     f"{sharded.batch_chunks} -> {total / 1e9:.1f} GB per device (GPU estimate)")
        if total <= capacity_bytes:
            chosen = sharded
            break
    return chosen, compiler.program(chosen, "train")


def _timing(cfg: ModelConfig, layout: Layout, hw: Hardware, compute: dict, priced: dict,
            mode: str, accumulation: int = 1) -> Timing:
    """Step time = compute + exposed communication, and what follows from it."""
    tokens = cfg.batch * cfg.seq
    compute_seconds = compute["seconds"]
    hidden = priced["hidden"]
    if hidden:  # overlap can hide at most the expert compute (its matmul share of the FLOPs)
        expert = 4 * cfg.d_model * cfg.d_ff * cfg.top_k * cfg.n_layers * tokens / layout.devices
        hidden = min(hidden, expert * cfg.capacity_factor / hw.flops_per_s)
    data = priced["data_seconds"] if mode == "train" else 0.0
    data_exposed = 0.0
    if data:  # behind the backward of the last accumulation step (2/3 of its compute)
        data_exposed = overlap_exposed(data, backward_window(compute_seconds / accumulation),
                                       1 / cfg.n_layers)
    ring = ring_hidden(priced, compute["attention_seconds"], layout.size("cp_seq"))
    exposed = priced["seconds"] - hidden - ring - data + data_exposed
    step = compute_seconds + exposed
    return Timing(
        step_seconds=step, compute_seconds=compute_seconds,
        compute_breakdown=breakdown(compute),
        comm_seconds=priced["seconds"], exposed_comm_seconds=exposed,
        data_parallel_comm_seconds=data, data_parallel_exposed_seconds=data_exposed,
        ring_comm_seconds=priced["ring_seconds"] or None,
        ring_hidden_seconds=ring if priced["ring_seconds"] else None,
        tokens_per_s=tokens / step,
        mfu=model_flops_per_token(cfg, mode) * tokens / step / (
            layout.devices * hw.peak_flops_per_s),
        tpot_ms=step / cfg.seq * 1e3)


def _under(partitioner: str) -> str:
    return "" if partitioner == "shard_map" else f" under {partitioner}"


def composes(layout: Layout, mode: str, partitioner: str = "shard_map",
             composed: bool | None = None, cfg: ModelConfig | None = None) -> bool:
    """Whether `project` composes this step from one stage (`compose`) rather than compiling it
    whole. `composed` None: whole wherever it fits (a pipeline of one data replica on at most
    MAX_WHOLE_DEVICES devices, whose layers `cfg` splits evenly, is compiled whole: `pipelined`);
    True or False asks for one path (the planner ranks pipelines composed; tests compare both on
    one layout)."""
    whole = whole_pipelined(layout, mode) and partitioner == "shard_map"
    if whole and composed is None and cfg is not None:
        try:
            layout.validate(cfg)  # the runtime's even stages; uneven ones are composed
        except ValueError:
            whole = False
    if composed is None:
        return is_composed(layout, mode) and not whole
    if composed and not is_composed(layout, mode):
        raise ValueError(f"{layout.spec}: its --mode {mode} step is compiled whole, not composed "
                         f"from one stage; drop --composed")
    if not composed and is_composed(layout, mode) and not whole:
        raise ValueError(f"{layout.spec}: its --mode {mode} step is composed from one stage; "
                         f"whole only for a pipeline of dp=1 without cp or ep on at most "
                         f"{MAX_WHOLE_DEVICES} devices under shard_map")
    return composed


def check_projection(cfg: ModelConfig, layout: Layout, mode: str, partitioner: str,
                     weights: str = Weights.MODEL, composed: bool | None = None) -> None:
    """A ValueError, before any compiling, for a mode, layout, partitioner or weight format that
    cannot be projected together (the gspmd partitioner runs whole forward and training programs
    only; float8 weights are priced for the serving steps, prefill and decode)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if weights not in tuple(Weights):
        raise ValueError(f"weights {weights!r} is not one of {', '.join(Weights)}")
    if weights == Weights.FLOAT8 and mode not in (Mode.PREFILL, Mode.DECODE):
        raise ValueError(f"--weights float8 is priced for serving: use --mode prefill or decode "
                         f"(got --mode {mode}), or drop --weights")
    composed = composes(layout, mode, partitioner, composed, cfg)
    layout.validate(cfg, even_stages=not composed)
    check_layout(layout, partitioner)
    if composed:
        compiled_cp(as_tp_pp(layout))  # the stage must fit the fake devices
    if partitioner == "shard_map":
        return
    if mode in ("prefill", "decode"):
        raise ValueError(f"{layout.spec}: --mode {mode} (KV-cache steps) runs under "
                         f"--partitioner shard_map only")
    if composed:
        raise ValueError(f"{layout.spec}: its training step is composed from one data replica "
                         f"by formula (the distributed optimizer), which runs under --partitioner "
                         f"shard_map only; use dp=1 under gspmd")


def project(cfg: ModelConfig, layout: Layout, hw: Hardware, batch_chunks: int | None = None,
            progress: Callable[[str], None] | None = None, mode: str = "forward",
            remat: str = "none", partitioner: str = "shard_map",
            compiler: Compiler = DIRECT, weights: str = Weights.MODEL,
            composed: bool | None = None,
            attention_pricing: str = AttentionPricing.FLASH) -> Projection:
    """The full read-out and projection of `cfg` on `layout` priced on `hw` (see module doc).
    `partitioner` "gspmd" compiles the same model with XLA choosing the collectives
    (helix_jax/model.py): forward and whole training steps only. `compiler` compiles the
    programs (`analysis.compiler`; the planner passes its cache). `weights` "float8" serves
    float8 weights (prefill and decode only; nn/float8.py). `composed`: see `composes`.
    `attention_pricing` "unfused" prices the attention core as the kernels of runs before flash
    attention (`roofline.kernel_shapes`)."""
    check_projection(cfg, layout, mode, partitioner, weights, composed)
    if attention_pricing not in tuple(AttentionPricing):
        raise ValueError(f"attention pricing {attention_pricing!r} is not one of "
                         f"{', '.join(AttentionPricing)}")
    if mode in ("prefill", "decode"):
        return project_step(cfg, layout, hw, mode, compiler, weights)
    if composes(layout, mode, partitioner, composed, cfg):
        return project_composed(cfg, layout, hw, remat=remat, progress=progress,
                                compiler=compiler, attention_pricing=attention_pricing)
    analysed = analysed_config(cfg)
    if whole_pipelined(layout, mode):  # the pipeline's microbatches split the batch already
        sharded = build_sharded(analysed, layout, 1, remat, partitioner)
        if progress:
            progress(f"{layout.spec}: compiling the whole pipelined training step")
        compiled = compiler.program(sharded, mode)
        return read_pipelined(read_out(cfg, layout, hw, sharded, compiled, mode, attention_pricing),
                              cfg, layout, hw, compiled.as_text(), remat,
                              attention_pricing == AttentionPricing.FLASH)
    if batch_chunks is None:
        sharded, compiled = fit(analysed, layout, hw.hbm_capacity_bytes, progress, mode, remat,
                                partitioner, compiler)
    else:
        sharded = build_sharded(analysed, layout, batch_chunks, remat, partitioner)
        compiled = compiler.program(sharded, mode)
    return read_out(cfg, layout, hw, sharded, compiled, mode, attention_pricing)


def read_out(cfg: ModelConfig, layout: Layout, hw: Hardware, sharded, compiled,
             mode: str, attention_pricing: str = AttentionPricing.FLASH) -> Projection:
    """Everything read off one compiled program, priced."""
    from helix_jax.train import accumulation_steps

    hlo = compiled.as_text()
    flops = matmul_flops(hlo)
    memory = read_memory(compiled)
    accumulation = accumulation_steps(sharded) if mode == "train" else 1
    if mode == "train":  # the GPU estimate decides; the CPU read-out is reported beside it
        estimate = whole_memory(sharded, accumulation, memory)
        memory_bytes, memory = estimate["total"], estimate["parts"]
        why = _train_fits_why(hw, estimate)
    else:
        memory_bytes = memory["total_bytes"]
        why = _fits_why(hw, memory, sharded.batch_chunks)
    compute = run_blocks_only(compute_time(
        hlo, hw, DTYPE_BYTES[cfg.dtype], score_blocks(cfg, layout),
        fused_attention=attention_pricing == AttentionPricing.FLASH), cfg, layout)
    priced = price_collectives(hlo, cfg, layout, hw)
    total, active = param_counts(cfg)
    return Projection(
        params_total=total, params_active=active,
        model=cfg.name, layout=layout.spec, hardware=hw.name, mode=mode,
        partitioner=sharded.partitioner, remat=sharded.remat, devices=layout.devices,
        mesh=layout.axis_sizes, batch=cfg.batch, seq=cfg.seq, dtype=cfg.dtype,
        batch_chunks=sharded.batch_chunks, accumulation_steps=accumulation,
        tokens_per_step=cfg.batch * cfg.seq,
        compiled=f"the whole {mode} program of all {layout.devices} devices"
                 + (", partitioned by XLA (gspmd)" if sharded.partitioner == "gspmd" else "")
                 + ("; tp_overlap=true compiled as the plain sequence-parallel collectives and "
                    "priced exposed (the runtime runs them as collective matmuls)"
                    if layout.options.get("tp_overlap") and layout.size("act_seq") > 1 else ""),
        extended_by_formula=[],
        flops_per_device=flops["flops"], flops_note=flops_note(flops),
        model_flops_per_token=model_flops_per_token(cfg, mode), mfu_convention=mfu_convention(mode),
        memory_bytes_per_device=memory_bytes, memory=memory,
        fits=memory_bytes <= hw.hbm_capacity_bytes, fits_why=why,
        collectives=priced["rows"], collective_sites=collective_sites(hlo, layout, hw),
        comm_bytes_per_device=priced["comm"], comm_bytes_by_op=priced["by_op"],
        expected_comm_bytes_by_op=(expected_comm_bytes(
            analysed_config(cfg), layout,
            sharded.batch_chunks, sharded.spread_axes) if mode == "forward" else {}),
        projected=_timing(cfg, layout, hw, compute, priced, mode, accumulation),
        pricing=pricing_terms(hw), intra_node_axes=priced["intra_node_axes"],
        bytes_per_element=DTYPE_BYTES[cfg.dtype],
        attention_kernel=attention_kernel_note(layout.spec, mode, sharded.partitioner,
                                               attention_pricing))


def _weights_text(weights: str, weight_bytes: float, dtype: str) -> str:
    """The HBM floor's weight term in words."""
    if weights == Weights.FLOAT8:
        return (f"float8 weights ({weight_bytes / 1e9:.2f} GB: float8_e4m3fn matmul weights with "
                f"float32 per-output-channel scales; embedding, norms, biases and router in "
                f"{dtype})")
    return "16-bit weights"


def _fits_why(hw: Hardware, memory: dict, batch_chunks: int) -> str:
    """Why a whole forward program fits or not: its memory against the capacity, by part."""
    return (f"{memory['total_bytes'] / 1e9:.1f} GB per device against "
            f"{hw.hbm_capacity_bytes / 1e9:.0f} GB: arguments (parameters, input) "
            f"{memory['argument_bytes'] / 1e9:.1f} GB + temporaries "
            f"{memory['temp_bytes'] / 1e9:.1f} GB (one of {batch_chunks} batch chunks; on CPU "
            f"f32 upcasts make this err high)")


def _train_fits_why(hw: Hardware, estimate: dict) -> str:
    """Why a whole training step fits or not: the GPU estimate by part, and beside it the
    compiled program's CPU read-out (which errs high)."""
    cpu = estimate["parts"]["compiled_program"]["total_bytes"]
    return (f"{estimate['total'] / 1e9:.1f} GB per device against "
            f"{hw.hbm_capacity_bytes / 1e9:.0f} GB (GPU estimate): model states "
            f"{estimate['states'] / 1e9:.1f} GB + activations of {estimate['held']} "
            f"{estimate['activations'] / 1e9:.1f} GB + logits {estimate['logits'] / 1e9:.1f} GB"
            f"; XLA:CPU's memory_analysis of the program says {cpu / 1e9:.1f} GB (errs high: "
            f"f32 upcasts, unfused optimizer temporaries)")


def hbm_floor_parts(sharded) -> tuple[float, float]:
    """Bytes a step must read from HBM at least, per device: (its weights, its KV cache). The
    weights are what the device stores of the step's parameters (`abstract_serving_params`):
    16-bit copies, or under float8 weights one byte per matmul weight plus its float32 scales
    and the rest in the model's dtype. The cache counts what the device holds: K/V heads
    replicated over head shards count once per shard that holds them."""
    import math

    import jax

    cfg = sharded.cfg
    elem = DTYPE_BYTES[cfg.dtype]
    cache = math.prod(sharded.cache_shape(cfg.seq)) * 2 * elem
    shards = sharded.layout.size(*sharded.cache_axes)
    weights = sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
                  for a in jax.tree.leaves(sharded.abstract_serving_params()))
    return weights, cache / shards


def hbm_floor_bytes(sharded) -> float:
    """Bytes a step must read from HBM at least, per device: its weights and its KV cache."""
    return sum(hbm_floor_parts(sharded))


def hbm_floor_seconds(sharded, hbm_bytes_per_s: float) -> float:
    """The least time of a prefill or decode step: each pipeline stage reads its bytes, and the
    step walks the stages one after the other (`parallel.pipeline.stage_by_stage`)."""
    return sharded.layout.size("layers") * hbm_floor_bytes(sharded) / hbm_bytes_per_s


def _next_token(sharded, hw: Hardware, compiler: Compiler) -> dict:
    """The next token after a served step (`compiler.compile_head`), compiled and priced: its
    compute by kernel kind, its collectives (GSPMD's, for the head's sharding) and FLOPs."""
    hlo = compiler.head(sharded).as_text()
    compute = compute_time(hlo, hw, DTYPE_BYTES[sharded.cfg.dtype])
    priced = price_collectives(hlo, sharded.cfg, sharded.layout, hw)
    return {"compute": compute, "comm_seconds": priced["seconds"],
            "flops": matmul_flops(hlo)["flops"], "collectives": priced["rows"],
            "seconds": compute["seconds"] + priced["seconds"]}


def project_step(cfg: ModelConfig, layout: Layout, hw: Hardware, mode: str,
                 compiler: Compiler = DIRECT, weights: str = Weights.MODEL) -> Projection:
    """A prefill of `cfg.seq` positions or one decode step at context `cfg.seq`: compiled, read,
    priced; the step is never faster than reading its weights and cache from HBM. `weights`:
    16-bit copies ("model") or float8 weights, compiled and floored as stored."""
    sharded = build_sharded(analysed_config(cfg), layout, 1, weights=weights)
    compiled = compiler.step(sharded, mode)
    hlo = compiled.as_text()
    memory = read_memory(compiled)
    copies = float8_upcast_bytes(hlo)  # XLA:CPU's 16-bit copies of float8 weights
    memory = {**memory, "temp_bytes": memory["temp_bytes"] - copies,
              "total_bytes": memory["total_bytes"] - copies}
    from helix_jax.nn.attention import block_size

    T = cfg.seq if mode == "prefill" else 1
    kb = block_size(cfg.seq // layout.size("kv_seq"), cfg.kv_block)
    step_blocks = {(block_size(T, cfg.q_block), kb), (T, kb)}
    shards = layout.size("heads")  # grouped-query: the r query heads of a K/V head folded into
    r = (cfg.n_heads // shards) // max(1, cfg.kv_heads // shards)  # the query rows
    if r > 1:
        step_blocks |= {b for q, k in step_blocks for b in ((r * q, k), (k, r * q))}
    blocks = step_blocks | score_blocks(cfg, layout)
    compute = compute_time(hlo, hw, DTYPE_BYTES[cfg.dtype], blocks)
    priced = price_collectives(hlo, cfg, layout, hw)
    head = _next_token(sharded, hw, compiler) if cfg.vocab else None
    if head:  # the served step's next token: its kernels and collectives join the step's
        compute = {k: v + head["compute"].get(k, 0.0) if isinstance(v, float) else v
                   for k, v in compute.items()}
        priced = {**priced, "seconds": priced["seconds"] + head["comm_seconds"]}
    weight_bytes, cache_bytes = hbm_floor_parts(sharded)
    floor_bytes = weight_bytes + cache_bytes
    stored = _weights_text(weights, weight_bytes, cfg.dtype)
    floor = hbm_floor_seconds(sharded, hw.hbm_bytes_per_s)
    stages = layout.size("layers")
    busy = compute["seconds"] + priced["seconds"]
    step = max(busy, floor)
    tokens = cfg.batch * (cfg.seq if mode == "prefill" else 1)
    flops = matmul_flops(hlo)
    mfu = model_flops_per_token(cfg, "forward") * tokens / step / (
        layout.devices * hw.peak_flops_per_s)
    total, active = param_counts(cfg)
    proj = Projection(
        params_total=total, params_active=active,
        model=cfg.name, layout=layout.spec, hardware=hw.name, mode=mode,
        partitioner=sharded.partitioner, remat=sharded.remat, devices=layout.devices,
        mesh=layout.axis_sizes, batch=cfg.batch, seq=cfg.seq, context=cfg.seq, dtype=cfg.dtype,
        weights=weights, batch_chunks=1, accumulation_steps=1, tokens_per_step=tokens,
        compiled=(f"the {mode} step of all {layout.devices} devices: "
                  + (f"{cfg.seq} positions into an empty cache" if mode == "prefill" else
                     f"one new position against a cache of {cfg.seq}")
                  + (", and the next token: the LM head on the last position and its argmax, "
                     "as --generate runs it (its own program; the `next_token` field)"
                     if head else "")),
        extended_by_formula=[f"HBM floor: {stored} + KV cache = "
                             f"{floor_bytes / 1e9:.2f} GB per device at "
                             f"{hw.hbm_bytes_per_s / 1e12:.2f} TB/s"
                             + (f", read by each of {stages} pipeline stages in turn"
                                if stages > 1 else "")],
        flops_per_device=flops["flops"] + (head["flops"] if head else 0.0),
        flops_note=flops_note(flops) + ("; with the next token's LM head" if head else ""),
        model_flops_per_token=model_flops_per_token(cfg, "forward"),
        mfu_convention=mfu_convention("forward"),
        memory_bytes_per_device=memory["total_bytes"], memory=memory,
        fits=memory["total_bytes"] <= hw.hbm_capacity_bytes,
        fits_why=(f"{memory['total_bytes'] / 1e9:.1f} GB per device against "
                  f"{hw.hbm_capacity_bytes / 1e9:.0f} GB (weights, KV cache, temporaries"
                  + (f"; XLA:CPU's 16-bit copies of the float8 weights, {copies / 1e9:.2f} GB, "
                     f"left out" if copies else "") + ")"),
        collectives=priced["rows"], collective_sites=collective_sites(hlo, layout, hw),
        comm_bytes_per_device=priced["comm"], comm_bytes_by_op=priced["by_op"],
        expected_comm_bytes_by_op={},
        projected=Timing(
            step_seconds=step, compute_seconds=compute["seconds"],
            compute_breakdown=breakdown(compute),
            comm_seconds=priced["seconds"], exposed_comm_seconds=priced["seconds"],
            hbm_floor_seconds=floor, hbm_floor_weight_bytes=weight_bytes,
            hbm_floor_cache_bytes=cache_bytes, hbm_bound=floor >= busy, tokens_per_s=tokens / step,
            mfu=mfu, tpot_ms=step * 1e3 if mode == "decode" else step / cfg.seq * 1e3,
            ttft_ms=step * 1e3 if mode == "prefill" else None),
        pricing=pricing_terms(hw), intra_node_axes=priced["intra_node_axes"],
        bytes_per_element=DTYPE_BYTES[cfg.dtype])
    if head:
        proj.extra["next_token"] = {
            "what": "the LM head on the last position and its argmax (helix_jax.decode."
                    "next_token), compiled on its own as --generate runs it after each step; "
                    "its time is in the step, its collectives are listed here",
            "seconds": head["seconds"], "comm_seconds": head["comm_seconds"],
            "compute_breakdown": breakdown(head["compute"]), "flops": head["flops"],
            "collectives": head["collectives"]}
    return proj
