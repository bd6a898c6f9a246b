"""Per-layer statistics (MoE drops, routed counts, auxiliary losses) and how runs combine them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Stats = dict[str, jax.Array]


def combine_stats(stats: Stats, weight: jax.Array | None = None) -> Stats:
    """Per-layer stats stacked over runs [N, layers] -> per layer: counts summed, losses averaged.

    `weight` [N] (bool) keeps only some runs, e.g. the real microbatches of a pipeline schedule.
    """
    out = {}
    for key, value in stats.items():
        n = value.shape[0] if weight is None else weight.sum()
        if weight is not None:
            value = jnp.where(weight[:, None], value, 0)
        out[key] = value.sum(0) / (n if key.endswith("_loss") else 1)
    return out
