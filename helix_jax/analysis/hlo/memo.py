"""Read-outs of a compiled program that do not depend on the hardware (its collectives, its
kernels' shapes, its matmul FLOPs), computed once per program text and kept.

Pricing one program on several profiles, or several layouts that compile to the same program
(a composed training step whose schedule, interleaving or overlap differ), parses its HLO once.
The values are keyed by the text's sha256; `values_of` / `preload` let a store that keeps the
program (the planner's cache) keep its read-outs too, so a later run prices without parsing.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

_VALUES: dict[str, dict[tuple, Any]] = {}  # text digest -> {(read-out, args): value}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def per_program(fn: Callable) -> Callable:
    """Memoise `fn(text, *args)` (hashable args, a value never mutated) per program text."""
    @functools.wraps(fn)
    def cached(text: str, *args):
        store = _VALUES.setdefault(digest(text), {})
        key = (fn.__qualname__, args)
        if key not in store:
            store[key] = fn(text, *args)
        return store[key]
    return cached


def values_of(text_digest: str) -> dict[tuple, Any]:
    """Every read-out computed so far for the program with this digest."""
    return dict(_VALUES.get(text_digest, {}))


def preload(text_digest: str, values: dict[tuple, Any]) -> None:
    """Read-outs of a program kept elsewhere (see the module doc)."""
    _VALUES.setdefault(text_digest, {}).update(values)
