"""Sizes as a reader sees them, in one place that every layer may import (the core, the commands
and the report layer alike)."""

from __future__ import annotations


def gb(n_bytes: float | None, digits: int = 1) -> str:
    """Bytes with a unit, `digits` decimals: gigabytes (10^9), 63_700_000_000 -> '63.7 GB'; a
    nonzero size under 0.1 GB in megabytes (10^6), 12_345_678 -> '12.3 MB', so a small model's
    sizes do not all read '0.0 GB'; zero -> '0.0 GB'; None -> '–'."""
    if n_bytes is None:
        return "–"
    if 0 < abs(n_bytes) < 1e8:
        return f"{n_bytes / 1e6:,.{digits}f} MB"
    return f"{n_bytes / 1e9:,.{digits}f} GB"
