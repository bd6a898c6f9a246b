"""Analysis of compiled programs, in three parts whose imports point one way:

  hlo/        read an XLA program (ops, loops, FLOPs, collectives, memory); no model, no hardware
  costmodel/  hardware profiles, pricing, and the projection of one layout (reads hlo/)
  planner/    the search over layouts (calls costmodel/ with a compiler it is handed)

plus `partitioners` (the hand-written and XLA's collectives of one layout, side by side). The
names below are the ones notebooks and tests reach for most."""

from helix_jax.analysis.costmodel.hardware import HARDWARE, Hardware, load_hardware
from helix_jax.analysis.costmodel.pricing import collective_seconds, collective_time, crosses_nodes
from helix_jax.analysis.hlo.collectives import (
    Collective,
    collectives,
    device_groups_cross_nodes,
    parse_replica_groups,
    while_trip_counts,
)
from helix_jax.analysis.hlo.compiled import read_cost, read_memory, scale_for_loops
from helix_jax.analysis.hlo.flops import matmul_flops, program_flops

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
