"""Shared test helpers: random models, forward + gradients on a layout, relative errors."""

from __future__ import annotations

from collections import Counter

from helix_jax.config import ModelConfig
from helix_jax.testing import (
    assert_trees_close,
    compiled_text,
    leaf_errors,
    random_params,
    run_layout,
)

__all__ = ["assert_same_model", "compiled_collectives", "random_params", "rel_err", "run"]


def run(cfg: ModelConfig, spec: str, params=None, seed: int = 0, grads: bool = True):
    """Output, stats and (optionally) gradients of sum(y * ct) w.r.t. params and x, on host
    (helix_jax.testing's run, which the users' helpers share)."""
    return run_layout(cfg, spec, params=params, seed=seed, grads=grads)


def assert_same_model(ref: dict, got: dict, tol: float = 1e-5) -> None:
    """Two `run` results agree (chex, each leaf within tol of its scale): outputs, and gradients
    w.r.t. parameters and input."""
    assert_trees_close({"output": ref["y"]}, {"output": got["y"]}, tol)
    assert_trees_close(ref["grads"], got["grads"], tol, "gradient ")


def rel_err(ref, got) -> float:
    """max |ref - got| / max |ref|, the worst over the leaves of two trees."""
    return max(leaf_errors(ref, got).values())


def compiled_collectives(cfg: ModelConfig, spec: str) -> Counter:
    """(op, group size, executions, first operand shape) -> how many such collectives the compiled
    forward pass of `cfg` on layout `spec` holds."""
    from helix_jax.analysis import collectives

    hlo = compiled_text(cfg, spec, "forward")
    return Counter((c.op, c.group_size, c.trip_count, c.operand_shapes[0]) for c in collectives(hlo))
