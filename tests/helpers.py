"""Shared test helpers: random models, forward + gradients on a layout, relative errors."""

from __future__ import annotations

import functools
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np

from helix_jax.config import ModelConfig
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded, random_input


@functools.lru_cache(maxsize=16)
def _host_params(cfg: ModelConfig, seed: int):
    return jax.device_get(Sharded.build(cfg, parse_layout("single")).init(seed))


def random_params(cfg: ModelConfig, seed: int = 0):
    """Initialised parameters (the same on every layout) with every norm and bias moved off its
    1/0 start, so that a wrong bias or norm path cannot hide."""
    params = _host_params(cfg, seed)
    rng = np.random.default_rng(seed + 1)

    def jitter(path, v):
        name = jax.tree_util.keystr(path)
        if "scale" in name or "'b1'" in name or "'b2'" in name or "bias" in name:
            return (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        return v

    return jax.tree_util.tree_map_with_path(jitter, params)


def run(cfg: ModelConfig, spec: str, params=None, seed: int = 0, grads: bool = True):
    """Output, stats and (optionally) gradients of sum(y * ct) w.r.t. params and x, on host."""
    sharded = Sharded.build(cfg, parse_layout(spec))
    if params is None:
        params = random_params(cfg, seed)
    params = sharded.place(params)
    x = random_input(cfg, seed)
    forward = sharded.forward_fn()
    if not grads:
        y, stats = forward(params, x)
        return {"y": np.asarray(y, np.float32), "stats": jax.device_get(stats)}
    ct = jax.random.normal(jax.random.key(seed + 7), x.shape[:2] + (cfg.d_model,), jnp.float32)

    def loss(p, x):  # one program for output and gradients: half the compile time
        y, stats = forward(p, x)
        return jnp.sum(y.astype(jnp.float32) * ct), (y, stats)

    (_, (y, stats)), (gp, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        params, x)
    return {"y": np.asarray(y, np.float32), "stats": jax.device_get(stats),
            "grads": jax.device_get({"params": gp, "x": gx})}


def assert_same_model(ref: dict, got: dict, tol: float = 1e-5) -> None:
    """Two `run` results agree: outputs, and gradients w.r.t. parameters and input."""
    assert rel_err(ref["y"], got["y"]) < tol
    assert rel_err(ref["grads"], got["grads"]) < tol


def rel_err(ref, got) -> float:
    """max |ref - got| / max |ref|, the worst over the leaves of two trees."""
    errs = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a, np.float64) - b).max()
                                           / max(np.abs(np.asarray(a, np.float64)).max(), 1e-30)),
                        ref, got)
    return max(jax.tree.leaves(errs))


def compiled_collectives(cfg: ModelConfig, spec: str) -> Counter:
    """(op, group size, executions, first operand shape) -> how many such collectives the compiled
    forward pass of `cfg` on layout `spec` holds."""
    from helix_jax.analysis import collectives

    sharded = Sharded.build(cfg, parse_layout(spec))
    hlo = sharded.forward_fn().lower(*sharded.abstract_inputs()).compile().as_text()
    return Counter((c.op, c.group_size, c.trip_count, c.operand_shapes[0]) for c in collectives(hlo))
