"""Option ranges, checked before any work: one table for every command's flags, and the ranges
that depend on the model (a decode prompt against its sequence). Each raises ValueError with one
message naming the flag, what it must be and what it got (the CLI prints it as
`helix: error: ...`, exit 2). No jax here: these run before jax starts."""

from __future__ import annotations

import math
from collections.abc import Callable

from helix_jax.errors import quote
from helix_jax.limits import MAX_DEVICES

Rule = tuple[Callable[[object], bool], str]  # (accepts the value, what it must be)


def _at_least(lo: int) -> Rule:
    return (lambda v: v >= lo), f"at least {lo}"


def _between(lo: int, hi: int) -> Rule:
    return (lambda v: lo <= v <= hi), f"between {lo} and {hi:,}"


_FINITE_POSITIVE: Rule = (lambda v: math.isfinite(v) and v > 0), "a finite number > 0"

# option dest -> rule. One table for every command, applied to whatever options a command has
# (None: not given); COMMAND_RANGES overrides it per command. Ranges that depend on the model
# (--prompt-len < seq, --top-k <= experts) are checked with it.
RANGES: dict[str, Rule] = {
    "batch": _between(1, 2**20), "seq": _between(1, 2**24), "q_block": _between(0, 2**24),
    "kv_block": _between(0, 2**24), "top_k": _between(1, 4096),
    "capacity_factor": ((lambda v: math.isfinite(v) and 0 < v <= 1024), "a number in (0, 1024]"),
    "seed": ((lambda v: 0 <= v < 2**32), "between 0 and 2**32 - 1"),
    "repeat": _between(0, 10_000), "warmup": _between(0, 10_000), "steps": _between(1, 10**9),
    "save_every": _between(1, 10**9), "lr": _FINITE_POSITIVE,
    "generate": _between(1, 2**24), "context": _between(2, 2**24),
    "heartbeat_timeout": _between(1, 86_400),
    "num_processes": _between(1, 1024), "process_id": _between(0, 1023),
    "devices": _between(1, MAX_DEVICES), "top": _at_least(1), "jobs": _between(1, 256),
    "max_micro": _at_least(0), "max_tp": _at_least(0),
    "batch_chunks": ((lambda v: v == "auto" or (str(v).isdigit() and int(v) >= 1)),
                     "'auto' or a whole number >= 1"),
}
COMMAND_RANGES: dict[tuple[str, str], Rule] = {
    ("calibrate", "repeat"): _at_least(1),
    ("reproduce", "repeat"): _at_least(1),
}


def check_ranges(command: str, options: dict) -> None:
    """Every option value of `command` inside its range, else a ValueError naming the flag."""
    for dest, value in options.items():
        rule = COMMAND_RANGES.get((command, dest)) or RANGES.get(dest)
        if rule is None or value is None or isinstance(value, bool):
            continue
        accepts, what = rule
        if not accepts(value):
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} must be {what}, got "
                             f"{value if len(str(value)) <= 24 else quote(value, 24)}")


def prompt_len(prompt_len: int, seq: int) -> None:
    """A decode prompt must leave a position to prefill and at least one step to decode."""
    if not 1 <= prompt_len <= seq - 1:
        raise ValueError(f"--prompt-len {prompt_len} must be between 1 and seq - 1 = {seq - 1}: "
                         f"the prefill needs a position and the decode at least one step")
