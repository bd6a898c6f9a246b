"""A small reader for XLA HLO module text: computations, instructions, shapes and loop counts.

It reads what `jax.jit(f).lower(...).compile().as_text()` prints (XLA's `HloModule::ToString`), and
also the hand-written dialect of XLA's own tests (names without `%`, operands printed with their
shapes, one instruction wrapped over several lines), so that literal snippets can be unit-tested.
It knows nothing about collectives; `hlo.py` builds on it.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass

log = logging.getLogger(__name__)

Array = tuple[str, tuple[int, ...]]  # (dtype, dims) of one array

_DTYPE_BITS = {"pred": 8, "token": 0, "c64": 64, "c128": 128}
_COMMENT = re.compile(r"/\*.*?\*/")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
_HEADER = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s*(\([^=]*\)\s*->\s*[^=]*)?\{\s*$")
_INSTR_START = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(\(|[a-z][a-z0-9]*\[)")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$", re.S)
_OPCODE = re.compile(r"\s*([a-z][\w\-]*)\(")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
_CALL_KEYS = ("body", "condition", "calls", "to_apply", "branch_computations", "true_computation",
              "false_computation", "called_computations", "select", "scatter", "comparator")
_NOT_CALLERS = ("async-done", "async-update")  # they repeat their async-start's `calls=`


def dtype_bits(dtype: str) -> int:
    """Bits per element of an HLO element type (f32 -> 32, pred -> 8, f8e4m3fn -> 8, s4 -> 4)."""
    if dtype in _DTYPE_BITS:
        return _DTYPE_BITS[dtype]
    m = re.match(r"^(?:bf|[fsuc])(\d+)", dtype)
    if not m:
        raise ValueError(f"unknown HLO element type {dtype!r}")
    return int(m.group(1))


def array_bytes(dtype: str, dims: tuple[int, ...]) -> int:
    """Bytes of one dense array; sub-byte types are packed and rounded up."""
    return math.ceil(math.prod(dims) * dtype_bits(dtype) / 8)


def parse_arrays(shape_text: str) -> list[Array]:
    """Every array in a shape, tuples flattened in order: `(f32[2,4]{1,0}, s32[])` -> 2 arrays.

    Dynamic dimensions `<=8` count as their bound 8; an unbounded `?` counts as 0.
    """
    out = []
    for dtype, dims in _ARRAY.findall(shape_text):
        parts = [d.strip().removeprefix("<=") for d in dims.split(",") if d.strip()]
        out.append((dtype, tuple(0 if d == "?" else int(d) for d in parts)))
    return out


def matching_close(text: str, start: int) -> int:
    """Index of the bracket closing the one at `text[start]`, counting (), [] and {}."""
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced brackets in HLO text: {text[start:start + 80]!r}")


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` where it is not nested inside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def attribute(attrs: str, key: str) -> str | None:
    """Raw value of `key=...` in an instruction's attribute text, or None if absent."""
    if f"{key}=" not in attrs:  # the common case, without a regular expression
        return None
    m = re.search(rf"(?:^|[,\s]){re.escape(key)}=", attrs)
    if not m:
        return None
    i = m.end()
    if i < len(attrs) and attrs[i] == "{":
        return attrs[i:matching_close(attrs, i) + 1]
    depth, j = 0, i
    while j < len(attrs):
        ch = attrs[j]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and (ch == "," or ch.isspace()):
            break
        j += 1
    return attrs[i:j]


@dataclass(frozen=True)
class Instruction:
    """One HLO instruction: `%name = shape opcode(operands), attrs`."""

    name: str
    shape: str
    opcode: str
    operands: tuple[tuple[str, str], ...]  # (name, inline shape text or "")
    attrs: str
    computation: str


def _parse_instruction(text: str, computation: str) -> Instruction | None:
    m = _INSTR.match(text)
    if not m:
        return None
    name, rest = m.group(1), m.group(2).strip()
    if rest.startswith("("):
        end = matching_close(rest, 0) + 1
    else:
        end = len(rest.split(None, 1)[0])
    shape, rest = rest[:end], rest[end:]
    op = _OPCODE.match(rest)
    if not op:
        return None
    open_at = op.end() - 1
    close_at = matching_close(rest, open_at)
    operands = []
    for part in split_top_level(rest[open_at + 1:close_at]):
        nm = re.search(r"%?([\w.\-]+)$", part)
        if nm:
            operands.append((nm.group(1), part[:nm.start()].strip()))
    return Instruction(name, shape, op.group(1), tuple(operands), rest[close_at + 1:], computation)


@functools.lru_cache(maxsize=8)
def parse_module(text: str) -> HloModule:
    """The parsed module of `text`, shared by every reader of the same program (read-only)."""
    return HloModule(text)


class HloModule:
    """Parsed HLO module text: computations in order, a name -> shape table, call graph.
    Read-only once built (`parse_module` shares one between readers)."""

    def __init__(self, text: str):
        self.computations: dict[str, list[Instruction]] = {}
        self.entry: str | None = None
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        np_m = re.search(r"num_partitions=(\d+)", first)
        rc_m = re.search(r"replica_count=(\d+)", first)
        self.num_partitions = int(np_m.group(1)) if np_m else None
        self.replica_count = int(rc_m.group(1)) if rc_m else 1
        self._parse(_COMMENT.sub("", text))
        self._local = {c: {i.name: parse_arrays(i.shape) for i in ins}
                       for c, ins in self.computations.items()}
        self._global = {n: s for table in self._local.values() for n, s in table.items()}

    def _parse(self, text: str) -> None:
        current: str | None = None
        pending: list[str] = []

        def flush() -> None:
            if current is not None and pending:
                ins = _parse_instruction(" ".join(pending), current)
                if ins is not None:
                    self.computations[current].append(ins)
            pending.clear()

        for line in text.splitlines():
            if not line.strip():
                continue
            if current is None:
                h = _HEADER.match(line)
                if h:
                    current = h.group(2)
                    self.computations[current] = []
                    if h.group(1):
                        self.entry = current
                continue
            if line.strip() == "}":
                flush()
                current = None
            elif _INSTR_START.match(line):
                flush()
                pending.append(line.strip())
            elif pending:
                pending.append(line.strip())
        flush()

    @property
    def num_devices(self) -> int | None:
        """Partitions x replicas, when the module header says."""
        return None if self.num_partitions is None else self.num_partitions * self.replica_count

    def instructions(self):
        """All instructions, computation by computation, in text order."""
        for ins in self.computations.values():
            yield from ins

    def operand_arrays(self, ins: Instruction) -> list[list[Array]]:
        """Arrays of each operand: its inline shape if printed, else looked up by name."""
        out = []
        for name, inline in ins.operands:
            if inline:
                out.append(parse_arrays(inline))
            else:
                table = self._local.get(ins.computation, {})
                arrays = table.get(name, self._global.get(name))
                if arrays is None:
                    raise ValueError(f"operand %{name} of %{ins.name} has no defining instruction")
                out.append(arrays)
        return out

    def called(self, ins: Instruction) -> list[tuple[str, str]]:
        """(attribute key, computation name) for each computation this instruction calls."""
        out = []
        for key in _CALL_KEYS:
            value = attribute(ins.attrs, key)
            if value:
                names = re.findall(r"%?([\w.\-]+)", value)
                out += [(key, n) for n in names if n in self.computations]
        return out

    def trip_count(self, ins: Instruction) -> int | None:
        """Known trip count of a `while` instruction (from backend_config), else None."""
        m = _TRIP.search(ins.attrs)
        return int(m.group(1)) if m else None

    @functools.cached_property
    def _executions(self) -> dict[str, tuple[int, bool]]:
        return self._count_executions()

    def executions(self) -> dict[str, tuple[int, bool]]:
        """computation -> (times it runs per program run, whether every loop count was known);
        see `_count_executions`."""
        return dict(self._executions)

    def _count_executions(self) -> dict[str, tuple[int, bool]]:
        """computation -> (times it runs per program run, whether every loop count was known).

        Sums over call sites (a computation with two callers runs for both); a `while` body runs
        its trip count times per entry, its condition one more; an unknown trip count counts as 1.
        Conditional branches count as if taken (an upper bound). Roots (ENTRY, or any computation
        nothing calls, in a fragment) run once.
        """
        callers: dict[str, list[tuple[str, int, bool]]] = defaultdict(list)
        for comp, instrs in self.computations.items():
            for ins in instrs:
                if ins.opcode in _NOT_CALLERS:
                    continue
                trip = self.trip_count(ins) if ins.opcode == "while" else None
                for key, callee in self.called(ins):
                    if ins.opcode == "while" and key in ("body", "condition"):
                        n = 1 if trip is None else trip + (key == "condition")
                        callers[callee].append((comp, n, trip is not None))
                    else:
                        callers[callee].append((comp, 1, True))
        memo: dict[str, tuple[int, bool]] = {}

        def visit(comp: str, seen: frozenset[str]) -> tuple[int, bool]:
            if comp in memo:
                return memo[comp]
            if comp == self.entry or not callers.get(comp) or comp in seen:
                memo[comp] = (1, True)
                return memo[comp]
            total, known = 0, True
            for caller, n, edge_known in callers[comp]:
                c_n, c_known = visit(caller, seen | {comp})
                total += c_n * n
                known = known and c_known and edge_known
            memo[comp] = (total, known)
            return memo[comp]

        return {c: visit(c, frozenset()) for c in self.computations}

    def runs_under(self, root: str,
                   branch_weights: dict[str, tuple[float, ...]] | None = None) -> dict[str, float]:
        """computation -> times it runs per run of `root` (loop trip counts applied, an unknown
        one as 1). A conditional named in `branch_weights` runs its branch i weights[i] times per
        execution (how often a schedule takes it); any other conditional runs every branch once,
        as `executions` counts them."""
        weights = branch_weights or {}
        order: list[str] = []
        seen: set[str] = set()

        def visit(comp: str) -> None:  # callees after their callers (reverse post-order)
            if comp in seen:
                return
            seen.add(comp)
            for ins in self.computations.get(comp, []):
                if ins.opcode not in _NOT_CALLERS:
                    for _, callee in self.called(ins):
                        visit(callee)
            order.append(comp)

        visit(root)
        runs: dict[str, float] = defaultdict(float)
        runs[root] = 1.0
        for comp in reversed(order):
            for ins in self.computations.get(comp, []):
                if ins.opcode in _NOT_CALLERS or not runs[comp]:
                    continue
                trip = self.trip_count(ins) if ins.opcode == "while" else None
                branch = 0
                for key, callee in self.called(ins):
                    n = 1.0
                    if ins.opcode == "while" and key in ("body", "condition"):
                        n = (trip or 1) + (key == "condition" and trip is not None)
                    elif ins.opcode == "conditional" and ins.name in weights:
                        n, branch = weights[ins.name][branch], branch + 1
                    runs[callee] += runs[comp] * n
        return dict(runs)

    def while_trip_counts(self) -> dict[str, int]:
        """while body name -> its trip count per entry into the loop (unknown -> 1, logged)."""
        out = {}
        for ins in self.instructions():
            if ins.opcode != "while":
                continue
            body = attribute(ins.attrs, "body")
            if body is None:
                continue
            trip = self.trip_count(ins)
            if trip is None:
                log.warning("while %%%s (body %s) has no known_trip_count; counting it as 1",
                            ins.name, body.lstrip("%"))
            out[body.lstrip("%")] = 1 if trip is None else trip
        return out
