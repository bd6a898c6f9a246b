"""Pipelined training steps compiled whole: a tp-pp layout with pp > 1 and one data replica, on at
most MAX_WHOLE_DEVICES devices, read off the training step the runtime runs.

GPipe (`parallel.pipeline`): autodiff through one scan of M + p − 1 steps. Every stage runs every
step, forward and backward (the bubble is computed, then discarded), with no conditional, so the
program's FLOPs and its kernels, read as `project.read_out` reads any program, are what a stage
executes; neighbouring stages do the same work each step, so the lockstep the per-step
collective-permutes impose costs nothing beyond the serial sum.

1F1B and interleaved 1F1B (`parallel.one_f_one_b`): a scan over the T ticks of the table
(`parallel.schedule.build`), each tick a `lax.cond` for forward-or-skip then one for
backward-or-skip, then collective-permutes to both neighbouring stages. The HLO counts every
branch of a conditional once per execution (an upper bound); here each branch is weighted by how
often the table takes it on the last stage (M V forwards and M V backwards of T ticks; the loss
head, nested in the forward, on M of the M V forwards). The compiled branches give one chunk's
forward and backward time (compute and the collectives inside them), and the step is the table's
critical path with those durations:

  asynchronous  Megatron's order (each stage runs its operations in the table's order as soon as
                their inputs arrive, each sending only its own output: one of the tick's two
                permutes): (M + (p − 1)/V) microbatch times, what the composed projection
                prices; the step time uses it.
  lockstep      the runtime as it runs on a GPU: every tick ends with collective-permutes to both
                neighbours, so a stage leaves tick t only when its neighbours have finished theirs;
                neighbouring stages run F and B in the same tick, so a steady-state tick lasts
                max(F, B) = B, not (F + B)/2. Reported beside the step time, not used for it.

Everything outside the tick loop (the embedding, the loss psums, the optimizer update) is added
to both.

Either schedule: what the runtime moves around the chunks (the stash's writes and reads, the
weight gradients summed over microbatches, the chunks' parameters sliced or moved into the
interleaved order; under GPipe its per-step residual stacks and gradient sums) is priced apart,
`runtime_plumbing_seconds`, and left out of the step: Megatron keeps residuals where they were
made, holds each chunk's layers on its stage and accumulates weight gradients in the wgrad GEMM,
as the composed projection prices it. The lockstep time (1F1B) and `as_run_seconds` (GPipe)
include it: the runtime as it runs.

Stages whose chunk holds a collective-permute (context parallelism, collective matmuls) run both
branches masked: such layouts stay composed (`whole_pipelined`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import numpy as np

from helix_jax.analysis.costmodel.formulas import DTYPE_BYTES
from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.costmodel.memory import activation_bytes_per_layer, in_flight
from helix_jax.analysis.costmodel.pricing import collective_time
from helix_jax.analysis.costmodel.projection import Projection
from helix_jax.analysis.costmodel.roofline import Program, kernels
from helix_jax.analysis.costmodel.terms import breakdown, price_collectives, score_blocks
from helix_jax.analysis.costmodel.topology import node_of
from helix_jax.analysis.hlo.collectives import collectives
from helix_jax.analysis.hlo.flops import matmul_flops
from helix_jax.analysis.hlo.module import HloModule, parse_arrays, parse_module
from helix_jax.config import ModelConfig
from helix_jax.layouts import Layout
from helix_jax.limits import MAX_WHOLE_DEVICES
from helix_jax.parallel.one_f_one_b import RUNTIME_SCOPES, STASH_SCOPE
from helix_jax.parallel.schedule import Table, replay
from helix_jax.parallel.schedule import build as schedule_table

KINDS = ("matmul", "attention", "memory")


def whole_pipelined(layout: Layout, mode: str) -> bool:
    """Whether a training step of `layout` is a pipeline compiled whole here: tp-pp with pp > 1,
    one data replica, no context or expert parallelism, at most MAX_WHOLE_DEVICES devices."""
    o = layout.options
    return (mode == "train" and layout.kind == "tp-pp" and layout.size("layers") > 1
            and layout.size("batch") == 1 and o.get("cp", 1) == 1 and o.get("ep", 1) == 1
            and layout.devices <= MAX_WHOLE_DEVICES)



def as_megatron(layout: Layout) -> bool | None:
    """`project`'s `composed` for a training step measured on Megatron's schedule: True where a
    pipeline would otherwise be compiled whole and read as helix's runtime runs it, else None
    (the default path)."""
    return True if whole_pipelined(layout, "train") else None

class _Reader:
    """One compiled program's kernels and collectives, priced, per computation: the cost of any
    set of computation runs (`runs_under`)."""

    def __init__(self, hlo: str, cfg: ModelConfig, layout: Layout, hw: Hardware,
                 fused_attention: bool = True, gpipe_steps: int = 0):
        self.hlo, self.cfg, self.layout, self.hw = hlo, cfg, layout, hw
        self.mod: HloModule = parse_module(hlo)
        where = {i.name: i for i in self.mod.instructions()}
        prog = Program(hlo)
        plumbing = _plumbing(prog, self.mod) | (
            _gpipe_plumbing(prog, self.mod, gpipe_steps) if gpipe_steps else set())
        self.kernels = [(where[k.name].computation, where[k.name].opcode == "copy",
                         k.kind == "memory" and k.name in plumbing, k)
                        for k in kernels(hlo, hw, DTYPE_BYTES[cfg.dtype],
                                         score_blocks(cfg, layout), True, fused_attention)]
        self.flops = matmul_flops(hlo)["items"]
        self.collectives = collectives(hlo)
        self.moving = {c.name for c in self.collectives  # e.g. chunks sent to their stages
                       if c.name in where and _scoped(prog, where[c.name])}
        self.node = node_of(layout, hw)

    def cost(self, runs: dict[str, float]) -> dict:
        """Seconds by kernel kind (and of plain `copy` kernels among the memory ones), collective
        seconds, matmul FLOPs of these runs; `shared_seconds`: matmul + attention kernels and
        collectives, the work a composed stage also prices the same way."""
        out: dict = defaultdict(float, {f"{k}_seconds": 0.0 for k in KINDS}, comm_seconds=0.0,
                                copy_seconds=0.0, plumbing_seconds=0.0, permute_seconds=0.0)
        for comp, copy, plumbing, k in self.kernels:
            seconds = k.seconds * runs.get(comp, 0.0)
            out["plumbing_seconds" if plumbing else f"{k.kind}_seconds"] += seconds
            out["copy_seconds"] += seconds if copy else 0.0
        for c in self.collectives:
            if runs.get(c.computation):
                seconds = (collective_time(dataclasses.replace(c, trip_count=1), self.hw,
                                           self.node) * runs[c.computation])
                out["plumbing_seconds" if c.name in self.moving else "comm_seconds"] += seconds
                out["permute_seconds"] += seconds if c.op == "collective-permute" else 0.0
        out["flops"] = sum(i["flops_each"] * runs.get(i["computation"], 0.0) for i in self.flops)
        out["compute_seconds"] = sum(out[f"{k}_seconds"] for k in KINDS)
        out["seconds"] = out["compute_seconds"] + out["comm_seconds"]
        out["runtime_seconds"] = out["seconds"] + out["plumbing_seconds"]
        out["shared_seconds"] = (out["matmul_seconds"] + out["attention_seconds"]
                                 + out["comm_seconds"])
        return dict(out)

    def weighted_collectives(self, runs: dict[str, float]) -> list:
        """The program's collectives with their executions as `runs` says."""
        return [dataclasses.replace(c, trip_count=_count(runs.get(c.computation, 0.0)))
                for c in self.collectives if runs.get(c.computation)]


def _scoped(prog: Program, ins) -> bool:
    """Whether a kernel or collective is the runtime's own data movement: some op in it runs
    under one of `RUNTIME_SCOPES` and every other op that computes or moves data does too (ops
    that only re-lay out what they read may carry their source's name; unnamed ops are XLA's
    index arithmetic)."""
    body = prog.body(ins) if ins.opcode == "fusion" else [ins]
    named = [(i, n) for i in body if (n := prog.op_name(i))]
    scoped = [any(scope in n for scope in RUNTIME_SCOPES) for _, n in named]
    return any(scoped) and all(ok or i.opcode in _RELAYOUT for (i, _), ok in zip(named, scoped))


_RELAYOUT = {"parameter", "constant", "bitcast", "copy", "reshape", "transpose",
             "get-tuple-element"}


def _plumbing(prog: Program, mod: HloModule) -> set[str]:
    """The kernels and collectives that are the runtime's own data movement around the chunks
    (`_scoped`), and the copies and zero fills XLA makes of whole stash buffers (arrays shaped as
    a buffer a `STASH_SCOPE` kernel writes: the zeroed stash copied into the tick loop)."""
    instrs = [i for i in mod.instructions() if i.opcode not in _FREE_OPS]
    scoped = {i.name for i in instrs if _scoped(prog, i)}
    stash = {_shape(i.shape) for i in instrs if i.name in scoped and any(
        b.opcode == "dynamic-update-slice" and STASH_SCOPE in prog.op_name(b)
        for b in (prog.body(i) if i.opcode == "fusion" else [i]))}
    moves = {i.name for i in instrs if _shape(i.shape) in stash and (
        i.opcode == "copy" or (i.opcode == "fusion" and all(
            b.opcode in ("parameter", "constant", "broadcast") for b in prog.body(i))))}
    return scoped | moves


_FREE_OPS = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")
_MOVES = {"parameter", "constant", "broadcast", "copy", "bitcast", "reshape", "transpose",
          "dynamic-slice", "slice", "dynamic-update-slice", "convert"}


def _shape(text: str) -> str:
    """An HLO shape without its layout: "f32[4,8]{1,0}" -> "f32[4,8]"."""
    return text.split("{")[0]


def _array(dtype: str, dims) -> str:
    """A parsed array back as `_shape` writes it."""
    return f"{dtype}[{','.join(map(str, dims))}]"


def _gpipe_plumbing(prog: Program, mod: HloModule, steps: int) -> set[str]:
    """GPipe's data movement around its stages (autodiff through the scan of `steps` steps): the
    kernels of the entry and of the step loops (forward and backward) that copy or fill a
    per-step stack (an array the step loop stacks, [steps, ...]: the residuals every step saves),
    slice one step's residuals out of it, or add a step's weight gradients to the parameters'
    (an add of arrays shaped as a parameter, in a step loop). A parameter's shape is never taken
for a stack. Megatron keeps each microbatch's residuals where
    they were made and accumulates weight gradients in the wgrad GEMM."""
    entry = mod.computations[mod.entry]
    loops = [i for i in entry if i.opcode == "while" and mod.trip_count(i) == steps]
    stacks = {_array(d, dims) for loop in loops
              for d, dims in parse_arrays(loop.shape) if dims and dims[0] == steps}
    params = {_shape(i.shape) for i in entry if i.opcode == "parameter"}
    stacks -= params  # a stage's layer stack whose depth happens to equal the steps
    out = set()
    for comp in [mod.entry] + [dict(mod.called(loop))["body"] for loop in loops]:
        for ins in mod.computations[comp]:
            if ins.opcode not in ("fusion", "copy", "broadcast", "dynamic-slice", "add"):
                continue
            body = prog.body(ins) if ins.opcode == "fusion" else [ins]
            big = {b.opcode for b in body if any(math.prod(d) > 1 for _, d in
                                                  parse_arrays(b.shape))}
            operands = {_array(d, dims) for arrays in mod.operand_arrays(ins)
                        for d, dims in arrays}
            if big and big <= _MOVES and (_shape(ins.shape) in stacks or operands & stacks):
                out.add(ins.name)
            elif (comp != mod.entry and big and big <= {"add", "parameter", "bitcast"}
                  and _shape(ins.shape) in params
                  and all("add_any" in prog.op_name(b) for b in body if b.opcode == "add")):
                out.add(ins.name)
    return out


def _count(n: float) -> float:
    return int(round(n)) if abs(n - round(n)) < 1e-9 else n


def _ticks(r: _Reader, table: Table) -> dict:
    """The tick loop of a compiled 1F1B step: its body, and the forward, backward and loss-head
    conditionals with their (skip, work) branches (jax lowers `lax.cond(pred, yes, no)` to
    branch_computations={no, yes})."""
    mod = r.mod
    loops = [i for i in mod.instructions() if i.opcode == "while"
             and mod.trip_count(i) == table.ticks]
    for loop in loops:
        body = dict(mod.called(loop))["body"]
        conds = [i for i in mod.computations[body] if i.opcode == "conditional"
                 and len(mod.called(i)) == 2]
        found = {}
        for c in conds:
            skip, work = (b for _, b in mod.called(c))
            f_work, f_skip = (r.cost(mod.runs_under(b))["flops"] for b in (work, skip))
            if f_work > 0 and f_skip == 0:
                kind = "backward" if _transposed(r, work) else "forward"
                found[kind] = (c.name, skip, work)
        if set(found) == {"forward", "backward"}:
            heads = [i for i in mod.computations[found["forward"][2]]  # the loss head's cond
                     if i.opcode == "conditional" and len(mod.called(i)) == 2]
            found["head"] = ((heads[0].name, *(b for _, b in mod.called(heads[0])))
                             if heads else None)
            return {"body": body, **found}
    raise ValueError(f"{r.layout.spec}: the compiled 1F1B step has no tick loop of {table.ticks} "
                     f"ticks with a forward and a backward conditional to read")


def _transposed(r: _Reader, comp: str) -> bool:
    """Whether most matmuls under `comp` are autodiff's transposes (a backward)."""
    runs = r.mod.runs_under(comp)
    names = [i["op_name"] for i in r.flops if runs.get(i["computation"])]
    return sum("transpose(" in n for n in names) * 2 > len(names)


def _memory(cfg: ModelConfig, layout: Layout, proj: Projection, remat: str) -> dict:
    """The compiled step's temporaries (activations live at once are among them) beside the
    activation formula's in-flight microbatches (`memory.in_flight`)."""
    o = layout.options
    p, M, V = layout.size("layers"), o["microbatches"], o.get("virtual", 1)
    flight = in_flight(o.get("schedule", "gpipe"), p, M, V)
    per_mb = activation_bytes_per_layer(cfg, cfg.batch // M, o["tp"], o.get("sp", False),
                                        remat) * cfg.n_layers / p
    return {"compiled_temp_bytes": proj.memory["compiled_program"]["temp_bytes"],
            "in_flight_microbatches_formula": flight,
            "activations_in_flight_formula_bytes": flight * per_mb}


def read_pipelined(proj: Projection, cfg: ModelConfig, layout: Layout, hw: Hardware,
                   hlo: str, remat: str, fused_attention: bool = True) -> Projection:
    """`proj` (`project.read_out` of the whole training step in `hlo`) with the pipeline read as
    the runtime runs it (module doc): its `pipeline` JSON field, and under 1F1B the FLOPs,
    collectives and step time weighted by the tick table."""
    o = layout.options
    p, M, V = layout.size("layers"), o["microbatches"], o.get("virtual", 1)
    gpipe = o.get("schedule", "gpipe") != "1f1b"
    r = _Reader(hlo, cfg, layout, hw, fused_attention, gpipe_steps=(M + p - 1) * gpipe)
    if gpipe:
        whole = r.cost(r.mod.runs_under(r.mod.entry))
        step = whole["seconds"]
        proj.projected = dataclasses.replace(
            proj.projected, step_seconds=step, compute_seconds=whole["compute_seconds"],
            compute_breakdown=breakdown(whole), comm_seconds=whole["comm_seconds"],
            exposed_comm_seconds=whole["comm_seconds"], tokens_per_s=cfg.batch * cfg.seq / step,
            mfu=proj.projected.mfu * proj.projected.step_seconds / step,
            tpot_ms=step / cfg.seq * 1e3)
        proj.compiled += (f"; GPipe as the runtime runs it: every stage runs all M + p - 1 = "
                          f"{M + p - 1} steps forward and backward, bubble included, with no "
                          f"conditional, so the program is read as it is, but for its per-step "
                          f"stacks of residuals and its gradient sums over the steps, priced "
                          f"apart ({whole['plumbing_seconds'] * 1e3:.4g} ms: Megatron keeps "
                          f"residuals in place and accumulates weight gradients in the wgrad "
                          f"GEMM)")
        proj.extra["pipeline"] = {
            "schedule": "gpipe", "steps": M + p - 1,
            "step_uses": "the compiled program's serial time (every stage runs the same work "
                         "each step, so the per-step permutes' lockstep costs nothing more) "
                         "without the runtime's plumbing",
            "shared_seconds": whole["shared_seconds"], "copy_seconds": whole["copy_seconds"],
            **_plumbing_fields(whole), "as_run_seconds": whole["runtime_seconds"],
            **_memory(cfg, layout, proj, remat)}
        return proj
    table = schedule_table(p, M, V)
    d = _durations(r, _ticks(r, table), table, M * V)
    step, total = d["seconds"]["async"], d["total"]
    priced = price_collectives(hlo, cfg, layout, hw, r.weighted_collectives(d["runs"]))
    proj.flops_per_device = total["flops"]
    proj.flops_note = ("the last stage's matmul FLOPs, each branch of the tick loop's "
                       "conditionals weighted by how often the 1F1B table takes it")
    proj.collectives, proj.comm_bytes_per_device = priced["rows"], priced["comm"]
    proj.comm_bytes_by_op = priced["by_op"]
    ops = d["ops"]["seconds"]
    mb = V * (ops["forward"] + ops["backward"])
    proj.projected = dataclasses.replace(
        proj.projected, step_seconds=step, compute_seconds=total["compute_seconds"],
        compute_breakdown=breakdown(total), comm_seconds=total["comm_seconds"],
        exposed_comm_seconds=total["comm_seconds"], microbatch_seconds=mb,
        microbatch_compute_seconds=V * (d["costs"]["forward"]["compute_seconds"]
                                        + d["costs"]["backward"]["compute_seconds"]),
        pipeline_seconds=d["pipe"]["seconds"],
        bubble_seconds=d["pipe"]["seconds"] - M * mb - M * (ops["forward_head"] - ops["forward"]),
        tokens_per_s=cfg.batch * cfg.seq / step,
        mfu=proj.projected.mfu * proj.projected.step_seconds / step, tpot_ms=step / cfg.seq * 1e3)
    lockstep = d["runtime"]["lockstep"]
    proj.compiled += (f"; its 1F1B tick loop ({table.ticks} ticks) read with each conditional's "
                      f"branches weighted by the table (last stage: {M * V} forwards and "
                      f"{M * V} backwards, the loss head on {M}); step = the table's "
                      f"asynchronous critical path (Megatron's order). The runtime's ticks end "
                      f"with collective-permutes to both neighbours, which on a GPU hold "
                      f"neighbouring stages in lockstep (a tick running F beside B lasts "
                      f"max(F, B)) and with its own plumbing (stash, gradient sums, chunk "
                      f"moves: {total['plumbing_seconds'] * 1e3:.4g} ms, which Megatron does "
                      f"not have and the step leaves out): {lockstep * 1e3:.4g} ms against "
                      f"{step * 1e3:.4g} ms")
    proj.extra["pipeline"] = {
        "schedule": "1f1b", "virtual": V, "ticks": table.ticks,
        "branch_weights": {k: list(v) for k, v in d["weights"].items()},
        "forward_chunk_seconds": ops["forward"], "backward_chunk_seconds": ops["backward"],
        "loss_head_seconds": ops["forward_head"] - ops["forward"],
        "tick_bookkeeping_seconds": d["bare"]["seconds"],
        "outside_ticks_seconds": d["outside"]["seconds"],
        "forward_chunk_flops": d["costs"]["forward"]["flops"],
        "backward_chunk_flops": d["costs"]["backward"]["flops"],
        "outside_ticks_flops": d["outside"]["flops"],
        "async_seconds": step, "lockstep_seconds": lockstep,
        "step_uses": "async: the table's critical path in Megatron's order, as the composed "
                     "projection prices it",
        "lockstep_note": "helix's runtime ends every tick with collective-permutes to both "
                         "neighbouring stages; on a GPU they couple neighbours tick by tick, and "
                         "neighbours run F and B in the same tick, so that tick lasts max(F, B)",
        "chunk_work_pipeline_seconds": d["pipe"]["shared_seconds"],
        "copy_seconds": total["copy_seconds"],
        **_plumbing_fields(total),
        **_memory(cfg, layout, proj, remat)}
    return proj


def _plumbing_fields(cost: dict) -> dict:
    return {"runtime_plumbing_seconds": cost["plumbing_seconds"],
            "runtime_plumbing_note": (
                "what the runtime moves around the chunks, priced apart from the step: the "
                "microbatches' residuals stashed and read back, their weight gradients summed, "
                "the chunks' parameters gathered where they run (kernels and collectives under "
                "parallel.one_f_one_b's RUNTIME_SCOPES; GPipe's per-step stacks and gradient "
                "sums). Megatron's runtime keeps residuals where they were made, holds each "
                "chunk's layers on its stage and accumulates weight gradients in the wgrad GEMM "
                "(gradient_accumulation_fusion), as the composed projection prices it; the "
                "lockstep time (1F1B) and as_run_seconds (GPipe) include it")}


def _durations(r: _Reader, t: dict, table: Table, ops: int) -> dict:
    """Costs on the last stage: the weighted whole, each operation (a chunk's forward or
    backward, with the tick's own bookkeeping and the other conditional's skip branch), what lies
    outside the ticks, and the critical paths (async and lockstep) of the full seconds and of the
    `shared_seconds` alone."""
    mod, T = r.mod, table.ticks
    p, V = table.op.shape[1], int(table.chunk.max()) + 1
    fc, bc = t["forward"][0], t["backward"][0]
    weights = {fc: (1 - ops / T, ops / T), bc: (1 - ops / T, ops / T)}
    head_off, head_on = {}, {}
    if t["head"]:
        weights[t["head"][0]] = (1 - 1 / V, 1 / V)
        head_off, head_on = {t["head"][0]: (1.0, 0.0)}, {t["head"][0]: (0.0, 1.0)}
    runs = mod.runs_under(mod.entry, weights)
    c = {"forward": r.cost(mod.runs_under(t["forward"][2], head_off)),
         "forward_head": r.cost(mod.runs_under(t["forward"][2], head_on)),
         "backward": r.cost(mod.runs_under(t["backward"][2])),
         "skip_forward": r.cost(mod.runs_under(t["forward"][1])),
         "skip_backward": r.cost(mod.runs_under(t["backward"][1]))}
    bare = r.cost(mod.runs_under(t["body"], {fc: (0.0, 0.0), bc: (0.0, 0.0)}))
    total, tick = r.cost(runs), r.cost(mod.runs_under(t["body"], weights))
    out = {"weights": weights, "runs": runs, "costs": c, "bare": bare, "total": total,
           "outside": {k: total[k] - T * tick[k] for k in total}, "ops": {}, "pipe": {}}
    for key in ("seconds", "runtime_seconds", "shared_seconds"):
        plumbing = key != "shared_seconds"  # the tick's own work and the skipped branch's zeros
        # a tick sends to both neighbours (its output on, its input's cotangent back: arrays of
        # one shape); in Megatron's order an operation sends only its own, half of that
        own = bare[key] - (bare["permute_seconds"] / 2 if key == "seconds" else 0.0)
        op = {"forward": plumbing * (own + c["skip_backward"][key]) + c["forward"][key],
              "forward_head": (plumbing * (own + c["skip_backward"][key])
                               + c["forward_head"][key]),
              "backward": plumbing * (own + c["skip_forward"][key]) + c["backward"][key],
              "idle": plumbing * (own + c["skip_forward"][key] + c["skip_backward"][key])}
        forward = np.full((p, V), op["forward"])
        forward[p - 1, V - 1] = op["forward_head"]
        backward = np.full((p, V), op["backward"])
        pipe = replay(table, forward, backward)
        lockstep = replay(table, forward, backward, op["idle"], lockstep=True)
        out["ops"][key], out["pipe"][key] = op, pipe
        out[key.replace("_seconds", "")] = {
            "async": pipe + out["outside"][key], "lockstep": lockstep + out["outside"][key]}
    return out
