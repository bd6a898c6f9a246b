"""Time of a collective under the ring (bandwidth + per-step latency) model of docs/cost-model.md.

V is the full buffer per device (`Collective.payload_bytes`: the gathered result for all-gather,
the un-scattered operand for reduce-scatter), n the group size, W the per-device one-way link rate:

    all-gather, reduce-scatter  (n-1)/n * V/W  + (n-1)  * latency
    all-reduce                 2(n-1)/n * V/W  + 2(n-1) * latency   (ring RS + AG)
    all-to-all                  (n-1)/n * V/W  + (n-1)  * latency   (n-1 pairwise exchanges)
    collective-permute                  V/W    + 1      * latency   (one send, one receive)

n = 1 costs nothing. Latency is paid once per sequential step; tree algorithms (log n steps) and
contention between groups sharing a link are not modelled. A group that spans nodes is priced
entirely at the InfiniBand rate per GPU: the slowest ring edge sets a ring's pace.
"""

from __future__ import annotations

from collections.abc import Callable

from helix_jax.analysis.hardware import Hardware
from helix_jax.analysis.hlo import Collective, device_groups_cross_nodes

_OPS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def collective_seconds(op: str, payload_bytes: float, group_size: int, link_bytes_per_s: float,
                       latency_s: float) -> float:
    """Seconds for one execution of `op` over a group of `group_size` devices (see module doc)."""
    base = op.removesuffix("-start")
    if base not in _OPS:
        raise ValueError(f"unknown collective {op!r}; known: {list(_OPS)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if link_bytes_per_s <= 0:
        raise ValueError(f"link_bytes_per_s must be positive, got {link_bytes_per_s}")
    n = group_size
    if n == 1:
        return 0.0
    if base == "collective-permute":
        return payload_bytes / link_bytes_per_s + latency_s
    frac = (n - 1) / n
    if base == "all-reduce":
        return 2 * frac * payload_bytes / link_bytes_per_s + 2 * (n - 1) * latency_s
    return frac * payload_bytes / link_bytes_per_s + (n - 1) * latency_s


def crosses_nodes(c: Collective, node_of: Callable[[int], int]) -> bool:
    """Whether a collective's groups (or permute pairs) span more than one node."""
    return device_groups_cross_nodes(c.replica_groups + c.source_target_pairs, node_of)


def collective_time(c: Collective, hw: Hardware,
                    node_of: Callable[[int], int] | None = None) -> float:
    """Seconds per program run: one execution priced on NVLink or InfiniBand, times trip_count.

    `node_of` maps a mesh position to its node; by default `hw.node_of` (positions fill nodes in
    order). Returns 0 for groups of one device.
    """
    n = c.group_size
    if n <= 1:
        return 0.0
    bandwidth, latency = hw.link(crosses_nodes(c, node_of or hw.node_of))
    return c.trip_count * collective_seconds(c.op, c.payload_bytes, n, bandwidth, latency)
