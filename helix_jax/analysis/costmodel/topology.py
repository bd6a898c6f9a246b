"""Which devices share a node: decided here, and only here, by the hardware profile (how many GPUs
a node holds) and the layout's placement (in which axis order mesh positions are numbered onto
GPUs) together. A collective whose group spans nodes runs over InfiniBand, else over NVLink.

Mesh position p (row-major in the mesh = the HLO partition id) is numbered onto GPU g by the
layout's placement order; GPU g sits on node g // gpus_per_node.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from helix_jax.analysis.costmodel.hardware import Hardware
from helix_jax.layouts import Layout


def node_of(layout: Layout, hw: Hardware) -> Callable[[int], int]:
    """The function from a mesh position to the node that holds it on `hw`."""
    order = layout.placement_order()
    sizes = layout.axis_sizes

    def node(position: int) -> int:
        coords = dict(zip(layout.axis_names, _unravel(position, layout.mesh_shape)))
        gpu = 0
        for a in order:
            gpu = gpu * sizes[a] + coords[a]
        return gpu // hw.gpus_per_node

    return node


def axis_groups(layout: Layout, axes: tuple[str, ...]) -> set[frozenset[int]]:
    """The device groups (mesh positions) that vary only along `axes`."""
    groups: dict[tuple, set[int]] = defaultdict(set)
    for p in range(layout.devices):
        coords = _unravel(p, layout.mesh_shape)
        key = tuple(c for a, c in zip(layout.axis_names, coords) if a not in axes)
        groups[key].add(p)
    return {frozenset(g) for g in groups.values()}


def intra_node_axes(layout: Layout, hw: Hardware) -> tuple[str, ...]:
    """Mesh axes whose groups stay inside one node on `hw` under the layout's placement."""
    node = node_of(layout, hw)
    return tuple(axis for axis in layout.axis_names
                 if all(len({node(q) for q in g}) == 1 for g in axis_groups(layout, (axis,))))


def stages_cross_nodes(layout: Layout, hw: Hardware) -> bool:
    """Whether neighbouring pipeline stages of a composed tp-pp step sit on different nodes (the
    pipeline's sends run over InfiniBand). Composition prices Megatron's placement, tensor ranks
    inside a node, then context ranks, then stages, whatever `place=` says: a stage's neighbour
    is tp x cp GPUs away."""
    o = layout.options
    return o.get("tp", 1) * o.get("cp", 1) >= hw.gpus_per_node


def data_replica_nodes(layout: Layout, hw: Hardware) -> int:
    """How many nodes the ranks holding the same parameters in a composed tp-pp step span (its
    gradient reduce-scatter and parameter all-gather cross them), in Megatron's placement (tensor
    ranks innermost, then context ranks, then stages, then data replicas): the dp data ranks,
    tp x cp x pp GPUs apart, times the cp context ranks, tp GPUs apart."""
    o = layout.options
    tp, pp, dp, cp = o.get("tp", 1), o.get("pp", 1), o.get("dp", 1), o.get("cp", 1)
    return len({(d * pp * cp * tp + c * tp) // hw.gpus_per_node
                for d in range(dp) for c in range(cp)})


def _unravel(position: int, shape: tuple[int, ...]) -> list[int]:
    coords = []
    for n in reversed(shape):
        coords.append(position % n)
        position //= n
    return coords[::-1]
