"""Multi-head attention with two-level (heads x head_dim) partitioning and three attention cores.

The weights are sharded (head group, head-dim slice): W_q/W_k/W_v [D, H, d] over ("heads",
"head_dim"), W_o [H, d, D]. Projections need no communication; what differs between the cores is how
the head-dim split is undone around the softmax (docs/layouts.md):
  score_psum  partial scores q_ij·k_ijᵀ summed over the head-dim shards (the paper's method)
  seq_a2a     all-to-all q to a query-sequence split, all-gather k and v to full d, local attention,
              all-to-all the output back
  qk_gather   all-gather q and k to full d; every head-dim shard recomputes the same scores
When head_dim is not sharded (single, tp-pp, ep, dp) all three are plain attention.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from helix_jax.comm import Comm, vary_like
from helix_jax.config import ModelConfig
from helix_jax.nn.mlp import normal

Array = jax.Array


def block_size(n: int, cap: int) -> int:
    """The largest divisor of n that is <= cap (cap 0: n itself)."""
    if cap <= 0 or cap >= n:
        return n
    return max(b for b in range(1, cap + 1) if n % b == 0)


def attend(q: Array, k: Array, v: Array, *, causal: bool, q_offset: int | Array = 0,
           reduce_scores: Callable[[Array], Array] = lambda s: s, q_block: int = 0,
           kv_block: int = 0) -> Array:
    """Blockwise softmax attention with an online softmax (flash-style).

    q [B, Sq, h, dq] (already scaled), k [B, Sk, h, dq], v [B, Sk, h, dv] -> [B, Sq, h, dv].
    `reduce_scores` is applied to each block of raw scores (score_psum sums them over the head-dim
    shards there). Query i sits at position q_offset + i. With a static q_offset, fully masked
    causal blocks are left out of the loop, so neither their FLOPs nor their score reductions run;
    with a traced offset they are skipped at run time by a cond.
    """
    B, Sq, h, _ = q.shape
    Sk, dv = k.shape[1], v.shape[-1]
    qb, kb = block_size(Sq, q_block), block_size(Sk, kv_block)
    static = isinstance(q_offset, int)

    def visible(i: int, j: int) -> bool:  # does q block i see any key of block j?
        return not (causal and static and j * kb > q_offset + (i + 1) * qb - 1)

    pairs = jnp.array([(i, j) for i in range(Sq // qb) for j in range(Sk // kb) if visible(i, j)],
                      dtype=jnp.int32)

    def update(carry, i, j):
        m, denom, acc = carry  # m, denom: [B, h, Sq] float32; acc: [B, Sq, h, dv] float32
        qi = jax.lax.dynamic_slice_in_dim(q, i * qb, qb, axis=1)
        kj = jax.lax.dynamic_slice_in_dim(k, j * kb, kb, axis=1)
        vj = jax.lax.dynamic_slice_in_dim(v, j * kb, kb, axis=1)
        s = reduce_scores(jnp.einsum("bqhd,bkhd->bhqk", qi, kj)).astype(jnp.float32)
        if causal:
            q_pos = q_offset + i * qb + jnp.arange(qb)
            s = jnp.where(q_pos[:, None] >= (j * kb + jnp.arange(kb))[None, :], s, -jnp.inf)
        m_old = jax.lax.dynamic_slice_in_dim(m, i * qb, qb, axis=2)
        d_old = jax.lax.dynamic_slice_in_dim(denom, i * qb, qb, axis=2)
        a_old = jax.lax.dynamic_slice_in_dim(acc, i * qb, qb, axis=1)
        m_new = jax.lax.stop_gradient(jnp.maximum(m_old, s.max(-1)))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        corr = jnp.exp(m_old - m_safe)
        pv = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), vj,
                        preferred_element_type=jnp.float32)
        a_new = a_old * jnp.moveaxis(corr, 1, 2)[..., None] + pv
        return (jax.lax.dynamic_update_slice_in_dim(m, m_new, i * qb, axis=2),
                jax.lax.dynamic_update_slice_in_dim(denom, d_old * corr + p.sum(-1), i * qb, axis=2),
                jax.lax.dynamic_update_slice_in_dim(acc, a_new, i * qb, axis=1))

    def step(carry, ij):
        i, j = ij[0], ij[1]
        if causal and not static:  # skip blocks that are wholly in the future of every query
            future = j * kb > q_offset + (i + 1) * qb - 1
            return jax.lax.cond(future, lambda c: c, lambda c: update(c, i, j), carry), None
        return update(carry, i, j), None

    init = (jnp.full((B, h, Sq), -jnp.inf, jnp.float32), jnp.zeros((B, h, Sq), jnp.float32),
            jnp.zeros((B, Sq, h, dv), jnp.float32))
    init = vary_like(init, q, k, v)
    _, denom, acc = jax.lax.scan(step, init, pairs)[0]
    return (acc / jnp.moveaxis(denom, 1, 2)[..., None]).astype(v.dtype)


def attention_core(q: Array, k: Array, v: Array, comm: Comm, *, core: str, causal: bool,
                   q_block: int = 0, kv_block: int = 0) -> Array:
    """Attention on head-dim-sharded q, k, v [B, S, h, d/m] -> o [B, S, h, d/m]."""
    blocks = dict(causal=causal, q_block=q_block, kv_block=kv_block)
    if not comm.axes("head_dim"):
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
        o = attend(q, k, v, q_offset=offset, **blocks)
        return comm.all_to_all(o, "head_dim", split_axis=3, concat_axis=1)  # [B, S, h, d/m]
    raise ValueError(f"unknown attention core {core!r}")


class Attention(nnx.Module):
    """q = h·W_q, k = h·W_k, v = h·W_v (no biases), softmax(q·kᵀ/√d)·v, output o·W_o."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, H, d = cfg.d_model, cfg.n_heads, cfg.head_dim
        qkv_axes = ("embed", "heads", "head_dim")
        self.wq = nnx.Param(normal(rngs, (D, H, d), D), out_sharding=qkv_axes)
        self.wk = nnx.Param(normal(rngs, (D, H, d), D), out_sharding=qkv_axes)
        self.wv = nnx.Param(normal(rngs, (D, H, d), D), out_sharding=qkv_axes)
        self.wo = nnx.Param(normal(rngs, (H, d, D), H * d), out_sharding=("heads", "head_dim", "embed"))
        self.causal = cfg.causal
        self.scale = cfg.head_dim**-0.5
        self.blocks = (cfg.q_block, cfg.kv_block)

    def __call__(self, h: Array, comm: Comm) -> Array:  # h: [B, S, D] -> [B, S, D]
        dt = h.dtype
        q, k, v = (jnp.einsum("bsD,Dhk->bshk", h, w[...].astype(dt))
                   for w in (self.wq, self.wk, self.wv))
        def core(q, k, v):
            with jax.named_scope("attention_core"):  # one fused kernel on a GPU: see roofline
                return attention_core(q, k, v, comm, core=comm.option("core", "score_psum"),
                                      causal=self.causal, q_block=self.blocks[0],
                                      kv_block=self.blocks[1])

        if comm.remat == "selective":  # keep q, k, v and o; recompute scores and softmax
            core = jax.checkpoint(core)
        o = core(q * jnp.asarray(self.scale, dt), k, v)
        partial = jnp.einsum("bshk,hkD->bsD", o, self.wo[...].astype(dt))
        return comm.reduce_out(partial, "heads", "head_dim")
