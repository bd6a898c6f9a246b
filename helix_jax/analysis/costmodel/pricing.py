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

Profiles with measured links (`Hardware.measured_links`: an all-reduce bus-bandwidth curve and an
achieved NIC rate) are priced from the measurements instead (`measured_seconds`): inside a node
at the bus bandwidth measured for that message size, never faster than the small-message time;
a group spanning N nodes with g of its GPUs per node hierarchically, the intra-node phase plus an
inter-node phase in which the node's g NICs carry the node's share together:

    all-reduce         intra all-reduce(V)  + 2(N-1)/N * V/g / NIC
    all-gather, r-s    intra (V)            +  (N-1)/N * V/g / NIC
    all-to-all         intra ((g-1)/n of V) +  (N-1)/N * V   / NIC   (each GPU's own data)
    collective-permute                                      V / NIC
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.analysis.hlo.collectives import Collective, device_groups_cross_nodes

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


def busbw_at(hw: Hardware, nbytes: float, allreduce: bool = True) -> float:
    """Measured bus bandwidth at a message size: log-linear between the curve's points, the end
    values beyond them; other collectives are capped at `busbw_max_other`."""
    curve = hw.allreduce_busbw
    sizes = [c[0] for c in curve]
    if nbytes <= sizes[0]:
        bw = curve[0][1]
    elif nbytes >= sizes[-1]:
        bw = curve[-1][1]
    else:
        i = bisect.bisect_right(sizes, nbytes)
        (s0, b0), (s1, b1) = curve[i - 1], curve[i]
        t = (math.log(nbytes) - math.log(s0)) / (math.log(s1) - math.log(s0))
        bw = b0 + t * (b1 - b0)
    if not allreduce and hw.busbw_max_other:
        bw = min(bw, hw.busbw_max_other)
    return bw


def _intra(op: str, nbytes: float, n: int, hw: Hardware) -> float:
    if n <= 1 or nbytes <= 0:
        return 0.0
    if op == "collective-permute":
        return max(nbytes / busbw_at(hw, nbytes, False), hw.latency_small_s)
    factor = 2 * (n - 1) / n if op == "all-reduce" else (n - 1) / n
    bw = busbw_at(hw, nbytes, op == "all-reduce")
    return max(factor * nbytes / bw, hw.latency_small_s)


def measured_seconds(op: str, payload_bytes: float, group_size: int, nodes: int,
                     hw: Hardware) -> float:
    """One execution of `op` priced from the profile's measured links (see module doc)."""
    base = op.removesuffix("-start")
    if base not in _OPS:
        raise ValueError(f"unknown collective {op!r}; known: {list(_OPS)}")
    n, N = group_size, max(nodes, 1)
    if n <= 1:
        return 0.0
    V, nic = payload_bytes, hw.nic_bytes_per_s
    if N == 1:
        return _intra(base, V, n, hw)
    g = max(n // N, 1)
    inter_lat = hw.latency_ib_s * (N - 1)
    if base == "collective-permute":
        return V / nic + hw.latency_ib_s
    if base == "all-reduce":
        return _intra(base, V, g, hw) + 2 * (N - 1) / N * V / g / nic + 2 * inter_lat
    if base == "all-to-all":
        return _intra(base, V * g / n, g, hw) + (N - 1) / N * V / nic + inter_lat
    return _intra(base, V, g, hw) + (N - 1) / N * V / g / nic + inter_lat


def nodes_spanned(c: Collective, node_of: Callable[[int], int]) -> int:
    """The most nodes any one of the collective's groups (or permute pairs) touches."""
    groups = list(c.replica_groups) + [tuple(p) for p in c.source_target_pairs]
    return max((len({node_of(d) for d in g}) for g in groups), default=1)


def crosses_nodes(c: Collective, node_of: Callable[[int], int]) -> bool:
    """Whether a collective's groups (or permute pairs) span more than one node."""
    return device_groups_cross_nodes(c.replica_groups + c.source_target_pairs, node_of)


def collective_time(c: Collective, hw: Hardware, node_of: Callable[[int], int]) -> float:
    """Seconds per program run: one execution priced on NVLink or InfiniBand, times trip_count.

    `node_of` maps a mesh position to its node (`topology.node_of`). Returns 0 for groups of one
    device.
    """
    n = c.group_size
    if n <= 1:
        return 0.0
    if hw.measured_links:
        nodes = nodes_spanned(c, node_of)
        return c.trip_count * measured_seconds(c.op, c.payload_bytes, n, nodes, hw)
    bandwidth, latency = hw.link(crosses_nodes(c, node_of))
    return c.trip_count * collective_seconds(c.op, c.payload_bytes, n, bandwidth, latency)
