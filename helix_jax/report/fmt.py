"""Numbers as the reports, the terminal and the charts print them: one place, one style (sizes in
bytes: `helix_jax.units.gb`, which the core uses too)."""

from __future__ import annotations

import math


def num(x: float | bool | None, digits: int = 3) -> str:
    """12345.6 -> '12,346'; 0.01234 -> '0.0123'; True -> 'yes'; None -> '–'."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def gb_label(x_gb: float | None) -> str:
    """A value already in GB, short, for a bar label: '1,740', '105', '0.3', '0' (under 0.05)."""
    if x_gb is None:
        return "n/a"
    return "0" if abs(x_gb) < 0.05 else f"{x_gb:,.0f}" if abs(x_gb) >= 10 else f"{x_gb:.2g}"


def human(x: float | None) -> str:
    """1234567 -> '1.23M', 0.0123 -> '0.0123', None or NaN -> 'n/a'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    a = abs(x)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= limit:
            return f"{x / limit:.3g}{suffix}"
    return "0" if a == 0 else f"{x:.3g}"


def pct(x: float, digits: int = 1) -> str:
    """0.1234 -> '12.3%'."""
    return f"{100 * x:.{digits}f}%"
