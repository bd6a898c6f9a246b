"""The tick table of a 1F1B pipeline schedule (interleaved when each stage holds V model chunks).

A tick is one slot in which every stage runs at most one operation: the forward (F) or the
backward (B) of one microbatch on one of its chunks. After each tick every stage sends its forward
output to the next stage and its input cotangent to the previous one (collective-permutes, the
last stage's forward wrapping round to stage 0 for the next chunk, and back for the backward).

Placement (p stages, V chunks, microbatch i = g·p + j): the k-th forward of a stage, in Megatron's
interleaved order k = g·pV + c·p + j (groups of p microbatches, chunk after chunk), runs at tick
2k + s on stage s; the matching backward, in the order k' = g·pV + (V − 1 − c)·p + j, at tick
2k' + 2pV − 1 − s. Forwards sit on ticks of one parity and backwards on the other, so a stage
alternates F and B in the steady state, and with V = 1 its order is Megatron's 1F1B: p − s − 1
warm-up forwards, then one forward and one backward, then the cool-down backwards. A message is
consumed the tick after it is sent, except where it wraps from the last stage to the first (V > 1),
where it waits p + 1 ticks in a small inbox. Stage s keeps the residuals of at most p − s
microbatches (V = 1), against GPipe's M.

`build` places every operation, checks every dependency, and assigns stash and inbox slots; the
runtime (`parallel.pipeline.one_f_one_b`) only looks its rows up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IDLE, FORWARD, BACKWARD = 0, 1, 2
FIELDS = ("op", "mb", "chunk", "stash", "inbox")


@dataclass(frozen=True)
class Table:
    """Per tick and stage [T, p]: `op` (IDLE, FORWARD, BACKWARD), microbatch `mb`, `chunk`, the
    residual `stash` slot written (F) or read (B), and the `inbox` slot the operation reads its
    input from (−1: the pipeline's input for the first chunk's F, the loss head's cotangent for the
    last chunk's B). `stash_slots` and the inbox sizes are what every stage allocates."""

    op: np.ndarray
    mb: np.ndarray
    chunk: np.ndarray
    stash: np.ndarray
    inbox: np.ndarray
    stash_slots: int
    forward_inbox: int
    backward_inbox: int

    @property
    def ticks(self) -> int:
        return self.op.shape[0]

    def rows(self) -> np.ndarray:
        """[T, p, 5] int32: the fields stacked, for one lookup per tick on the device."""
        return np.stack([getattr(self, f) for f in FIELDS], axis=-1).astype(np.int32)

    def in_flight(self) -> list[int]:
        """Per stage, the most microbatch-chunks whose residuals it holds at once."""
        held = np.cumsum((self.op == FORWARD).astype(int) - (self.op == BACKWARD), axis=0)
        return [int(v) for v in held.max(axis=0)]


def _order(i: int, c: int, p: int, V: int) -> tuple[int, int]:
    """(forward index k, backward index k') of microbatch i's chunk c on every stage."""
    g, j = divmod(i, p)
    return g * p * V + c * p + j, g * p * V + (V - 1 - c) * p + j


def build(p: int, microbatches: int, virtual: int = 1) -> Table:
    """The schedule of `microbatches` microbatches over p stages of `virtual` chunks each."""
    M, V = microbatches, virtual
    if p < 1 or M < 1 or V < 1:
        raise ValueError(f"a pipeline needs p, microbatches and virtual >= 1 (got {p}, {M}, {V})")
    fwd, bwd = {}, {}  # (i, c, s) -> tick
    for i in range(M):
        for c in range(V):
            k, kb = _order(i, c, p, V)
            for s in range(p):
                fwd[i, c, s] = 2 * k + s
                bwd[i, c, s] = 2 * kb + 2 * p * V - 1 - s
    T = max(bwd.values()) + 1
    op = np.zeros((T, p), np.int64)
    fields = {f: np.full((T, p), -1, np.int64) for f in FIELDS[1:]}
    waits = {FORWARD: [0], BACKWARD: [0]}
    for kind, ticks in ((FORWARD, fwd), (BACKWARD, bwd)):
        for (i, c, s), t in ticks.items():
            if op[t, s] != IDLE:
                raise AssertionError(f"two operations on stage {s} at tick {t}")
            op[t, s], fields["mb"][t, s], fields["chunk"][t, s] = kind, i, c
            if kind == BACKWARD and (c, s) == (V - 1, p - 1):  # the head's cotangent
                if t != fwd[i, c, s] + 1:
                    raise AssertionError("the last chunk's backward must follow its forward")
                continue
            sent = _source(kind, i, c, s, p, V, fwd, bwd)
            if sent is None:
                continue
            if t <= sent:
                raise AssertionError(f"{'FB'[kind - 1]}({i}, {c}) on stage {s} at tick {t} "
                                     f"before its input, sent at tick {sent}")
            waits[kind].append(t - sent - 1)
    inbox = {kind: max(w) + 1 for kind, w in waits.items()}
    for kind, ticks in ((FORWARD, fwd), (BACKWARD, bwd)):
        for (i, c, s), t in ticks.items():
            if kind == BACKWARD and (c, s) == (V - 1, p - 1):
                continue
            sent = _source(kind, i, c, s, p, V, fwd, bwd)
            if sent is not None:
                fields["inbox"][t, s] = (sent + 1) % inbox[kind]
    stash_slots = _assign_stash(op, fields, fwd, bwd, p)
    return Table(op, fields["mb"], fields["chunk"], fields["stash"], fields["inbox"],
                 stash_slots, inbox[FORWARD], inbox[BACKWARD])


def _source(kind, i, c, s, p, V, fwd, bwd) -> int | None:
    """The tick at which the input of an operation was sent (None: the pipeline's input)."""
    if kind == FORWARD:
        if s > 0:
            return fwd[i, c, s - 1]
        return fwd[i, c - 1, p - 1] if c > 0 else None
    return bwd[i, c, s + 1] if s < p - 1 else bwd[i, c + 1, 0]


def _assign_stash(op, fields, fwd, bwd, p) -> int:
    """Give each forward's residuals a slot on its stage, free again after its backward."""
    slots = 0
    for s in range(p):
        free: list[int] = []
        used = 0
        owner = {}
        for t in range(op.shape[0]):
            i, c = fields["mb"][t, s], fields["chunk"][t, s]
            if op[t, s] == FORWARD:
                slot = free.pop() if free else used
                used = max(used, slot + 1)
                owner[i, c] = slot
                fields["stash"][t, s] = slot
            elif op[t, s] == BACKWARD:
                if bwd[i, c, s] <= fwd[i, c, s]:
                    raise AssertionError(f"B({i}, {c}) before its F on stage {s}")
                slot = owner.pop((i, c))
                fields["stash"][t, s] = slot
                free.append(slot)
        slots = max(slots, used)
    return slots


def replay(table: Table, forward: np.ndarray, backward: np.ndarray, idle: float = 0.0,
           lockstep: bool = False) -> float:
    """When the last stage finishes, with operation durations `forward[s, c]`, `backward[s, c]`
    (stage s, chunk c) and `idle` for a tick a stage skips.

    Asynchronous (Megatron's order): a stage runs its operations in the table's order, each as
    soon as the stage is free and the operation's input has arrived (the producer finished; the
    transfer itself is priced elsewhere). `lockstep`: as the runtime's ticks run, each ending
    with collective-permutes to both neighbouring stages (a ring): a stage leaves tick t when it
    and both neighbours have finished their operations of tick t, so where neighbours run F and B
    in the same tick the tick lasts max(F, B).
    """
    T, p = table.op.shape
    dur = np.full((T, p), float(idle))
    for kind, cost in ((FORWARD, forward), (BACKWARD, backward)):
        t, s = np.nonzero(table.op == kind)
        dur[t, s] = np.asarray(cost, float)[s, table.chunk[t, s]]
    if lockstep:
        end = np.zeros(p)
        for t in range(T):
            done = end + dur[t]
            end = np.max([np.roll(done, 1), done, np.roll(done, -1)], axis=0)
        return float(end.max())
    V = int(table.chunk.max()) + 1
    finish: dict[tuple[int, int, int, int], float] = {}  # (kind, mb, chunk, stage) -> time
    free = np.zeros(p)
    for t in range(T):  # each stage's operations in tick order; inputs come from earlier ticks
        for s in range(p):
            kind, i, c = int(table.op[t, s]), int(table.mb[t, s]), int(table.chunk[t, s])
            if kind == IDLE:
                continue
            ready = finish.get(_producer(kind, i, c, s, p, V), 0.0)
            free[s] = max(free[s], ready) + dur[t, s]
            finish[kind, i, c, s] = free[s]
    return float(free.max())


def _producer(kind: int, i: int, c: int, s: int, p: int, V: int) -> tuple[int, int, int, int]:
    """The operation whose output an operation reads (its own forward for the last chunk's
    backward; a key that is never finished, so ready at 0, for the pipeline's input)."""
    if kind == FORWARD:
        return (FORWARD, i, c, s - 1) if s > 0 else (FORWARD, i, c - 1, p - 1)
    if (c, s) == (V - 1, p - 1):
        return FORWARD, i, c, s
    return (BACKWARD, i, c, s + 1) if s < p - 1 else (BACKWARD, i, c + 1, 0)
