"""The pre-norm transformer: x + Attn(N1(x)), x + FFN(N2(x)), then a final norm (N: LayerNorm or
RMSNorm, as the config says).

Layer parameters are stacked along a leading logical `layers` axis, so one scan runs them and a
pipeline layout can shard that axis over its stages. A MoE model with `first_dense_layers` keeps
those leading dense layers in a second stack (`dense_layers`), run before the MoE stack.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from helix_jax.comm import Comm, varying_axes
from helix_jax.config import ModelConfig
from helix_jax.nn.attention import Attention
from helix_jax.nn.mlp import MLP
from helix_jax.nn.norm import make_norm
from helix_jax.nn.vocab import Embed, LMHead, PositionTable, vocab_loss
from helix_jax.parallel import context

Stats = dict[str, jax.Array]


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dense: bool = False):
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg, rngs=rngs)
        self.ln2 = make_norm(cfg)
        if cfg.is_moe and not dense:
            from helix_jax.nn.moe import MoE
            self.moe = MoE(cfg, rngs=rngs)
        else:
            self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, comm: Comm) -> tuple[jax.Array, Stats]:  # x: [B, S, D]
        x = comm.residual(x)
        x = comm.residual(x + self.attn(comm.layer_input(self.ln1(x)), comm))
        h = self.ln2(x)
        if hasattr(self, "moe"):  # routing needs whole sequences: no collective matmuls
            y, stats = self.moe(comm.gather_seq(h), comm)
        else:
            y, stats = self.mlp(comm.layer_input(h), comm), {}
        return comm.residual(x + y), stats


def block_step(block: Block, x: jax.Array, cache: dict, layer: jax.Array, pos: jax.Array,
               active, comm: Comm):
    """One block on T new tokens with its KV cache (no sequence parallelism in a step)."""
    a, cache = block.attn.step(block.ln1(x), cache, layer, pos, active, comm)
    x = x + a
    h = block.ln2(x)
    if hasattr(block, "moe"):
        y, stats = block.moe(h, comm)
    else:
        y, stats = block.mlp(h, comm), {}
    return x + y, cache, stats


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
    """One module whose parameters carry a leading `layers` axis over `modules`."""
    graphdef = nnx.graphdef(modules[0])
    states = [nnx.state(m) for m in modules]

    def stack(*vs: nnx.Variable) -> nnx.Variable:
        axes = ("layers",) + tuple(vs[0].get_metadata().get("out_sharding") or ())
        return vs[0].replace(value=jnp.stack([v[...] for v in vs]), out_sharding=axes)

    stacked = jax.tree.map(stack, *states, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return nnx.merge(graphdef, stacked)


def gather_fsdp(module: nnx.Module, comm: Comm) -> nnx.Module:
    """Under FSDP, all-gather the parameter dimensions that are split only for storage.

    Under gspmd the parameters' storage sharding alone carries the rule: XLA gathers each one
    where it is used, as this does (and again in the backward, as FSDP does)."""
    fsdp = set(comm.axes("fsdp"))
    if not fsdp:
        return module
    graphdef, state = nnx.split(module)

    def gather(v: nnx.Variable) -> nnx.Variable:
        value = v[...]
        names = tuple(v.get_metadata().get("out_sharding") or ())[-value.ndim:]
        for dim, name in enumerate(names):
            if name and comm.axes(name) and set(comm.axes(name)) <= fsdp:
                value = comm.all_gather(value, name, axis=dim)
        return v.replace(value=value)

    return nnx.merge(graphdef, jax.tree.map(gather, state, is_leaf=lambda v: isinstance(v, nnx.Variable)))


class Transformer(nnx.Module):
    """Embeddings [B, S, D] (or tokens [B, S] with a vocabulary) -> final hidden states [B, S, D],
    plus per-layer stats (MoE). With a vocabulary, `loss` turns hidden states and labels into the
    cross-entropy per token."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        with nnx.use_eager_sharding(False):  # layouts place the parameters, not creation
            if cfg.vocab:
                self.embed = Embed(cfg, rngs=rngs)
            if cfg.position == "learned":
                self.positions = PositionTable(cfg, rngs=rngs)
            dense = cfg.first_dense_layers
            if dense:
                self.dense_layers = stack_modules([Block(cfg, rngs=rngs, dense=True)
                                                   for _ in range(dense)])
            self.layers = stack_modules([Block(cfg, rngs=rngs)
                                         for _ in range(cfg.n_layers - dense)])
            self.final_ln = make_norm(cfg)
            if cfg.vocab and not cfg.tie_embeddings:
                self.head = LMHead(cfg, rngs=rngs)
        self.dtype = cfg.dtype

    def _embed(self, x: jax.Array, comm: Comm, positions: jax.Array) -> jax.Array:
        """Tokens [B, S] (or embeddings [B, S, D]) -> embeddings in the compute dtype, with the
        learned positions of this device's tokens (`positions`) added."""
        if hasattr(self, "embed"):
            x = gather_fsdp(self.embed, comm)(x, comm, self.dtype)
        x = x.astype(self.dtype)
        if hasattr(self, "positions"):
            x = x + gather_fsdp(self.positions, comm)(positions, x.dtype)
        return x

    def __call__(self, x: jax.Array, comm: Comm) -> tuple[jax.Array, Stats]:
        """Tokens [B, S] or embeddings (sequence-sharded under sequence parallelism) -> final
        hidden states [B, S/K, D] of this device's part of the sequence, and stats. Under context
        parallelism (K shards) a device embeds its own chunks of the whole input."""
        x = self.embed_input(x, comm)
        if comm.axes("layers"):
            from helix_jax.parallel.pipeline import gpipe
            x, stats = gpipe(self.run_layers, x, comm)
        else:
            x, stats = self.run_layers(x, comm)
        return self.final_norm(x, comm), stats

    def embed_input(self, x: jax.Array, comm: Comm) -> jax.Array:
        """The model's input -> the residual stream entering the (main stack of) layers: this
        device's tokens embedded, after the leading dense layers if any."""
        x = self.local_slab(x, comm)
        parts = comm.size("act_seq")
        S = x.shape[1] // parts if x.ndim == 2 else x.shape[1]  # this device's tokens
        own = context.positions(S * parts, comm)
        own = jax.lax.dynamic_slice_in_dim(own, comm.index("act_seq") * S, S)
        x = comm.residual(self._embed(x, comm, own))
        if hasattr(self, "dense_layers"):  # leading dense layers (no pipeline: Layout.validate)
            x, _ = self.run_layers(x, comm, self.dense_layers)
        return x

    @staticmethod
    def local_slab(x: jax.Array, comm: Comm) -> jax.Array:
        """Under context parallelism (the whole input on every shard) this shard's chunks, and of
        embeddings [B, S, D] its sequence slab: what it holds of an input, or of a target."""
        parts = comm.size("act_seq")
        if comm.axes(context.AXIS):
            x = context.select(x, comm)
            if x.ndim == 3 and parts > 1:
                n = x.shape[1] // parts
                x = jax.lax.dynamic_slice_in_dim(x, comm.index("act_seq") * n, n, axis=1)
        return x

    def final_norm(self, x: jax.Array, comm: Comm) -> jax.Array:
        return comm.residual(gather_fsdp(self.final_ln, comm)(comm.residual(x)))

    def run_layers(self, x: jax.Array, comm: Comm, stack: nnx.Module | None = None
                   ) -> tuple[jax.Array, Stats]:
        """Apply this device's stacked layers (of `stack`, by default the main stack) in order;
        stats come back stacked per layer."""
        graphdef, state = nnx.split(self.layers if stack is None else stack)

        def layer(h, s):
            return gather_fsdp(nnx.merge(graphdef, s), comm)(h, comm)

        if comm.remat == "full":  # keep only each layer's input; recompute its forward
            layer = jax.checkpoint(layer)
        stage = tuple(a for a in comm.axes("layers") if a not in varying_axes(x))
        if stage:  # a stack split over pipeline stages: the carry differs by stage too
            x = jax.lax.pcast(x, stage, to="varying")
        return jax.lax.scan(layer, x, state)

    def step(self, x: jax.Array, cache: dict, pos: jax.Array, comm: Comm):
        """T new tokens (embeddings [B, T, D] or tokens [B, T]) at positions pos.. against the
        KV cache {"k", "v"} [layers, B, C, h, d]: (final hidden states [B, T, D], the updated
        cache, per-layer stats). Prefill and decode are both this step. The cache holds every
        layer, the leading dense ones (if any) first."""
        x = self._embed(x, comm, pos + jnp.arange(x.shape[1]))

        def run_stack(stack, h, kv, first, active):  # a stack's layers in order, with the cache
            graphdef, state = nnx.split(stack)

            def layer(carry, xs):
                h, kv = carry
                s, i = xs
                h, kv, stats = block_step(gather_fsdp(nnx.merge(graphdef, s), comm), h, kv, i,
                                          pos, active, comm)
                return (h, kv), stats

            n = jax.tree.leaves(state)[0].shape[0]
            (h, kv), stats = jax.lax.scan(layer, (h, kv), (state, first + jnp.arange(n)))
            return h, kv, stats

        def run_stage(h, kv, active=True):  # this device's layers of the main stack
            return run_stack(self.layers, h, kv, first_main, active)

        first_main = 0
        if hasattr(self, "dense_layers"):  # no pipeline here (Layout.validate)
            x, cache, _ = run_stack(self.dense_layers, x, cache, 0, True)
            first_main = jax.tree.leaves(nnx.state(self.dense_layers))[0].shape[0]
        if comm.axes("layers"):
            from helix_jax.parallel.pipeline import stage_by_stage

            h, cache, stats = stage_by_stage(run_stage, x, cache, comm)
        else:
            h, cache, stats = run_stage(x, cache)
        return gather_fsdp(self.final_ln, comm)(h), cache, stats

    def loss(self, h: jax.Array, labels: jax.Array, comm: Comm) -> jax.Array:
        """Final hidden states [B, S, D] (sequence-sharded under SP; this device's chunks under
        context parallelism) and labels [B, S] -> the cross-entropy of each of the device's
        tokens [B, S(/K)], float32. A tied head is the embedding transposed."""
        if hasattr(self, "head"):
            w = gather_fsdp(self.head, comm).w[...]
        else:
            w = gather_fsdp(self.embed, comm).table[...].T  # [D, V/t]
        return vocab_loss(comm.gather_seq(h), w, context.select(labels, comm), comm)
