"""LayerNorm (scale and bias) and RMSNorm (scale only), computed in float32 whatever the compute
dtype; `make_norm` picks the one a config names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from helix_jax.config import ModelConfig


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


def rms_normalize(x: jax.Array, eps: float, reduce=None, width: int | None = None) -> jax.Array:
    """x · rsqrt(mean(x²) + eps) in float32, cast back to x's dtype (as Llama's RMSNorm does
    before its scale). When the last dimension is split over devices, `reduce` sums the squares
    over its shards and `width` is its whole size."""
    h = x.astype(jnp.float32)
    total = jnp.square(h).sum(-1, keepdims=True)
    if reduce is not None:
        total = reduce(total)
    return (h * jax.lax.rsqrt(total / (width or h.shape[-1]) + eps)).astype(x.dtype)


class RMSNorm(nnx.Module):
    """x · rsqrt(mean(x²) + eps) · scale over the last dimension (named `axis`)."""

    def __init__(self, dim: int, eps: float, axis: str = "embed"):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=(axis,))
        self.eps = eps
        self.dim = dim

    def __call__(self, x, reduce=None):  # x: [..., D] (or a shard of D, summed by `reduce`)
        h = rms_normalize(x, self.eps, reduce, self.dim)
        return h * self.scale[...].astype(x.dtype)


def make_norm(cfg: ModelConfig) -> LayerNorm | RMSNorm:
    """The norm over the model dimension that `cfg.norm` names."""
    return (RMSNorm if cfg.norm == "rmsnorm" else LayerNorm)(cfg.d_model, cfg.ln_eps)
