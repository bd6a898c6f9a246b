"""The loss and gradients of a training step on a 1F1B pipeline layout (`schedule=1f1b`,
interleaved with `virtual=V`), taken inside the schedule (`parallel.one_f_one_b`) rather than by
differentiating the forward pass as GPipe's step does.

Per device: the embedding runs forward under `jax.vjp`; the pipeline runs the stages' forwards
and backwards tick by tick and the loss head on the last stage; stage 0's input cotangents then
run the embedding's pullback. The result is what `jax.value_and_grad` of the GPipe step gives:
the mean loss (plus the MoE load-balancing term) and the gradient w.r.t. every parameter, or
w.r.t. each data replica's copy with `per_replica` (see `Sharded.replica_copies`).

Interleaved stages (V chunks per stage) run the model's layers in Megatron's order: stage s
holds chunks s, p + s, 2p + s, ... of L / (pV) layers each. The parameters keep the layout's
contiguous split at rest (checkpoints move between layouts as before); the step permutes the
stacked layers into that order on the way in and the gradients back on the way out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from helix_jax.model import Sharded, _own_copy, graphdef
from helix_jax.nn.transformer import Transformer
from helix_jax.parallel import context, schedule
from helix_jax.parallel.one_f_one_b import CHUNK_SCOPE, one_f_one_b


def interleaved_order(n_layers: int, p: int, virtual: int) -> np.ndarray:
    """Position q of the stacked layers at run time -> the model layer it holds: stage s's
    contiguous block holds its chunks c = 0..V-1, chunk c being model chunk c·p + s."""
    Lc = n_layers // (p * virtual)
    return np.array([(c * p + s) * Lc + j for s in range(p) for c in range(virtual)
                     for j in range(Lc)])


def loss_and_grads_fn(sharded: Sharded, per_replica: bool, aux_weight: float):
    """(params, inputs, targets) -> ((mean loss, per-layer stats), gradients), one batch chunk,
    for `sharded`'s 1F1B layout (shard_map partitioner, one batch chunk)."""
    cfg, layout, comm = sharded.cfg, sharded.layout, sharded.comm
    p, M = layout.size("layers"), layout.options["microbatches"]
    V = layout.options.get("virtual", 1)
    table = schedule.build(p, M, V)
    gd = graphdef(cfg)
    L = cfg.n_layers - cfg.first_dense_layers
    norm = cfg.batch * cfg.seq * (1 if cfg.vocab else cfg.d_model)
    sum_axes = ("batch", context.AXIS) + (() if cfg.vocab else ("act_seq",))

    def local(params, inputs, targets):
        if per_replica:
            params = _own_copy(params)
        layers = params["layers"]
        rest = {k: v for k, v in params.items() if k != "layers"}
        head_keys = [k for k in ("final_ln", "head") if k in rest]
        if cfg.vocab and cfg.tie_embeddings:
            head_keys.append("embed")

        def model(**tree):
            return nnx.merge(gd, {**rest, "layers": layers, **tree})

        x, pre_pullback = jax.vjp(lambda r: model(**r).embed_input(inputs, comm), rest)
        xs = x.reshape(M, x.shape[0] // M, *x.shape[1:])
        t = targets if cfg.vocab else Transformer.local_slab(targets, comm)
        ts = t.reshape(M, t.shape[0] // M, *t.shape[1:])

        def stage(chunk, h):
            y, stats = model(layers=chunk).run_layers(h, comm)
            aux = jnp.float32(0)
            if "aux_loss" in stats:
                aux = aux_weight * stats["aux_loss"].sum() / (L * M)
            return (y, aux), stats

        def head(hp, h, i):
            m = model(**hp)
            h = m.final_norm(h, comm)
            if cfg.vocab:
                return m.loss(h, ts[i], comm).sum() / norm
            return jnp.square(h.astype(jnp.float32) - ts[i].astype(jnp.float32)).sum() / norm

        r = one_f_one_b(stage, head, layers, {k: rest[k] for k in head_keys}, xs, comm, table)
        loss = comm.psum(r.loss, "layers", *sum_axes)
        d_rest = pre_pullback(comm.psum(r.input_grads.reshape(x.shape), "layers"))[0]
        d_head = comm.psum(r.head_grads, "layers")
        grads = {k: jax.tree.map(lambda a, b: a.astype(jnp.float32) + b, d_rest[k], d_head[k])
                 if k in d_head else d_rest[k] for k in rest}
        grads["layers"] = r.layer_grads
        if per_replica:
            grads = jax.tree.map(lambda g: g[None], grads)
        return loss, r.stats, grads

    in_specs = sharded._param_in_specs(per_replica)
    spec = sharded.input_spec
    body = jax.shard_map(local, mesh=sharded.mesh, in_specs=(in_specs, spec, spec),
                         out_specs=(P(), sharded.stats_specs, in_specs))
    interleaved = V > 1

    def fn(params, inputs, targets):
        if interleaved:
            params = _permute_layers(sharded, params, (V, p), per_replica)
        loss, stats, grads = body(params, inputs, targets)
        if interleaved:
            grads = _permute_layers(sharded, grads, (p, V), per_replica)
            stats = {k: v[np.argsort(interleaved_order(L, p, V))] for k, v in stats.items()}
        return (loss, stats), grads

    return fn


def _permute_layers(sharded: Sharded, tree, grid: tuple[int, int], per_replica: bool):
    """`tree`'s stacked layers (axis 0, or 1 under a leading replica axis) with their chunks
    transposed as a `grid` (a, b) of chunks: (V, p) takes the model's order to the run-time order
    of `interleaved_order`, (p, V) takes it back. A transpose of the sharded stage axis: XLA moves
    the chunks between stages with an all-to-all (a gather of `interleaved_order` would all-gather
    every stage's layers), kept in the layout's sharding."""
    specs = sharded._param_in_specs(per_replica)
    axis = 1 if per_replica else 0

    def transpose(a, spec):
        shape = a.shape
        chunks = a.reshape(*shape[:axis], *grid, -1, *shape[axis + 1:])
        out = jnp.swapaxes(chunks, axis, axis + 1).reshape(shape)
        return jax.lax.with_sharding_constraint(out, NamedSharding(sharded.mesh, spec))

    out = dict(tree)
    with jax.named_scope(CHUNK_SCOPE):  # Megatron builds each chunk's layers where they run
        out["layers"] = jax.tree.map(lambda spec, a: transpose(a, spec), specs["layers"],
                                     tree["layers"], is_leaf=lambda s: isinstance(s, P))
    return out
