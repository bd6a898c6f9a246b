"""LayerNorm with scale and bias, computed in float32 whatever the compute dtype."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=("embed",))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), out_sharding=("embed",))
        self.eps = eps

    def __call__(self, x):  # x: [..., D]
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        h = (h - mean) * jnp.reciprocal(jnp.sqrt(var + self.eps))
        return (h * self.scale[...] + self.bias[...]).astype(x.dtype)
