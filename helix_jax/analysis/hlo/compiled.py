"""Per-device FLOPs, bytes and memory of a compiled program, read from XLA's own analyses.

Limitation, stated once: `cost_analysis()` counts a `while` loop body once, whatever its trip
count (a windowed einsum with 16 iterations reports 1/16 of its FLOPs). Splitting the total into
per-computation parts is not possible from its result, so no corrected total is offered here.
`scale_for_loops` says whether the program has loops at all and how many times the most-repeated
body runs; a caller that knows its program is dominated by that loop can scale, and one that does
not should prefer explicit shard_map programs without loops, or cross-check with analytic FLOPs.
"""

from __future__ import annotations

from typing import Any

from helix_jax.analysis.hlo.module import parse_module


def _cost_dict(compiled: Any) -> dict:
    raw = compiled.cost_analysis() if hasattr(compiled, "cost_analysis") else compiled
    if isinstance(raw, (list, tuple)):  # some jax versions return [dict] (one per program)
        if len(raw) != 1:
            raise ValueError(f"cost_analysis() returned {len(raw)} entries; expected one")
        raw = raw[0]
    if not isinstance(raw, dict):
        raise ValueError(f"cost_analysis() returned {type(raw).__name__}, not a dict")
    return raw


def read_cost(compiled: Any) -> dict[str, float]:
    """Per-device `flops`, `bytes_accessed`, `transcendentals` of a `jax.stages.Compiled`.

    Accepts the compiled object or the raw `cost_analysis()` result (dict or one-element list).
    Keys XLA leaves out (transcendentals often is) read as 0.
    """
    raw = _cost_dict(compiled)
    return {"flops": float(raw.get("flops", 0.0)),
            "bytes_accessed": float(raw.get("bytes accessed", 0.0)),
            "transcendentals": float(raw.get("transcendentals", 0.0))}


def read_memory(compiled: Any) -> dict[str, int]:
    """Per-device memory in bytes from `memory_analysis()`.

    total_bytes = argument + output + temp - alias (aliased outputs reuse argument buffers).
    `peak_memory_in_bytes` is not used: on CPU it leaves temp out.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        raise ValueError("memory_analysis() returned None on this backend")
    out = {"argument_bytes": int(stats.argument_size_in_bytes),
           "output_bytes": int(stats.output_size_in_bytes),
           "temp_bytes": int(stats.temp_size_in_bytes),
           "alias_bytes": int(stats.alias_size_in_bytes)}
    out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                          - out["alias_bytes"])
    return out


def scale_for_loops(hlo_text: str) -> int:
    """Largest number of runs per program run of any `while` body (nested loops multiply); 1
    when there are no loops. cost_analysis counted each such body once: see the module doc."""
    mod = parse_module(hlo_text)
    bodies = set(mod.while_trip_counts())
    runs = mod.executions()
    return max((runs[b][0] for b in bodies if b in runs), default=1)
