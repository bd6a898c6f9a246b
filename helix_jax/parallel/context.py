"""Context parallelism: the sequence of every layer's activations split over the `cp_seq` axis.

Causal load balancing (Megatron-Core, torchtitan, Llama 3): the sequence is cut into 2K chunks of
c = S / 2K positions and shard i of K holds chunks i and 2K − 1 − i, in that order, so every shard
has the same share of the (query, key) pairs a causal mask leaves visible. Norms, the FFN and the
loss work on a shard's own tokens; attention reaches the other shards' keys and values
(`nn.attention.context_attention`). Token ids, labels and positions follow the same assignment;
the model's output leaves the shards in shard order and `natural_order` puts it back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from helix_jax.comm import Comm

Array = jax.Array

AXIS = "cp_seq"  # the logical axis of the context-parallel sequence split


def chunk_starts(shard: Array | int, chunk: int, shards: int) -> tuple[Array | int, Array | int]:
    """First positions of the two chunks shard `shard` of `shards` holds (chunk length `chunk`)."""
    return shard * chunk, (2 * shards - 1 - shard) * chunk


def shard_positions(shard: Array | int, chunk: int, shards: int) -> Array:
    """The sequence positions [2 * chunk] of shard `shard`'s tokens, in the order it holds them."""
    a, b = chunk_starts(shard, chunk, shards)
    return jnp.concatenate([a + jnp.arange(chunk), b + jnp.arange(chunk)])


def positions(n_local: int, comm: Comm) -> Array:
    """The sequence positions [n_local] of this shard's tokens, in the order it holds them."""
    K = comm.size(AXIS)
    if K == 1:
        return jnp.arange(n_local)
    return shard_positions(comm.index(AXIS), n_local // 2, K)


def select(x: Array, comm: Comm, axis: int = 1) -> Array:
    """This shard's two chunks of a whole sequence (along `axis`): [.., S, ..] -> [.., S/K, ..]."""
    K = comm.size(AXIS)
    if K == 1:
        return x
    c = x.shape[axis] // (2 * K)
    return jnp.concatenate([jax.lax.dynamic_slice_in_dim(x, s, c, axis)
                            for s in chunk_starts(comm.index(AXIS), c, K)], axis=axis)


def natural_order(y: Array, shards: int, axis: int = 1) -> Array:
    """A whole sequence laid out shard after shard (shard i's chunks i, 2K − 1 − i) back in the
    order of its positions. A static permutation of 2K chunks."""
    if shards == 1:
        return y
    held = [c for s in range(shards) for c in (s, 2 * shards - 1 - s)]  # chunk in each slot
    inverse = jnp.array([held.index(c) for c in range(2 * shards)])
    S = y.shape[axis]
    blocks = y.reshape(*y.shape[:axis], 2 * shards, S // (2 * shards), *y.shape[axis + 1:])
    return jnp.take(blocks, inverse, axis=axis).reshape(y.shape)

