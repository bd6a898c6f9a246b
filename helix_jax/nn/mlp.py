"""The dense FFN: W_2 · gelu(W_1 · h + b_1) + b_2, tensor parallel over the logical `mlp` axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from helix_jax.comm import Comm
from helix_jax.config import ModelConfig


def normal(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """Float32 master weights drawn N(0, 1/fan_in)."""
    return jax.random.normal(rngs.params(), shape, jnp.float32) * fan_in**-0.5


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, F = cfg.d_model, cfg.d_ff
        self.w1 = nnx.Param(normal(rngs, (D, F), D), out_sharding=("embed", "mlp"))
        self.b1 = nnx.Param(jnp.zeros((F,), jnp.float32), out_sharding=("mlp",))
        self.w2 = nnx.Param(normal(rngs, (F, D), F), out_sharding=("mlp", "embed"))
        self.b2 = nnx.Param(jnp.zeros((D,), jnp.float32), out_sharding=("embed",))

    def __call__(self, h: jax.Array, comm: Comm) -> jax.Array:  # h: [B, S, D] -> [B, S, D]
        dt = h.dtype
        u = jax.nn.gelu(h @ self.w1[...].astype(dt) + self.b1[...].astype(dt))
        u = comm.constrain(u, "batch", None, "mlp")  # the hidden layer where its weights are
        partial = u @ self.w2[...].astype(dt)  # a partial sum over the `mlp` shards
        return comm.reduce_out(partial, "mlp") + self.b2[...].astype(dt)
