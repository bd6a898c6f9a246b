"""Read a compiled program's collectives, FLOPs and memory, and price them on a hardware profile."""

from helix_jax.analysis.cost import read_cost, read_memory, scale_for_loops
from helix_jax.analysis.flops import matmul_flops, program_flops
from helix_jax.analysis.hardware import HARDWARE, Hardware, load_hardware
from helix_jax.analysis.hlo import (
    Collective,
    collectives,
    device_groups_cross_nodes,
    parse_replica_groups,
    while_trip_counts,
)
from helix_jax.analysis.pricing import collective_seconds, collective_time, crosses_nodes

__all__ = [
    "HARDWARE",
    "Collective",
    "Hardware",
    "collective_seconds",
    "collective_time",
    "collectives",
    "crosses_nodes",
    "device_groups_cross_nodes",
    "load_hardware",
    "matmul_flops",
    "parse_replica_groups",
    "program_flops",
    "read_cost",
    "read_memory",
    "scale_for_loops",
    "while_trip_counts",
]
