"""Token embedding, learned positions, and an LM head (untied, or the embedding transposed) with
softmax cross-entropy, split over the `vocab` axis.

The vocabulary is sharded like Megatron's: each shard holds V/t rows of the table [V, D] and V/t
columns of the head [D, V]. The embedding looks up the tokens its shard owns and zeros the rest;
the partial [B, S, D] is summed over the shards (a reduce-scatter onto sequence shards under
sequence parallelism). The loss never gathers the logits: each shard's max, sum of exponentials
and target logit are combined by one max and two sums over the vocab shards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from helix_jax.comm import Comm
from helix_jax.config import ModelConfig
from helix_jax.nn.mlp import normal

Array = jax.Array


def _local_ids(ids: Array, vocab_local: int, comm: Comm) -> tuple[Array, Array]:
    """Token ids as rows of this shard's slice of the vocabulary, and which ones it owns."""
    local = ids - comm.index("vocab") * vocab_local
    owned = (local >= 0) & (local < vocab_local)
    return jnp.clip(local, 0, vocab_local - 1), owned


class Embed(nnx.Module):
    """tokens [B, S] int32 -> embeddings [B, S, D] in the compute dtype."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.table = nnx.Param(normal(rngs, (cfg.vocab, cfg.d_model), 1),
                               out_sharding=("vocab", "embed"))

    def __call__(self, tokens: Array, comm: Comm, dtype) -> Array:
        table = self.table[...].astype(dtype)  # [V/t, D]
        rows, owned = _local_ids(tokens, table.shape[0], comm)
        partial = jnp.where(owned[..., None], jnp.take(table, rows, axis=0), 0).astype(dtype)
        return comm.reduce_out(partial, "vocab")


class PositionTable(nnx.Module):
    """A learned position embedding [max_positions, D] (GPT-2's `wpe`), replicated over `vocab`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.table = nnx.Param(normal(rngs, (cfg.positions, cfg.d_model), 1),
                               out_sharding=(None, "embed"))

    def __call__(self, positions: Array, dtype) -> Array:
        """The rows of `positions` [S] as [1, S, D] in `dtype`."""
        return jnp.take(self.table[...], positions, axis=0).astype(dtype)[None]


class LMHead(nnx.Module):
    """The untied output projection [D, vocab]; `vocab_loss` turns it into the loss."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.w = nnx.Param(normal(rngs, (cfg.d_model, cfg.vocab), cfg.d_model),
                           out_sharding=("embed", "vocab"))


def vocab_loss(h: Array, w: Array, labels: Array, comm: Comm) -> Array:
    """Final hidden states [B, S, D], this shard's head columns w [D, V/t] and labels [B, S] ->
    cross-entropy per token [B, S] float32, without gathering the logits."""
    logits = (h @ w.astype(h.dtype)).astype(jnp.float32)  # [B, S, V/t]
    logits = comm.constrain(logits, "batch", None, "vocab")
    top = jax.lax.stop_gradient(logits.max(-1))
    top = comm.pmax(top, "vocab")
    z = logits - top[..., None]
    sumexp = comm.psum(jnp.exp(z).sum(-1), "vocab")
    rows, owned = _local_ids(labels, logits.shape[-1], comm)
    target = jnp.take_along_axis(z, rows[..., None], axis=-1)[..., 0]
    target = comm.psum(jnp.where(owned, target, 0.0), "vocab")
    return jnp.log(sumexp) - target
