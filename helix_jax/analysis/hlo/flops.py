"""Per-device matmul FLOPs of one program run, with loop trip counts applied, from compiled HLO.

`compiled.cost_analysis()["flops"]` counts each `while` body once, whatever its trip count, so a
`lax.scan` over layers (and a scan over attention blocks inside it) is undercounted by the product
of the trip counts. `matmul_flops` reads `jax.jit(f).lower(*args).compile().as_text()` instead and
counts every matmul-like instruction times the number of times its computation runs per program
run (`HloModule.executions`: fusion / call / while-body nesting multiplies; known trip counts from
`backend_config={"known_trip_count":{"n":"7"}}`). Shapes there are per device, so the result is
per-device FLOPs.

What real XLA:CPU HLO from jax 0.10.2 looks like: dots (f32, and bf16/f16 after `convert`s to f32)
are wrapped in YNNPACK fusions; the `dot` itself sits in the fused computation:

    %ynn_fusion = f32[64,256]{1,0} fusion(%x.1, %w.1), kind=kCustom, calls=%fused_computation, ...
    ROOT %dot_general.0 = f32[64,256]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, ...

Some dots (matrix-vector, s8) stay plain `dot`s in the caller; `lax.ragged_dot` is expanded into a
dense `dot`; `lax.conv` becomes a plain `convolution`. Also handled, though not seen on this CPU
build: `ragged-dot`, the oneDNN custom call `__onednn$matmul` and the GPU `__cublas$gemm` /
`__cublas$lt$matmul` custom calls (their `dot_dimension_numbers`); dots inside GPU triton fusions
are plain fused dots. Any other custom call whose target looks like a matmul or convolution is not
guessed at but listed under `"uncounted"`.

Counting rules (all per device, per program run):
  dot          2 x prod(result dims) x prod(lhs contracting dim sizes); batch dims are in the
               result, so a batched einsum counts right.
  convolution  2 x prod(result dims) x prod(kernel dims) / kernel output-feature size, i.e. every
               output element takes (input features per group x window) multiply-adds. Padding is
               counted as if real: XLA's own cost analysis leaves padded taps out, so with SAME
               padding this is a little higher than `cost_analysis`.
  ragged-dot   as a dot, divided by the number of groups when the ragged dim is a contracting one
               (then each group contracts only its slice).
  conditional  every branch is counted once per execution of the conditional, as if all were
               taken. Where `lax.cond` skips work at run time (masked attention blocks skipped by a
               cond) the result is therefore an UPPER BOUND; `"conditionals"` lists them.
  while        body times its known trip count per entry (nesting multiplies); a loop without a
               known trip count counts once, and `"trip_counts_known"` is then False.
Elementwise, reduction and transcendental FLOPs are not counted (compare `cost_analysis`).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from typing import Any

from helix_jax.analysis.hlo.compiled import read_cost
from helix_jax.analysis.hlo.memo import per_program
from helix_jax.analysis.hlo.module import HloModule, Instruction, attribute, parse_arrays, parse_module

MATMUL_OPCODES = ("dot", "convolution", "ragged-dot")
_MATMUL_LIKE_TARGET = re.compile(r"matmul|gemm|dot|conv|einsum", re.I)
OP_NAME = re.compile(r'op_name="([^"]*)"')


def dims_attr(attrs: str, key: str) -> tuple[int, ...]:
    value = attribute(attrs, key)
    if not value:
        return ()
    return tuple(int(x) for x in value.strip("{}").split(",") if x.strip())


def _backend_config(attrs: str) -> dict:
    value = attribute(attrs, "backend_config")
    if not value:
        return {}
    value = value.strip()
    if value.startswith('"'):  # older printers quote the JSON
        value = value[1:-1].encode().decode("unicode_escape")
    try:
        return json.loads(value)
    except ValueError:
        return {}


def _find_key(obj: Any, key: str) -> Any:
    """First value of `key` anywhere in a nested JSON object, or None."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def _flops_of(mod: HloModule, ins: Instruction) -> tuple[float | None, str]:
    """FLOPs of one execution of a matmul-like instruction, or (None, why) if it can't be read."""
    results = parse_arrays(ins.shape)
    operands = mod.operand_arrays(ins)
    if not results or not operands or not operands[0]:
        return None, "no result or operand shape"
    out = math.prod(results[0][1])
    lhs = operands[0][0][1]
    if ins.opcode in ("dot", "ragged-dot"):
        contracting = dims_attr(ins.attrs, "lhs_contracting_dims")
        k = math.prod(lhs[d] for d in contracting)
        flops = 2.0 * out * k
        if ins.opcode == "ragged-dot":
            ragged = dims_attr(ins.attrs, "lhs_ragged_dims")
            if any(d in contracting for d in ragged):
                if len(operands) < 3 or not operands[2] or not operands[2][0][1]:
                    return None, "ragged-dot (ragged contracting dim) without group sizes shape"
                flops /= operands[2][0][1][-1]
        return flops, ""
    if ins.opcode == "convolution":
        labels = attribute(ins.attrs, "dim_labels")
        if len(operands) < 2 or not operands[1] or not labels or "_" not in labels:
            return None, "convolution without dim_labels or kernel shape"
        kernel_labels = labels.split("->")[0].split("_")[1]
        kernel = operands[1][0][1]
        if "o" not in kernel_labels or len(kernel_labels) != len(kernel):
            return None, f"convolution with unreadable kernel labels {kernel_labels!r}"
        taps = math.prod(kernel) // max(kernel[kernel_labels.index("o")], 1)
        return 2.0 * out * taps, ""
    if ins.opcode == "custom-call":
        target = (attribute(ins.attrs, "custom_call_target") or "").strip('"')
        config = _backend_config(ins.attrs)
        contracting = _find_key(config, "lhs_contracting_dimensions")
        if contracting is not None:  # __cublas$gemm, __cublas$lt$matmul (dot_dimension_numbers)
            return 2.0 * out * math.prod(lhs[int(d)] for d in contracting), ""
        if target == "__onednn$matmul" and len(lhs) >= 2:
            transpose_a = bool(_find_key(config, "transpose_a"))
            return 2.0 * out * lhs[-2 if transpose_a else -1], ""
        if len(lhs) == 1 and target == "__onednn$matmul":
            return 2.0 * out * lhs[0], ""
        return None, f"custom-call {target!r}: no dot dimension numbers to read"
    return None, f"opcode {ins.opcode!r}"


def _is_matmul_like(ins: Instruction) -> bool:
    if ins.opcode in MATMUL_OPCODES:
        return True
    if ins.opcode == "custom-call":
        target = attribute(ins.attrs, "custom_call_target") or ""
        return bool(_MATMUL_LIKE_TARGET.search(target))
    return False


def matmul_flops(hlo_text: str) -> dict:
    """See `_matmul_flops` (memoised per program: a shallow copy, read it, do not change it)."""
    return dict(_matmul_flops(hlo_text))


@per_program
def _matmul_flops(hlo_text: str) -> dict:
    """Per-device matmul FLOPs of one run of the program in `hlo_text` (compiled HLO text).

    Returns a dict:
      flops              total over all matmul-like instructions, times their executions per run
      by_computation     computation holding the instruction (often a fused computation) -> FLOPs
      by_op              jax op_name from the metadata (e.g. ".../bqhd,bkhd->bhqk/dot_general",
                         "" if none) -> FLOPs; tells projections from attention
      dots               number of dot / convolution / matmul instructions counted (static count)
      items              one dict per counted instruction: name, opcode, computation, op_name,
                         flops_each, runs, flops
      uncounted          matmul-like instructions that could not be counted: name, opcode,
                         computation, runs, reason. Empty means nothing was left out.
      loop_trips         while body -> known trip count per loop entry (unknown -> 1)
      trip_counts_known  False if some loop around a counted instruction had no known trip count
      conditionals       conditional instruction -> number of branches, every one counted as if
                         taken: the FLOPs are an upper bound where a cond skips work at run time
    See the module docstring for the counting rules.
    """
    mod = parse_module(hlo_text)
    runs = mod.executions()
    by_comp: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    items, uncounted, conditionals = [], [], {}
    all_known = True
    for ins in mod.instructions():
        if ins.opcode == "conditional":
            conditionals[ins.name] = len([c for k, c in mod.called(ins)])
        if not _is_matmul_like(ins):
            continue
        n, known = runs.get(ins.computation, (1, True))
        flops, why = _flops_of(mod, ins)
        if flops is None:
            uncounted.append({"name": ins.name, "opcode": ins.opcode,
                              "computation": ins.computation, "runs": n, "reason": why})
            continue
        all_known = all_known and known
        m = OP_NAME.search(ins.attrs)
        op_name = m.group(1) if m else ""
        total = flops * n
        by_comp[ins.computation] += total
        by_op[op_name] += total
        items.append({"name": ins.name, "opcode": ins.opcode, "computation": ins.computation,
                      "op_name": op_name, "flops_each": flops, "runs": n, "flops": total})
    return {"flops": float(sum(i["flops"] for i in items)),
            "by_computation": dict(by_comp),
            "by_op": dict(by_op),
            "dots": len(items),
            "items": items,
            "uncounted": uncounted,
            "loop_trips": mod.while_trip_counts(),
            "trip_counts_known": all_known,
            "conditionals": conditionals}


def program_flops(compiled: Any) -> dict:
    """Loop-corrected matmul FLOPs of a `jax.stages.Compiled` next to XLA's own count.

    Returns {"matmul_flops", "cost_analysis_flops", "loop_trips", "uncounted",
    "trip_counts_known", "conditionals", "detail"} (detail: the full `matmul_flops` dict). All per
    device and per program run; `cost_analysis_flops` counts loop bodies once and includes
    elementwise work, `matmul_flops` counts loops fully and only matmuls.
    """
    detail = matmul_flops(compiled.as_text())
    return {"matmul_flops": detail["flops"],
            "cost_analysis_flops": read_cost(compiled)["flops"],
            "loop_trips": detail["loop_trips"],
            "uncounted": detail["uncounted"],
            "trip_counts_known": detail["trip_counts_known"],
            "conditionals": detail["conditionals"],
            "detail": detail}
