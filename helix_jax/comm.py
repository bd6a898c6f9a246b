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

import inspect
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from helix_jax.layouts import Layout

_GATHER_TAKES_TO = "to" in inspect.signature(jax.lax.all_gather).parameters


def varying_axes(x) -> frozenset[str]:
    """The manual mesh axes over which `x` may differ between devices (shard_map's vma type)."""
    aval = jax.typeof(x)
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
    # Ordinary attention as one library call ("fused") or the blockwise scan ("blockwise": what
    # the cost model compiles); see nn/fused_attention.py.
    attention_kernel: str = "auto"
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

    def gather_seq(self, x):
        """Undo sequence parallelism before a layer that needs whole sequences."""
        if self.global_view:
            return self.constrain(x, "batch", None, None)
        return self.all_gather(x, "act_seq", axis=1)
