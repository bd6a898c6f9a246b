"""Which partitioner runs a layout: the hand-written shard_map program or XLA's GSPMD.

  shard_map  every collective is written by hand through `Comm` inside one `jax.shard_map`
             (the default, and the only one for pipelines and KV-cache steps);
  gspmd      the same modules on whole arrays under `jax.jit`, with the layout's parameter and
             input shardings and `Comm.constrain` at the points the modules name; XLA's SPMD
             partitioner chooses every collective.

No jax here: the CLI checks a request before jax starts.
"""

from __future__ import annotations

from helix_jax.enums import Partitioner, choices
from helix_jax.layouts import Layout

PARTITIONERS = choices(Partitioner)


def check_partitioner(layout: Layout, partitioner: str) -> None:
    """A one-line ValueError for a partitioner this layout cannot run under."""
    if partitioner not in PARTITIONERS:
        raise ValueError(f"partitioner {partitioner!r} is not one of {', '.join(PARTITIONERS)}")
    if partitioner == "gspmd" and (layout.size("cp_seq") > 1
                                   or layout.kind == "tp-pp" and layout.size("expert") > 1):
        raise ValueError(f"{layout.spec}: context parallelism and tp-pp's expert parallelism run "
                         f"under --partitioner shard_map only (their attention and dispatch are "
                         f"written by hand)")
    if partitioner == "gspmd" and layout.size("layers") > 1:
        raise ValueError(f"{layout.spec}: a pipeline (pp={layout.size('layers')}) runs under "
                         f"--partitioner shard_map only (its schedule is written by hand); use "
                         f"pp=1 for its tensor-parallel part under gspmd")
