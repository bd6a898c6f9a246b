"""The 1F1B pipeline (interleaved with V chunks per stage): forward and backward per microbatch,
run tick by tick inside the model's shard_map as `parallel.schedule` places them.

GPipe differentiates one scan over its steps, so autodiff keeps every microbatch's activations
until the backward starts. Here the gradient is taken inside the schedule: a forward is
`jax.vjp` of the stage's chunk, whose residuals go to a stash of `Table.stash_slots` slots; the
backward, some ticks later, takes them back and runs the pullback. A stage therefore holds the
residuals of at most p − s microbatches (V = 1). The last stage's forward also runs the loss head
and keeps its cotangent for the backward on the next tick; stage 0's backward of its first chunk
yields the cotangent of the pipeline's input.

Each tick every stage runs one `lax.cond` (forward, backward or nothing, as its row of the table
says; the devices of one stage take the same branch, so the tensor-parallel collectives inside
match), then sends its forward output one stage on and its input cotangent one stage back.
Residuals that are the chunk's parameters themselves are not stashed: the backward takes them
from the parameters again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from helix_jax.comm import Comm, vary_like, varying_axes
from helix_jax.parallel.schedule import BACKWARD, FORWARD, Table

Array = jax.Array


@dataclass
class Result:
    """What one device's schedule gives: `loss` (its sum of the head's losses), gradients of its
    layer stack (all chunks) and of the head's parameters, the cotangents of the pipeline's inputs
    [M, ...] (stage 0's; zeros elsewhere) and the stage's per-layer stats summed over
    microbatches."""

    loss: Array
    layer_grads: object
    head_grads: object
    input_grads: Array
    stats: dict


def _struct_axes(struct) -> frozenset[str]:
    """The varying axes of a `jax.eval_shape` result (jax 0.10 and 0.11 spell them apart)."""
    mat = getattr(struct, "manual_axis_type", None)
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(struct, "vma", ()))


def _vary_as(x, struct):
    """`x` marked varying over every axis `struct` varies over."""
    missing = tuple(sorted(_struct_axes(struct) - varying_axes(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


def _typed_zeros(struct, *refs):
    """Zeros shaped like `struct`, varying like `refs` (arrays or `jax.eval_shape` results)."""
    z = jnp.zeros(struct.shape, struct.dtype)
    for ref in (struct, *refs):
        z = _vary_as(z, ref) if isinstance(ref, jax.ShapeDtypeStruct) else vary_like(z, ref)
    return z


def one_f_one_b(stage: Callable, head: Callable, layers, head_params, xs: Array, comm: Comm,
                table: Table) -> Result:
    """Run the schedule.

    stage(chunk_params, h) -> ((h_out, aux_loss), stats): one chunk's layers on one microbatch;
        `aux_loss` is its weighted share of the training loss (0 without MoE) and gets
        cotangent 1.
    head(head_params, h, i) -> loss: the loss head on the last chunk's output of microbatch i.
    layers: this stage's layer stack [V·Lc, ...]; chunk c is layers [c·Lc, (c+1)·Lc).
    xs [M, ...]: the pipeline's input microbatches (read by stage 0).
    """
    p, stage_ix = comm.size("layers"), comm.index("layers")
    M, V = xs.shape[0], int(table.chunk.max()) + 1
    n_local = jax.tree.leaves(layers)[0].shape[0]
    Lc = n_local // V

    def chunk(c):
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, c * Lc, Lc), layers)

    # Every stage's copy of the head's parameters typed as its own: a parameter shared by the
    # stages would make autodiff sum its gradient over them inside the last stage's branch, a
    # collective the other stages never join. The caller sums over the stages instead.
    head_params = vary_like(head_params, stage_ix)
    layers = vary_like(layers, stage_ix)
    meta: dict = {}

    def forward(params_c, h):
        (out, pullback, stats) = jax.vjp(stage, params_c, h, has_aux=True)
        leaves, treedef = jax.tree.flatten(pullback)
        ids = {id(leaf): n for n, leaf in enumerate(jax.tree.leaves(params_c))}
        kinds = tuple(ids.get(id(leaf)) for leaf in leaves)
        if meta.setdefault("kinds", kinds) != kinds:
            raise AssertionError("the stage's residuals changed between traces")
        meta["treedef"], meta["aux"] = treedef, out[1]
        return out, stats, [leaf for leaf, k in zip(leaves, kinds) if k is None]

    def backward(params_c, stashed, cotangent):
        params = jax.tree.leaves(params_c)
        it = iter(stashed)
        leaves = [params[k] if k is not None else next(it) for k in meta["kinds"]]
        return jax.tree.unflatten(meta["treedef"], leaves)(cotangent)

    def head_pullback(y, i):
        loss, pullback = jax.vjp(lambda hp, h: head(hp, h, i), head_params, y)
        d_head, ct = pullback(vary_like(jnp.ones_like(loss), loss))
        return loss, ct, d_head

    # A forward's input, typed as every forward sees it (the pipeline's input, or what the
    # previous stage sent), so the residuals' types are the same in every trace: the pullback
    # takes them back exactly as they were made.
    x0 = vary_like(xs[0], stage_ix)
    x0 = _vary_as(x0, jax.eval_shape(forward, chunk(0), x0)[0][0])
    probe_out, probe_stats, probe_stash = jax.eval_shape(forward, chunk(0), x0)
    masked = _permutes(lambda c, h: stage(c, h)[0], chunk(0), x0)
    probe_head = jax.eval_shape(head_pullback, probe_out[0], 0)
    refs = (x0, stage_ix)  # activations vary at least as the input and the stage do
    zeros = lambda tree: jax.tree.map(lambda s: _typed_zeros(s, *refs), tree)  # noqa: E731
    # gradients, losses and stats as their values do, and by stage (they are the stage's own)
    zeros_s = lambda tree: jax.tree.map(lambda s: _typed_zeros(s, stage_ix), tree)  # noqa: E731
    f32 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float32), tree)  # noqa: E731
    K = table.stash_slots
    y_struct = probe_out[0]

    def stacked(n, struct):  # zeros [n, *struct.shape], typed like struct
        z = jnp.zeros((n, *struct.shape), struct.dtype)
        return _vary_as(vary_like(z, *refs), struct)

    carry = dict(
        recv_f=zeros(y_struct), recv_b=zeros(y_struct), head_ct=zeros(y_struct),
        f_inbox=stacked(table.forward_inbox, y_struct),
        b_inbox=stacked(table.backward_inbox, y_struct),
        # (written at a slot that differs by stage, so typed by stage too)
        stash=[_typed_zeros(jax.ShapeDtypeStruct((K + 1, *s.shape), s.dtype), stage_ix, s)
               for s in probe_stash],
        layer_grads=zeros_s(jax.eval_shape(f32, layers)),
        head_grads=zeros_s(jax.eval_shape(f32, probe_head[2])),
        input_grads=stacked(M + 1, jax.eval_shape(lambda a: a, x0)),
        loss=zeros_s(probe_head[0]),
        stats=jax.tree.map(lambda s: jnp.repeat(_typed_zeros(s, stage_ix), V, axis=0),
                           probe_stats),
    )

    def no_head():
        return zeros_s(probe_head[0]), zeros(probe_head[1]), zeros_s(probe_head[2])

    def tick(carry, inputs):
        t, rows = inputs
        op, i, c, slot, inbox = (rows[stage_ix, n] for n in range(5))
        f_inbox = jax.lax.dynamic_update_index_in_dim(
            carry["f_inbox"], carry["recv_f"], t % table.forward_inbox, 0)
        b_inbox = jax.lax.dynamic_update_index_in_dim(
            carry["b_inbox"], carry["recv_b"], t % table.backward_inbox, 0)
        last = (stage_ix == p - 1) & (c == V - 1)

        def run_forward():
            h = jnp.where(inbox < 0, xs[jnp.clip(i, 0, M - 1)], f_inbox[jnp.maximum(inbox, 0)])
            h = vary_like(h, x0)
            (y, aux), stats, stash = forward(chunk(c), h)
            del aux  # its cotangent is 1: nothing of it travels
            loss, ct, d_head = _cond(last, lambda: head_pullback(y, i), no_head, masked)
            return y, stats, stash, loss, ct, f32(d_head)

        def skip_forward():
            return (zeros(y_struct), zeros_s(probe_stats),
                    [_typed_zeros(s, stage_ix) for s in probe_stash],
                    zeros_s(probe_head[0]), zeros(y_struct),
                    zeros_s(jax.eval_shape(f32, probe_head[2])))

        y, stats, stash, loss, ct, d_head = _cond(op == FORWARD, run_forward, skip_forward, masked)

        def run_backward():
            ct_y = jnp.where(inbox < 0, carry["head_ct"], b_inbox[jnp.maximum(inbox, 0)])
            stashed = [buf[slot] for buf in carry["stash"]]
            one = vary_like(jnp.ones((), probe_out[1].dtype), meta["aux"])
            d_params, d_h = backward(chunk(c), stashed, (_vary_as(ct_y, y_struct), one))
            return f32(d_params), d_h

        def skip_backward():
            return zeros_s(jax.eval_shape(f32, chunk(0))), zeros(y_struct)

        d_params, d_h = _cond(op == BACKWARD, run_backward, skip_backward, masked)

        new = dict(carry)
        write = jnp.where(op == FORWARD, slot, K)
        new["stash"] = [jax.lax.dynamic_update_index_in_dim(buf, v, write, 0)
                        for buf, v in zip(carry["stash"], stash)]
        new["head_ct"] = jnp.where(op == FORWARD, ct, carry["head_ct"])
        new["loss"] = carry["loss"] + loss
        new["head_grads"] = jax.tree.map(jnp.add, carry["head_grads"], d_head)
        new["layer_grads"] = jax.tree.map(
            lambda g, d: jax.lax.dynamic_update_slice_in_dim(
                g, jax.lax.dynamic_slice_in_dim(g, c * Lc, Lc) + d, c * Lc, 0),
            carry["layer_grads"], d_params)
        new["stats"] = jax.tree.map(
            lambda acc, v: jax.lax.dynamic_update_slice_in_dim(
                acc, jax.lax.dynamic_slice_in_dim(acc, c * Lc, Lc) + v, c * Lc, 0),
            carry["stats"], stats)
        first = (op == BACKWARD) & (stage_ix == 0) & (c == 0)
        new["input_grads"] = jax.lax.dynamic_update_index_in_dim(
            carry["input_grads"], d_h, jnp.where(first, i, M), 0)
        new["f_inbox"], new["b_inbox"] = f_inbox, b_inbox
        new["recv_f"] = comm.rotate(y, "layers", 1)
        new["recv_b"] = comm.rotate(d_h, "layers", -1)
        return jax.tree.map(lambda a, ref: vary_like(a, ref), new, carry), None

    rows = jnp.asarray(table.rows())
    carry, _ = jax.lax.scan(tick, carry, (jnp.arange(table.ticks), rows))
    stats = {k: v / M if k.endswith("_loss") else v for k, v in carry["stats"].items()}
    return Result(carry["loss"], carry["layer_grads"], carry["head_grads"],
                  carry["input_grads"][:M], stats)


def _cond(pred, yes, no, masked: bool = False):
    """`lax.cond` whose branches may differ in which axes their outputs vary over; `masked`:
    run both and select (for work holding collective-permutes, see `_permutes`)."""
    a, b = jax.eval_shape(yes), jax.eval_shape(no)
    if masked:
        return jax.tree.map(lambda u, v: jnp.where(pred, _vary_as(u, v), _vary_as(v, u)),
                            yes(), no())

    def typed(fn, other):
        def run():
            out = fn()
            return jax.tree.map(_vary_as, out, other)
        return run

    return jax.lax.cond(pred, typed(yes, b), typed(no, a))


def _permutes(fn, *args) -> bool:
    """Whether `fn` holds a collective-permute (context parallelism's ring, collective matmuls).

    A stage's forward and backward run under `lax.cond`, taken by the devices of one stage
    together. All-reduces, all-gathers and all-to-alls meet within their replica groups, which
    never span stages; a collective-permute is one exchange over every device of the mesh, which
    the devices of another stage, busy in the other branch, never join (XLA:CPU's rendezvous
    waits for all of them, or pairs it with the other branch's permute). Such stages run both
    branches every tick and keep the one the table asks for.
    """
    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "ppermute":
                return True
            for v in eqn.params.values():
                subs = v if isinstance(v, (list, tuple)) else (v,)
                for sub in subs:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns") and walk(inner):
                        return True
        return False

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)
