"""The dense FFN, tensor parallel over the logical `mlp` axis:

    gelu          W2 · gelu(W1 · h + b1) + b2                 (GPT-2; tanh approximation)
    swiglu        W2 · (silu(W1 · h) * (W3 · h)) + b2         (Llama: W1 gate, W3 up, W2 down)
    squared_relu  W2 · relu(W1 · h + b1)² + b2                (Nemotron)

Biases only with `mlp_bias`. The gate and up projections of SwiGLU are split together, column by
column, so each device's hidden slice needs no communication until W2's partial sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import helix_jax.nn.float8 as float8
from helix_jax.comm import Comm
from helix_jax.config import ModelConfig
from helix_jax.nn.float8 import operand


def normal(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """Float32 master weights drawn N(0, 1/fan_in)."""
    return jax.random.normal(rngs.params(), shape, jnp.float32) * fan_in**-0.5


def hidden(ffn: str, gate: jax.Array, up: jax.Array | None = None) -> jax.Array:
    """The FFN's hidden activation from the first projection (and SwiGLU's up projection)."""
    if ffn == "swiglu":
        return jax.nn.silu(gate) * up
    if ffn == "squared_relu":
        return jnp.square(jax.nn.relu(gate))
    return jax.nn.gelu(gate)


class MLP(nnx.Module):
    """W1 [D, F] (and W3 [D, F] for SwiGLU), W2 [F, D]; F is `width` (d_ff unless given: the
    shared experts of a MoE layer are one such FFN, n_shared_experts · moe_d_ff wide)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, width: int | None = None):
        D, F = cfg.d_model, width or cfg.d_ff
        self.ffn = cfg.ffn
        self.w1 = nnx.Param(normal(rngs, (D, F), D), out_sharding=("embed", "mlp"))
        self.w2 = nnx.Param(normal(rngs, (F, D), F), out_sharding=("mlp", "embed"))
        if cfg.ffn == "swiglu":
            self.w3 = nnx.Param(normal(rngs, (D, F), D), out_sharding=("embed", "mlp"))
        if cfg.mlp_bias:
            self.b1 = nnx.Param(jnp.zeros((F,), jnp.float32), out_sharding=("mlp",))
            self.b2 = nnx.Param(jnp.zeros((D,), jnp.float32), out_sharding=("embed",))
            if cfg.ffn == "swiglu":
                self.b3 = nnx.Param(jnp.zeros((F,), jnp.float32), out_sharding=("mlp",))

    def _in(self, h: jax.Array, w: str, b: str) -> jax.Array:
        weight = getattr(self, w)[...]
        out = (float8.matmul("bsd,df->bsf", h, weight, h.dtype) if float8.is_float8(weight)
               else h @ operand(weight, h.dtype))
        return out + getattr(self, b)[...].astype(h.dtype) if hasattr(self, b) else out

    def __call__(self, h: jax.Array, comm: Comm) -> jax.Array:  # h: [B, S, D] -> [B, S, D]
        """h is `comm.layer_input`: whole sequences, or under tp_overlap the sequence shard that
        the first matmuls gather chunk by chunk (and the output is then that shard's)."""
        def first(c: jax.Array) -> jax.Array:  # token-wise: the hidden layer of tokens c
            up = self._in(c, "w3", "b3") if self.ffn == "swiglu" else None
            return hidden(self.ffn, self._in(c, "w1", "b1"), up)

        u = comm.constrain(comm.gather_apply(h, first, "mlp"), "batch", None, "mlp")  # [B, S, F/t]
        w2 = self.w2[...]
        if float8.is_float8(w2):
            down = lambda c: float8.matmul("bsf,fd->bsd", c, w2, h.dtype)  # noqa: E731
        else:
            w2 = operand(w2, h.dtype)
            down = lambda c: c @ w2  # noqa: E731
        out = comm.reduce_apply(u, down, "mlp")  # partial sums over `mlp`, summed
        return out + self.b2[...].astype(h.dtype) if hasattr(self, "b2") else out
