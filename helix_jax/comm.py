"""Collectives over logical axis names, for use inside `jax.shard_map`, and sharding constraints
for the same modules run as one global program under GSPMD.

The model's math names logical axes ("heads", "head_dim", "mlp", ...); `Comm` turns them into mesh
axes through the layout's rules. A collective over logical axes that the layout does not shard is
the identity, so one forward pass serves every layout, the single device included.

With `mesh` set (the `gspmd` partitioner) the modules see the whole arrays, as on one device: every
collective is the identity and every shard index 0. What the layout's rules say then reaches XLA's
SPMD partitioner through `constrain`, a `with_sharding_constraint` at the points the modules name
(q, k, v, attention and MLP outputs, MoE dispatch, the residual stream); inside shard_map
`constrain` is the identity. Both partitioners read the same rules, in `Layout.pspec`.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from helix_jax.layouts import Layout

_GATHER_TAKES_TO = "to" in inspect.signature(jax.lax.all_gather).parameters


def varying_axes(x) -> frozenset[str]:
    """The manual mesh axes over which `x` may differ between devices (shard_map's vma type);
    `x` an array or a `jax.eval_shape` result."""
    aval = x if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # jax 0.10
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))


def vary_like(tree, *refs):
    """Mark `tree` as varying over every manual axis that `refs` vary over.

    shard_map's type check needs a loop carry typed like what the loop body makes of it.
    """
    axes = frozenset().union(*(varying_axes(r) for r in refs))

    def cast(t):
        missing = tuple(sorted(axes - varying_axes(t)))
        return jax.lax.pcast(t, missing, to="varying") if missing else t

    return jax.tree.map(cast, tree)


@dataclass(frozen=True)
class Comm:
    """The layout as seen from inside the shard_map body, or (with `mesh`) from a global program."""

    layout: Layout
    # Activation recompute in the backward pass: "none", "selective" (the attention core) or
    # "full" (each layer's forward); read by the modules through this view of the run.
    remat: str = "none"
    # Ordinary attention as one library call ("fused"), the blockwise scan ("blockwise": what
    # the cost model compiles) or the faster of the two on the backend ("auto");
    # see nn/fused_attention.py.
    attention_kernel: str = "auto"
    # False for layers that take whole sequences inside a sequence-parallel block (a MoE layer's
    # shared experts): they run their collectives as usual even under tp_overlap.
    overlap: bool = True
    # The gspmd partitioner's mesh: the modules see whole arrays, collectives are identities and
    # `constrain` pins the layout's shardings. None inside shard_map.
    mesh: Any = None

    @property
    def global_view(self) -> bool:
        """True when the modules run on whole arrays and XLA partitions them (gspmd)."""
        return self.mesh is not None

    def axes(self, *logical: str) -> tuple[str, ...]:
        """The mesh axes a collective over `logical` runs on: none in the global view."""
        return () if self.global_view else self.layout.mesh_axes(*logical)

    def size(self, *logical: str) -> int:
        """How many shards of `logical` this view holds one of: 1 in the global view."""
        return 1 if self.global_view else self.layout.size(*logical)

    def groups(self, *logical: str) -> int:
        """How many of the layout's shards of `logical` this view's arrays hold: 1 inside
        shard_map (a device holds one), all of them in the global view. Math that is defined per
        shard (the MoE capacity per token shard) runs once per group, so both views agree."""
        return self.layout.size(*logical) if self.global_view else 1

    def constrain(self, x, *logical: str | None, first: tuple[int, ...] = ()):
        """Pin `x`'s sharding to the layout's rule for dims named `logical` (gspmd); identity
        inside shard_map. Dims listed in `first` claim their mesh axes before the others (a mesh
        axis shards one dim at most), e.g. tokens grouped by shard with experts on some of the
        same axes."""
        if not self.global_view:
            return x
        from jax.sharding import NamedSharding

        return jax.lax.with_sharding_constraint(
            x, NamedSharding(self.mesh, self.layout.pspec(logical, first)))

    def residual(self, x):
        """The residual stream [B, S, D]: batch over the data axes, the sequence split under
        sequence parallelism (gspmd; identity inside shard_map)."""
        return self.constrain(x, "batch", "act_seq", None)

    def index(self, *logical: str) -> jax.Array:
        """This device's shard index along the logical axes (0 when they are not sharded)."""
        axes = self.axes(*logical)
        return jax.lax.axis_index(axes) if axes else jnp.int32(0)

    def option(self, name: str, default=None):
        return self.layout.options.get(name, default)

    def psum(self, x, *logical: str):
        axes = self.axes(*logical)
        return jax.lax.psum(x, axes) if axes else x

    def pmax(self, x, *logical: str):
        axes = self.axes(*logical)
        return jax.lax.pmax(x, axes) if axes else x

    def all_gather(self, x, *logical: str, axis: int, invariant: bool = False):
        """Concatenate the shards of `x` along `axis` (tiled).

        `invariant=True` types the result as identical on every device of those axes (it is),
        for values that later leave the shard_map unsharded over them.
        """
        axes = self.axes(*logical)
        if not axes:
            return x
        if invariant and _GATHER_TAKES_TO:
            return jax.lax.all_gather(x, axes, axis=axis, tiled=True, to="invarying")
        return jax.lax.all_gather(x, axes, axis=axis, tiled=True)

    def all_to_all(self, x, *logical: str, split_axis: int, concat_axis: int):
        axes = self.axes(*logical)
        if not axes:
            return x
        return jax.lax.all_to_all(x, axes, split_axis, concat_axis, tiled=True)

    def ppermute(self, x, *logical: str, shift: int = 1):
        """Send each shard to the shard `shift` further along the logical axis (cyclically)."""
        axes = self.axes(*logical)
        if not axes:
            return x
        n = self.size(*logical)
        return jax.lax.ppermute(x, axes, [(i, (i + shift) % n) for i in range(n)])

    def shift(self, x, *logical: str):
        """Send each shard to the next one along the logical axis; the first receives zeros."""
        axes = self.axes(*logical)
        if not axes:
            return x
        n = self.size(*logical)
        return jax.lax.ppermute(x, axes, [(i, i + 1) for i in range(n - 1)])

    def rotate(self, x, logical: str, by: int):
        """Send each shard `by` places along the logical axis, the last wrapping round to the
        first (a pipeline's next stage is `by=1`, its previous one `by=-1`)."""
        axes = self.axes(logical)
        if not axes:
            return x
        n = self.size(logical)
        return jax.lax.ppermute(x, axes, [(i, (i + by) % n) for i in range(n)])

    def reduce_out(self, partial, *logical: str):
        """Sum a [B, S, D] partial result over the shards of `logical`.

        Under sequence parallelism (logical `act_seq` sharded) this is a reduce-scatter along the
        sequence onto the same axes; otherwise an all-reduce.
        """
        if self.global_view:  # whole arrays: nothing to sum; say where the result lives
            return self.residual(partial)
        axes = self.axes(*logical)
        seq_axes = self.axes("act_seq")
        if not seq_axes:
            return jax.lax.psum(partial, axes) if axes else partial
        if seq_axes != axes:
            raise ValueError(f"sequence parallelism over {seq_axes} needs the reduction over the "
                             f"same axes, got {axes}")
        return jax.lax.psum_scatter(partial, axes, scatter_dimension=1, tiled=True)

    @property
    def tp_overlap(self) -> bool:
        """Whether sequence-parallel TP runs as collective matmuls (layout option tp_overlap):
        the all-gather before a layer's first matmuls and the reduce-scatter after its last one
        become rings of collective-permutes, each step overlapping a transfer with the matmul
        of the chunk in hand (`gather_apply`, `reduce_apply`)."""
        return (self.overlap and not self.global_view and bool(self.option("tp_overlap"))
                and bool(self.axes("act_seq")))

    def whole_sequences(self) -> Comm:
        """This view for a layer that is handed whole sequences (no collective matmuls)."""
        return dataclasses.replace(self, overlap=False)

    def layer_input(self, x):
        """What an attention or dense FFN layer takes from the residual stream: whole sequences,
        or under tp_overlap the sequence shard itself (its first matmuls gather it)."""
        return x if self.tp_overlap else self.gather_seq(x)

    def enter(self, x, *logical: str):
        """x typed as varying over the mesh axes of `logical` (the shards of the weights a
        layer's first matmuls hold), cast once for all of them: the cast's transpose in the
        backward is one all-reduce of the input's gradient (Megatron's f operator), where each
        matmul casting its own copy would make one per matmul."""
        axes = tuple(sorted(set(self.axes(*logical)) - varying_axes(x)))
        return jax.lax.pcast(x, axes, to="varying") if axes else x

    def gather_apply(self, x, fn, *logical: str):
        """fn (token-wise: matmuls with weights sharded over `logical`) over whole sequences of
        a layer input x (`layer_input`), which enters those shards once (`enter`).
        Under tp_overlap x [B, S/t, D] is this device's shard: at step i the device applies fn
        to the chunk of shard me - i while passing that chunk on, so t - 1 collective-permutes
        overlap t partial matmuls; the outputs land at their sequence offsets."""
        if not self.tp_overlap:
            return fn(self.enter(x, *logical))
        t, me, n = self.size("act_seq"), self.index("act_seq"), x.shape[1]
        out, chunk = None, x
        for i in range(t):
            ahead = self.ppermute(chunk, "act_seq", shift=1) if i < t - 1 else None
            y = fn(chunk)
            if out is None:
                out = vary_like(jax.tree.map(
                    lambda a: jnp.zeros((a.shape[0], n * t, *a.shape[2:]), a.dtype), y),
                    *jax.tree.leaves(y))
            start = (me - i) % t * n
            out = jax.tree.map(
                lambda o, a, s=start: jax.lax.dynamic_update_slice_in_dim(o, a, s, axis=1), out, y)
            chunk = ahead
        return out

    def reduce_apply(self, u, fn, *logical: str):
        """fn(u) (token-wise, giving partial sums [B, S, D] over the shards of `logical`) summed
        by `reduce_out`. Under tp_overlap, a ring: the device starts the sum of sequence chunk
        me + 1, and at each of t - 1 steps passes its running sum to shard me - 1 and adds its
        own part of the chunk that sum is bound for, ending with its own chunk [B, S/t, D]."""
        if not self.tp_overlap:
            return self.reduce_out(fn(u), *logical)
        if self.axes(*logical) != self.axes("act_seq"):
            raise ValueError(f"tp_overlap reduces over {self.axes('act_seq')}, the sequence "
                             f"parallel axes, got {self.axes(*logical)}")
        t, me = self.size("act_seq"), self.index("act_seq")
        n = u.shape[1] // t

        def part(i: int):  # this device's partial sum for the chunk of shard me + 1 + i
            c = (me + 1 + i) % t * n
            return fn(jax.lax.dynamic_slice_in_dim(u, c, n, axis=1))

        acc = part(0)
        for i in range(1, t):
            acc = self.ppermute(acc, "act_seq", shift=-1) + part(i)
        return acc

    def gather_seq(self, x):
        """Undo sequence parallelism before a layer that needs whole sequences."""
        if self.global_view:
            return self.constrain(x, "batch", None, None)
        return self.all_gather(x, "act_seq", axis=1)
