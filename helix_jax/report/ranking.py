"""The one rule every report uses to name a winner: the fastest layout whose program fits memory."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def row_projection(row: dict) -> dict | None:
    """A report row's flat projection summary ({'tokens_per_s', 'fits', ...}), or None."""
    return row.get("projection")


def full_projection(p: dict) -> dict:
    """The summary view of a whole `analysis.project` read-out."""
    return {"tokens_per_s": p["projected"]["tokens_per_s"], "fits": p["fits"]}


def fastest_that_fits(items: Iterable[T],
                      view: Callable[[T], dict | None] = row_projection) -> T | None:
    """The item with the most projected tokens/s among those whose program fits the profile's
    memory (`view(item)["fits"]`); None when nothing fits or nothing was projected."""
    fitting = [(v["tokens_per_s"], i, item) for i, item in enumerate(items)
               if (v := view(item)) is not None and v["fits"]]
    return max(fitting, key=lambda t: (t[0], -t[1]))[2] if fitting else None
