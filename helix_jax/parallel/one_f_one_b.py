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

from helix_jax.comm import Comm, vary_like
from helix_jax.parallel.schedule import BACKWARD, FORWARD, Table

Array = jax.Array

# Name scopes of the runtime's own data movement around the chunks (in the compiled program's
# op names): a microbatch's residuals written to and read back from the stash, its gradients
# added to the step's, a chunk's parameters sliced out of the stage's stack. Megatron's runtime
# keeps the residuals where they were made, holds each chunk's parameters as tensors of their
# own and accumulates the weight gradients in the wgrad GEMM itself
# (gradient_accumulation_fusion), so the projection prices these apart
# (`analysis.costmodel.pipelined`).
STASH_SCOPE = "pipeline_stash"
ACCUMULATE_SCOPE = "pipeline_accumulate"
CHUNK_SCOPE = "pipeline_chunk"  # a chunk's parameters sliced from the stage's stack
RUNTIME_SCOPES = (STASH_SCOPE, ACCUMULATE_SCOPE, CHUNK_SCOPE)


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


def _typed_zeros(struct, *refs):
    """Zeros shaped like `struct`, varying like `refs` (arrays or `jax.eval_shape` results)."""
    return vary_like(jnp.zeros(struct.shape, struct.dtype), struct, *refs)


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
    run = _Run(stage, head, layers, head_params, xs, comm, table)
    carry, _ = jax.lax.scan(run.tick, run.init_carry(),
                            (jnp.arange(table.ticks), jnp.asarray(table.rows())))
    M = xs.shape[0]
    stats = {k: v / M if k.endswith("_loss") else v for k, v in carry["stats"].items()}
    return Result(carry["loss"], carry["layer_grads"], carry["head_grads"],
                  carry["input_grads"][:M], stats)


def _f32(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float32), tree)


class _Run:
    """One device's view of the schedule: its stage, the probed shapes and types of what a
    forward makes, and the tick."""

    def __init__(self, stage, head, layers, head_params, xs, comm: Comm, table: Table):
        self.stage_fn, self.head_fn, self.xs, self.comm, self.table = stage, head, xs, comm, table
        self.p, self.stage = comm.size("layers"), comm.index("layers")
        self.M, self.V = xs.shape[0], int(table.chunk.max()) + 1
        self.Lc = jax.tree.leaves(layers)[0].shape[0] // self.V
        # Every stage's copy of the head's parameters typed as its own: a parameter shared by the
        # stages would make autodiff sum its gradient over them inside the last stage's branch, a
        # collective the other stages never join. The caller sums over the stages instead.
        self.head_params = vary_like(head_params, self.stage)
        self.layers = vary_like(layers, self.stage)
        self.meta: dict = {}
        # A forward's input, typed as every forward sees it (the pipeline's input, or what the
        # previous stage sent), so the residuals' types are the same in every trace: the
        # pullback takes them back exactly as they were made.
        x0 = vary_like(xs[0], self.stage)
        self.x0 = x0 = vary_like(x0, jax.eval_shape(self.forward, self.chunk(0), x0)[0][0])
        self.out, self.stats, self.stash = jax.eval_shape(self.forward, self.chunk(0), x0)
        self.y = self.out[0]
        self.head = jax.eval_shape(self.head_pullback, self.y, 0)
        self.masked = _permutes(lambda c, h: stage(c, h)[0], self.chunk(0), x0)

    # -- the stage's pieces ---------------------------------------------------------------

    def chunk(self, c):
        with jax.named_scope(CHUNK_SCOPE):
            return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, c * self.Lc, self.Lc),
                                self.layers)

    def forward(self, params_c, h):
        """The chunk on h under jax.vjp: (outputs, stats, the residuals to stash)."""
        out, pullback, stats = jax.vjp(self.stage_fn, params_c, h, has_aux=True)
        leaves, treedef = jax.tree.flatten(pullback)
        ids = {id(leaf): n for n, leaf in enumerate(jax.tree.leaves(params_c))}
        kinds = tuple(ids.get(id(leaf)) for leaf in leaves)  # a parameter: not stashed
        if self.meta.setdefault("kinds", kinds) != kinds:
            raise AssertionError("the stage's residuals changed between traces")
        self.meta["treedef"], self.meta["aux"] = treedef, out[1]
        return out, stats, [leaf for leaf, k in zip(leaves, kinds) if k is None]

    def backward(self, params_c, stashed, cotangent):
        params, it = jax.tree.leaves(params_c), iter(stashed)
        leaves = [params[k] if k is not None else next(it) for k in self.meta["kinds"]]
        return jax.tree.unflatten(self.meta["treedef"], leaves)(cotangent)

    def head_pullback(self, y, i):
        loss, pullback = jax.vjp(lambda hp, h: self.head_fn(hp, h, i), self.head_params, y)
        d_head, ct = pullback(vary_like(jnp.ones_like(loss), loss))
        return loss, ct, d_head

    # -- zeros typed as the branches make them ---------------------------------------------

    def zeros(self, tree):
        """Activations: varying at least as the input and the stage do."""
        return jax.tree.map(lambda s: _typed_zeros(s, self.x0, self.stage), tree)

    def own(self, tree):
        """Gradients, losses and stats: as their values vary, and by stage."""
        return jax.tree.map(lambda s: _typed_zeros(s, self.stage), tree)

    def stacked(self, n, struct):
        return _typed_zeros(jax.ShapeDtypeStruct((n, *struct.shape), struct.dtype),
                            self.x0, self.stage, struct)

    def init_carry(self) -> dict:
        t, K = self.table, self.table.stash_slots
        with jax.named_scope(STASH_SCOPE):  # written at a slot that differs by stage: typed so
            stash = [_typed_zeros(jax.ShapeDtypeStruct((K + 1, *s.shape), s.dtype), self.stage, s)
                     for s in self.stash]
        return dict(
            recv_f=self.zeros(self.y), recv_b=self.zeros(self.y), head_ct=self.zeros(self.y),
            f_inbox=self.stacked(t.forward_inbox, self.y),
            b_inbox=self.stacked(t.backward_inbox, self.y),
            stash=stash,
            layer_grads=self.own(jax.eval_shape(_f32, self.layers)),
            head_grads=self.own(jax.eval_shape(_f32, self.head[2])),
            input_grads=self.stacked(self.M + 1, jax.eval_shape(lambda a: a, self.x0)),
            loss=self.own(self.head[0]),
            stats=jax.tree.map(lambda s: jnp.repeat(_typed_zeros(s, self.stage), self.V, axis=0),
                               self.stats))

    # -- one tick ------------------------------------------------------------------------

    def tick(self, carry, inputs):
        t, rows = inputs
        op, i, c, slot, inbox = (rows[self.stage, n] for n in range(5))
        f_inbox = jax.lax.dynamic_update_index_in_dim(
            carry["f_inbox"], carry["recv_f"], t % self.table.forward_inbox, 0)
        b_inbox = jax.lax.dynamic_update_index_in_dim(
            carry["b_inbox"], carry["recv_b"], t % self.table.backward_inbox, 0)
        if self.masked:
            y, stats, stash, loss, ct, d_head, layer_grads, d_h = self.masked_work(
                carry, op, i, c, slot, inbox, f_inbox, b_inbox)
        else:
            y, stats, stash, loss, ct, d_head, layer_grads, d_h = self.work(
                carry, op, i, c, slot, inbox, f_inbox, b_inbox)
        with jax.named_scope(ACCUMULATE_SCOPE):
            head_grads = jax.tree.map(jnp.add, carry["head_grads"], d_head)
        new = dict(carry, f_inbox=f_inbox, b_inbox=b_inbox,
                   recv_f=self.comm.rotate(y, "layers", 1),
                   recv_b=self.comm.rotate(d_h, "layers", -1),
                   head_ct=jnp.where(op == FORWARD, ct, carry["head_ct"]),
                   loss=carry["loss"] + loss,
                   head_grads=head_grads,
                   layer_grads=layer_grads,
                   stats=self.add_at(carry["stats"], stats, c), stash=stash)
        first = (op == BACKWARD) & (self.stage == 0) & (c == 0)
        new["input_grads"] = jax.lax.dynamic_update_index_in_dim(
            carry["input_grads"], d_h, jnp.where(first, i, self.M), 0)
        return jax.tree.map(lambda a, ref: vary_like(a, ref), new, carry), None

    def work(self, carry, op, i, c, slot, inbox, f_inbox, b_inbox):
        """The tick's forward or backward with the stash and the gradient accumulators updated
        inside the branch that changes them (a skipping branch hands them on untouched), so XLA
        updates them in place: no residuals or zero gradients leave a branch to be written."""
        def forward():
            y, stats, res, loss, ct, d_head = self.run_forward(f_inbox, i, c, inbox)
            with jax.named_scope(STASH_SCOPE):
                stash = [jax.lax.dynamic_update_index_in_dim(buf, v, slot, 0)
                         for buf, v in zip(carry["stash"], res)]
            return y, stats, stash, loss, ct, d_head

        def skip():
            y, stats, _, loss, ct, d_head = self.skip_forward(residuals=False)
            return y, stats, carry["stash"], loss, ct, d_head

        y, stats, stash, loss, ct, d_head = _cond(op == FORWARD, forward, skip)

        def backward():
            d_params, d_h = self.run_backward(carry, stash, b_inbox, c, slot, inbox)
            return self.add_at(carry["layer_grads"], d_params, c), d_h

        def hold():
            return carry["layer_grads"], self.zeros(self.y)

        layer_grads, d_h = _cond(op == BACKWARD, backward, hold)
        return y, stats, stash, loss, ct, d_head, layer_grads, d_h

    def masked_work(self, carry, op, i, c, slot, inbox, f_inbox, b_inbox):
        """`work` for stages whose chunk holds collective-permutes: both branches run and the
        results are selected (`_cond`), so the stash and accumulators are written outside."""
        y, stats, stash, loss, ct, d_head = _cond(
            op == FORWARD, lambda: self.run_forward(f_inbox, i, c, inbox), self.skip_forward,
            True)
        # write this tick's residuals before the backward reads its slot (a backward reads a slot
        # no forward writes in the same tick): a read and a write left unordered make XLA copy
        # every stash buffer per tick
        write = jnp.where(op == FORWARD, slot, self.table.stash_slots)  # else the spare slot
        with jax.named_scope(STASH_SCOPE):
            stash = [jax.lax.dynamic_update_index_in_dim(buf, v, write, 0)
                     for buf, v in zip(carry["stash"], stash)]
        d_params, d_h = _cond(
            op == BACKWARD, lambda: self.run_backward(carry, stash, b_inbox, c, slot, inbox),
            self.skip_backward, True)
        return (y, stats, stash, loss, ct, d_head, self.add_at(carry["layer_grads"], d_params, c),
                d_h)

    def add_at(self, acc, chunk_values, c):
        """`acc` [V·Lc, ...] with `chunk_values` [Lc, ...] added at chunk c."""
        def add(a, v):
            here = jax.lax.dynamic_slice_in_dim(a, c * self.Lc, self.Lc)
            return jax.lax.dynamic_update_slice_in_dim(a, here + v, c * self.Lc, 0)
        with jax.named_scope(ACCUMULATE_SCOPE):
            return jax.tree.map(add, acc, chunk_values)

    def run_forward(self, f_inbox, i, c, inbox):
        h = jnp.where(inbox < 0, self.xs[jnp.clip(i, 0, self.M - 1)],
                      f_inbox[jnp.maximum(inbox, 0)])
        (y, _), stats, stash = self.forward(self.chunk(c), vary_like(h, self.x0))
        last = (self.stage == self.p - 1) & (c == self.V - 1)  # the aux loss's cotangent is 1
        loss, ct, d_head = _cond(last, lambda: self.head_pullback(y, i), self.no_head,
                                 self.masked)
        return y, stats, stash, loss, ct, _f32(d_head)

    def no_head(self):
        return self.own(self.head[0]), self.zeros(self.head[1]), self.own(self.head[2])

    def skip_forward(self, residuals: bool = True):
        return (self.zeros(self.y), self.own(self.stats),
                [_typed_zeros(s, self.stage) for s in self.stash] if residuals else None,
                self.own(self.head[0]), self.zeros(self.y),
                self.own(jax.eval_shape(_f32, self.head[2])))

    def run_backward(self, carry, stash, b_inbox, c, slot, inbox):
        ct_y = jnp.where(inbox < 0, carry["head_ct"], b_inbox[jnp.maximum(inbox, 0)])
        with jax.named_scope(STASH_SCOPE):
            stashed = [buf[slot] for buf in stash]
        one = vary_like(jnp.ones((), self.out[1].dtype), self.meta["aux"])
        d_params, d_h = self.backward(self.chunk(c), stashed, (vary_like(ct_y, self.y), one))
        return _f32(d_params), d_h

    def skip_backward(self):
        return self.own(jax.eval_shape(_f32, self.chunk(0))), self.zeros(self.y)


def _cond(pred, yes, no, masked: bool = False):
    """`lax.cond` whose branches may differ in which axes their outputs vary over; `masked`:
    run both and select (for work holding collective-permutes, see `_permutes`)."""
    a, b = jax.eval_shape(yes), jax.eval_shape(no)
    if masked:
        return jax.tree.map(lambda u, v: jnp.where(pred, vary_like(u, v), vary_like(v, u)),
                            yes(), no())

    def typed(fn, other):
        def run():
            out = fn()
            return jax.tree.map(vary_like, out, other)
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
