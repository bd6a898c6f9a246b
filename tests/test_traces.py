"""The train step and the decode step are traced (and so compiled) once, however many steps run
(chex.assert_max_traces raises on a second trace)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from helix_jax import train as train_module
from helix_jax.config import resolve_model
from helix_jax.layouts import parse_layout
from helix_jax.model import Sharded

CFG = resolve_model("tiny-dense", batch=4, seq=16)


def test_the_train_step_is_traced_once(monkeypatch):
    step_fn = train_module.train_step_fn
    monkeypatch.setattr(train_module, "train_step_fn",
                        lambda *a, **k: chex.assert_max_traces(step_fn(*a, **k), n=1))
    trainer = train_module.Trainer(Sharded.build(CFG, parse_layout("helix")),
                                   train_module.TrainConfig(steps=4))
    params, opt_state = trainer.init()
    losses = []
    for position in range(4):  # a fresh batch per step; the same program
        params, opt_state, metrics = trainer.step(params, opt_state, position)
        losses.append(metrics["loss"])
    chex.assert_shape(losses, ())
    chex.assert_tree_all_finite(losses)
    assert len({float(v) for v in losses}) == 4  # each step really ran


def test_a_retraced_step_is_caught():
    """The check can fail: a step that changes its argument's shape is traced again."""
    counted = jax.jit(chex.assert_max_traces(lambda x: x * 2, n=1))
    counted(jnp.ones(3))
    counted(jnp.ones(3) + 1)  # same shape: no new trace
    try:
        counted(jnp.ones(4))
    except AssertionError as e:
        assert "traced" in str(e).lower()
    else:
        raise AssertionError("assert_max_traces did not catch a second trace")
