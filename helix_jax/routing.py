"""MoE routing rules that depend only on the config and the layout: expert capacity, how tokens
reach experts (the dispatch mode), and the check that a MoE model can run on a layout.

Pure arithmetic on axis names and sizes, no jax: `layouts.Layout.validate` uses it before anything
is built, and `parallel/experts.py` uses it to move the tokens.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from helix_jax.config import ModelConfig

if TYPE_CHECKING:  # layouts.py imports check_moe from here
    from helix_jax.layouts import Layout


def capacity(n_tokens: int, top_k: int, n_experts: int, factor: float) -> int:
    """Slots per expert per source shard: ceil(factor · tokens · k / E), at least 1."""
    return max(1, math.ceil(factor * n_tokens * top_k / n_experts))


def dispatch_mode(expert_axes: tuple[str, ...], token_axes: tuple[str, ...]) -> str:
    """How tokens reach experts (local / all_to_all / replicated), from the mesh axes of `expert`
    and of the tokens."""
    if not expert_axes:
        return "local"
    if set(expert_axes) <= set(token_axes):
        return "all_to_all"
    if not set(expert_axes) & set(token_axes):
        return "replicated"
    raise ValueError(
        f"experts are sharded over mesh axes {expert_axes} and tokens over {token_axes}: the "
        f"expert axes must either all shard the tokens too (all-to-all dispatch) or none of them "
        f"(local selection from replicated tokens)")


def tokens_per_shard(cfg: ModelConfig, layout: Layout) -> int:
    """Tokens one MoE call sees on one device: its batch shard (one microbatch under a pipeline)
    times the whole sequence (sequence parallelism is undone before the MoE), or its context
    shard's part of it."""
    batch = cfg.batch // layout.size("batch")
    if layout.mesh_axes("layers") and "microbatches" in layout.options:
        batch //= layout.options["microbatches"]
    return batch * cfg.seq // layout.size("cp_seq")


def check_moe(cfg: ModelConfig, layout: Layout) -> None:
    """Raise a ValueError naming the numbers when the MoE of `cfg` cannot run on `layout`."""
    if not cfg.is_moe:
        return
    where = f"{cfg.name} on {layout.spec}"
    shards = layout.size("expert")
    if cfg.n_experts % shards:
        raise ValueError(f"{where}: n_experts={cfg.n_experts} is not divisible by the {shards} "
                         f"expert shards (mesh axes {layout.mesh_axes('expert')})")
    if cfg.top_k > cfg.n_experts:
        raise ValueError(f"{where}: top_k={cfg.top_k} is more than n_experts={cfg.n_experts}")
    if cfg.batch < layout.size("batch"):
        raise ValueError(f"{where}: batch={cfg.batch} leaves no tokens on some of the "
                         f"{layout.size('batch')} token shards")
    expert_axes, token_axes = layout.mesh_axes("expert"), layout.mesh_axes("batch", "cp_seq")
    try:
        mode = dispatch_mode(expert_axes, token_axes)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    reduce_axes = layout.mesh_axes("expert", "expert_mlp") if mode == "replicated" \
        else layout.mesh_axes("expert_mlp")
    seq_axes = layout.mesh_axes("act_seq")
    if seq_axes and seq_axes != reduce_axes:
        raise ValueError(f"{where}: sequence parallelism over {seq_axes} needs the MoE output "
                         f"reduced over the same mesh axes, but it is reduced over {reduce_axes}")
    chunks = layout.options.get("chunks", 1)
    if chunks > 1:
        if mode != "all_to_all":
            raise ValueError(f"{where}: chunks={chunks} overlaps all-to-alls, but experts here "
                             f"are dispatched by {mode!r} (no all-to-all); use chunks=1")
        cap = capacity(tokens_per_shard(cfg, layout), cfg.top_k, cfg.n_experts,
                       cfg.capacity_factor)
        if chunks > cap:
            raise ValueError(f"{where}: chunks={chunks} is more than the capacity C={cap} slots "
                             f"per expert; choose chunks <= {cap}")
