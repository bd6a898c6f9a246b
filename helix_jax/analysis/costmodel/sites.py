"""Where each collective of a compiled program comes from: its mesh axes, its cost, and the source
line XLA attributes it to.

A collective that XLA's SPMD partitioner inserted carries the metadata of the operation that needed
it (`op_name`, e.g. `jit(f)/attention_core/bqhd,bkhd->bhqk/dot_general`, and a `stack_frame_id`
into the module's stack-frame tables). The source line reported is the innermost frame in the
model's own code outside `comm.py` (whose `constrain` only forwards what a module asked for) and
`nn/float8.py` (the matmul helper every weight goes through), so that a collective nobody wrote by
hand can be traced to the line that caused it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.costmodel.pricing import collective_time, crosses_nodes
from helix_jax.analysis.costmodel.topology import node_of
from helix_jax.analysis.hlo.collectives import Collective, collectives
from helix_jax.analysis.hlo.memo import per_program
from helix_jax.analysis.hlo.module import attribute, parse_module
from helix_jax.layouts import Layout

_SECTIONS = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
_FIELD = re.compile(r"(\w+)=(\d+)")
_PACKAGE = Path(__file__).resolve().parents[2]  # helix_jax/
_FORWARDERS = ("comm.py", "float8.py")  # frames that only pass a module's request on (float8:
# the matmul helper every weight goes through)


@dataclasses.dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str

    def __str__(self) -> str:
        path = Path(self.file)
        try:
            shown = str(path.resolve().relative_to(_PACKAGE.parent))
        except ValueError:
            shown = path.name
        return f"{shown}:{self.line} ({self.function})"


def _section(text: str, name: str) -> list[str]:
    m = re.search(rf"^{name}\n(.*?)(?:\n\n|\Z)", text, re.DOTALL | re.MULTILINE)
    return m.group(1).splitlines() if m else []


def stack_frames(hlo_text: str) -> dict[int, list[Frame]]:
    """stack_frame_id -> the call chain, innermost frame first, from the module's tables.

    Each StackFrames row names its file location and its caller as `parent_frame_id`, which XLA
    prints one above the caller's id (0: no caller)."""
    tables = {name: _section(hlo_text, name) for name in _SECTIONS}
    if not tables["StackFrames"]:
        return {}
    names = {int(r.split()[0]): r.split(None, 1)[1].strip().strip('"') for r in tables["FileNames"]}
    funcs = {int(r.split()[0]): r.split(None, 1)[1].strip().strip('"')
             for r in tables["FunctionNames"]}
    locs = {}
    for r in tables["FileLocations"]:
        f = dict(_FIELD.findall(r))
        locs[int(r.split()[0])] = Frame(names.get(int(f["file_name_id"]), "?"), int(f["line"]),
                                        funcs.get(int(f["function_name_id"]), "?"))
    rows = {}
    for r in tables["StackFrames"]:
        f = dict(_FIELD.findall(r))
        rows[int(r.split()[0])] = (int(f["file_location_id"]), int(f["parent_frame_id"]) - 1)
    chains: dict[int, list[Frame]] = {}
    for fid in rows:
        chain, cur, seen = [], fid, set()
        while cur in rows and cur not in seen:
            seen.add(cur)
            loc, cur = rows[cur]
            if loc in locs:
                chain.append(locs[loc])
        chains[fid] = chain
    return chains


def source_frame(chain: list[Frame]) -> Frame | None:
    """The frame to blame: the innermost in this package outside the forwarding helpers; else
    the innermost."""
    for frame in chain:
        path = Path(frame.file)
        if path.name not in _FORWARDERS and _PACKAGE.name in path.parts:
            return frame
    return chain[0] if chain else None


def metadata(attrs: str) -> dict[str, str]:
    """An instruction's `metadata={...}` fields (op_name, source_file, source_line, stack_frame_id)."""
    raw = attribute(attrs, "metadata") or ""
    return {k: a or b for k, a, b in re.findall(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s}]+))', raw)}


def mesh_axes_of(c: Collective, layout: Layout) -> tuple[str, ...] | None:
    """The mesh axes a collective's devices differ along (None when no set of axes gives its
    groups, e.g. a permutation that is not a shift along axes)."""
    from itertools import combinations

    from helix_jax.analysis.costmodel.topology import axis_groups

    if c.op == "collective-permute":
        groups = {frozenset(p) for p in c.source_target_pairs if p[0] != p[1]}
    else:
        groups = {frozenset(g) for g in c.replica_groups}
    if not groups:
        return None
    axes = [a for a, n in zip(layout.axis_names, layout.mesh_shape) if n > 1]
    for k in range(1, len(axes) + 1):
        for subset in combinations(axes, k):
            full = axis_groups(layout, subset)
            if (groups == full if c.op != "collective-permute"
                    else all(any(g <= f for f in full) for g in groups)):
                return subset
    return None


def collective_sites(hlo_text: str, layout: Layout, hw: Hardware) -> list[dict]:
    """Every collective instruction with more than one device per group, as a JSON row: op,
    dtype, mesh axes, group size, payload bytes per execution, executions, link, seconds, the
    op_name XLA kept and the source line it attributes the collective to."""
    node = node_of(layout, hw)
    rows = []
    for c, op_name, frame in _sourced(hlo_text):
        axes = mesh_axes_of(c, layout)
        rows.append({
            "name": c.name, "op": c.op, "dtype": c.dtype,
            "axes": list(axes) if axes is not None else None,
            "group_size": c.group_size, "payload_bytes": c.payload_bytes, "count": c.trip_count,
            "link": "ib" if crosses_nodes(c, node) else "nvlink",
            "seconds": collective_time(c, hw, node),
            "op_name": op_name, "source": str(frame) if frame else "",
        })
    return rows


@per_program
def _sourced(hlo_text: str) -> tuple[tuple[Collective, str, Frame | None], ...]:
    """Each collective of more than one device per group with the op_name XLA kept and the
    source frame it attributes it to (read once per program, whatever the layout or hardware)."""
    module = parse_module(hlo_text)
    attrs = {ins.name: ins.attrs for ins in module.instructions()}
    chains = stack_frames(hlo_text)
    out = []
    for c in collectives(hlo_text):
        if c.group_size <= 1:
            continue
        meta = metadata(attrs.get(c.name, ""))
        frame = None
        if "stack_frame_id" in meta:
            frame = source_frame(chains.get(int(meta["stack_frame_id"]), []))
        elif "source_file" in meta:
            frame = Frame(meta["source_file"], int(meta.get("source_line", 0)), "?")
        out.append((c, meta.get("op_name", ""), frame))
    return tuple(out)
