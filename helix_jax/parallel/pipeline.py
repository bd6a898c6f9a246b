"""GPipe over the `layers` logical axis: pp stages, M microbatches, M + pp − 1 steps.

Runs inside the model's shard_map. Each stage holds L/pp consecutive layers (the stacked layer
axis is sharded over the stage mesh axis). At step t, stage s works on microbatch t − s: stage 0
reads it from the input, later stages receive it from stage s − 1 by collective-permute. Every stage
runs every step (steps outside 0 ≤ t − s < M are the bubble: computed, then discarded), so the
bubble fraction (pp − 1)/(M + pp − 1) shows up in the program's FLOPs as it does in time. One
program, one scan: XLA sees the whole schedule and gradients flow back through it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from helix_jax.comm import Comm, vary_like
from helix_jax.nn.stats import Stats, combine_stats


def gpipe(run_stage: Callable[[jax.Array, Comm], tuple[jax.Array, Stats]], x: jax.Array,
          comm: Comm) -> tuple[jax.Array, Stats]:
    """x [B, S, D] (the same on every stage) -> the last stage's output, on every stage.

    `run_stage` applies this stage's layers and returns per-layer stats; the stats of the M real
    microbatches are summed (keys ending in `_loss` averaged).
    """
    p, M = comm.size("layers"), comm.option("microbatches", 1)
    stage = comm.index("layers")
    B = x.shape[0]
    microbatches = x.reshape(M, B // M, *x.shape[1:])
    steps = jnp.arange(M + p - 1)

    def step(received, t):
        fresh = jax.lax.dynamic_index_in_dim(microbatches, jnp.minimum(t, M - 1), keepdims=False)
        out, stats = run_stage(jnp.where(stage == 0, fresh, received), comm)
        return comm.shift(out, "layers"), (out, stats)

    init = vary_like(jnp.zeros_like(microbatches[0]), x, stage)
    _, (outs, stats) = jax.lax.scan(step, init, steps)
    # The last stage finished microbatch i at step i + p − 1; send its outputs to every stage.
    y = outs[p - 1:].reshape(x.shape)
    y = comm.psum(jnp.where(stage == p - 1, y, jnp.zeros_like(y)), "layers")
    return y, combine_stats(stats, weight=(steps >= stage) & (steps < stage + M))


def stage_by_stage(run_stage: Callable, x: jax.Array, state, comm: Comm):
    """A prefill or decode step through the pipeline: one microbatch, stage after stage.

    `run_stage(h, state, active) -> (out, state, stats)` applies this stage's layers and writes
    its new keys and values into `state` (its KV cache) only where `active`. At step t stage t
    works on what stage t - 1 sent it; every stage runs every step (a decode step is bound by
    reading the cache, not by these FLOPs) but writes only on its own. Returns (the last stage's
    output on every stage, the state, the stats of each stage's real step).
    """
    p = comm.size("layers")
    stage = comm.index("layers")

    def step(carry, t):
        h, st = carry
        mine = stage == t
        out, st, stats = run_stage(h, st, mine)
        received = comm.shift(out, "layers")
        h = jnp.where(stage == t + 1, received, h)
        last = jnp.where(mine & (stage == p - 1), out, jnp.zeros_like(out))
        return (h, st), (last, jax.tree.map(lambda v: jnp.where(mine, v, 0), stats))

    init = vary_like(x, x, stage)
    state = vary_like(state, stage)
    (_, state), (lasts, stats) = jax.lax.scan(step, (init, state), jnp.arange(p))
    y = comm.psum(lasts.sum(0), "layers")
    return y, state, jax.tree.map(lambda v: v.sum(0), stats)
