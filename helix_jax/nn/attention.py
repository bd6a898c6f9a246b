"""Multi-head attention with two-level (heads x head_dim) partitioning and three attention cores.

The weights are sharded (head group, head-dim slice): W_q/W_k/W_v [D, H, d] over ("heads",
"head_dim"), W_o [H, d, D]. Projections need no communication; what differs between the cores is how
the head-dim split is undone around the softmax (docs/layouts.md):
  score_psum  partial scores q_ij·k_ijᵀ summed over the head-dim shards (the paper's method)
  seq_a2a     all-to-all q to a query-sequence split, all-gather k and v to full d, local attention,
              all-to-all the output back
  qk_gather   all-gather q and k to full d; every head-dim shard recomputes the same scores
When head_dim is not sharded (single, tp-pp, ep, dp) all three are plain attention.

Grouped-query attention: W_k/W_v are [D, G, d] over ("kv_heads", "head_dim"), query head h using
K/V head h // (H/G). Where the layout splits heads into more shards than there are K/V heads,
`kv_heads` is not split (`Layout.for_model`) and each shard projects only the one K/V head its
query heads use: the K/V weights are replicated, as Megatron replicates them past tp = G.

Rotary positions rotate pairs of head dimensions. The q/k head dimensions are stored with each
pair side by side (dims 2i, 2i+1 are the pair (i, i + d/2) of the Hugging Face `rotate_half`
layout), so any even split of the head dimension keeps every pair on one device; permuting q's
and k's dimensions alike leaves q·kᵀ unchanged (docs/layouts.md).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

import helix_jax.nn.float8 as float8
from helix_jax.comm import Comm, vary_like
from helix_jax.config import ModelConfig
from helix_jax.nn.fused_attention import fused_attend, use_fused
from helix_jax.nn.mlp import normal, operand
from helix_jax.nn.norm import RMSNorm
from helix_jax.parallel import context

Array = jax.Array


def rotary(x: Array, positions: Array, theta: float, head_dim: int,
           first_pair: Array | int = 0) -> Array:
    """Rotate x [B, S, h, w] (w even, pairs side by side) by the angles of `positions` [S]: pair
    j of x is rotary pair first_pair + j of a head of `head_dim` dims, frequency
    theta^(-2(first_pair + j)/head_dim). Computed in float32, returned in x's dtype."""
    B, S, h, w = x.shape
    pair = first_pair + jnp.arange(w // 2)
    inv_freq = 1.0 / (theta ** (2.0 * pair.astype(jnp.float32) / head_dim))
    angle = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [S, w/2]
    cos, sin = (f(angle)[None, :, None, :] for f in (jnp.cos, jnp.sin))
    pairs = x.astype(jnp.float32).reshape(B, S, h, w // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def _scores(q: Array, k: Array) -> Array:
    """q [B, Sq, h, d], k [B, Sk, g, d] -> scores [B, h, Sq, Sk]; query head i uses key head
    i // (h/g) (grouped-query attention; h == g is multi-head)."""
    B, Sq, h, d = q.shape
    g = k.shape[2]
    if g == h:
        return jnp.einsum("bqhd,bkhd->bhqk", q, k)
    s = jnp.einsum("bqgrd,bkgd->bgrqk", q.reshape(B, Sq, g, h // g, d), k)
    return s.reshape(B, h, Sq, k.shape[1])


def _mix(p: Array, v: Array) -> Array:
    """Weights p [B, h, Sq, Sk] over values v [B, Sk, g, dv] -> [B, Sq, h, dv] float32."""
    B, h, Sq, Sk = p.shape
    g = v.shape[2]
    if g == h:
        return jnp.einsum("bhqk,bkhd->bqhd", p, v, preferred_element_type=jnp.float32)
    o = jnp.einsum("bgrqk,bkgd->bqgrd", p.reshape(B, g, h // g, Sq, Sk), v,
                   preferred_element_type=jnp.float32)
    return o.reshape(B, Sq, h, v.shape[-1])


def block_size(n: int, cap: int) -> int:
    """The largest divisor of n that is <= cap (cap 0: n itself)."""
    if cap <= 0 or cap >= n:
        return n
    return max(b for b in range(1, cap + 1) if n % b == 0)


def _block_positions(positions: Array | None, offset: int | Array, start, n: int) -> Array:
    """Sequence positions [n] of the n queries (or keys) from index `start`: offset + index, or
    read from `positions`."""
    if positions is None:
        return offset + start + jnp.arange(n)
    return jax.lax.dynamic_slice_in_dim(positions, start, n)


def attend(q: Array, k: Array, v: Array, *, causal: bool, q_offset: int | Array = 0,
           reduce_scores: Callable[[Array], Array] = lambda s: s, q_block: int = 0,
           kv_block: int = 0, key_positions: Array | None = None,
           q_positions: Array | None = None, return_lse: bool = False,
           kv_layer: Array | None = None):
    """Blockwise softmax attention with an online softmax (flash-style).

    q [B, Sq, h, dq] (already scaled), k [B, Sk, g, dq], v [B, Sk, g, dv] -> [B, Sq, h, dv],
    g dividing h (grouped-query attention: query head i uses key head i // (h/g)).
    `reduce_scores` is applied to each block of raw scores (score_psum sums them over the head-dim
    shards there). Query i sits at position q_offset + i, key j at position j, or at
    `key_positions[j]` when given (a cache slice holding every K-th position); query i at
    `q_positions[i]` when given (context parallelism's two chunks). With a static q_offset and no
    positions, fully masked causal blocks are left out of the loop, so neither their FLOPs nor
    their score reductions run; with a traced offset or query positions they are skipped at run
    time by a cond. `return_lse` also returns the log-sum-exp of each query's scores [B, h, Sq] (-inf
    where no key is visible, the output there 0), so partial results over disjoint key sets
    combine exactly (`combine_partials`). With `kv_layer`, k and v are a stacked cache
    [L, B, Sk, h, d] and each block is read straight from layer `kv_layer` (no copy of the layer).
    """
    B, Sq, h, _ = q.shape
    Sk, dv = k.shape[1 if kv_layer is None else 2], v.shape[-1]

    def kv_at(t: Array, j) -> Array:  # key/value block j: [B, kb, g, d]
        if kv_layer is None:
            return jax.lax.dynamic_slice_in_dim(t, j * kb, kb, axis=1)
        return jax.lax.dynamic_slice(t, (kv_layer, 0, j * kb, 0, 0),
                                     (1, t.shape[1], kb, *t.shape[3:]))[0]
    qb, kb = block_size(Sq, q_block), block_size(Sk, kv_block)
    static = isinstance(q_offset, int) and key_positions is None and q_positions is None
    skip = causal and not static and (key_positions is None or q_positions is not None)
    q_at = lambda i: _block_positions(q_positions, q_offset, i * qb, qb)  # noqa: E731
    k_at = lambda j: _block_positions(key_positions, 0, j * kb, kb)  # noqa: E731

    def visible(i: int, j: int) -> bool:  # does q block i see any key of block j?
        return not (causal and static and j * kb > q_offset + (i + 1) * qb - 1)

    pairs = jnp.array([(i, j) for i in range(Sq // qb) for j in range(Sk // kb) if visible(i, j)],
                      dtype=jnp.int32)

    def update(carry, i, j):
        m, denom, acc = carry  # m, denom: [B, h, Sq] float32; acc: [B, Sq, h, dv] float32
        qi = jax.lax.dynamic_slice_in_dim(q, i * qb, qb, axis=1)
        kj, vj = kv_at(k, j), kv_at(v, j)
        s = reduce_scores(_scores(qi, kj)).astype(jnp.float32)
        if causal:
            s = jnp.where(q_at(i)[:, None] >= k_at(j)[None, :], s, -jnp.inf)
        m_old = jax.lax.dynamic_slice_in_dim(m, i * qb, qb, axis=2)
        d_old = jax.lax.dynamic_slice_in_dim(denom, i * qb, qb, axis=2)
        a_old = jax.lax.dynamic_slice_in_dim(acc, i * qb, qb, axis=1)
        m_new = jax.lax.stop_gradient(jnp.maximum(m_old, s.max(-1)))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        corr = jnp.exp(m_old - m_safe)
        pv = _mix(p.astype(v.dtype), vj)
        a_new = a_old * jnp.moveaxis(corr, 1, 2)[..., None] + pv
        return (jax.lax.dynamic_update_slice_in_dim(m, m_new, i * qb, axis=2),
                jax.lax.dynamic_update_slice_in_dim(denom, d_old * corr + p.sum(-1), i * qb, axis=2),
                jax.lax.dynamic_update_slice_in_dim(acc, a_new, i * qb, axis=1))

    def step(carry, ij):
        i, j = ij[0], ij[1]
        if skip:  # blocks wholly in the future
            future = k_at(j).min() > q_at(i).max()
            return jax.lax.cond(future, lambda c: c, lambda c: update(c, i, j), carry), None
        return update(carry, i, j), None

    init = (jnp.full((B, h, Sq), -jnp.inf, jnp.float32), jnp.zeros((B, h, Sq), jnp.float32),
            jnp.zeros((B, Sq, h, dv), jnp.float32))
    init = vary_like(init, q, k, v)
    m, denom, acc = jax.lax.scan(step, init, pairs)[0]
    if not return_lse:
        return (acc / jnp.moveaxis(denom, 1, 2)[..., None]).astype(v.dtype)
    seen = denom > 0
    o = acc / jnp.moveaxis(jnp.where(seen, denom, 1.0), 1, 2)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), -jnp.inf)
    return o, lse


def combine_partials(o: Array, lse: Array, comm: Comm, *logical: str) -> Array:
    """Exact softmax attention from partial results over disjoint key sets on the shards of
    `logical`: o [B, Sq, h, d] float32 and lse [B, h, Sq] per shard -> the full output. One max
    and two sums; their size does not depend on how many keys each shard holds."""
    top = comm.pmax(jax.lax.stop_gradient(lse), *logical)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w = jnp.exp(lse - top)  # [B, h, Sq]; 0 where a shard saw no key
    num = comm.psum(o * jnp.moveaxis(w, 1, 2)[..., None], *logical)
    den = comm.psum(w, *logical)
    return num / jnp.moveaxis(den, 1, 2)[..., None]


def merge_partials(parts: list[tuple[Array, Array]]) -> Array:
    """Exact softmax attention from partial results (o [B, Sq, h, d] float32, lse [B, h, Sq])
    over disjoint key sets held on this device: the local counterpart of `combine_partials`."""
    lse = jnp.stack([lse for _, lse in parts])
    top = jax.lax.stop_gradient(lse.max(0))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w = jnp.exp(lse - top)  # [n, B, h, Sq]; 0 where a part saw no key
    num = sum(o * jnp.moveaxis(wi, 1, 2)[..., None] for (o, _), wi in zip(parts, w))
    return num / jnp.moveaxis(w.sum(0), 1, 2)[..., None]


def context_attention(q: Array, k: Array, v: Array, comm: Comm, *, attention: str, causal: bool,
                      q_block: int = 0, kv_block: int = 0) -> Array:
    """Context parallelism: this shard's queries q [B, 2c, h, d] (its chunks i and 2K − 1 − i,
    `parallel.context`) over the keys and values of the whole sequence, whose chunks k, v
    [B, 2c, g, d] are spread over the `cp_seq` shards the same way. K/V travel as one array:
      ring       passed around the ring, K − 1 collective-permutes; step t attends to the chunks
                 of shard i − t (Megatron-Core's and torchtitan's ring attention)
      allgather  one all-gather over the shards, then one attention over all of them (Llama 3's)
    Each attention places queries and keys at their sequence positions, in blocks no longer than
    a chunk, so key blocks wholly in a query block's future are skipped at run time; the ring's
    partial results merge exactly by their log-sum-exps."""
    K, me = comm.size(context.AXIS), comm.index(context.AXIS)
    c = q.shape[1] // 2
    blocks = {"q_block": block_size(c, q_block), "kv_block": block_size(c, kv_block)}

    def attend_to(kv: Array, shards) -> tuple[Array, Array]:  # kv [2, B, n, g, d] of `shards`
        keys = jnp.concatenate([context.shard_positions(s, c, K) for s in shards])
        return attend(q, kv[0], kv[1], causal=causal, return_lse=True, **blocks,
                      q_positions=context.shard_positions(me, c, K), key_positions=keys)

    kv = jnp.stack([k, v])
    if attention == "allgather":  # shard after shard
        o, _ = attend_to(comm.all_gather(kv, context.AXIS, axis=2), range(K))
        return o.astype(v.dtype)
    parts = []
    for t in range(K):
        parts.append(attend_to(kv, [(me - t) % K]))
        if t < K - 1:
            kv = comm.ppermute(kv, context.AXIS, shift=1)
    return merge_partials(parts).astype(v.dtype)


def visible_share(seq: int, shards: int, q_block: int, kv_block: int) -> float:
    """The share of (query block, key block) pairs of causal context-parallel attention that run:
    each shard's queries against every shard's keys (all ring steps, or the gathered keys), in
    blocks no longer than a chunk (`context_attention`); a key block wholly in a
    query block's future is skipped at run time. Counted from the chunk positions."""
    c = seq // (2 * shards)
    qb, kb = block_size(c, q_block), block_size(c, kv_block)

    def blocks(shard: int, size: int) -> list[tuple[int, int]]:  # (first, last) position
        return [(s + o, s + o + size - 1) for s in context.chunk_starts(shard, c, shards)
                for o in range(0, c, size)]

    keys = [first for shard in range(shards) for first, _ in blocks(shard, kb)]
    runs = sum(first <= last for shard in range(shards) for _, last in blocks(shard, qb)
               for first in keys)
    return runs / (shards * len(blocks(0, qb)) * len(keys))



QKV_AXES = ("batch", None, "heads", "head_dim")  # q and the attention output [B, S, H, d]
KV_AXES = ("batch", None, "kv_heads", "head_dim")  # k and v [B, S, G, d]


def global_core(q: Array, k: Array, v: Array, comm: Comm, *, core: str, **blocks) -> Array:
    """The attention core under gspmd: whole q, k, v [B, S, H, d]; the layout's rules say only
    where the arrays live and XLA chooses the collectives. seq_a2a asks for the query-sequence
    split (queries split along S over the head-dim axes, k and v with the whole head dim);
    score_psum and qk_gather leave the scores unconstrained (the same program: what XLA picks for
    QKᵀ is the finding); kvp splits keys and values along the sequence."""
    if core == "seq_a2a" and comm.groups("head_dim") > 1:
        q = comm.constrain(q, "batch", "head_dim", "heads", None)
        k, v = (comm.constrain(t, "batch", None, "kv_heads", None) for t in (k, v))
        o = attend(q, k, v, **blocks)
        return comm.constrain(o, "batch", "head_dim", "heads", None)
    if comm.groups("kv_seq") > 1:
        k, v = (comm.constrain(t, "batch", "kv_seq", "kv_heads", "head_dim") for t in (k, v))
    return attend(q, k, v, **blocks)


def attention_core(q: Array, k: Array, v: Array, comm: Comm, *, core: str, causal: bool,
                   q_block: int = 0, kv_block: int = 0) -> Array:
    """Attention on head-dim-sharded q [B, S, h, d/m], k, v [B, S, g, d/m] -> o [B, S, h, d/m].
    Ordinary attention on the device (no head-dim split, or seq_a2a's) is one library call
    where `comm.attention_kernel` says so (nn/fused_attention.py)."""
    blocks = dict(causal=causal, q_block=q_block, kv_block=kv_block)
    if comm.global_view:
        return global_core(q, k, v, comm, core=core, **blocks)
    if not comm.axes("head_dim"):
        if use_fused(comm.attention_kernel, q, k.shape[1], v.shape[-1]):
            return fused_attend(q, k, v, causal=causal)
        return attend(q, k, v, **blocks)
    if core == "score_psum":
        return attend(q, k, v, reduce_scores=lambda s: comm.psum(s, "head_dim"), **blocks)
    if core == "qk_gather":
        q, k = (comm.all_gather(t, "head_dim", axis=3) for t in (q, k))
        return attend(q, k, v, **blocks)
    if core == "seq_a2a":
        q = comm.all_to_all(q, "head_dim", split_axis=1, concat_axis=3)  # [B, S/m, h, d]
        k, v = (comm.all_gather(t, "head_dim", axis=3) for t in (k, v))  # [B, S, h, d]
        offset = comm.index("head_dim") * q.shape[1]
        if use_fused(comm.attention_kernel, q, k.shape[1], v.shape[-1]):
            o = fused_attend(q, k, v, causal=causal, q_offset=offset)
        else:
            o = attend(q, k, v, q_offset=offset, **blocks)
        return comm.all_to_all(o, "head_dim", split_axis=3, concat_axis=1)  # [B, S, h, d/m]
    raise ValueError(f"unknown attention core {core!r}")


def write_cache(cache: Array, new: Array, layer: Array, pos: Array, active: Array | bool,
                kv_shards: int = 1, me: Array | int = 0) -> Array:
    """Write T new keys or values [B, T, g, d] at positions pos.. of layer `layer` of the stacked
    cache [L, B, C, g, d], in place: only the T positions are written. With `kv_shards` K > 1
    the cache holds position p on shard p mod K at slot p // K and each shard writes its own.
    Nothing is written where `active` is false (a pipeline stage off its turn)."""
    positions = pos + jnp.arange(new.shape[1])
    if kv_shards == 1:
        old = jax.lax.dynamic_slice(cache, (layer, 0, pos, 0, 0), (1, *new.shape))[0]
        return jax.lax.dynamic_update_slice(
            cache, jnp.where(active, new.astype(cache.dtype), old)[None], (layer, 0, pos, 0, 0))
    keep = (positions % kv_shards == me) & active
    if new.shape[1] == 1:  # a decode step: one slot, updated in place
        slot = pos // kv_shards
        old = jax.lax.dynamic_slice(cache, (layer, 0, slot, 0, 0), (1, *new.shape))[0]
        return jax.lax.dynamic_update_slice(
            cache, jnp.where(keep[0], new.astype(cache.dtype), old)[None], (layer, 0, slot, 0, 0))
    slots = jnp.where(keep, positions // kv_shards, cache.shape[2])  # out of range: dropped
    return cache.at[layer, :, slots].set(jnp.moveaxis(new.astype(cache.dtype), 1, 0),
                                         mode="drop")


def decode_core(q: Array, cache_k: Array, cache_v: Array, layer: Array, pos: Array, comm: Comm,
                *, core: str, kv_block: int = 0) -> Array:
    """New queries [B, T, h, d/m] against layer `layer` of the stacked cache [L, B, C, g, d/m]
    (head-dim split m ways): score_psum sums the partial scores of the new queries only
    ([B, h, T, C] per step); qk_gather gathers q and the layer's whole key cache; seq_a2a cannot
    split T = 1 query m ways, so it gathers q, keys and values and keeps its own output slice.
    A prefill (T > 1) of ordinary attention is one library call over the layer's cache
    (nn/fused_attention.py); a decode step stays blockwise, reading the stacked cache in place."""
    blocks = dict(causal=True, q_offset=pos, kv_block=kv_block)
    if q.shape[1] == 1:  # one query sees every written key: a mask, no per-block branch
        blocks["key_positions"] = jnp.arange(cache_k.shape[2])
    fused = q.shape[1] > 1 and use_fused(comm.attention_kernel, q, cache_k.shape[2],
                                         cache_v.shape[-1])
    if fused and not comm.axes("head_dim"):
        k, v = (jax.lax.dynamic_index_in_dim(c, layer, keepdims=False) for c in (cache_k, cache_v))
        return fused_attend(q, k, v, causal=True, q_offset=pos)
    if not comm.axes("head_dim") or core == "score_psum":
        reduce = (lambda s: comm.psum(s, "head_dim")) if comm.axes("head_dim") else (lambda s: s)
        return attend(q, cache_k, cache_v, reduce_scores=reduce, kv_layer=layer, **blocks)
    k, v = (jax.lax.dynamic_index_in_dim(c, layer, keepdims=False) for c in (cache_k, cache_v))
    if core == "qk_gather":
        q, k = (comm.all_gather(t, "head_dim", axis=3) for t in (q, k))
        return attend(q, k, v, **blocks)
    if core == "seq_a2a":
        q, k, v = (comm.all_gather(t, "head_dim", axis=3) for t in (q, k, v))
        o = fused_attend(q, k, v, causal=True, q_offset=pos) if fused else attend(q, k, v, **blocks)
        width = o.shape[-1] // comm.size("head_dim")
        return jax.lax.dynamic_slice_in_dim(o, comm.index("head_dim") * width, width, axis=3)
    raise ValueError(f"unknown attention core {core!r}")


class Attention(nnx.Module):
    """q = h·W_q (+ b_q), k = h·W_k, v = h·W_v; optional q/k RMSNorm over the head dim and rotary
    positions; softmax(q·kᵀ/√d)·v; output o·W_o (+ b_o). W_q [D, H, d], W_k/W_v [D, G, d]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, H, G, d = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        q_axes, kv_axes = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
        self.wq = nnx.Param(normal(rngs, (D, H, d), D), out_sharding=q_axes)
        self.wk = nnx.Param(normal(rngs, (D, G, d), D), out_sharding=kv_axes)
        self.wv = nnx.Param(normal(rngs, (D, G, d), D), out_sharding=kv_axes)
        self.wo = nnx.Param(normal(rngs, (H, d, D), H * d), out_sharding=("heads", "head_dim", "embed"))
        if cfg.attn_bias:
            self.bq = nnx.Param(jnp.zeros((H, d), jnp.float32), out_sharding=q_axes[1:])
            self.bk = nnx.Param(jnp.zeros((G, d), jnp.float32), out_sharding=kv_axes[1:])
            self.bv = nnx.Param(jnp.zeros((G, d), jnp.float32), out_sharding=kv_axes[1:])
        if cfg.attn_out_bias:
            self.bo = nnx.Param(jnp.zeros((D,), jnp.float32), out_sharding=("embed",))
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.ln_eps, axis="head_dim")
            self.k_norm = RMSNorm(d, cfg.ln_eps, axis="head_dim")
        self.causal = cfg.causal
        self.scale = cfg.head_dim**-0.5
        self.blocks = (cfg.q_block, cfg.kv_block)
        self.rope = (cfg.rope_theta, d) if cfg.position == "rope" else None
        self.group = H // G  # query heads per K/V head

    def _own_kv_heads(self, t: Array, comm: Comm, axis: int) -> Array:
        """A K/V weight or bias whose kv-head axis (at `axis`) is replicated while query heads are
        split (more head shards than K/V heads): this shard's one K/V head, sliced before the
        matmul so that it projects nothing it does not use."""
        if comm.global_view or comm.axes("kv_heads") or not comm.axes("heads"):
            return t
        local_q = t.shape[axis] * self.group // comm.size("heads")  # query heads on this shard
        first = comm.index("heads") * local_q // self.group
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, first, 1, axis=axis), t)

    def _in(self, h: Array, w: str, b: str, comm: Comm, kv: bool) -> Array:
        weight, bias = getattr(self, w)[...], getattr(self, b)[...] if hasattr(self, b) else None
        if kv:
            weight = self._own_kv_heads(weight, comm, 1)
            bias = None if bias is None else self._own_kv_heads(bias, comm, 0)
        out = float8.matmul("bsD,Dhk->bshk", h, weight, h.dtype)
        out = out if bias is None else out + bias.astype(h.dtype)
        return comm.constrain(out, *(KV_AXES if kv else QKV_AXES))

    def _project(self, h: Array, comm: Comm, positions: Array) -> tuple[Array, Array, Array]:
        """q [B, S, h, d/m], k, v [B, S, g, d/m] of the tokens h [B, S, D] at `positions` [S]
        (h a `comm.layer_input`: under tp_overlap a sequence shard, gathered by the matmuls)."""
        q, k, v = comm.gather_apply(h, lambda c: tuple(
            self._in(c, w, b, comm, kv=w != "wq")
            for w, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv"))), "heads", "head_dim")
        if hasattr(self, "q_norm"):  # RMS over the whole head dim: summed over its shards
            reduce = lambda t: comm.psum(t, "head_dim")  # noqa: E731
            q, k = self.q_norm(q, reduce), self.k_norm(k, reduce)
        if self.rope is not None:
            theta, d = self.rope
            first = comm.index("head_dim") * (q.shape[-1] // 2)
            q, k = (rotary(t, positions, theta, d, first) for t in (q, k))
        return q * jnp.asarray(self.scale, q.dtype), k, v

    def _out(self, o: Array, comm: Comm) -> Array:
        o = comm.constrain(o, *QKV_AXES)
        wo = self.wo[...]
        wo = wo if float8.is_float8(wo) else operand(wo, o.dtype)
        out = comm.reduce_apply(o, lambda c: float8.matmul("bshk,hkD->bsD", c, wo, o.dtype),
                                "heads", "head_dim")
        return out + self.bo[...].astype(o.dtype) if hasattr(self, "bo") else out

    def _kv_parallel(self, h: Array, comm: Comm) -> Array:
        """Keys and values split along the sequence (layout kvp): this shard keeps positions
        p = me (mod K); every query attends over them, and the partial outputs combine exactly."""
        K, me = comm.size("kv_seq"), comm.index("kv_seq")
        B, S, D = h.shape
        q, _, _ = self._project(h, comm, jnp.arange(S))
        mine = jax.lax.dynamic_index_in_dim(h.reshape(B, S // K, K, D), me, axis=2,
                                            keepdims=False)  # [B, S/K, D]
        key_positions = jnp.arange(S // K) * K + me
        _, k, v = self._project(mine, comm, key_positions)
        with jax.named_scope(ATTENTION_SCOPE):  # one fused kernel on a GPU: see roofline
            o, lse = attend(q, k, v, causal=self.causal, key_positions=key_positions,
                            return_lse=True, q_block=self.blocks[0], kv_block=self.blocks[1])
            o = combine_partials(o, lse, comm, "kv_seq").astype(h.dtype)
        return self._out(o, comm)

    def step(self, h: Array, cache: dict, layer: Array, pos: Array, active, comm: Comm):
        """T new tokens h [B, T, D] at positions pos .. pos + T - 1 of layer `layer`: their keys
        and values are written into the stacked cache {"k", "v"} [L, B, C, g, d] (this device's
        part) in place, and the queries attend over the layer's cache up to them. Returns
        ([B, T, D], cache). Prefill is T = P tokens at 0, a decode step one token."""
        q, k, v = self._project(h, comm, pos + jnp.arange(h.shape[1]))
        K = comm.size("kv_seq")
        me = comm.index("kv_seq") if K > 1 else 0
        cache = {n: write_cache(cache[n], new, layer, pos, active, K, me)
                 for n, new in (("k", k), ("v", v))}
        with jax.named_scope(ATTENTION_SCOPE):  # one fused kernel on a GPU: see roofline
            if K > 1:
                positions = jnp.arange(cache["k"].shape[2]) * K + me
                o, lse = attend(q, cache["k"], cache["v"], causal=True, q_offset=pos,
                                key_positions=positions, return_lse=True,
                                kv_block=self.blocks[1], kv_layer=layer)
                o = combine_partials(o, lse, comm, "kv_seq").astype(h.dtype)
            else:
                o = decode_core(q, cache["k"], cache["v"], layer, pos, comm,
                                core=comm.option("core", "score_psum"), kv_block=self.blocks[1])
        return self._out(o, comm), cache

    def __call__(self, h: Array, comm: Comm) -> Array:  # h: [B, S, D] -> [B, S, D]
        if comm.axes("kv_seq"):
            return self._kv_parallel(h, comm)
        n = h.shape[1] * (comm.size("act_seq") if comm.tp_overlap else 1)  # whole sequences
        q, k, v = self._project(h, comm, context.positions(n, comm))
        blocks = dict(causal=self.causal, q_block=self.blocks[0], kv_block=self.blocks[1])

        def core(q, k, v):
            with jax.named_scope(ATTENTION_SCOPE):  # one fused kernel on a GPU: see roofline
                if comm.axes(context.AXIS):
                    return context_attention(q, k, v, comm, **blocks,
                                             attention=comm.option("attention", "ring"))
                return attention_core(q, k, v, comm, core=comm.option("core", "score_psum"),
                                      **blocks)

        if comm.remat == "selective":  # keep q, k, v and o; recompute scores and softmax
            core = jax.checkpoint(core)
        o = core(q, k, v)
        return self._out(o, comm)


# The scope every attention core runs under (defined last, so the source lines that compiled
# programs cite above stay put): on a GPU the core is one fused (flash) kernel, and the roofline
# (analysis/costmodel/roofline.py) prices whatever the compiled program keeps under this name as that
# kernel. One constant for both, so a rename cannot silently un-fuse attention.
ATTENTION_SCOPE = "attention_core"
