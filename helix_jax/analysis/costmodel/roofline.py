"""Kernel-level time of a compiled program: a roofline per kernel, read off the HLO.

Each top-level instruction of the program (a fusion, a dot, a copy, ...) is one kernel, run as
often as its computation runs (loop trip counts applied, as for FLOPs). Its time is

    matmul kernels    max(FLOPs / (rate x quantization efficiency), bytes / HBM bandwidth)
    other kernels     bytes read and written / HBM bandwidth

`rate` is the profile's achieved rate of large matmuls (`flops_per_s`), or of a fused attention
kernel (`attention_flops_per_s`) for the dots inside the attention core. An attention dot's bytes
leave out its score block ([q_block, kv_block] scores or probabilities, `score_blocks`): a flash
kernel keeps those on chip and never writes them to HBM (Dao et al. 2022, FlashAttention), so it
reads only its query, key and value tiles and writes its output tile. The quantization
efficiency is NVIDIA's tile x wave model of a GEMM: output tiles of `mm_tile` elements, one tile
per SM at a time, so a GEMM whose tiles do not fill the last wave of `sm_count` SMs, or whose
dimensions are not multiples of the tile, wastes the rest. A GEMM with fewer output tiles than
SMs (a decode step's matrix-vector products: one row per sequence) is split along K, as cuBLAS and
CUTLASS do for such shapes (split-K / stream-K), into up to sm_count // tiles slices of at least
SPLIT_K_DEPTH: its tiles then fill the SMs, and a skinny GEMM is bound by reading its weights.

Three kinds of kernel in a program compiled for CPU would not exist on a GPU, and are left out:
the converts and transposes XLA:CPU puts around a dot (its op_name ends in `dot_general`: cuBLAS
reads the operands as they are), the elementwise work inside the attention core (a fused,
flash-style kernel keeps it on chip: op_name under `attention_core`), and matmul operands that
XLA:CPU widened to f32 (bytes are counted at the model's element size).

Float8 weights (`--weights float8`, nn/float8.py) add more: XLA:CPU cannot slice float8
arrays, so it converts each stacked float8 weight whole to f16 (a kernel that only converts a
float8 array), and converts each layer's float8 values up before the matmul (a dequantisation
kernel: ops under `DEQUANT_SCOPE`, or a layout-only conversion of a float8 array); a kernel that
only quantises an activation or scales a W8A8 product (`_is_w8a8_plumbing`) has no GPU
counterpart either. These are left out. A matmul reads a float8 weight operand at one byte per
element plus one float32 scale per output column (elements / K), and a float8 activation
operand (rounded under `ACTIVATION_SCOPE`) at one byte per element; one whose operands are both
float8 (W8A8) runs at the profile's FP8 rate (`matmul_rate`). The activation's amax and
rounding, where XLA:CPU fuses them with the kernel that made the activation (a norm, SwiGLU),
stay priced as that kernel's bytes (priced, not yet timed on a GPU).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

from helix_jax.analysis.hlo.flops import OP_NAME, dims_attr
from helix_jax.analysis.hlo.memo import per_program
from helix_jax.analysis.hlo.module import HloModule, Instruction, array_bytes, parse_arrays, parse_module
from helix_jax.nn.attention import ATTENTION_SCOPE
from helix_jax.nn.float8 import ACTIVATION_SCOPE, DEQUANT_SCOPE, OUTPUT_SCALE_SCOPE

_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional",
         "call", "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency",
         "copy-start", "copy-done", "send", "recv", "send-done", "recv-done", "domain"}
_COLLECTIVE = re.compile(r"^(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute|"
                         r"collective-broadcast|ragged-all-to-all)(-start|-done)?$|^async-")
_SLICERS = {"dynamic-slice", "slice", "gather"}


@dataclass(frozen=True)
class KernelShape:
    """What a kernel is, without a price: its kind, runs, FLOPs and bytes per run, and for a
    matmul its (batch, m, n, k) shape (the hardware's tile/wave quantization reads it)."""

    name: str
    kind: str  # matmul | attention | memory
    runs: int
    flops: float  # per run
    bytes: float  # per run
    gemm: tuple[int, int, int, int] = (0, 0, 0, 0)
    fp8: bool = False  # a matmul of a float8 weight and a float8 activation (W8A8)


@dataclass(frozen=True)
class Kernel:
    """One kernel of the program: what it is, how often it runs, its FLOPs, bytes and time."""

    name: str
    kind: str  # matmul | attention | memory
    runs: int
    flops: float  # per run
    bytes: float  # per run
    seconds: float  # per run


def gemm_shape(mod: HloModule, dot: Instruction) -> tuple[int, int, int, int]:
    """(batch, m, n, k) of a dot: batch dims, lhs free, rhs free and contracting sizes."""
    lhs, rhs = (a[0][1] for a in mod.operand_arrays(dot)[:2])
    lb, lc = dims_attr(dot.attrs, "lhs_batch_dims"), dims_attr(dot.attrs, "lhs_contracting_dims")
    rb, rc = dims_attr(dot.attrs, "rhs_batch_dims"), dims_attr(dot.attrs, "rhs_contracting_dims")
    batch = math.prod(lhs[d] for d in lb)
    k = math.prod(lhs[d] for d in lc)
    m = math.prod(s for d, s in enumerate(lhs) if d not in lb and d not in lc)
    n = math.prod(s for d, s in enumerate(rhs) if d not in rb and d not in rc)
    return batch, m, n, k


# The K depth of one split-K slice: the K extent of a CTA tile of Hopper's and Ampere's bf16
# GEMM kernels (CUTLASS's 128 x 256 x 64 and 256 x 128 x 64 tiles), so a slice is never shallower
# than one pass of the main loop.
SPLIT_K_DEPTH = 64


def quantization_efficiency(batch: int, m: int, n: int, tile: tuple[int, int],
                            sm_count: int, k: int = 0) -> float:
    """Useful share of the tile x wave grid of a GEMM (1 for a GEMM that fills every wave).
    With fewer output tiles than SMs, K (when given) is split to fill them (module doc)."""
    if sm_count <= 0:
        return 1.0
    tm, tn = tile
    tiles_m, tiles_n = math.ceil(m / tm), math.ceil(n / tn)
    tiles = batch * tiles_m * tiles_n
    if k and tiles < sm_count:
        tiles *= max(1, min(sm_count // tiles, math.ceil(k / SPLIT_K_DEPTH)))
    waves = math.ceil(tiles / sm_count)
    tile_eff = (m * n) / (tiles_m * tm * tiles_n * tn)
    return tile_eff * tiles / (waves * sm_count)


class Program:
    """The HLO module with the maps the kernel walk needs."""

    def __init__(self, text: str, narrow: int | None = None):
        self.narrow = narrow
        self.mod = parse_module(text)
        self.runs = self.mod.executions()
        self.fused = {c for ins in self.mod.instructions() if ins.opcode == "fusion"
                      for _, c in self.mod.called(ins)}

    def op_name(self, ins: Instruction) -> str:
        m = OP_NAME.search(ins.attrs)
        return m.group(1) if m else ""

    def body(self, ins: Instruction) -> list[Instruction]:
        calls = [c for k, c in self.mod.called(ins) if k == "calls"]
        return self.mod.computations.get(calls[0], []) if calls else []

    def operand_bytes(self, ins: Instruction) -> list[int]:
        return [_bytes(arrays, self.narrow) for arrays in self.mod.operand_arrays(ins)]


def _bytes(arrays, narrow: int | None) -> int:
    """Bytes of arrays; with `narrow`, f32 arrays count `narrow` bytes per element."""
    return sum(math.prod(s) * narrow if narrow and d == "f32" else array_bytes(d, s)
               for d, s in arrays)


def _result_bytes(ins: Instruction, narrow: int | None = None) -> int:
    return _bytes(parse_arrays(ins.shape), narrow)


def _io_bytes(prog: Program, ins: Instruction) -> float:
    """Bytes a memory-bound kernel reads and writes: operands plus results, where a slice reads
    only what it takes and an in-place update writes only the update."""
    narrow = prog.narrow
    if ins.opcode in _SLICERS:
        return 2.0 * _result_bytes(ins, narrow)
    operands = prog.operand_bytes(ins)
    if ins.opcode == "dynamic-update-slice":
        return 2.0 * operands[1]
    if ins.opcode != "fusion":
        return float(sum(operands) + _result_bytes(ins, narrow))
    body = prog.body(ins)
    params = {i.name: int(i.operands[0][0]) for i in body  # `parameter(3)` -> operand "3"
              if i.opcode == "parameter" and i.operands and i.operands[0][0].isdigit()}
    users: dict[str, list[Instruction]] = defaultdict(list)
    for i in body:
        for name, _ in i.operands:
            users[name].append(i)
    total = 0.0
    in_place: set[int] = set()
    root = body[-1] if body else None
    roots = [root] if root is not None and root.opcode != "tuple" else [
        i for i in body if root is not None and i.name in {n for n, _ in root.operands}]
    update_bytes = 0.0
    for r in roots:
        if r is not None and r.opcode == "dynamic-update-slice" and r.operands:
            buf = r.operands[0][0]
            if buf in params:
                in_place.add(params[buf])
                update_bytes += _bytes(prog.mod.operand_arrays(r)[1], narrow)
    for name, idx in params.items():
        if idx in in_place or idx >= len(operands):
            continue
        uses = users.get(name, [])
        if uses and all(u.opcode in _SLICERS for u in uses):
            total += sum(_result_bytes(u, narrow) for u in uses)
        else:
            total += operands[idx]
    result = update_bytes if in_place else _result_bytes(ins, narrow)
    return total + result




_LAYOUT_OPS = {"parameter", "transpose", "copy", "convert", "bitcast", "reshape", "broadcast",
               "constant", "dynamic-slice", "slice"}


def _is_layout_only(prog: Program, ins: Instruction) -> bool:
    """A kernel that only moves, converts or re-lays out its input (a copy, a transpose): XLA:CPU
    emits these in front of its matmuls, cuBLAS reads the operands where they are."""
    if ins.opcode in ("copy", "transpose", "convert"):
        return True
    return ins.opcode == "fusion" and all(i.opcode in _LAYOUT_OPS for i in prog.body(ins))


def _is_dequantize(prog: Program, ins: Instruction) -> bool:
    """A kernel that dequantises a float8 weight (its body runs under `DEQUANT_SCOPE`)."""
    body = prog.body(ins) if ins.opcode == "fusion" else [ins]
    return any(DEQUANT_SCOPE in prog.op_name(i) for i in body)


def _is_float8_upcast(prog: Program, ins: Instruction) -> bool:
    """A kernel that only converts or moves a float8 array (XLA:CPU's upcast of the float8
    weights it cannot slice; a GPU slices them as they are)."""
    return _is_layout_only(prog, ins) and any(
        d.startswith("f8") for arrays in prog.mod.operand_arrays(ins) for d, _ in arrays)


def float8_upcast_bytes(hlo_text: str) -> int:
    """Bytes of the 16-bit copies XLA:CPU makes of float8 arrays before the program's loops
    (`_is_float8_upcast` kernels of the entry computation): all live while the layers run, so
    they sit in the temporaries of a CPU program, where a GPU program has none."""
    prog = Program(hlo_text)
    return sum(_result_bytes(i) for i in prog.mod.computations.get(prog.mod.entry, [])
               if _is_float8_upcast(prog, i))


def _is_w8a8_plumbing(prog: Program, ins: Instruction) -> bool:
    """A kernel that only quantises an activation (its amax, its rounding) or scales a W8A8
    product by its weight's output-channel scales: every op in it that is not a layout op runs
    under `ACTIVATION_SCOPE` or `OUTPUT_SCALE_SCOPE`. A serving GPU has none of these kernels:
    the activation scale is static (calibrated) and the rounding is the epilogue of the kernel
    that made the activation, the output scaling the GEMM's epilogue."""
    body = prog.body(ins) if ins.opcode == "fusion" else [ins]
    work = [i for i in body if i.opcode not in _LAYOUT_OPS]
    return bool(work) and all(ACTIVATION_SCOPE in prog.op_name(i)
                              or OUTPUT_SCALE_SCOPE in prog.op_name(i) for i in work)


def _float8_kind(prog: Program, ins: Instruction) -> str | None:
    """What float8 value a kernel hands on: "activation" when it rounds its result through
    float8 under `ACTIVATION_SCOPE` (`float8.quantize_activation`, perhaps fused with the norm
    or activation function before it), "weight" when it converts a float8 array (a float8
    weight's values), else None."""
    if ins.opcode in ("parameter", "constant"):
        return None
    body = prog.body(ins) if ins.opcode == "fusion" else [ins]
    f8 = [i for i in body if any(d.startswith("f8") for d, _ in parse_arrays(i.shape))]
    if any(ACTIVATION_SCOPE in prog.op_name(i) for i in f8):
        return "activation"
    return "weight" if f8 or any(
        d.startswith("f8") for arrays in prog.mod.operand_arrays(ins) for d, _ in arrays) else None


def _float8_operands(prog: Program, ins: Instruction, by_name: dict[str, Instruction],
                     dequant: set[str]) -> tuple[int, int]:
    """Elements of the operands of the matmul kernel `ins` that are float8 values: (weights,
    activations). A weight is float8 when a dequantisation kernel (`DEQUANT_SCOPE`) or a
    conversion of a float8 array made it, an activation when `quantize_activation` did,
    through layout-only kernels either way."""
    weights = activations = 0
    for name, _ in ins.operands:
        source, kind = name, None
        while source in by_name:
            producer = by_name[source]
            kind = "weight" if source in dequant else _float8_kind(prog, producer)
            if kind or not _is_layout_only(prog, producer) or len(producer.operands) != 1:
                break
            source = producer.operands[0][0]
        elements = sum(math.prod(d) for _, d in parse_arrays(by_name[name].shape)) if (
            name in by_name) else 0
        if kind == "weight":
            weights += elements
        elif kind == "activation":
            activations += elements
    return weights, activations


F32_SCALE_BYTES = 4  # one float32 scale per output column of a float8 weight


def _is_store(prog: Program, ins: Instruction) -> bool:
    """A kernel that only stores a value into a loop's stacked buffer (`lax.scan` saving an
    activation for the backward pass): on a GPU the value's producer writes it in place. Scalar
    index arithmetic aside, it may only move or convert data."""
    if ins.opcode == "dynamic-update-slice":
        return True
    body = prog.body(ins) if ins.opcode == "fusion" else []
    if not body or body[-1].opcode != "dynamic-update-slice":
        return False
    moving = {"parameter", "constant", "bitcast", "reshape", "convert", "dynamic-update-slice",
              "broadcast", "copy", "transpose"}
    return all(i.opcode in moving or all(math.prod(d) <= 1 for _, d in parse_arrays(i.shape))
               for i in body)


def _dot_of(prog: Program, ins: Instruction) -> Instruction | None:
    if ins.opcode == "dot":
        return ins
    if ins.opcode == "fusion":
        return next((i for i in prog.body(ins) if i.opcode == "dot"), None)
    return None


def _touches_blocks(prog: Program, ins: Instruction, blocks: set[tuple[int, ...]],
                    flat: bool = False) -> bool:
    """Whether the kernel reads or writes an attention score block ([..., q_block, kv_block],
    with at least one batch or head dimension in front, so a weight matrix never matches; with
    `flat`, also a plain [q_block, kv_block] matrix that `blocks` lists as (0, q_block, kv_block))."""
    arrays = parse_arrays(ins.shape) + [a for ops in prog.mod.operand_arrays(ins) for a in ops]
    return any((len(d) >= 3 and tuple(d[-2:]) in blocks)
               or (flat and len(d) == 2 and (0, *d) in blocks) for _, d in arrays)


def _score_elements(prog: Program, dot: Instruction, blocks: set[tuple[int, ...]],
                    flat: bool) -> int:
    """Elements of the dot's operands and result that are attention score blocks (what a flash
    kernel keeps on chip); the same shape test as `_touches_blocks`."""
    arrays = parse_arrays(dot.shape) + [ops[0] for ops in prog.mod.operand_arrays(dot)[:2]]
    return sum(math.prod(d) for _, d in arrays
               if (len(d) >= 3 and tuple(d[-2:]) in blocks)
               or (flat and len(d) == 2 and (0, *d) in blocks))


def _flat_scores(prog: Program, instrs: list[Instruction], blocks) -> bool:
    """Whether a computation is a blockwise attention body whose score blocks are plain matrices
    (one sequence and one K/V head per device): every dot in it touches a score block. A layer's
    body, whose weight matmuls touch none, never qualifies, so a weight of a block's shape is
    not mistaken for scores."""
    dots = [d for i in instrs if (d := _dot_of(prog, i)) is not None]
    return bool(dots) and any(len(b) == 3 for b in blocks) and all(
        _touches_blocks(prog, d, blocks, flat=True) for d in dots)


def matmul_rate(hw, fp8: bool) -> float:
    """The achieved rate of a matmul kernel: the profile's FP8 rate for a W8A8 matmul where the
    profile has one (`Hardware.fp8_flops_per_s`; 0 on a GPU without FP8 tensor cores, such as
    the A100), else its 16-bit rate."""
    fast = getattr(hw, "fp8_flops_per_s", 0.0)
    return fast if fp8 and fast else hw.flops_per_s


def kernels(hlo_text: str, hw, elem_bytes: int,
            score_blocks: set[tuple[int, ...]] = frozenset(),
            f32_as_model_dtype: bool = True, fused_attention: bool = True) -> list[Kernel]:
    """Every kernel of the program with its per-run time on `hw` (see the module doc and
    `kernel_shapes`, which finds them once per program whatever the hardware)."""
    tile = (getattr(hw, "mm_tile_m", 128) or 128, getattr(hw, "mm_tile_n", 128) or 128)
    sms = getattr(hw, "sm_count", 0)
    attn_rate = getattr(hw, "attention_flops_per_s", 0) or hw.flops_per_s
    out = []
    for k in kernel_shapes(hlo_text, elem_bytes, frozenset(score_blocks), f32_as_model_dtype,
                           fused_attention):
        if k.kind == "memory":
            seconds = k.bytes / hw.hbm_bytes_per_s
        else:
            rate = attn_rate if k.kind == "attention" else matmul_rate(hw, k.fp8)
            # a flash kernel runs every (head, query tile) of the scan's blocks at once, so one
            # block's tile grid does not set its waves; its measured rate already holds them
            b, m, n, depth = k.gemm
            eff = (1.0 if k.kind == "attention"
                   else quantization_efficiency(b, m, n, tile, sms, depth))
            seconds = max(k.flops / (rate * eff), k.bytes / hw.hbm_bytes_per_s)
        out.append(Kernel(k.name, k.kind, k.runs, k.flops, k.bytes, seconds))
    return out


@per_program
def kernel_shapes(hlo_text: str, elem_bytes: int,
                  score_blocks: frozenset[tuple[int, ...]] = frozenset(),
                  f32_as_model_dtype: bool = True,
                  fused_attention: bool = True) -> tuple[KernelShape, ...]:
    """Every kernel of the program, unpriced (see the module doc).

    `score_blocks`: the (q_block, kv_block) shapes of the attention's score blocks; memory
    kernels on such arrays (softmax, masks, and the blocks saved for the backward pass) belong to
    the fused attention kernel and are left out, whatever op_name XLA kept for them.
    `f32_as_model_dtype`: in a 16-bit model, count the f32 arrays of memory-bound kernels at the
    model's element size: XLA:CPU keeps intermediates (LayerNorm statistics, upcasts) in f32
    between kernels where a GPU's fused kernels keep them in registers. Off for programs whose
    f32 arrays are real (the optimizer update of f32 masters and moments).
    `fused_attention` false prices attention as the unfused kernels that ran before flash
    attention (Megatron-LM's batched GEMMs and its fused scale-mask-softmax): the score and
    probability blocks are written to and read from HBM, the softmax and masks are memory-bound
    kernels, and the attention matmuls run at the matmul rate.
    """
    if not fused_attention:
        score_blocks, scope = frozenset(), None
    else:
        scope = ATTENTION_SCOPE
    narrow = elem_bytes if f32_as_model_dtype and elem_bytes < 4 else None
    prog = Program(hlo_text, narrow)
    float8_program = "f8e4m3fn" in hlo_text
    out: list[KernelShape] = []
    flats = {c: _flat_scores(prog, i, score_blocks) for c, i in prog.mod.computations.items()}
    scoring = {c for c, instrs in prog.mod.computations.items() if any(
        (d := _dot_of(prog, i)) is not None and (
            (scope is not None and scope in prog.op_name(i) + prog.op_name(d))
            or _touches_blocks(prog, d, score_blocks, flats[c])) for i in instrs)}
    # a cond that runs a score block or skips it (causal blocks skipped at run time): both of its
    # branches, and the loop body holding it, are the fused kernel's bookkeeping
    for comp, instrs in list(prog.mod.computations.items()):
        for i in instrs:
            branches = [c for _, c in prog.mod.called(i)] if i.opcode == "conditional" else []
            if any(c in scoring for c in branches):
                scoring |= {comp, *branches}
    for comp, instrs in prog.mod.computations.items():
        if comp in prog.fused:
            continue
        runs, _ = prog.runs.get(comp, (1, True))
        found: dict[str, KernelShape] = {}
        dot_inputs = {n for i in instrs if _dot_of(prog, i) is not None for n, _ in i.operands}
        by_name = {i.name: i for i in instrs}
        dequant = {i.name for i in instrs if _dot_of(prog, i) is None and _is_dequantize(prog, i)}
        flat = flats[comp]
        attention_loop = comp in scoring
        for ins in instrs:
            if ins.opcode in _FREE or _COLLECTIVE.match(ins.opcode):
                continue
            dot = _dot_of(prog, ins)
            op = prog.op_name(ins) + ("|" + prog.op_name(dot) if dot is not None else "")
            attention = (scope is not None and scope in op) or (
                dot is not None and _touches_blocks(prog, dot, score_blocks, flat))
            if dot is None and (op.endswith("dot_general") or attention or attention_loop
                                or _touches_blocks(prog, ins, score_blocks)
                                or (ins.name in dot_inputs and _is_layout_only(prog, ins))
                                or _is_store(prog, ins) or ins.name in dequant
                                or _is_w8a8_plumbing(prog, ins)
                                or _is_float8_upcast(prog, ins)):
                continue  # CPU plumbing around a dot, or fused into the attention kernel
            if dot is not None:
                b, m, n, k = gemm_shape(prog.mod, dot)
                f8, a8 = (_float8_operands(prog, ins, by_name, dequant) if float8_program
                          else (0, 0))  # float8 weight and activation elements read
                on_chip = _score_elements(prog, dot, score_blocks, flat) if attention else 0
                moved = (b * (m * k + k * n + m * n) - f8 - a8 - on_chip) * elem_bytes
                found[ins.name] = KernelShape(
                    ins.name, "attention" if attention else "matmul", runs, 2.0 * b * m * n * k,
                    float(moved + f8 * (1 + F32_SCALE_BYTES / k) + a8), (b, m, n, k),
                    fp8=bool(f8 and a8))
                continue
            found[ins.name] = KernelShape(ins.name, "memory", runs, 0.0, _io_bytes(prog, ins))
        out += _fuse_memory_kernels(prog, comp, found)
    return tuple(out)


def _fuse_memory_kernels(prog: Program, comp: str,
                         found: dict[str, KernelShape]) -> list[KernelShape]:
    """Merge chains of memory-bound kernels the way a GPU compiler fuses them: a memory kernel
    whose result has a single user, itself a memory kernel, is fused into that user, so the
    intermediate is neither written nor read back. Returns the kernels with merged groups."""
    instrs = prog.mod.computations[comp]
    users: dict[str, list[str]] = defaultdict(list)
    for ins in instrs:
        for name, _ in ins.operands:
            users[name].append(ins.name)
    by_name = {i.name: i for i in instrs}
    parent = {n: n for n in found}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    saved: dict[str, float] = defaultdict(float)
    for name, k in found.items():
        if k.kind != "memory":
            continue
        us = users.get(name, [])
        if len(us) == 1 and us[0] in found and found[us[0]].kind == "memory":
            edge = 2.0 * _result_bytes(by_name[name], prog.narrow)
            a, b = root(name), root(us[0])
            if a != b:
                parent[a] = b
                saved[b] += saved.pop(a, 0.0) + edge
    groups: dict[str, list[KernelShape]] = defaultdict(list)
    for name, k in found.items():
        groups[root(name) if k.kind == "memory" else name].append(k)
    out = []
    for head, ks in groups.items():
        if len(ks) == 1:
            out.append(ks[0])
            continue
        total = max(sum(k.bytes for k in ks) - saved.get(head, 0.0), 0.0)
        out.append(KernelShape(head, "memory", ks[0].runs, 0.0, total))
    return out


def compute_time(hlo_text: str, hw, elem_bytes: int,
                 score_blocks: set[tuple[int, ...]] = frozenset(),
                 f32_as_model_dtype: bool = True, fused_attention: bool = True) -> dict:
    """Seconds per program run by kernel kind, and the HBM bytes of the memory-bound kernels
    (`fused_attention`: see `kernel_shapes`)."""
    ks = kernels(hlo_text, hw, elem_bytes, score_blocks, f32_as_model_dtype, fused_attention)
    by_kind: dict[str, float] = defaultdict(float)
    for k in ks:
        by_kind[k.kind] += k.seconds * k.runs
    return {"seconds": sum(by_kind.values()),
            "matmul_seconds": by_kind["matmul"],
            "attention_seconds": by_kind["attention"],
            "memory_seconds": by_kind["memory"],
            "memory_bytes": sum(k.bytes * k.runs for k in ks if k.kind == "memory"),
            "kernels": len(ks)}
