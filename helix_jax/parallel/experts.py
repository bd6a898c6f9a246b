"""Expert dispatch and combine: capacity buffers, and how tokens reach experts on each layout.

Tokens are routed to experts (helix_jax/nn/moe.py); this module moves them. Every expert has a
buffer of C slots per source shard (C = ceil(capacity_factor · tokens · k / E)). A token takes the
next free slot of its expert in priority order: all first choices before all second choices
(Switch/GShard), then token order. Assignments past slot C are dropped: that expert contributes 0 to
the token (the residual path carries it).

How the buffers reach the experts is read from the layout through `Comm`, never from its name:

  local        experts not sharded (single, dp, tp-pp): every device runs all its experts on its
               own tokens. If the expert hidden dim is sharded (`expert_mlp`, tp-pp) the outputs
               are partial sums, reduced after the combine.
  all_to_all   experts sharded over mesh axes that also shard the tokens (ep; tp-pp's ep over
               its data and context ranks): [E, C, D] send
               buffer, all-to-all over the expert axes, E/n local experts on n·C slots each,
               all-to-all back, combine. Option `chunks` splits the C slots into K pieces, each
               with its own pair of all-to-alls, so that a piece's transfer can overlap another
               piece's matmuls.
  replicated   experts sharded over mesh axes that replicate the tokens (helix-ep, helix): each
               device picks, locally, the tokens routed to its own experts, runs them, scatters
               the weighted results into a [B, S, D] partial, and the partials are summed over
               the expert axes. C is computed from all the tokens the device sees (the whole
               data replica), so drops can differ from `ep`, whose C is per source shard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from helix_jax.routing import capacity, dispatch_mode

if TYPE_CHECKING:
    from helix_jax.comm import Comm

Array = jax.Array
ExpertFn = Callable[[Array], Array]  # [E_loc, N, D] -> [E_loc, N, D], this device's experts

# ----------------------------------------------------------------------------- buffers

def buffer_positions(expert_idx: Array, n_experts: int) -> Array:
    """[T, k] chosen experts -> [T, k] slot of each assignment in its expert's buffer.

    Priority: choice rank first (every token's first choice before any second choice), then token
    order. Slots count from 0; an assignment is kept when its slot is below the capacity.
    """
    onehot = jax.nn.one_hot(expert_idx.T, n_experts, dtype=jnp.int32)  # [k, T, E], rank-major
    k, T, E = onehot.shape
    before = jnp.cumsum(onehot.reshape(k * T, E), axis=0).reshape(k, T, E) - onehot
    return jnp.sum(before * onehot, axis=-1).T  # [T, k]


@dataclass(frozen=True)
class Slots:
    """Where assignments sit in the buffers of experts [first, first + count).

    token: [count, C] the token index in each slot (T when the slot is empty);
    flat: [T, k] each assignment's flat slot index expert·C + slot (count·C when the assignment is
    dropped or its expert is not among these).
    """

    token: Array
    flat: Array


def slot_table(expert_idx: Array, pos: Array, cap: int, buffer: int, first: Array | int,
               count: int) -> Slots:
    """Slots of the experts [first, first + count) for assignments kept under capacity `cap`.

    `buffer` >= cap is the number of slots per expert in the buffers (padding stays empty).
    """
    T, _ = expert_idx.shape
    local = expert_idx - first
    mine = (pos < cap) & (local >= 0) & (local < count)
    flat = jnp.where(mine, local * buffer + pos, count * buffer)
    tokens = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[:, None], flat.shape)
    table = jnp.full((count * buffer,), T, jnp.int32).at[flat.ravel()].set(
        tokens.ravel(), mode="drop")
    return Slots(table.reshape(count, buffer), flat)


def gather_tokens(t: Array, token: Array) -> Array:
    """t [T, D], slot table [n, C] -> buffers [n, C, D]; empty slots are zeros."""
    return jnp.take(t, token, axis=0, mode="fill", fill_value=0)


def combine(out: Array, slots: Slots, weights: Array) -> Array:
    """Expert outputs [n, C, D] -> [T, D]: Σ over a token's kept assignments, weight · output."""
    n, C, D = out.shape
    picked = jnp.take(out.reshape(n * C, D), slots.flat, axis=0, mode="fill", fill_value=0)
    return jnp.sum(picked * weights.astype(out.dtype)[..., None], axis=1)  # [T, k, D] -> [T, D]


# ----------------------------------------------------------------------------- layouts

def exchange(send: Array, experts: ExpertFn, comm: Comm, chunks: int) -> Array:
    """Expert parallelism: send [E, C, D] -> this shard's experts -> back, [E, C, D].

    The all-to-all splits the E buffers over the expert shards and stacks what arrives from the n
    source shards along the slot axis, so each device runs its E/n experts on n·C slots. With
    chunks K the slots go in K pieces (a static loop: K independent all-to-alls per direction).
    """
    outs = []
    for piece in jnp.split(send, chunks, axis=1):
        recv = comm.all_to_all(piece, "expert", split_axis=0, concat_axis=1)  # [E/n, n·C/K, D]
        done = experts(recv)
        outs.append(comm.all_to_all(done, "expert", split_axis=1, concat_axis=0))  # [E, C/K, D]
    return jnp.concatenate(outs, axis=1) if chunks > 1 else outs[0]


def token_groups(comm: Comm) -> int:
    """How many groups of tokens the global view fills buffers for: one per token shard, times
    the microbatches a layout with a `layers` axis runs (tp-pp keeps them at pp = 1), so each
    group holds the tokens one device's MoE call sees under shard_map (`tokens_per_shard`)."""
    micro = comm.option("microbatches", 1) if comm.layout.mesh_axes("layers") else 1
    return comm.groups("batch") * micro


def apply_experts_global(h: Array, expert_idx: Array, weights: Array, experts: ExpertFn,
                         comm: Comm, *, n_experts: int, capacity_factor: float
                         ) -> tuple[Array, Array]:
    """`apply_experts` on whole arrays (gspmd): the same buffers, written as one program.

    The tokens form G groups, one per token shard of the layout (`token_groups`), and each
    group fills its own [E, C, D] buffers with the capacity of its shard, exactly as a device does
    under shard_map, so both partitioners drop the same assignments. The constraints say where
    the buffers are: filled where their tokens are, run where their experts are, and (experts
    on the token axes, as in ep) combined where the tokens are; XLA moves them in between. With
    `ep:chunks=K` the slots go in K pieces, each constrained on its own, as under shard_map.
    """
    B, S, D = h.shape
    T, k = expert_idx.shape
    G = token_groups(comm)
    n = T // G
    cap = capacity(n, k, n_experts, capacity_factor)
    t = comm.constrain(h.reshape(G, n, D), "batch", None, None)
    idx, w = expert_idx.reshape(G, n, k), weights.reshape(G, n, k)
    pos = jax.vmap(buffer_positions, in_axes=(0, None))(idx, n_experts)
    dropped = jnp.sum(pos >= cap, axis=-1).astype(jnp.float32).reshape(T)
    a2a = dispatch_mode(comm.layout.mesh_axes("expert"),
                        comm.layout.mesh_axes("batch")) == "all_to_all"
    chunks = comm.option("chunks", 1) if a2a else 1
    buffer = -(-cap // chunks) * chunks  # as `apply_experts`: C padded to a multiple of K

    def table(i: Array, p: Array) -> tuple[Array, Array]:
        s = slot_table(i, p, cap, buffer, 0, n_experts)
        return s.token, s.flat

    token, flat = jax.vmap(table)(idx, pos)  # [G, E, C], [G, n, k]
    send = comm.constrain(jax.vmap(gather_tokens)(t, token), "batch", None, None, None)
    at_experts = ("batch", "expert", None, None)
    outs = []
    for piece in jnp.split(send, chunks, axis=2):  # K pieces, each moved on its own
        c = piece.shape[2]
        recv = comm.constrain(piece, *at_experts, first=(1,))  # [G, E, C/K, D]
        out = experts(recv.transpose(1, 0, 2, 3).reshape(n_experts, G * c, D))
        out = comm.constrain(out.reshape(n_experts, G, c, D).transpose(1, 0, 2, 3),
                             *at_experts, first=(1,))
        if a2a:
            out = comm.constrain(out, "batch", None, None, None)  # back where the tokens are
        outs.append(out)
    out = jnp.concatenate(outs, axis=2) if chunks > 1 else outs[0]
    y = jax.vmap(lambda o, tk, fl, wt: combine(o, Slots(tk, fl), wt))(out, token, flat, w)
    return comm.reduce_out(y.reshape(B, S, D)), dropped


def apply_experts(h: Array, expert_idx: Array, weights: Array, experts: ExpertFn, comm: Comm, *,
                  n_experts: int, capacity_factor: float) -> tuple[Array, Array]:
    """Send the tokens of h [B, S, D] to their experts and back: (y, dropped).

    expert_idx, weights: [T, k] routing of the T = B·S tokens. `experts` runs this device's
    experts (its parameter shards) on [E_loc, N, D] buffers. y is [B, S, D] (the local sequence
    slice under sequence parallelism), in h's dtype. dropped: [T] float32, how many of each
    token's k assignments were over capacity.
    """
    if comm.global_view:
        return apply_experts_global(h, expert_idx, weights, experts, comm, n_experts=n_experts,
                                    capacity_factor=capacity_factor)
    B, S, D = h.shape
    T, k = expert_idx.shape
    t = h.reshape(T, D)
    cap = capacity(T, k, n_experts, capacity_factor)
    pos = buffer_positions(expert_idx, n_experts)
    dropped = jnp.sum(pos >= cap, axis=1).astype(jnp.float32)
    mode = dispatch_mode(comm.axes("expert"), comm.axes("batch", "cp_seq"))

    if mode == "all_to_all":
        chunks = comm.option("chunks", 1)
        buffer = -(-cap // chunks) * chunks  # pad C up to a multiple of K: extra slots stay empty
        slots = slot_table(expert_idx, pos, cap, buffer, 0, n_experts)
        out = exchange(gather_tokens(t, slots.token), experts, comm, chunks)
        reduce_over = ("expert_mlp",)
    else:  # local / replicated: this device's experts, picked from the tokens it holds
        count = n_experts // comm.size("expert")
        slots = slot_table(expert_idx, pos, cap, cap, comm.index("expert") * count, count)
        out = experts(gather_tokens(t, slots.token))
        reduce_over = ("expert", "expert_mlp")
    y = combine(out, slots, weights).reshape(B, S, D)
    return comm.reduce_out(y, *reduce_over), dropped
