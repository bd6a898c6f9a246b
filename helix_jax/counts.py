"""Parameter counts of a model config, total and active per token, read off the model's own
parameter shapes (so a model file can be checked against its published size)."""

from __future__ import annotations

import math

import jax

from helix_jax.config import ModelConfig
from helix_jax.model import logical_axes, param_shapes


def param_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active per token) parameters of `cfg`'s model, read off the model's own parameter
    shapes: every layer of a stack has the same shapes, so one layer per stack is built and
    counted as many times as the stack has layers. Active counts the routed experts' parameters
    at top_k / n_experts (a token runs top_k of them) and everything else whole."""
    dense = cfg.first_dense_layers
    one = cfg.replace(n_layers=dense + 1, batch=1)
    layers = {"layers": cfg.n_layers - dense, "dense_layers": 1}
    total = active = 0.0
    flat_axes = dict(jax.tree_util.tree_leaves_with_path(
        logical_axes(one), is_leaf=lambda t: isinstance(t, tuple)))
    for path, shape in jax.tree_util.tree_leaves_with_path(param_shapes(one)):
        n = math.prod(shape.shape) * layers.get(str(path[0].key), 1)
        total += n
        active += n * (cfg.top_k / cfg.n_experts if "expert" in flat_axes[path] else 1)
    return int(total), int(round(active))
