"""Mixture of experts: a float32 top-k router and E FFN experts, Switch/GShard/Mixtral style.

    probs = softmax(h · W_r)                    float32, per token
    top-k experts per token by probability      ties go to the lower expert index
    y = Σ_chosen w_e · FFN_e(h)  (+ the shared experts' FFN(h), always on)
    FFN_e(h) = W2[e] · act(W1[e] · h + b1[e]) + b2[e], act and biases as the config's FFN
               (SwiGLU: W2[e] · (silu(W1[e] · h) * (W3[e] · h)))
    w_e = p_e, renormalised over the chosen k when the config says so (`renormalize`)

Each expert takes at most C = ceil(capacity_factor · tokens · k / E) tokens per source shard, the
rest are dropped (see helix_jax/parallel/experts.py, which moves the tokens on each layout). Per
layer the module returns stats, each a float32 scalar that is the same on every device: `dropped`
(over-capacity assignments, global count), `routed` (T·k, global), `aux_loss` (Switch load balance
E · Σ_e f_e · P_e over the global batch) and `z_loss` (mean over tokens of logsumexp(logits)²).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

import helix_jax.nn.float8 as float8
from helix_jax.comm import Comm
from helix_jax.config import ModelConfig
from helix_jax.nn.mlp import MLP, hidden, normal
from helix_jax.parallel.experts import apply_experts

Array = jax.Array


def route(logits: Array, top_k: int, normalize: bool | None = None) -> tuple[Array, Array]:
    """Float32 router logits [T, E] -> (expert_idx [T, k] int32, weights [T, k] float32): the
    softmax over all experts, the top k, renormalised to sum to 1 when `normalize` (None: when
    top_k > 1, as `ModelConfig.renormalize`).

    Experts in order of decreasing probability, ties to the lower index (lax.top_k's order).
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, expert_idx = jax.lax.top_k(probs, top_k)
    if top_k > 1 if normalize is None else normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return expert_idx, weights


def switch_loss(first_counts: Array, prob_sums: Array, n_tokens: int) -> Array:
    """E · Σ_e f_e · P_e from per-expert sums over n_tokens tokens: f_e = first_counts / n (the
    fraction whose first choice is e), P_e = prob_sums / n (the mean router probability of e)."""
    n_experts = first_counts.shape[-1]
    return n_experts * jnp.sum((first_counts / n_tokens) * (prob_sums / n_tokens))


def aux_loss(probs: Array, expert_idx: Array, n_experts: int) -> Array:
    """Switch load-balancing loss of one batch: probs [T, E], expert_idx [T, k]."""
    first = jax.nn.one_hot(expert_idx[:, 0], n_experts, dtype=jnp.float32)
    return switch_loss(first.sum(0), probs.astype(jnp.float32).sum(0), probs.shape[0])


def token_sums(per_token: dict[str, Array], comm: Comm) -> tuple[dict[str, Array], int]:
    """Sum per-token values [B, S, ...] over the global batch: (sums, number of tokens).

    Each device counts the tokens it owns: its batch shard, and under sequence parallelism (where
    the MoE sees the gathered sequence) only its own sequence slice. Then one psum over the
    token-sharding axes, so the sums are the same on every device.
    """
    B, S = next(iter(per_token.values())).shape[:2]
    parts = comm.size("act_seq")
    if parts > 1:
        own = S // parts
        per_token = {k: jax.lax.dynamic_slice_in_dim(v, comm.index("act_seq") * own, own, axis=1)
                     for k, v in per_token.items()}
        S = own
    axes = ("batch", "cp_seq", "act_seq")  # the context-parallel shards hold their own tokens
    sums = comm.psum({k: v.sum((0, 1)) for k, v in per_token.items()}, *axes)
    return sums, B * S * comm.size(*axes)


class MoE(nnx.Module):
    """Router [D, E] (replicated) and E experts W1 [E, D, F], W2 [E, F, D] (SwiGLU: W3 [E, D, F]),
    biases b1 [E, F], b2 [E, D] with `mlp_bias`; F is `expert_d_ff`. Shared experts: one dense
    FFN of n_shared_experts · F, tensor parallel over `mlp` like the dense FFN."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, F, E = cfg.d_model, cfg.expert_d_ff, cfg.n_experts
        up_axes = ("expert", "embed", "expert_mlp")
        self.router = nnx.Param(normal(rngs, (D, E), D), out_sharding=("embed", None))
        self.w1 = nnx.Param(normal(rngs, (E, D, F), D), out_sharding=up_axes)
        if cfg.mlp_bias:
            self.b1 = nnx.Param(jnp.zeros((E, F), jnp.float32),
                                out_sharding=("expert", "expert_mlp"))
        self.w2 = nnx.Param(normal(rngs, (E, F, D), F),
                            out_sharding=("expert", "expert_mlp", "embed"))
        if cfg.mlp_bias:
            self.b2 = nnx.Param(jnp.zeros((E, D), jnp.float32), out_sharding=("expert", "embed"))
        if cfg.ffn == "swiglu":
            self.w3 = nnx.Param(normal(rngs, (E, D, F), D), out_sharding=up_axes)
            if cfg.mlp_bias:
                self.b3 = nnx.Param(jnp.zeros((E, F), jnp.float32),
                                    out_sharding=("expert", "expert_mlp"))
        if cfg.n_shared_experts:
            self.shared = MLP(cfg, rngs=rngs, width=cfg.shared_d_ff)
        self.ffn = cfg.ffn
        self.n_experts = E
        self.top_k = cfg.top_k
        self.normalize = cfg.renormalize
        self.capacity_factor = cfg.capacity_factor

    def __call__(self, h: Array, comm: Comm) -> tuple[Array, dict[str, Array]]:  # h: [B, S, D]
        B, S, D = h.shape
        logits = h.reshape(B * S, D).astype(jnp.float32) @ self.router[...]  # [T, E]
        expert_idx, weights = route(logits, self.top_k, self.normalize)
        experts = functools.partial(self.experts, comm=comm)
        y, dropped = apply_experts(h, expert_idx, weights, experts, comm, n_experts=self.n_experts,
                                   capacity_factor=self.capacity_factor)
        if hasattr(self, "shared"):  # always on, computed densely beside the routed experts
            y = y + self.shared(h, comm.whole_sequences())
        return y, self.stats(logits, expert_idx, dropped, (B, S), comm)

    def experts(self, x: Array, comm: Comm) -> Array:
        """This device's experts on their buffers: x [E_loc, N, D] -> [E_loc, N, D] in x.dtype.

        With the hidden dim split (`expert_mlp`) the result is a partial sum over its shards; b2
        is then added on the first shard only, so that the reduction counts it once.
        """
        dt = x.dtype

        def up(w: str, b: str) -> Array:
            out = float8.matmul("end,edf->enf", x, getattr(self, w)[...], dt)
            return out + getattr(self, b)[...].astype(dt)[:, None, :] if hasattr(self, b) else out

        u = hidden(self.ffn, up("w1", "b1"), up("w3", "b3") if self.ffn == "swiglu" else None)
        u = comm.constrain(u, "expert", "batch", "expert_mlp", first=(0,))
        out = float8.matmul("enf,efd->end", u, self.w2[...], dt)
        if not hasattr(self, "b2"):
            return out
        b2 = self.b2[...].astype(dt)
        if comm.axes("expert_mlp"):
            b2 = jnp.where(comm.index("expert_mlp") == 0, b2, jnp.zeros_like(b2))
        return out + b2[:, None, :]

    def stats(self, logits: Array, expert_idx: Array, dropped: Array, bs: tuple[int, int],
              comm: Comm) -> dict[str, Array]:
        """Per-layer float32 scalars over the global batch, identical on every device."""
        E = self.n_experts
        per_token = {
            "dropped": dropped,
            "z": jnp.square(jax.nn.logsumexp(logits, axis=-1)),
            "first": jax.nn.one_hot(expert_idx[:, 0], E, dtype=jnp.float32),
            "probs": jax.nn.softmax(logits, axis=-1),
        }
        sums, n = token_sums({k: v.reshape(*bs, *v.shape[1:]) for k, v in per_token.items()},
                             comm)
        return {
            "dropped": sums["dropped"],
            "routed": jnp.float32(n * self.top_k),
            "aux_loss": switch_loss(sums["first"], sums["probs"], n),
            "z_loss": sums["z"] / n,
        }
