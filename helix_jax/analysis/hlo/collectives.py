"""Collectives of a compiled, SPMD-partitioned XLA program, read from its HLO text.

Input: `jax.jit(f).lower(*abstract_args).compile().as_text()`. Shapes there are per device, and
replica-group ids are logical partition ids (mesh positions), not `Device.id`s. Each collective is
reported with its operand and result shapes, groups, and how often it runs per program run (the
product of the trip counts of the `while` loops around it), so that communication bytes can be
counted from the real program rather than guessed. CPU caveat: XLA:CPU promotes bf16 collectives
to f32, so on CPU their bytes come out 2x (see docs/jax-notes.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from helix_jax.analysis.hlo.memo import per_program
from helix_jax.analysis.hlo.module import (
    HloModule,
    Instruction,
    array_bytes,
    attribute,
    parse_arrays,
    parse_module,
)

Shape = tuple[int, ...]

BASE_OPS = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")


@dataclass(frozen=True)
class Collective:
    """One collective instruction, per device; an async `-start` is reported as its base op."""

    op: str
    dtype: str
    result_shapes: tuple[Shape, ...]
    operand_shapes: tuple[Shape, ...]
    replica_groups: tuple[tuple[int, ...], ...] = ()
    source_target_pairs: tuple[tuple[int, int], ...] = ()
    computation: str = ""
    trip_count: int = 1
    name: str = ""
    dimensions: tuple[int, ...] = ()
    operand_dtypes: tuple[str, ...] = ()  # per operand shape; empty means all are `dtype`
    result_dtypes: tuple[str, ...] = ()   # per result shape; empty means all are `dtype`
    trip_count_known: bool = True         # False if some enclosing loop had no known trip count
    is_async: bool = False                # it was an `*-start` instruction

    @property
    def group_size(self) -> int:
        """Devices per replica group; for collective-permute 2 (point to point) or 1 if all pairs
        are self-sends. 0 when the groups are unknown (empty `{}` with no device count)."""
        if self.op == "collective-permute":
            return 2 if any(s != t for s, t in self.source_target_pairs) else 1
        return max((len(g) for g in self.replica_groups), default=0)

    @property
    def operand_bytes(self) -> int:
        """Bytes of all operands of one device, each with its own element type."""
        dts = self.operand_dtypes or (self.dtype,) * len(self.operand_shapes)
        return sum(array_bytes(d, s) for d, s in zip(dts, self.operand_shapes))

    @property
    def result_bytes(self) -> int:
        """Bytes of all results of one device."""
        dts = self.result_dtypes or (self.dtype,) * len(self.result_shapes)
        return sum(array_bytes(d, s) for d, s in zip(dts, self.result_shapes))

    @property
    def payload_bytes(self) -> int:
        """The buffer V that the cost formulas take, per device and per execution: the full
        (un-scattered / gathered) buffer. all-gather: result; every other op: operands."""
        return self.result_bytes if self.op == "all-gather" else self.operand_bytes


_MESH_GROUPS = re.compile(r"replica_groups=((?:maximal_)?mesh\[[^\]]*\]"
                          r"(?:,\s*device_ids=\((?:[^()]|\([^()]*\))*\))?\s*\{[^}]*\})")
_IOTA_IDS = re.compile(r"^\[([\d,]+)\](?:T\(([\d,]+)\))?$")
_MESH_AXIS = re.compile(r"'?([^'=,\[\]\s]+)'?=(\d+)")
_GROUP_AXIS = re.compile(r"'?([^':,\s]+)'?(?::\((\d+)\)(\d+))?")


def parse_mesh_groups(value: str) -> tuple[tuple[int, ...], ...]:
    """Expand XLA's mesh-axes replica groups, `mesh['a'=4,'b'=4] {'b'}` (devices that differ
    only along the listed axes form a group). Axes may be sub-axes `'a':(pre)size` (axis a of size
    n seen as [pre, size, n/(pre·size)], major first); the mesh may list `device_ids=(...)`
    (iota or explicit) when the devices are not numbered in mesh order."""
    head, _, axes_text = value.rpartition("{")
    if head.startswith("maximal_mesh"):
        return ((int(re.search(r"device_id=(\d+)", head).group(1)),),)
    mesh_text, _, ids_text = head.partition("device_ids=")
    sizes = [(name, int(n)) for name, n in _MESH_AXIS.findall(mesh_text[:mesh_text.index("]")])]
    total = int(np.prod([n for _, n in sizes]))
    ids_text = ids_text.strip().strip(",").strip()
    ids_text = ids_text[1:ids_text.rindex(")")].strip() if ids_text.startswith("(") else ids_text
    iota = _IOTA_IDS.match(ids_text.replace(" ", ""))
    if not ids_text:
        ids = np.arange(total)
    elif "<=" in ids_text:
        ids = np.array(parse_replica_groups(f"[1,{total}]{ids_text[ids_text.index('<='):]}")[0])
    elif iota:  # [dims]T(perm): arange reshaped to dims, transposed by perm, in that order
        dims_ = [int(x) for x in iota.group(1).split(",")]
        ids = np.arange(total).reshape(dims_)
        if iota.group(2):
            ids = ids.transpose([int(x) for x in iota.group(2).split(",")])
        ids = ids.reshape(-1)
    else:
        ids = np.array([int(x) for x in re.findall(r"\d+", ids_text)])
    dims, grouped = [], []  # every axis split into [pre, size, rest] where a sub-axis names it
    subs = {name: (int(pre), int(size)) if pre else None
            for name, pre, size in _GROUP_AXIS.findall(axes_text.rstrip("} ")) if name}
    for name, n in sizes:
        if name in subs and subs[name] is not None:
            pre, size = subs[name]
            dims += [pre, size, n // (pre * size)]
            grouped.append(len(dims) - 2)
        else:
            dims.append(n)
            if name in subs:
                grouped.append(len(dims) - 1)
    grid = ids.reshape(dims)
    rest = [d for d in range(len(dims)) if d not in grouped]
    rows = grid.transpose(rest + grouped).reshape(-1, int(np.prod([dims[d] for d in grouped])))
    return tuple(tuple(int(x) for x in row) for row in rows)


def parse_replica_groups(value: str, num_devices: int | None = None) -> tuple[tuple[int, ...], ...]:
    """Expand a `replica_groups=` value: `{{0,1},{2,3}}`, iota `[4,4]<=[16]`, `[4,4]<=[4,4]T(1,0)`,
    or mesh axes `mesh['a'=4,'b'=4] {'b'}` (`parse_mesh_groups`).

    Iota `[G,S]<=[dims]T(perm)` means arange(prod(dims)).reshape(dims).transpose(perm).reshape(G,S).
    An empty `{}` means one group of all devices: `range(num_devices)`, or () if that is unknown.
    """
    value = value.strip()
    if value.startswith(("mesh[", "maximal_mesh[")):
        return parse_mesh_groups(value)
    if value.startswith("["):
        head, _, tail = value.partition("<=")
        group_shape = [int(x) for x in head.strip("[]").split(",")]
        dims_text, _, perm_text = tail.partition("T")
        dims = [int(x) for x in dims_text.strip().strip("[]").split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if perm_text:
            ids = ids.transpose([int(x) for x in perm_text.strip().strip("()").split(",")])
        ids = ids.reshape(-1, group_shape[-1])
        if ids.shape[0] != int(np.prod(group_shape[:-1])):
            raise ValueError(f"iota replica groups {value!r}: shape does not match device count")
        return tuple(tuple(int(x) for x in row) for row in ids)
    inner = value[1:-1].strip() if value.startswith("{") else value
    if not inner:
        return (tuple(range(num_devices)),) if num_devices else ()
    groups = []
    for part in _brace_groups(inner):
        groups.append(tuple(int(x) for x in part.split(",") if x.strip()))
    return tuple(groups)


def _brace_groups(inner: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
            start = i + 1
        elif ch == "}":
            depth -= 1
            out.append(inner[start:i])
    return out


def _async_results(results: list, n_operands: int, op: str) -> list:
    """Drop what an async `-start` result tuple carries besides the results: trailing u32/s32
    scalars or tokens (context), and the echo of the operands that all-gather-start and
    collective-permute-start (and some all-reduce-start) put first."""
    res = list(results)
    while len(res) > n_operands and (res[-1][0] == "token" or
                                     (res[-1][0] in ("u32", "s32") and res[-1][1] == ())):
        res.pop()
    if len(res) == 2 * n_operands and n_operands:
        res = res[n_operands:]
    return res


def _collective(mod: HloModule, ins: Instruction, runs: tuple[int, bool]) -> Collective | None:
    opcode = ins.opcode
    is_async = opcode.endswith("-start")
    op = opcode[:-len("-start")] if is_async else opcode
    if op not in BASE_OPS:
        return None
    operands = [a for arrays in mod.operand_arrays(ins) for a in arrays]
    results = parse_arrays(ins.shape)
    if is_async:
        results = _async_results(results, len(operands), op)
    groups_text = attribute(ins.attrs, "replica_groups")
    if groups_text is not None and "mesh[" in groups_text:  # the value runs past a space
        groups_text = _MESH_GROUPS.search(ins.attrs).group(1)
    pairs_text = attribute(ins.attrs, "source_target_pairs")
    dims_text = attribute(ins.attrs, "dimensions")
    groups = parse_replica_groups(groups_text, mod.num_devices) if groups_text is not None else ()
    if groups_text is None and op != "collective-permute" and mod.num_devices:
        groups = (tuple(range(mod.num_devices)),)
    pairs = tuple((g[0], g[1]) for g in parse_replica_groups(pairs_text)) if pairs_text else ()
    dims = tuple(int(x) for x in dims_text.strip("{}").split(",") if x.strip()) if dims_text else ()
    first = results[0] if results else operands[0]
    return Collective(
        op=op, dtype=first[0],
        result_shapes=tuple(s for _, s in results), operand_shapes=tuple(s for _, s in operands),
        replica_groups=groups, source_target_pairs=pairs, computation=ins.computation,
        trip_count=runs[0], name=ins.name, dimensions=dims,
        operand_dtypes=tuple(d for d, _ in operands), result_dtypes=tuple(d for d, _ in results),
        trip_count_known=runs[1], is_async=is_async)


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective in the module, in text order; async pairs are counted at their start."""
    return list(_collectives(hlo_text))


@per_program
def _collectives(hlo_text: str) -> tuple[Collective, ...]:
    mod = parse_module(hlo_text)
    runs = mod.executions()
    out = []
    for ins in mod.instructions():
        c = _collective(mod, ins, runs[ins.computation])
        if c is not None:
            out.append(c)
    return tuple(out)


def while_trip_counts(hlo_text: str) -> dict[str, int]:
    """while body computation -> known trip count per loop entry; unknown ones are 1 (and logged).

    Per entry, not per program run: for nesting, see `Collective.trip_count`.
    """
    return parse_module(hlo_text).while_trip_counts()


def device_groups_cross_nodes(groups: Iterable[Sequence[int]],
                              node_of: Callable[[int], int]) -> bool:
    """Whether any replica group, or any (source, target) pair, spans more than one node."""
    return any(len({node_of(d) for d in g}) > 1 for g in groups)
